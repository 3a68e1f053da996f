"""Tiny SD 1.x, SD 2.x (v-prediction) and SDXL pipelines run end to end through the same estimator."""

import warnings

import pytest
import torch

import conjure
from conjure.models.stable_diffusion import StableDiffusionModel, StableDiffusionXLModel
from tiny_pipelines import tiny_sd, tiny_sdxl

PIPELINES = {"sd1": lambda: tiny_sd(1), "sd2-v": lambda: tiny_sd(2), "sdxl": tiny_sdxl}


class CountingUNet(torch.nn.Module):
    """Wraps a UNet and records the batch size of every forward call."""

    def __init__(self, unet):
        super().__init__()
        self.inner = unet
        self.batches = []

    def forward(self, sample, *args, **kwargs):
        self.batches.append(len(sample))
        return self.inner(sample, *args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


@pytest.fixture(scope="module", params=list(PIPELINES))
def model(request):
    return conjure.load_model(PIPELINES[request.param]())


def counted(model):
    model.unet = CountingUNet(model.unet)
    return model.unet


def test_adapter_is_chosen_by_pipeline_class(model):
    expected = StableDiffusionXLModel if "XL" in type(model.pipe).__name__ else StableDiffusionModel
    assert type(model) is expected


@pytest.mark.parametrize("k,guidance,first,rows_per_sample", [(1, 1.0, 2, 4), (3, 1.0, 2, 4), (2, 5.0, 3, 6)])
def test_one_batched_call_per_step_with_four_evaluations_per_sample(model, k, guidance, first, rows_per_sample):
    unet = counted(model)
    try:
        r = conjure.score(model, "snow leopard", "bengal tiger", steps=3, samples=k, guidance=guidance)
    finally:
        model.unet = unet.inner
    # T calls, 4k (6k with guidance) rows each, but the first: both trajectories start at the same x_T, so it
    # evaluates each prompt (and the null prompt under guidance) once.
    assert unet.batches == [first * k] + [rows_per_sample * k] * 2
    assert r.jeffreys > 0 and r.kl_ab > 0 and r.kl_ba > 0


def test_pairs_batch_into_the_same_calls(model):
    unet = counted(model)
    try:
        results = conjure.score_pairs(model, [("a", "b"), ("c", "d"), ("e", "e")], batch_size=3, steps=2, samples=2)
    finally:
        model.unet = unet.inner
    # Two distinct pairs need 4k rows each; the identical pair needs one trajectory under one prompt. At the
    # first step, each of the five prompts once.
    assert unet.batches == [5 * 2, (4 + 4 + 1) * 2]
    assert results[2].jeffreys == 0.0


def test_v_prediction_is_converted_to_epsilon():
    from conjure.models.base import epsilon_from_v

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    abar = torch.tensor(0.3)
    x = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    assert torch.allclose(epsilon_from_v(x, v, abar), eps, atol=1e-6)


def test_long_prompts_are_truncated_with_a_visible_warning(model):
    long = "a very long prompt " * 10  # about 190 characters: past CLIP's 77 tokens at character level
    with pytest.warns(conjure.PromptTruncatedWarning, match="truncated"):
        r = conjure.score(model, long, "short", steps=2)
    assert r.truncated == [True, False]


def test_images_and_text_baseline(model):
    events = list(conjure.stream(model, "a cat", "a dog", steps=2))
    assert events[-1].result.images[0].shape == (32, 32, 3)
    sim = conjure.text_similarity(model, "a cat", "a dog")
    assert -1.0 <= sim <= 1.0 and conjure.text_similarity(model, "a cat", "a cat") == pytest.approx(1.0, abs=1e-5)


def test_size_must_fit_the_unet(model):
    with pytest.raises(conjure.ConjureError, match="multiple of"):
        conjure.score(model, "a", "b", size=34)
    r = conjure.score(model, "a", "b", size=64, steps=2)
    assert r.settings["size"] == 64


def test_local_folder_loads_through_from_pretrained(tmp_path):
    pipe = tiny_sd(1)
    pipe.save_pretrained(tmp_path / "tiny-sd", safe_serialization=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = conjure.load_model(str(tmp_path / "tiny-sd"), device="cpu")
    assert isinstance(model, StableDiffusionModel)
    reference = conjure.score(conjure.load_model(pipe), "a", "b", steps=2)
    assert conjure.score(model, "a", "b", steps=2).jeffreys == pytest.approx(reference.jeffreys, rel=1e-5)


def test_every_adapter_implements_the_written_interface(tiny_sd1):
    from conjure.models.base import DiffusionModel
    from gaussian_model import GaussianModel, random_means

    for model in (tiny_sd1, conjure.load_model("emoji"), GaussianModel(random_means(["a"]))):
        assert isinstance(model, DiffusionModel), type(model).__name__
        assert model.text_encoder_name


@pytest.mark.parametrize("asked, device, cpu_dtype, native, expected", [
    (None, "cpu", None, True, torch.float32),  # a model not measured in bf16 stays in float32
    (None, "cpu", "bfloat16", True, torch.bfloat16),  # measured, and the CPU computes bf16
    ("auto", "cpu", "bfloat16", True, torch.bfloat16),
    (None, "cpu", "bfloat16", False, torch.float32),  # emulated bf16 would be slower than float32
    ("float32", "cpu", "bfloat16", True, torch.float32),  # asked for: always wins
    (torch.float32, "cpu", "bfloat16", True, torch.float32),
    (None, "cuda", "bfloat16", True, torch.float16),
])
def test_the_default_dtype(monkeypatch, asked, device, cpu_dtype, native, expected):
    from conjure import models

    monkeypatch.setattr(models, "cpu_computes_bfloat16", lambda: native)
    assert models.pick_dtype(asked, torch.device(device), cpu_dtype) == expected


def test_the_embedded_model_runs_in_bfloat16_only_where_the_cpu_computes_it(monkeypatch):
    from conjure import models

    monkeypatch.setattr(models, "cpu_computes_bfloat16", lambda: False)
    assert conjure.load_model("emoji").dtype == torch.float32
    monkeypatch.setattr(models, "cpu_computes_bfloat16", lambda: True)
    assert conjure.load_model("emoji").dtype == torch.bfloat16


def test_a_pipeline_object_is_cast_to_the_dtype_asked_for():
    pipe = PIPELINES["sd1"]()
    assert conjure.load_model(pipe).dtype == torch.float32  # as built
    assert conjure.load_model(pipe, dtype="bfloat16").dtype == torch.bfloat16
