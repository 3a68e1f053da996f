"""Bad input through the Python API: every case is a conjure.ConjureError with a message that says what to change
(issue 13's catalogue), the memory estimate and its limit, out of memory during a run, and emoji read as words."""

import math

import numpy as np
import pytest
import torch

import conjure
from conjure.jeffreys import Settings
from gaussian_model import GaussianModel, random_means


@pytest.fixture(scope="module")
def gaussian():
    return GaussianModel(random_means(["a", "b", "cat", "dog"]))


@pytest.fixture(scope="module")
def emoji_model():
    return conjure.load_model("emoji")


# --- settings: types and ranges ---------------------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    ({"seed": 1.5}, "seed must be a whole number"),
    ({"seed": "7"}, "seed must be a whole number"),
    ({"seed": 2**64}, r"seed must be a whole number from 0 to 2\*\*64 - 1"),  # torch: "Overflow when unpacking"
    ({"seed": None}, "seed must be a whole number"),
    ({"steps": True}, "steps must be a positive integer, got True"),
    ({"samples": True}, r"samples \(k\) must be a positive integer"),
    ({"step": 3}, "unknown setting 'step'; the settings are steps, samples"),
])
def test_bad_settings_are_conjure_errors(gaussian, settings, message):
    with pytest.raises(conjure.ConjureError, match=message):
        conjure.score(gaussian, "a", "b", **settings)
    with pytest.raises(conjure.ConjureError, match=message):
        conjure.score_pairs(gaussian, [("a", "b")], **settings)


def test_numpy_numbers_are_settings_too(gaussian):
    r = conjure.score(gaussian, "a", "b", steps=np.int64(3), seed=np.uint64(2**64 - 1), guidance=np.float32(1))
    assert r.settings["steps"] == 3 and type(r.settings["seed"]) is int and r.settings["seed"] == 2**64 - 1
    with pytest.raises(conjure.ConjureError, match=r"seed must be a whole number from 0 to 2\*\*64 - 1"):
        conjure.score(gaussian, "a", "b", steps=3, seed=-1)  # torch's -1 is 2**64 - 1: one range, every surface


# --- prompts and pairs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("cat\ud800", "prompt A is not valid text: it holds a lone surrogate U\\+D800"),
    ("\x00", r"prompt A is empty: it holds only control or invisible characters \(U\+0000\)"),
    ("\x00\x01 \u200b", "prompt A is empty: it holds only control or invisible characters"),
])
def test_bad_prompts_are_conjure_errors(gaussian, text, message):
    with pytest.raises(conjure.ConjureError, match=message):
        conjure.score(gaussian, text, "b")


@pytest.mark.parametrize("pairs, message", [
    ([("a",)], r"pair 1 must be two texts \(text_a, text_b\), got 1 text: \('a',\)"),
    (["ab"], r"pair 1 must be two texts \(text_a, text_b\), got 'ab'"),  # was scored as "a" against "b"
    ([("a", "b"), ("a", "b", "c")], "pair 2 must be two texts .* got 3 texts"),
    ("ab", "pairs must be a list of .* not one string"),
    (42, r"pairs must be a list of .* got 42 \(int\)"),
    ([{"text_a": "a", "text_b": "b"}], "pair 1 must be two texts"),
    ([("a", "b"), ("cat", None)], "prompt B of pair 2 must be a string, got NoneType"),
    ([("a", "b"), ("cat\udc80", "dog")], "prompt A of pair 2 is not valid text"),
])
def test_bad_pairs_are_conjure_errors(gaussian, pairs, message):
    with pytest.raises(conjure.ConjureError, match=message):
        conjure.score_pairs(gaussian, pairs)


@pytest.mark.parametrize("batch_size", [0, -1, True, 2.5, "8"])
def test_bad_batch_size_is_a_conjure_error(gaussian, batch_size):
    with pytest.raises(conjure.ConjureError, match="batch_size must be a positive integer"):
        conjure.score_pairs(gaussian, [("a", "b")], batch_size=batch_size)


