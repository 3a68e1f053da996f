"""Unit tests of the app's handlers (conjure/app_handlers.py), in process, on the embedded model."""

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

import conjure

from conjure import app_handlers as h, validation
from conjure.attribution import check_explain
from conjure.errors import ConjureError
from conjure.settings import SEED_MAX, Settings

OUT = {name: i for i, name in enumerate(h.OUTPUTS)}
LIMITS = h.app_limits()
SMALL = dict(model="emoji", steps=3, samples=1, guidance=1.0, seed=0, size=0, stages=3)


def request(**changes):
    args = {"text_a": "leopard", "text_b": "tiger", **SMALL, **changes}
    return h.check_request(args.pop("text_a"), args.pop("text_b"), args.pop("model"), **args)


def is_skip(value) -> bool:
    return isinstance(value, dict) and value == gr.skip()


# --- server-side limits ----------------------------------------------------------------------


def test_check_request_returns_clean_values():
    r = request(text_a="  snow leopard ", steps=4.0, size="32", seed=5)
    assert r == {"text_a": "snow leopard", "text_b": "tiger", "model": "emoji", "stages": 3,
                 "settings": Settings(steps=4, samples=1, guidance=1.0, seed=5, size=32, cosine=True)}
    assert request(size=0)["settings"].size is None and request(size=None)["settings"].size is None
    assert request(seed=SEED_MAX)["settings"].seed == SEED_MAX  # the library's seed range, not 2**31 - 1


@pytest.mark.parametrize("changes, message", [
    ({"text_a": ""}, "prompt A is empty"),
    ({"text_b": "   "}, "prompt B is empty"),
    ({"text_a": None}, "prompt A is empty"),
    ({"text_b": "x" * (LIMITS.max_prompt_chars + 1)}, "characters long"),
    ({"model": "../../etc/passwd"}, "unknown model"),
    ({"model": "someone/any-hub-model"}, "unknown model"),
    ({"steps": 0}, "steps must be between"),
    ({"steps": LIMITS.max_steps + 1}, "steps must be between"),
    ({"steps": 2.5}, "whole number"),
    ({"steps": True}, "whole number"),
    ({"samples": LIMITS.max_samples + 1}, "samples"),
    ({"stages": 1}, "a morph needs at least 2 stages"),
    ({"stages": LIMITS.max_stages + 1}, f"{LIMITS.max_stages + 1} morph stages; the limit is {LIMITS.max_stages}"),
    ({"size": LIMITS.max_size + 8}, "image size"),
    ({"size": "big"}, "whole number"),
    ({"seed": -1}, "seed must be between 0 and"),
    ({"seed": SEED_MAX + 1}, "seed must be between 0 and"),
    ({"guidance": 0.5}, "guidance"),
    ({"guidance": float("nan")}, "guidance"),
    ({"guidance": h.MAX_GUIDANCE + 1}, "guidance"),
])
def test_check_request_refuses(changes, message):
    with pytest.raises(ConjureError, match=message):
        request(**changes)


def test_limits_and_allow_list_come_from_the_environment_at_each_request(monkeypatch):
    monkeypatch.setenv("CONJURE_MAX_STEPS", "7")
    assert h.app_limits().max_steps == 7
    with pytest.raises(ConjureError, match="steps must be between 1 and 7, got 8"):
        request(steps=8)
    monkeypatch.setenv("CONJURE_MAX_STAGES", "1000")  # never looser than the library's limits
    assert h.app_limits().max_stages == conjure.LIMITS.max_stages
    monkeypatch.setenv("CONJURE_EXTRA_MODELS", "org/model-a, org/model-b")
    assert {"emoji", "sd-v1-4", "sd-v1-5", "sd-2-1", "sdxl", "org/model-a", "org/model-b"} <= set(h.allowed_models())
    monkeypatch.delenv("CONJURE_MODEL", raising=False)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert h.default_model() == "sd-v1-4"
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert h.default_model() == "emoji"
    monkeypatch.setenv("CONJURE_MODEL", "sdxl")
    assert h.default_model() == "sdxl"


def test_check_size_follows_the_model():
    model = type("M", (), {"name": "m", "default_size": 32, "size_multiple": 4})()
    h.check_size(model, None)
    h.check_size(model, 64)
    for bad in (30, 68, 0):
        with pytest.raises(ConjureError, match="multiple of 4 from 4 to 64"):
            h.check_size(model, bad)


