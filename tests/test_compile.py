"""`compile=True` (`--compile`): the UNet through torch.compile, batches padded to a few compiled shapes."""

import json

import pytest

import conjure
from conjure.errors import ConjureError
from conjure.models.compiled import CompiledModel, compiled_batch_size
from gaussian_model import GaussianModel, random_means
from test_models import CountingUNet
from tiny_pipelines import tiny_sd


def test_compiled_batch_sizes_are_few_and_pad_by_under_a_quarter():
    assert [compiled_batch_size(n) for n in range(1, 10)] == [1, 2, 3, 4, 5, 6, 7, 8, 10]
    assert [compiled_batch_size(n) for n in (17, 19, 20, 21, 35, 39, 40)] == [20, 20, 20, 24, 40, 40, 40]
    sizes = [compiled_batch_size(n) for n in range(1, 257)]
    assert all(n <= s < 1.25 * n for n, s in zip(range(1, 257), sizes))
    assert sorted(set(sizes[32:64])) == [40, 48, 56, 64]  # 33-64 rows: four compiled shapes, not 32


@pytest.fixture(scope="module")
def sd1():
    return conjure.load_model(tiny_sd(1))


def test_a_compiled_model_runs_padded_batches_and_scores_as_unpadded(sd1):
    pairs = [("a", "b"), ("a", "c"), ("d", "e")]  # "a" twice: 5 prompts, 11 evaluations per step
    eager = conjure.score_pairs(sd1, pairs, batch_size=3, steps=3)
    counting = CountingUNet(sd1.unet)
    sd1.unet = counting  # uncompiled, so that the wrapper's padding is what is seen
    try:
        padded = conjure.score_pairs(CompiledModel(sd1), pairs, batch_size=3, steps=3)
    finally:
        sd1.unet = counting.inner
    assert counting.batches == [5, 12, 12]  # 11 rows padded to 12 (a compiled shape); 5 is one already
    for a, b in zip(padded, eager):
        assert a.jeffreys == pytest.approx(b.jeffreys, rel=1e-5)
        assert a.per_step["gap_a"] == pytest.approx(b.per_step["gap_a"], rel=1e-5)
    assert [r.compiled for r in padded] == [True] * 3 and not eager[0].compiled


def test_compile_compiles_the_unet_in_place_and_scores_as_eager(sd1):
    compiled = conjure.load_model(tiny_sd(1), compile=True)
    weights = dict(compiled.unet.named_parameters())
    assert isinstance(compiled, CompiledModel) and compiled.compiled
    assert "conv_in.weight" in weights  # the same module: its weights keep their names
    r = conjure.score(compiled, "snow leopard", "bengal tiger", steps=2)
    reference = conjure.score(sd1, "snow leopard", "bengal tiger", steps=2)
    assert r.compiled and r.jeffreys == pytest.approx(reference.jeffreys, rel=1e-3)
    assert json.loads(json.dumps(r.to_dict()))["compiled"] is True


def test_compile_bad_input_gets_a_clear_message(monkeypatch):
    with pytest.raises(ConjureError, match="compile must be True or False"):
        conjure.load_model(GaussianModel(random_means(["a", "b"])), compile="yes")
    with pytest.raises(ConjureError, match="no `unet` module to compile"):
        conjure.load_model(GaussianModel(random_means(["a", "b"])), compile=True)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConjureError, match=r"needs a C\+\+ compiler .* on PATH"):
        conjure.load_model(tiny_sd(1), compile=True)


def test_compiled_results_are_not_resumed_as_eager_ones_nor_cached_as_them(sd1):
    from conjure.cli import result_key
    from conjure.sts.methods import model_identity

    eager = {"text_a": "a", "text_b": "b", "model": "m", "dtype": "float32", "settings": {"steps": 10}}
    assert result_key(eager) == result_key({**eager, "compiled": False})  # results from before the flag
    assert result_key(eager) != result_key({**eager, "compiled": True})
    before = model_identity(sd1)
    assert "compiled" not in before  # earlier caches keep their key
    assert model_identity(CompiledModel(sd1)) == {**before, "compiled": True}  # the same weights, compiled


def test_the_cli_says_a_result_was_compiled():
    from conjure.cli import computed_in

    r = conjure.score(conjure.load_model(tiny_sd(1)), "a", "b", steps=2)
    assert computed_in(r.dtype, r.compiled) == str(r.dtype)
    r.compiled = True
    assert computed_in(r.dtype, r.compiled) == f"{r.dtype}, compiled"