def test_other_api_functions_check_their_input(gaussian):
    with pytest.raises(conjure.ConjureError, match="prompts must be a list of strings, got 'cat'"):
        conjure.sample(gaussian, "cat")  # would sample "c", "a", "t"
    with pytest.raises(conjure.ConjureError, match="prompt 2 is empty"):
        conjure.sample(gaussian, ["cat", "\x00"])
    with pytest.raises(conjure.ConjureError, match="prompt A is empty"):
        conjure.text_similarity(gaussian, "\x00", "cat")
    with pytest.raises(conjure.ConjureError, match="seed must be a whole number"):
        list(conjure.stream(gaussian, "a", "b", seed="7"))


# --- models and devices -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model, kwargs, message", [
    (42, {}, r"model must be a name .* got 42 \(int\)"),
    (["emoji"], {}, "model must be a name"),
    ("", {}, "the model name is empty"),
    ("emoji", {"device": "quantum"}, "unknown device 'quantum'; use auto, cpu, cuda, cuda:N or mps"),
    ("emoji", {"device": 3}, "device must be a name such as 'cpu'"),
    ("emoji", {"device": "fpga"}, "device 'fpga' is not supported"),
    ("emoji", {"dtype": 42}, "dtype must be a name such as 'float32'"),
])
def test_bad_load_model_arguments_are_conjure_errors(model, kwargs, message):
    with pytest.raises(conjure.ConjureError, match=message):
        conjure.load_model(model, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_conjure_error():
    with pytest.raises(conjure.ConjureError, match="device 'cuda' is not available"):
        conjure.load_model("emoji", device="cuda")
    with pytest.raises(conjure.ConjureError, match="device 'cuda:1' is not available"):
        conjure.load_model("emoji", device="cuda:1")


def test_a_path_object_loads_like_its_name():
    from conjure.models import EMBEDDED_MODEL

    assert conjure.load_model(EMBEDDED_MODEL).name == "emoji-32"


# --- memory: the estimate, its limit, and running out ---------------------------------------------------------

def test_the_estimate_grows_with_samples_pairs_and_size():
    from conjure import validation

    emoji_model = conjure.load_model("emoji", dtype="float32")  # the dtype the figures below were measured in
    one = validation.estimate_memory(emoji_model, Settings(), 1)
    assert validation.estimate_memory(emoji_model, Settings(samples=8), 1).total > 7 * one.total
    assert validation.estimate_memory(emoji_model, Settings(), 8).total > 7 * one.total
    assert validation.estimate_memory(emoji_model, Settings(size=64), 1).total > 3 * one.total
    assert validation.estimate_memory(emoji_model, Settings(guidance=3), 1).evaluations == 6
    # Measured on this model (torch 2.13, CPU, float32): 5.2 MB per evaluation at 32 px, 59 MB at 128 px; the
    # estimate must not be below what a run takes, nor absurdly above it.
    assert 5e6 <= one.per_evaluation <= 12e6
    assert 59e6 <= validation.estimate_memory(emoji_model, Settings(size=128), 1).per_evaluation <= 150e6
    # In bfloat16 the activations take half: measured peak RSS of `score --steps 2 --samples 200` 3.7 GB in float32,
    # 2.2 GB in bfloat16, against estimates of 5.4 and 2.8 GB.
    half = validation.estimate_memory(conjure.load_model("emoji", dtype="bfloat16"), Settings(), 1)
    assert half.per_evaluation == one.per_evaluation // 2 and half.held == one.held


def test_stable_diffusion_shaped_unets_are_estimated_from_their_config():
    from types import SimpleNamespace

    from conjure import validation

    # SD 1.x's UNet; at 256 px (32 x 32 latents) one float32 evaluation measured 54 MB, at 384 px 140 MB.
    config = SimpleNamespace(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
                             down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                             mid_block_type="UNetMidBlock2DCrossAttn")
    unet = SimpleNamespace(config=config)
    assert 54e6 <= 4 * validation.unet_activations(unet, 32, 32) <= 110e6
    assert 140e6 <= 4 * validation.unet_activations(unet, 48, 48) <= 280e6


@pytest.mark.parametrize("settings, batch_size", [({"size": 100_000}, 1), ({"samples": 1000}, 8)])
def test_a_run_over_the_memory_limit_is_refused_with_the_estimate_and_the_limit(emoji_model, monkeypatch, settings,
                                                                                batch_size):
    monkeypatch.setenv("CONJURE_MAX_MEMORY_GB", "16")
    pairs = [("cat", "dog")] * batch_size
    message = r"this run would need about .* of memory \(.*\), more than the 16 GB allowed " \
              r"\(CONJURE_MAX_MEMORY_GB\); lower samples \(k\), the batch size or the image size"
    with pytest.raises(conjure.ConjureError, match=message):
        conjure.score_pairs(emoji_model, pairs, batch_size=batch_size, **settings)


def test_without_a_batch_size_one_is_chosen_from_the_model_the_device_and_the_memory(emoji_model, monkeypatch):
    from conjure import validation

    monkeypatch.delenv("CONJURE_MAX_MEMORY_GB", raising=False)
    auto = lambda pairs, **settings: validation.auto_batch_size(emoji_model, Settings(**settings), pairs)  # noqa: E731
    # a 3x32x32 state, 4 evaluations per pair: WORK_PER_CALL["cpu"] / 12,288 pairs, never more pairs than there are
    assert auto(1000) == validation.WORK_PER_CALL["cpu"] // (4 * 3 * 32 * 32) > 1
    assert auto(3) == 3
    assert auto(1000, samples=4) < auto(1000) and auto(1000, guidance=3.0) < auto(1000)
    assert auto(1000, samples=1000) == 1  # one pair's k samples are already more than a call's worth
    # halved until the memory estimate fits the limit
    one = validation.estimate_memory(emoji_model, Settings(), 1).total
    monkeypatch.setenv("CONJURE_MAX_MEMORY_GB", str(2.5 * one / 1e9))
    fitted = auto(1000)
    assert validation.estimate_memory(emoji_model, Settings(), fitted).total <= 2.5 * one and fitted >= 1
    # and score_pairs uses it: the same scores as an explicit batch size
    monkeypatch.delenv("CONJURE_MAX_MEMORY_GB")
    pairs = [("cat", "dog"), ("sun", "moon"), ("tea", "coffee")]
    assert [r.jeffreys for r in conjure.score_pairs(emoji_model, pairs, steps=2)] == pytest.approx(
        [r.jeffreys for r in conjure.score_pairs(emoji_model, pairs, steps=2, batch_size=1)], rel=1e-4)


def test_the_memory_limit_defaults_to_a_share_of_what_is_available(emoji_model, monkeypatch):
    from conjure import validation

    monkeypatch.delenv("CONJURE_MAX_MEMORY_GB", raising=False)
    limit, where = validation.memory_limit("cpu")
    assert 0 < limit < validation.available_ram() and "of RAM available" in where
    with pytest.raises(conjure.ConjureError, match="of RAM available"):  # 120 GB for one state alone
        conjure.score(emoji_model, "cat", "dog", size=100_000)
    monkeypatch.setenv("CONJURE_MAX_MEMORY_GB", "lots")
    with pytest.raises(conjure.ConjureError, match="CONJURE_MAX_MEMORY_GB must be a positive number"):
        conjure.score(emoji_model, "cat", "dog")


class OutOfMemoryModel(GaussianModel):
    def __init__(self, error):
        super().__init__(random_means(["a", "b"]))
        self.error = error

    def predict_noise(self, x, t, cond):
        raise self.error


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: not enough memory: you tried to "
                 "allocate 120000000000 bytes."),
    MemoryError(),
])
def test_out_of_memory_during_a_run_says_what_to_lower(error):
    model = OutOfMemoryModel(error)
    for call in (lambda: conjure.score(model, "a", "b"), lambda: conjure.score_pairs(model, [("a", "b")]),
                 lambda: conjure.sample(model, ["a"])):
        with pytest.raises(conjure.ConjureError, match=r"out of memory during the run: lower samples \(k\), "
                                                        "the batch size or the image size"):
            call()


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    with pytest.raises(RuntimeError, match="shape mismatch"):
        conjure.score(OutOfMemoryModel(RuntimeError("shape mismatch")), "a", "b")