# --- the model cache -----------------------------------------------------------------------------


def test_model_cache_loads_each_model_once_under_concurrency(monkeypatch):
    loads = []

    def slow_load(name):
        loads.append(name)
        time.sleep(0.2)
        return object()

    monkeypatch.setattr(h.conjure, "load_model", slow_load)
    cache = h.ModelCache(capacity=2)
    got = []
    threads = [threading.Thread(target=lambda n=n: got.append((n, cache.get(n)))) for n in ["sd-v1-4", "sdxl"] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(loads) == ["sd-v1-4", "sdxl"]
    assert len({id(m) for n, m in got if n == "sdxl"}) == 1
    cache.get("sd-v1-5")  # evicts the least recently used
    assert len(loads) == 3 and "sd-v1-5" in cache and sum(n in cache for n in ("sd-v1-4", "sdxl")) == 1
    with pytest.raises(ConjureError, match="unknown model"):
        cache.get("/tmp/some-folder")
    assert len(loads) == 3


# --- the Run handler -------------------------------------------------------------------------------


def run(text_a="leopard", text_b="tiger", **changes):
    args = {**SMALL, **changes}
    return h.run_conjure(text_a, text_b, args["model"], args["steps"], args["samples"], args["guidance"],
                         args["seed"], args["size"], args["stages"])


@pytest.mark.slow
def test_run_streams_steps_in_order_then_the_result_then_gifs():
    updates = []
    generator = run("snow leopard", "bengal tiger", steps=4, stages=3)
    for update in generator:
        assert len(update) == len(h.OUTPUTS)
        updates.append(update)
        if isinstance(update[OUT["trajectory_gif"]], str):
            break  # the final update: check its files before the generator cleans them up
    final = updates[-1]
    gif_dir = Path(final[OUT["morph_gif"]]).parent
    with Image.open(final[OUT["morph_gif"]]) as gif:
        assert gif.is_animated and gif.n_frames == 3 and gif.info["loop"] == 0
    with Image.open(final[OUT["trajectory_gif"]]) as gif:
        assert gif.is_animated and gif.n_frames == 4
    assert "snow-leopard-vs-bengal-tiger" in Path(final[OUT["morph_gif"]]).name
    assert final[OUT["morph_download"]].value["orig_name"] == Path(final[OUT["morph_gif"]]).name
    assert final[OUT["trajectory_download"]].visible
    import imageio.v3 as iio  # the same animations as MP4: 10 fps, ends held as in the GIFs, pixel art enlarged 2x

    for name, gif, seconds in (("morph_mp4", "morph_gif", 1.2 + 0.3 + 1.2),
                               ("trajectory_mp4", "trajectory_gif", 3 * 0.4 + 2.0)):
        video = final[OUT[name]]
        assert video.visible and video.value["orig_name"] == Path(final[OUT[gif]]).with_suffix(".mp4").name
        with Image.open(final[OUT[gif]]) as g:
            width, height = g.size
        frames = iio.imread(video.value["path"], plugin="FFMPEG", index=None)
        assert frames.shape == (round(10 * seconds), 2 * height, 2 * width, 3), name
    assert list(generator) == [] and not gif_dir.exists()  # temporary files are removed

    step_updates = [u for u in updates if isinstance(u[OUT["status"]], str) and u[OUT["status"]].startswith("**Step")]
    assert [u[OUT["status"]].split("**")[1] for u in step_updates] == [f"Step {i}/4" for i in range(1, 5)]
    for i, u in enumerate(step_updates, 1):
        assert u[OUT["image_a"]].shape == (32, 32, 3) and u[OUT["image_b"]].dtype == np.uint8
        assert u[OUT["difference"]].shape == (32, 32, 3)
        points = plot_points(u[OUT["plot"]])
        curves = [curve for _, curve in points if curve != h.PLOT_AXIS]
        assert len(curves) == 2 * i and set(curves) == set(h.PLOT_CURVES)
        # whole steps only on the x axis, and all of the run's steps from the first frame (fixed axes)
        assert sorted({step for step, _ in points}, key=int) == ["1", "2", "3", "4"]
        for name in ("result", "details", "morph_gif", "trajectory_gif"):  # unchanged outputs are not re-sent
            assert is_skip(u[OUT[name]])
    # The y axis scales to the data, so no frame sends a y_lim (sent as it grew, the page did not always apply it;
    # tests/test_browser.py checks that the curves stay inside the plot)
    assert not any(isinstance(u[OUT["plot"]], gr.LinePlot) for u in step_updates)

    # The score arrives before the morph is rendered; the final update repeats every output for API callers.
    results = [u for u in updates if isinstance(u[OUT["result"]], str) and u[OUT["result"]]]
    assert len(results) == 2 and results[-1] is final
    assert not any(isinstance(o, dict) and is_skip(o) for o in final)
    assert final[OUT["image_a"]] is step_updates[-1][OUT["image_a"]]
    details = results[0][OUT["details"]]
    assert {"jeffreys", "kl_ab", "kl_ba", "stderr", "text_similarity", "text_encoder"} <= set(details)
    assert details["jeffreys"] == pytest.approx((details["kl_ab"] + details["kl_ba"]) / 2)
    assert -1 <= details["text_similarity"] <= 1 and "MiniLM" in details["text_encoder"]
    assert "Jeffreys divergence" in results[0][OUT["result"]] and "cosine similarity" in results[0][OUT["result"]]
    # the images' cosine, of the two prompts' pulls away from no text, beside the words' cosine
    assert -1 <= details["cosine"] <= 1 and min(details["pulls"]) > 0 and details["settings"]["cosine"]
    assert f"**cosine {details['cosine']:.3f}**" in results[0][OUT["result"]]


def plot_points(plot) -> list[tuple[str, str]]:
    """(step, curve) of each point the plot is sent: as a DataFrame, or inside a LinePlot update (Gradio's dict)."""
    if isinstance(plot, gr.LinePlot):
        value = plot.value
        step, curve = value["columns"].index("step"), value["columns"].index("curve")
        return [(str(row[step]), row[curve]) for row in value["data"]]
    return list(zip(plot["step"].astype(str), plot["curve"]))


@pytest.mark.parametrize("changes, message", [
    ({"text_a": ""}, "prompt A is empty"),
    ({"model": "stabilityai/some-other-model"}, "unknown model"),
    ({"size": 34}, "multiple of 4"),
    ({"size": 128}, "from 4 to 64"),
    ({"steps": 10_000}, "steps must be between"),
])
def test_run_reports_bad_input_as_a_message(changes, message):
    text_a = changes.pop("text_a", "leopard")
    with pytest.raises(gr.Error, match=message):
        list(run(text_a, "tiger", **changes))


def test_without_ffmpeg_the_run_serves_gifs_and_says_why_no_video(monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # the plugin fails to load
    final, generator = None, run(steps=2, stages=2)  # held, so its files live until the checks are done
    for update in generator:
        final = update
        if isinstance(update[OUT["trajectory_gif"]], str):
            break
    with Image.open(final[OUT["morph_gif"]]) as gif:
        assert gif.n_frames == 2
    assert final[OUT["morph_download"]].visible
    for name in h.VIDEO_OUTPUTS:
        assert not final[OUT[name]].visible and final[OUT[name]].value is None
    assert "GIFs only, no MP4: ffmpeg is not available" in final[OUT["status"]]


class BrokenModel:
    """The embedded model, except that its noise prediction fails in a chosen way."""

    def __init__(self, model, failure):
        self._model, self._failure = model, failure

    def __getattr__(self, name):
        return getattr(self._model, name)

    def predict_noise(self, x, t, cond):
        if self._failure == "nan":
            return torch.full_like(x, float("nan"))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def serve_broken_emoji(monkeypatch, failure: str) -> None:
    """The app's model cache, with a BrokenModel for "emoji" (monkeypatch.undo() restores the cache)."""
    broken = h.ModelCache()
    broken._models["emoji"] = BrokenModel(h.MODELS.get("emoji"), failure)
    monkeypatch.setattr(h, "MODELS", broken)


@pytest.mark.parametrize("failure, message", [("nan", "NaN"), ("oom", "out of memory")])
def test_run_reports_nan_and_out_of_memory(monkeypatch, failure, message):
    serve_broken_emoji(monkeypatch, failure)
    with pytest.raises(gr.Error, match=message):
        list(run(steps=2))
    monkeypatch.undo()
    assert any(isinstance(u[OUT["trajectory_gif"]], str) for u in run(steps=2, stages=2))  # still serving


def assert_plain_data(value, where="value"):
    """On ZeroGPU the device functions run in another process: what crosses must be plain data."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            assert_plain_data(getattr(value, f.name), f"{where}.{f.name}")
    elif isinstance(value, dict):
        for k, v in value.items():
            assert_plain_data(k, where)
            assert_plain_data(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            assert_plain_data(v, f"{where}[{i}]")
    else:
        assert isinstance(value, (str, int, float, bool, type(None), np.ndarray, np.generic)), (where, type(value))


def test_the_device_function_passes_only_plain_data():
    kinds = []
    run = validation.check_run(h.MODELS.get("emoji"), Settings(steps=2, samples=2, seed=1))
    assert_plain_data(run)  # what the handler hands it
    for item in h.conjure_on_device("emoji", "sun", "moon", run, 2):
        assert_plain_data(item, item[0])
        kinds.append(item[0])
    assert kinds == ["step", "step", "baseline", "morph", "morph"]


def test_importing_the_app_touches_no_cuda_and_loads_no_model():
    # ZeroGPU forbids CUDA in the main process; a model loads on first use, not at import.
    code = (
        "import torch\n"
        "def refuse(*a, **k): raise RuntimeError('CUDA initialised at import time')\n"
        "torch.cuda._lazy_init = refuse\n"
        "torch.cuda.init = refuse\n"
        "import app\n"
        "from conjure import app_handlers as h\n"
        "assert not h.MODELS._models, 'a model was loaded at import time'\n"
        "assert not torch.cuda.is_initialized()\n"
        "assert app.demo.fns and any(f.api_name == 'conjure' for f in app.demo.fns.values())\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_page_queues_runs_with_limits_and_two_public_endpoints():
    import app

    assert app.demo._queue.max_size == h.env_int("CONJURE_QUEUE_SIZE", 16)
    assert app.demo._queue.default_concurrency_limit == h.env_int("CONJURE_CONCURRENCY", 1)
    public = [f.api_name for f in app.demo.fns.values() if f.api_visibility == "public"]
    assert public == ["conjure", "explain", "matrix"]  # the two tabs' Run buttons and the Why panel's Explain


def test_changing_the_model_offers_its_image_sizes():
    sizes = [value for _, value in h.on_model_change("sd-v1-4").choices]
    assert sizes[0] == 0 and 512 in sizes and 32 not in sizes
    assert [value for _, value in h.on_model_change("org/extra-model").choices] == [0]


def test_gpu_work_is_wrapped_by_spaces_gpu_when_present(monkeypatch):
    import types

    wrapped = []
    fake = types.SimpleNamespace(GPU=lambda duration: lambda fn: wrapped.append((fn, duration)) or fn)
    monkeypatch.setitem(sys.modules, "spaces", fake)

    def work():
        return None

    assert h.on_gpu(30)(work) is work and wrapped == [(work, 30)]
    monkeypatch.setitem(sys.modules, "spaces", None)  # not installed: a no-op
    assert h.on_gpu(30)(work) is work and len(wrapped) == 1


# --- "Compare many": the matrix handler (`/matrix`) ---------------------------------------------------

MOUT = {name: i for i, name in enumerate(h.MATRIX_OUTPUTS)}


def matrix_request(phrases, **changes):
    args = {**SMALL, **changes}
    return h.check_matrix_request(phrases, args["model"], args["steps"], args["samples"], args["guidance"],
                                  args["seed"], args["size"])


def run_matrix(phrases, **changes):
    args = {**SMALL, **changes}
    return h.run_matrix(phrases, args["model"], args["steps"], args["samples"], args["guidance"], args["seed"],
                        args["size"])


def test_check_matrix_request_cleans_the_phrases():
    r = matrix_request(" leopard \n\ntiger\nleopard\r\nzebra\n", steps=4.0, size="32")
    assert r == {"phrases": ["leopard", "tiger", "zebra"], "duplicates": ["leopard"], "model": "emoji",
                 "settings": Settings(steps=4, samples=1, guidance=1.0, seed=0, size=32, cosine=True)}


@pytest.mark.parametrize("phrases, changes, message", [
    ("tiger", {}, "at least two different phrases"),
    ("tiger\ntiger\n\n", {}, "only 'tiger', repeated"),
    ("", {}, "at least two different phrases"),
    (None, {}, "at least two different phrases"),
    (["tiger", "zebra"], {}, "phrases must be text"),
    ("\n".join(f"phrase {i}" for i in range(LIMITS.max_phrases + 1)), {}, f"the limit is {LIMITS.max_phrases}"),
    ("tiger\n" + "x" * (LIMITS.max_prompt_chars + 1), {}, "line 2 is"),
    ("tiger\n\x00", {}, r"phrase 2 is empty: it holds only control or invisible characters \(U\+0000\)"),
    ("a phrase\n" * 600_000, {}, "characters long; the limit is"),  # 5.4 MB
    ("tiger\nzebra\udc80", {}, "not valid text"),
    ("tiger\nzebra", {"model": "../../etc/passwd"}, "unknown model"),
    ("tiger\nzebra", {"steps": LIMITS.max_steps + 1}, "steps must be between"),
    ("tiger\nzebra", {"samples": 0}, "samples"),
    ("tiger\nzebra", {"guidance": float("nan")}, "guidance"),
])
def test_check_matrix_request_refuses(phrases, changes, message):
    with pytest.raises(ConjureError, match=message):
        matrix_request(phrases, **changes)


def test_the_phrase_limit_comes_from_the_environment_and_never_passes_the_librarys(monkeypatch):
    monkeypatch.setenv("CONJURE_MAX_PHRASES", "3")
    assert h.app_limits().max_phrases == 3
    with pytest.raises(ConjureError, match="4 different phrases; the limit is 3"):
        h.check_matrix_request("a\nb\nc\nd", "emoji", 2, 1, 1.0, 0, 0)
    assert h.check_matrix_request("a\nb\nc\na", "emoji", 2, 1, 1.0, 0, 0)["phrases"] == ["a", "b", "c"]
    monkeypatch.delenv("CONJURE_MAX_PHRASES")
    assert h.app_limits().max_phrases == 10  # the app's documented default, tighter than the library's 100
    monkeypatch.setenv("CONJURE_MAX_PHRASES", "500")
    assert h.app_limits().max_phrases == conjure.LIMITS.max_phrases


@pytest.mark.slow
def test_run_matrix_streams_progress_then_the_matrix_and_the_files():
    updates = []
    generator = run_matrix("leopard\ncheetah\nleopard\n\nzebra\nhouse cat", steps=2)
    for update in generator:
        assert len(update) == len(h.MATRIX_OUTPUTS)
        updates.append(update)
        csv = update[MOUT["matrix_csv"]]
        if isinstance(csv, gr.DownloadButton) and csv.visible:
            break  # the final update
    final = updates[-1]
    statuses = [u[MOUT["matrix_status"]] for u in updates if isinstance(u[MOUT["matrix_status"]], str)]
    progress = [s for s in statuses if s.startswith("**Scoring pairs")]
    assert len(progress) == 2 and "step 2/2" in progress[-1]  # 6 pairs: one batch of 2 sampler steps
    assert all("repeated, scored once: leopard" in s for s in statuses)
    assert final[MOUT["matrix_status"]].startswith("**Done: 4 phrases, 6 pairs")

    details = final[MOUT["matrix_details"]]
    assert details["phrases"] == ["leopard", "cheetah", "zebra", "house cat"] and details["duplicates"] == ["leopard"]
    jeffreys = np.array(details["jeffreys"])
    assert np.array_equal(jeffreys, jeffreys.T) and np.all(np.diag(jeffreys) == 0) and "MiniLM" in details["text_encoder"]
    neighbours = final[MOUT["matrix_neighbours"]]
    assert "| leopard |" in neighbours and "nearest by the words" in neighbours and "scored once: leopard" in neighbours
    assert "nearest by the images (cosine)" in neighbours and len(details["nearest_by_cosine"]) == 4
    for name in ("matrix_heatmap", "matrix_text_heatmap", "matrix_map"):
        assert isinstance(final[MOUT[name]], Image.Image) and final[MOUT[name]].width > 300
    csv = Path(final[MOUT["matrix_csv"]].value["path"])
    assert csv.name == "conjure-4-phrases-jeffreys.csv"
    assert csv.read_text().splitlines()[0] == "jeffreys,leopard,cheetah,zebra,house cat"
    for name in ("matrix_heatmap_png", "matrix_map_png"):
        with Image.open(final[MOUT[name]].value["path"]) as png:
            assert png.format == "PNG"
    assert list(generator) == []


def test_run_matrix_reports_bad_input_as_a_message():
    with pytest.raises(gr.Error, match="at least two different phrases"):
        list(run_matrix("tiger\n\ntiger"))
    with pytest.raises(gr.Error, match="multiple of 4"):
        list(run_matrix("tiger\nzebra", size=34))


@pytest.mark.parametrize("failure, message", [("nan", "NaN"), ("oom", "out of memory")])
def test_run_matrix_reports_nan_and_out_of_memory(monkeypatch, failure, message):
    serve_broken_emoji(monkeypatch, failure)
    with pytest.raises(gr.Error, match=message):
        list(run_matrix("sun\nmoon", steps=2))
    monkeypatch.undo()
    assert list(run_matrix("sun\nmoon", steps=1))[-1][MOUT["matrix_details"]]["phrases"] == ["sun", "moon"]  # serving


def test_the_matrix_device_function_passes_only_plain_data():
    run = validation.check_run(h.MODELS.get("emoji"), Settings(steps=2, samples=2, seed=1), pairs=3, batch_size=2)
    items = list(h.matrix_on_device("emoji", ["sun", "moon", "star"], [], run))
    for item in items:
        assert_plain_data(item, item[0])
    assert [kind for kind, _ in items] == ["step"] * 5  # 3 pairs in batches of 2: 2 + 2 steps, then the result
    assert items[-1][1].result is not None and items[-1][1].result.jeffreys.shape == (3, 3)


# --- bad input through the app: the handler's clear message, whatever the type, and one log line (issue 13) --------

@pytest.mark.parametrize("changes, message", [
    ({"steps": "ten"}, "steps must be a whole number, got 'ten'"),
    ({"steps": None}, "steps must be a whole number, got None"),
    ({"seed": "abc"}, "seed must be a whole number, got 'abc'"),
    ({"guidance": float("nan")}, "guidance must be a number from 1 (none) to 20, got nan"),
    ({"guidance": "strong"}, "guidance must be a number from 1 (none) to 20, got 'strong'"),
    ({"text_a": "cat\ud800"}, "prompt A is not valid text: it holds a lone surrogate U+D800"),  # was a TypeError
    ({"text_a": "\x00"}, "prompt A is empty: it holds only control or invisible characters (U+0000)"),
    ({"text_b": ["x"]}, "prompt B must be a string, got list"),
    ({"model": ["emoji"]}, "unknown model ['emoji']"),
    ({"text_b": "𓀀"}, "prompt B is empty to the model"),
])
def test_wrong_types_get_the_handlers_clear_message(caplog, changes, message):
    text_a, text_b = changes.pop("text_a", "leopard"), changes.pop("text_b", "tiger")
    with caplog.at_level("INFO", logger="conjure.app"), pytest.raises(gr.Error) as raised:
        list(run(text_a, text_b, **changes))
    assert raised.value.message == message or raised.value.message.startswith(message)
    assert "&#x27;" not in raised.value.message and "the run failed" not in raised.value.message
    refused = [r for r in caplog.records if r.name == "conjure.app" and r.getMessage().startswith("refused: ")]
    assert len(refused) == 1 and refused[0].exc_info is None and "\n" not in refused[0].getMessage()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_a_run_over_the_memory_limit_is_refused_with_what_to_lower(monkeypatch):
    monkeypatch.setenv("CONJURE_MAX_MEMORY_GB", "0.001")
    with pytest.raises(gr.Error, match=r"this run would need about .* more than the 1 MB allowed "
                                       r"\(CONJURE_MAX_MEMORY_GB\); choose a smaller image size, fewer samples"):
        list(run(samples=8, size=64))


def test_the_two_runs_take_raw_values_so_gradio_never_hides_the_message():
    import app

    by_name = {f.api_name: f for f in app.demo.fns.values()}
    assert by_name["conjure"].preprocess is False and by_name["matrix"].preprocess is False
    assert by_name["explain"].preprocess is False


def test_the_app_caps_uploads(monkeypatch):
    import runpy

    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    monkeypatch.setattr(h.MODELS, "get", lambda name: None)  # no preloading
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "app.py"), run_name="__main__")
    assert launched["max_file_size"] == h.MAX_UPLOAD == "1kb"


@pytest.fixture(scope="module")
def served():
    """The app itself, served in this process as `python app.py` serves it."""
    import app

    _, url, _ = app.demo.launch(prevent_thread_lock=True, quiet=True, max_file_size=h.MAX_UPLOAD)
    yield url
    app.demo.close()


def call_api(url, name, data):
    """A raw HTTP call, as curl would make it: the final SSE event and its data."""
    import json

    import httpx

    body = json.dumps({"data": data})  # as Python writes it: NaN as NaN, a lone surrogate as \ud800
    event = httpx.post(f"{url}gradio_api/call/{name}", content=body, headers={"Content-Type": "application/json"},
                       timeout=30).json()["event_id"]
    with httpx.stream("GET", f"{url}gradio_api/call/{name}/{event}", timeout=120) as stream:
        lines = "".join(stream.iter_text()).strip().splitlines()
    kind = [line for line in lines if line.startswith("event: ")][-1].removeprefix("event: ")
    return kind, json.loads([line for line in lines if line.startswith("data: ")][-1].removeprefix("data: "))


@pytest.mark.parametrize("data, message", [
    (["leopard", "tiger", "emoji", "ten", 1, 1, 0, 0, 3], "steps must be a whole number, got 'ten'"),
    (["leopard", "tiger", "emoji", None, 1, 1, 0, 0, 3], "steps must be a whole number, got None"),
    (["leopard", "tiger", "emoji", 3, 1, 1, "abc", 0, 3], "seed must be a whole number, got 'abc'"),
    (["leopard", "tiger", "emoji", 3, 1, 1, float("nan"), 0, 3], "seed must be a whole number, got nan"),  # was null
    (["cat\ud800", "tiger", "emoji", 3, 1, 1, 0, 0, 3], "prompt A is not valid text"),
    (["leopard", "tiger", "../../etc/passwd", 3, 1, 1, 0, 0, 3], "unknown model '../../etc/passwd'"),
])
def test_raw_http_calls_get_the_clear_message(served, capfd, data, message):
    kind, payload = call_api(served, "conjure", data)
    assert kind == "error" and payload["error"] is not None and payload["error"].startswith(message), payload
    assert "Traceback" not in capfd.readouterr().err


def test_raw_http_calls_to_the_matrix_get_the_clear_message(served):
    kind, payload = call_api(served, "matrix", ["leopard\ncheetah", "emoji", "ten", 1, 1, 0, 0])
    assert kind == "error" and payload["error"] == "steps must be a whole number, got 'ten'"


@pytest.mark.slow
def test_raw_http_calls_with_only_the_required_inputs_run_with_the_defaults(served, capfd):
    kind, payload = call_api(served, "matrix", ["sun\nmoon"])
    assert kind == "complete", payload
    details = payload[MOUT["matrix_details"]]
    assert details["phrases"] == ["sun", "moon"] and details["settings"]["steps"] == h.DEFAULTS["steps"]
    assert details["settings"]["guidance"] == h.DEFAULTS["guidance"]
    kind, payload = call_api(served, "conjure", ["sun"])  # prompt B left out: its box's value, empty
    assert kind == "error" and payload["error"].startswith("prompt B is empty")
    kind, payload = call_api(served, "conjure", ["sun", "moon"])
    assert kind == "complete", payload
    assert payload[OUT["details"]]["settings"]["steps"] == h.DEFAULTS["steps"]
    assert "Traceback" not in capfd.readouterr().err


def test_the_server_takes_no_uploads_and_lists_only_the_two_runs(served):
    import httpx

    small = httpx.post(f"{served}gradio_api/upload", files={"files": ("small.txt", b"x" * 100)}, timeout=30)
    big = httpx.post(f"{served}gradio_api/upload", files={"files": ("big.bin", b"\0" * 20_000_000)}, timeout=30)
    assert small.status_code == 200 and big.status_code == 413 and "maximum allowed size" in big.text
    info = httpx.get(f"{served}gradio_api/info", timeout=30).json()
    assert sorted(info["named_endpoints"]) == ["/conjure", "/explain", "/matrix"] and not info["unnamed_endpoints"]


# --- "Why do they differ?": the explain handler (`/explain`) ------------------------------------------------

WOUT = {name: i for i, name in enumerate(h.EXPLAIN_OUTPUTS)}


def test_run_explain_shows_each_word_highlighted_its_maps_and_the_images_without_it():
    updates = list(h.run_explain("a black horse", "cat", SMALL["model"], 2, 1, 1.0, 0, 0))
    assert updates[0][WOUT["why_status"]].startswith("Explaining") and len(updates) == 2
    final = dict(zip(h.EXPLAIN_OUTPUTS, updates[-1]))
    assert [word for word, _ in final["why_a"]] == ["a ", "black ", "horse"] and final["why_b"][0][0] == "cat"
    scores = [score for _, score in final["why_a"] + final["why_b"]]
    assert all(-1 <= v <= 1 for v in scores) and 1.0 in scores  # each sign on its own scale: the largest is 1
    assert len(final["why_maps"]) == 4 and len(final["why_without"]) == 4  # a map and an image per word
    picture, caption = final["why_maps"][1]
    assert picture.size == (h.WHY_TILE, h.WHY_TILE) and caption.startswith("black ")
    contribution = final["why_details"]["words_a"][1]["contribution"]  # the caption's figure is the word's
    assert float(caption.split()[1]) == pytest.approx(contribution, abs=0.5 if abs(contribution) >= 100 else 0.006 * abs(contribution))
    assert [caption for _, caption in final["why_without"]] == ["− a", "− black", "− horse", "− cat"]
    details = final["why_details"]
    assert [w["word"] for w in details["words_a"]] == ["a", "black", "horse"] and "jeffreys" in details
    assert "| A | " in final["why_table"] and "*(the empty prompt)*" in final["why_table"]


@pytest.mark.parametrize("text_a, message", [
    (" ".join(["dog"] * 17), "prompt A has 17 words; explain takes at most 16"),
    ("", "prompt A is empty"),
    (7, "prompt A must be a string"),
])
def test_run_explain_reports_bad_input_as_a_message(text_a, message):
    with pytest.raises(gr.Error, match=message):
        list(h.run_explain(text_a, "cat", SMALL["model"], 2, 1, 1.0, 0, 0))


def test_the_word_limit_comes_from_the_environment_and_never_passes_the_librarys(monkeypatch):
    monkeypatch.setenv("CONJURE_MAX_WORDS", "2")
    with pytest.raises(gr.Error, match="prompt A has 3 words; explain takes at most 2"):
        list(h.run_explain("a black horse", "cat", SMALL["model"], 2, 1, 1.0, 0, 0))
    monkeypatch.setenv("CONJURE_MAX_WORDS", "1000")
    assert h.app_limits().max_words == conjure.LIMITS.max_words


@pytest.mark.parametrize("failure, message", [("nan", "NaN"), ("oom", "out of memory: try a smaller image size")])
def test_run_explain_reports_nan_and_out_of_memory(monkeypatch, failure, message):
    serve_broken_emoji(monkeypatch, failure)
    with pytest.raises(gr.Error, match=message):
        list(h.run_explain("a cat", "dog", "emoji", 2, 1, 1.0, 0, 0))
    monkeypatch.undo()
    assert list(h.run_explain("a cat", "dog", "emoji", 1, 1, 1.0, 0, 0))[-1][WOUT["why_details"]]  # still serving


def test_the_explain_device_function_passes_only_plain_data():
    model = h.MODELS.get("emoji")
    leave_out, run = check_explain(model, "a cat", "dog", Settings(steps=2, samples=2, seed=1))
    assert_plain_data(run)  # what the handler hands it
    [e] = list(h.explain_on_device("emoji", "a cat", "dog", run, leave_out))
    assert_plain_data(e, "explanation")
    assert [w.word for w in e.words_a] == ["a", "cat"] and e.settings["samples"] == 2


def test_raw_http_calls_to_explain_fill_the_inputs_left_out_and_get_the_clear_message(served, capfd):
    kind, payload = call_api(served, "explain", ["sun"])  # prompt B left out: its box's value, empty
    assert kind == "error" and payload["error"].startswith("prompt B is empty"), payload
    kind, payload = call_api(served, "explain", [" ".join(["dog"] * 17), "cat"])
    assert kind == "error" and payload["error"].startswith("prompt A has 17 words"), payload
    kind, payload = call_api(served, "explain", ["sun", "moon", "emoji", 2])  # the rest: the sliders' defaults
    assert kind == "complete", payload
    details = payload[WOUT["why_details"]]
    assert details["settings"]["steps"] == 2 and details["settings"]["guidance"] == h.DEFAULTS["guidance"]
    assert [w["word"] for w in details["words_a"]] == ["sun"] and "Traceback" not in capfd.readouterr().err
