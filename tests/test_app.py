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

from conjure import app_handlers as h
from conjure.errors import ConjureError

OUT = {name: i for i, name in enumerate(h.OUTPUTS)}
SMALL = dict(model="emoji", steps=3, samples=1, guidance=1.0, seed=0, size=0, stages=3)


def request(**changes):
    args = {"text_a": "leopard", "text_b": "tiger", **SMALL, **changes}
    return h.check_request(args.pop("text_a"), args.pop("text_b"), args.pop("model"), **args)


def is_skip(value) -> bool:
    return isinstance(value, dict) and value == gr.skip()


# --- server-side limits ----------------------------------------------------------------------


def test_check_request_returns_clean_values():
    r = request(text_a="  snow leopard ", steps=4.0, size="32", seed=5)
    assert r == {"text_a": "snow leopard", "text_b": "tiger", "model": "emoji", "steps": 4, "samples": 1,
                 "guidance": 1.0, "seed": 5, "size": 32, "stages": 3}
    assert request(size=0)["size"] is None and request(size=None)["size"] is None


@pytest.mark.parametrize("changes, message", [
    ({"text_a": ""}, "prompt A is empty"),
    ({"text_b": "   "}, "prompt B is empty"),
    ({"text_a": None}, "prompt A is empty"),
    ({"text_b": "x" * (h.LIMITS.max_prompt_chars + 1)}, "characters long"),
    ({"model": "../../etc/passwd"}, "unknown model"),
    ({"model": "someone/any-hub-model"}, "unknown model"),
    ({"steps": 0}, "steps must be between"),
    ({"steps": h.LIMITS.max_steps + 1}, "steps must be between"),
    ({"steps": 2.5}, "whole number"),
    ({"steps": True}, "whole number"),
    ({"samples": h.LIMITS.max_samples + 1}, "samples"),
    ({"stages": 1}, "morph stages"),
    ({"stages": h.LIMITS.max_stages + 1}, "morph stages"),
    ({"size": h.LIMITS.max_size + 8}, "image size"),
    ({"size": "big"}, "whole number"),
    ({"seed": -1}, "seed"),
    ({"guidance": 0.5}, "guidance"),
    ({"guidance": float("nan")}, "guidance"),
    ({"guidance": h.MAX_GUIDANCE + 1}, "guidance"),
])
def test_check_request_refuses(changes, message):
    with pytest.raises(ConjureError, match=message):
        request(**changes)


def test_limits_and_allow_list_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CONJURE_MAX_STEPS", "7")
    assert h.Limits.from_env().max_steps == 7
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
        plot = u[OUT["plot"]]
        frame = plot.value if isinstance(plot, gr.LinePlot) else plot
        frame = frame if not isinstance(frame, dict) else None
        if frame is not None:
            assert len(frame) == 2 * i and set(frame["curve"]) == set(h.PLOT_CURVES)
        for name in ("result", "details", "morph_gif", "trajectory_gif"):  # unchanged outputs are not re-sent
            assert is_skip(u[OUT[name]])
    first_plot = step_updates[0][OUT["plot"]]
    assert isinstance(first_plot, gr.LinePlot) and first_plot.x_lim == [1, 4]  # fixed axes from the first step

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


@pytest.mark.parametrize("failure, message", [("nan", "NaN"), ("oom", "out of memory")])
def test_run_reports_nan_and_out_of_memory(monkeypatch, failure, message):
    broken = h.ModelCache()
    broken._models["emoji"] = BrokenModel(h.MODELS.get("emoji"), failure)
    monkeypatch.setattr(h, "MODELS", broken)
    with pytest.raises(gr.Error, match=message):
        list(run(steps=2))
    monkeypatch.undo()
    assert any(isinstance(u[OUT["trajectory_gif"]], str) for u in run(steps=2, stages=2))  # still serving


def test_the_device_function_passes_only_plain_data():
    # On ZeroGPU, conjure_on_device runs in another process: its inputs and outputs must be plain data.
    def check(value, where):
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                check(getattr(value, f.name), f"{where}.{f.name}")
        elif isinstance(value, dict):
            for k, v in value.items():
                check(k, where)
                check(v, f"{where}[{k!r}]")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                check(v, f"{where}[{i}]")
        else:
            assert isinstance(value, (str, int, float, bool, type(None), np.ndarray, np.generic)), (where, type(value))

    kinds = []
    for item in h.conjure_on_device("emoji", "sun", "moon", {"steps": 2, "samples": 2, "seed": 1}, 2):
        check(item, item[0])
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


def test_the_page_queues_runs_with_limits_and_one_public_endpoint():
    import app

    assert app.demo._queue.max_size == h.env_int("CONJURE_QUEUE_SIZE", 16)
    assert app.demo._queue.default_concurrency_limit == h.env_int("CONJURE_CONCURRENCY", 1)
    public = [f.api_name for f in app.demo.fns.values() if f.api_visibility == "public"]
    assert public == ["conjure"]


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