# --- emoji: read as words, not as [UNK] ---------------------------------------------------------------------

def test_emoji_only_prompts_score_by_their_meaning(emoji_model):
    r = conjure.score(emoji_model, "🐯🐆🔥", "🦁", steps=3)  # was 0.0: both prompts encoded as one [UNK]
    assert r.jeffreys > 0 and r.rewritten == ["tiger face leopard fire", "lion"]
    words = conjure.score(emoji_model, "tiger face leopard fire", "lion", steps=3)
    assert r.jeffreys == pytest.approx(words.jeffreys) and words.rewritten == [None, None]
    assert r.to_dict()["rewritten"] == ["tiger face leopard fire", "lion"]
    assert conjure.score(emoji_model, "🐯", "🦁", steps=3).jeffreys != conjure.score(emoji_model, "🐯", "🚗",
                                                                                     steps=3).jeffreys
    assert conjure.text_similarity(emoji_model, "🦁", "lion") == pytest.approx(1.0, abs=1e-6)
    assert conjure.text_similarity(emoji_model, "🦁", "🚗") < 0.9


def test_mixed_prompts_keep_their_words_and_read_their_emoji(emoji_model):
    from conjure.text import emoji_as_words

    tokenizer = emoji_model.text_encoder.tokenizer
    assert emoji_as_words(tokenizer, "a 🐯 in the snow❄️") == "a tiger face in the snow snowflake"
    assert emoji_as_words(tokenizer, "thumbs👍🏽up") == "thumbs thumbs up medium skin tone up"
    assert emoji_as_words(tokenizer, "café © 日本") == "café © 日本"  # characters it reads stay as they are


def test_prompts_the_encoder_reads_nothing_of_are_refused_like_empty_ones(emoji_model):
    for text in ("𓀀", "\u0301"):
        with pytest.raises(conjure.ConjureError, match="prompt B is empty to the model: MiniLM .* reads nothing of"):
            conjure.score(emoji_model, "cat", text)
    with pytest.raises(conjure.ConjureError, match="prompt A of pair 2 is empty to the model"):
        conjure.score_pairs(emoji_model, [("cat", "dog"), ("𓀀", "dog")])


def test_clip_tokenizers_that_cannot_read_emoji_read_their_names(tiny_sd1):
    # The tiny pipelines' character-level CLIP tokenizer knows only ASCII (real CLIP's byte-level BPE reads emoji,
    # and there nothing is rewritten).
    r = conjure.score(tiny_sd1, "🦁", "lion", steps=2)
    assert r.rewritten == ["lion", None] and r.jeffreys == 0.0
    with pytest.raises(conjure.ConjureError, match="prompt A is empty to the model: CLIP text encoder"):
        conjure.score(tiny_sd1, "日本", "lion", steps=1)


def test_settings_dict_in_results_is_plain_json(gaussian):
    import json

    r = conjure.score(gaussian, "a", "b", steps=np.int32(2), guidance=np.float64(1.0))
    assert json.loads(json.dumps(r.to_dict()))["settings"]["steps"] == 2
    assert math.isfinite(r.jeffreys)
