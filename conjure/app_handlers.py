"""The Gradio app's server side: limits, the model allow-list and cache, the two tabs' Run handlers and the Why
panel's Explain handler.

`app.py` lays out the page and wires these functions to it. Everything a user or an
API caller sends is checked here, on the server, whatever the sliders allow, by the same
checks as the library's (`conjure.validation`), against the app's limits (`app_limits`). The
environment is read when a request comes, not at import:

    CONJURE_MODEL             default model (an alias, a hub id or a folder); on ZeroGPU: sd-v1-4
    CONJURE_EXTRA_MODELS      comma-separated hub ids or folders added to the allow-list
    CONJURE_MAX_STEPS (50), CONJURE_MAX_SAMPLES (8), CONJURE_MAX_STAGES (16),
    CONJURE_MAX_SIZE (1024), CONJURE_MAX_PROMPT_CHARS (300), CONJURE_MAX_PHRASES (10, "Compare many"),
    CONJURE_MAX_WORDS (16 per prompt, "Why do they differ?")
    CONJURE_CACHED_MODELS (2) models kept loaded; CONJURE_CONCURRENCY (1) runs at once;
    CONJURE_QUEUE_SIZE (16)   runs waiting at most

All model work of a Run happens in one generator, `conjure_on_device` (`matrix_on_device`
for the "Compare many" tab's `/matrix`, `explain_on_device` for `/explain`), wrapped in
`spaces.GPU` when the `spaces` package is installed (a no-op off ZeroGPU). Only plain data
crosses its boundary: names, numbers, dicts, dataclasses of them and numpy arrays.
"""

from __future__ import annotations

import functools
import html
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import fields
from pathlib import Path
from typing import Iterator

import gradio as gr
import numpy as np

import conjure
from conjure import animation, calibration, jeffreys, validation
from conjure.models.base import cosine
from conjure.attribution import LEAVE_OUT, Explanation, check_explain, check_words, explained
from conjure.errors import ConjureError
from conjure.matrix import check_matrix, check_phrases, scored_matrix
from conjure.models import BUILTIN_MODELS
from conjure.morph import check_morph, check_stages, morph_steps
from conjure.settings import LIMITS, SEED_MAX, Limits, Settings

log = logging.getLogger("conjure.app")

# --- configuration ------------------------------------------------------------------------


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


# The app's limits where they are tighter than the library's (`conjure.LIMITS`), each overridden by CONJURE_MAX_*.
APP_LIMITS = {"max_steps": 50, "max_samples": 8, "max_stages": 16, "max_size": 1024, "max_prompt_chars": 300,
              "max_phrases": 10, "max_words": 16}


def app_limits() -> Limits:
    """What one request may ask for, from the environment now: the app's limits, never looser than the library's.
    Enforced by the library's own checks; mirrored by the sliders."""
    values = {}
    for name in (f.name for f in fields(Limits)):
        library = getattr(LIMITS, name)
        value = env_int(f"CONJURE_{name.upper()}", APP_LIMITS[name]) if name in APP_LIMITS else library
        values[name] = value if library is None else min(value, library)
    return Limits(**values)


MAX_UPLOAD = "1kb"  # Gradio's max_file_size: the app takes no files, so its /upload route takes next to nothing
MAX_GUIDANCE = 20.0
# The app's settings. 20 steps and guidance 5, where the library and CLI use 10 and 1: the app is for looking at
# the pictures, and on the embedded model these draw far more recognisable ones while ranking pairs the same (at
# twice and 1.5x the model calls; the measurements: docs/app.md#settings).
DEFAULTS = {"steps": 20, "samples": 1, "guidance": 5.0, "seed": 0, "size": 0, "stages": 8}

EXAMPLES = [
    ["snow leopard", "bengal tiger"],
    ["a bag of chips", "a bag of fries"],
    ["leopard", "tiger"],
    ["french fries", "hamburger"],
    ["red apple", "green apple"],
    ["sun", "crescent moon"],
    ["cat face", "rocket"],
]


def default_model() -> str:
    """$CONJURE_MODEL; else SD v1.4 on a ZeroGPU Space and the embedded model anywhere else."""
    if os.environ.get("CONJURE_MODEL"):
        return conjure.default_model()
    return "sd-v1-4" if os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true") else "emoji"


def allowed_models() -> dict[str, str]:
    """Model name -> label: the built-ins, $CONJURE_EXTRA_MODELS and the default. Nothing else loads."""
    models = {alias: model.label for alias, model in BUILTIN_MODELS.items()}
    extra = [m.strip() for m in os.environ.get("CONJURE_EXTRA_MODELS", "").split(",") if m.strip()]
    for name in [*extra, default_model()]:
        models.setdefault(name, name)
    return models


def size_choices(model_name: str) -> list[tuple[str, int]]:
    """Image sides offered for a model; 0 is the model's own default."""
    sizes = BUILTIN_MODELS[model_name].sizes if isinstance(model_name, str) and model_name in BUILTIN_MODELS else ()
    return [("model default", 0)] + [(f"{s} px", s) for s in sizes]


class Blocks(gr.Blocks):
    """gr.Blocks whose events take a call that sends fewer values than they have inputs (a raw HTTP call with only
    the prompts): each input left out gets its component's value, the default gradio_client fills in too."""

    def validate_inputs(self, block_fn, inputs: list) -> None:
        inputs += [getattr(block, "value", None) for block in block_fn.inputs[len(inputs):]]
        super().validate_inputs(block_fn, inputs)

# --- the model cache --------------------------------------------------------------------


class ModelCache:
    """Models load once and stay loaded (the `capacity` most recently used).

    One lock covers lookup, loading and eviction, so two users switching models at the
    same time load each model once and never see a half-built cache. A run holds its own
    reference, so evicting a model another run still uses cannot break that run.
    """

    def __init__(self, capacity: int | None = None):
        self._capacity = capacity  # None: $CONJURE_CACHED_MODELS (2), read when a model loads
        self._models: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return max(1, self._capacity if self._capacity is not None else env_int("CONJURE_CACHED_MODELS", 2))

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def loaded(self, name: str):
        """The model if it is loaded, else None; takes no lock (a forked ZeroGPU worker may inherit it held)."""
        return self._models.get(name)

    def get(self, name: str):
        if name not in allowed_models():
            raise ConjureError(f"unknown model {name!r}; choose one of: {', '.join(allowed_models())}")
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            while len(self._models) >= self.capacity:
                evicted = next(iter(self._models))
                del self._models[evicted]  # the last reference, unless a run still holds one
                log.info("unloaded %s", evicted)
                free_accelerator_memory()
            log.info("loading %s", name)
            model = conjure.load_model(name)
            self._models[name] = model
            return model


def free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_initialized():  # never the first CUDA call: ZeroGPU forbids CUDA in the main process
        torch.cuda.empty_cache()


MODELS = ModelCache()

# --- checking a request -----------------------------------------------------------------


def whole_number(name: str, value) -> int:
    """A whole number as sent: an int, a whole float, or text (typed into a dropdown, or sent through the API)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConjureError(f"{name} must be a whole number, got {value!r}") from None
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value != int(value):
        raise ConjureError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def check_between(name: str, value: int, low: int, high: int | None) -> int:
    if value < low or high is not None and value > high:
        raise ConjureError(f"{name} must be between {low} and {high}, got {value}")
    return value


def check_settings_request(model_name, steps, samples, guidance, seed, size, limits: Limits,
                           cosine: bool = False) -> tuple[str, Settings]:
    """The model and estimator settings every tab takes, as sent: the model's name and a checked `Settings`
    (`cosine`: whether the tab reports the cosine of the pulls, which Compare two and Compare many do)."""
    if not isinstance(model_name, str) or model_name not in allowed_models():
        raise ConjureError(f"unknown model {model_name!r}; choose one of: {', '.join(allowed_models())}")
    if isinstance(guidance, str):  # sent as text through the API
        try:
            guidance = float(guidance)
        except ValueError:
            pass
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not (1 <= guidance <= MAX_GUIDANCE):
        raise ConjureError(f"guidance must be a number from 1 (none) to {MAX_GUIDANCE:g}, got {guidance!r}")
    settings = Settings(steps=check_between("steps", whole_number("steps", steps), 1, limits.max_steps),
                        samples=check_between("samples (k)", whole_number("samples (k)", samples), 1,
                                              limits.max_samples),
                        guidance=float(guidance),
                        seed=check_between("seed", whole_number("seed", seed), 0, SEED_MAX),
                        size=check_between("image size", whole_number("image size", size or 0), 0, limits.max_size),
                        cosine=cosine)
    return model_name, settings


def check_text_request(text, name: str, limits: Limits) -> str:
    """One prompt or phrase as sent: the library's check, at most `limits.max_prompt_chars` characters, stripped."""
    if text is None:
        raise ConjureError(f"{name} is empty: type a phrase")
    if isinstance(text, str) and limits.max_prompt_chars is not None and len(text.strip()) > limits.max_prompt_chars:
        raise ConjureError(f"{name} is {len(text.strip())} characters long; the limit is {limits.max_prompt_chars}")
    return validation.check_text(text, name).strip()


def check_request(text_a, text_b, model_name, steps, samples, guidance, seed, size, stages,
                  limits: Limits | None = None) -> dict:
    """The validated "Compare two" request, or a ConjureError saying what is wrong."""
    limits = limits or app_limits()
    prompts = [check_text_request(text, f"prompt {which}", limits) for which, text in (("A", text_a), ("B", text_b))]
    model_name, settings = check_settings_request(model_name, steps, samples, guidance, seed, size, limits,
                                                  cosine=True)
    return {"text_a": prompts[0], "text_b": prompts[1], "model": model_name, "settings": settings,
            "stages": check_stages(whole_number("morph stages", stages), limits)}


def check_size(model, size: int | None, limits: Limits | None = None) -> None:
    """Sides the model can sample: multiples of its `size_multiple`, up to twice its default (and the limit)."""
    if size is None:
        return
    largest = min((limits or app_limits()).max_size or math.inf, 2 * model.default_size)
    if size % model.size_multiple or not model.size_multiple <= size <= largest:
        raise ConjureError(f"image size for {model.name} must be a multiple of {model.size_multiple} "
                           f"from {model.size_multiple} to {largest} px, got {size}")


def loaded(model_name: str, settings: Settings, limits: Limits):
    """The model, loaded here in the main process (so ZeroGPU's workers inherit it), and the image size checked."""
    model = MODELS.get(model_name)
    check_size(model, settings.size, limits)
    return model


# --- the model work: one accelerator session per Run -----------------------------------------


def on_gpu(duration: int):
    """`spaces.GPU(duration=...)` when the `spaces` package is installed (it is a no-op off ZeroGPU)."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def reports_out_of_memory(lower: str):
    """Decorate a device generator: out of memory inside it becomes a ConjureError saying what to lower, raised
    there, inside, so that it crosses a ZeroGPU process boundary intact."""

    def decorate(generator_function):
        @functools.wraps(generator_function)
        def wrapper(*args, **kwargs) -> Iterator[tuple]:
            import torch

            try:
                yield from generator_function(*args, **kwargs)
            except (torch.OutOfMemoryError, validation.OutOfMemory):
                free_accelerator_memory()
                raise ConjureError(f"out of memory: try {lower}") from None

        return wrapper

    return decorate


@on_gpu(duration=120)
@reports_out_of_memory("a smaller image size, fewer samples (k) or fewer morph stages")
def conjure_on_device(model_name: str, text_a: str, text_b: str, run: validation.Checked,
                      stages: int) -> Iterator[tuple]:
    """Everything a Run computes with the model, as plain data, on input `run_conjure` checked.

    Yields ("step", StepEvent) for each sampler step, then ("baseline", cosine, encoder
    name), then ("morph", MorphStep) for each morph step.
    """
    model = MODELS.loaded(model_name) or MODELS.get(model_name)  # the handler has loaded it
    for event in jeffreys.stream(model, text_a, text_b, run):
        if event.result is not None:
            calibration.add_percentiles(model, [event.result], run.settings)
            result = event.result
        yield "step", event
    embeddings = model.text_embedding([text_a, text_b])
    yield "baseline", cosine(embeddings[0], embeddings[1]), model.text_encoder_name
    # The morph's end stages are the trajectories' final images: only the stages between them are sampled.
    for step in morph_steps(model, text_a, text_b, stages, run, ends=result.images):
        yield "morph", step


# --- the Run handler --------------------------------------------------------------------------

# The Run event's outputs, in order (app.py builds components in this order; API users get them so).
# New outputs go at the end, so that API callers' indices stay valid.
OUTPUTS = ("image_a", "image_b", "difference", "plot", "status", "result", "details",
           "morph_gif", "trajectory_gif", "morph_download", "trajectory_download", "morph_mp4", "trajectory_mp4")
VIDEO_OUTPUTS = {"morph_mp4": "morph", "trajectory_mp4": "trajectories"}  # output -> animation, as MP4
DOWNLOADS = ("morph_download", "trajectory_download", *VIDEO_OUTPUTS)


def outputs_of(names: tuple[str, ...]):
    """The update builder of an event with these outputs: a value for every output, `gr.skip()` for those not
    named, so unchanged outputs are not re-sent."""

    def updates(**values) -> tuple:
        unknown = set(values) - set(names)
        if unknown:
            raise KeyError(f"not an output: {sorted(unknown)}")
        return tuple(values[name] if name in values else gr.skip() for name in names)

    return updates


updates = outputs_of(OUTPUTS)


PLOT_CURVES = ("KL(A‖B) along A", "KL(B‖A) along B")
PLOT_AXIS = " "  # a transparent series at 0 on every step: it holds the x axis at all the run's steps
PLOT_COLORS = {**dict(zip(PLOT_CURVES, (animation.COLOR_A, animation.COLOR_B))), PLOT_AXIS: "transparent"}


def plot_steps(max_steps: int) -> list[str]:
    """The x axis's categories in order: "1", "2", ... (the plot's `sort`)."""
    return [str(i) for i in range(1, max_steps + 1)]


def plot_frame(per_step_ab: list[float], per_step_ba: list[float], steps: int | None = None):
    """The live plot's data: the divergence each step adds along each trajectory.

    The running total is in the status line, not on this axis: drawn here it would dwarf the
    per-step terms, and where the prompts part is the shape of the per-step curves.
    The step is a category ("1", "2", ...), so the axis ticks whole steps only (a numeric axis ticks
    1.5, 2.5, ... on a wide plot); the transparent `PLOT_AXIS` series puts every step 1..`steps` on the
    axis from the first frame, so it does not stretch as the run goes.
    """
    import pandas as pd

    done = len(per_step_ab)
    steps = max(steps or done, done)
    return pd.DataFrame({
        "step": np.concatenate([np.tile(np.arange(1, done + 1), 2), np.arange(1, steps + 1)]).astype(str),
        "nats": np.concatenate([per_step_ab, per_step_ba, np.zeros(steps)]),
        "curve": np.concatenate([np.repeat(PLOT_CURVES, done), np.repeat([PLOT_AXIS], steps)]),
    })


def progress_bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / max(total, 1))
    return "▰" * filled + "▱" * (width - filled)


def format_result(result, cosine: float, encoder: str) -> str:
    """What the images say beside what the words say: the images' cosine (of the two prompts' pulls away from
    no text, conjure.jeffreys) beside the text embeddings' cosine."""
    number = animation.format_number
    se = f" ± {number(result.stderr)}" if result.stderr is not None else ""
    k = result.settings["samples"]
    spread = f"± is the standard error over k = {k} noise draws" if k > 1 else "k = 1 noise draw: no standard error"
    uncalibrated = "no calibration for these settings (`python -m conjure calibrate`)"
    if result.cosine is not None:
        images = f"**cosine {result.cosine:.3f}**"
        scale = (f"closer than **{result.cosine_percentile:.1f}%** of random pairs of everyday phrases"
                 if result.cosine_percentile is not None else uncalibrated)
    else:  # a prompt that does not move the model away from no text at all: no direction, no cosine
        images, scale = "**cosine undefined**", "a prompt draws what no text draws"
    by_divergence = f" (closer than {result.percentile:.1f}% by it)" if result.percentile is not None else ""
    pull_a, pull_b = result.pulls
    return "\n".join([
        "| what the images say | what the words say |",
        "|---|---|",
        f"| {images} | **cosine similarity {cosine:.3f}** |",
        f"| {scale} | {encoder} embeddings of the two prompts |",
        "| larger = more alike | larger = more alike |",
        f"| Jeffreys divergence {number(result.jeffreys)}{se} nats{by_divergence}; each prompt's pull from no "
        f"text: A {number(pull_a)}, B {number(pull_b)} | |",
        f"| KL(A‖B) along A {number(result.kl_ab)} · KL(B‖A) along B {number(result.kl_ba)} · {spread} | |",
        "",
        f"{result.model} ({result.dtype}) · {result.settings['steps']} steps · "
        f"guidance {result.settings['guidance']:g} · seed {result.settings['seed']} · {result.seconds:.1f} s",
    ])


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "prompt"


def refused(err: ConjureError) -> gr.Error:
    """The user's message as a gr.Error, and one line (no traceback) in the server log."""
    message = str(err).encode("utf-8", "backslashreplace").decode("utf-8")  # no lone surrogates
    log.info("refused: %s", " ".join(message.split()))
    # Gradio sanitises the toast's HTML; escaping <, > and & keeps user text literal, quotes stay quotes.
    return gr.Error(html.escape(message, quote=False), print_exception=False)


def reports_errors(handler):
    """Decorate a Run handler (a generator): bad input, an unknown model, out of memory or NaN become the user's
    message; anything else is logged in full and reported briefly, and the server keeps serving."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs) -> Iterator[tuple]:
        import torch

        try:
            yield from handler(*args, **kwargs)
        except ConjureError as err:
            raise refused(err) from None
        except torch.OutOfMemoryError:  # loading a model, outside the device function
            free_accelerator_memory()
            raise gr.Error("out of memory loading the model; try again when fewer models are in use",
                           print_exception=False) from None
        except Exception as err:
            log.exception("%s failed", handler.__name__)
            raise gr.Error(html.escape(f"the run failed: {type(err).__name__}: {err}", quote=False),
                           print_exception=False) from None

    return wrapper


def done(result) -> str:
    cosine = "" if result.cosine is None else f", cosine {result.cosine:.2f}"
    closer = (f" (closer than {result.cosine_percentile:.0f}% of random pairs)"
              if result.cosine_percentile is not None else "")
    return f"**Done: Jeffreys divergence {animation.format_number(result.jeffreys)}{cosine}**{closer}"


def loading(model_name: str) -> str:
    return "Starting…" if model_name in MODELS else f"Loading **{model_name}**…"


@reports_errors
def run_conjure(text_a: str, text_b: str, model: str | None = None, steps: int = DEFAULTS["steps"],
                samples: int = DEFAULTS["samples"], guidance: float = DEFAULTS["guidance"],
                seed: int = DEFAULTS["seed"], size: int = DEFAULTS["size"],
                stages: int = DEFAULTS["stages"]) -> Iterator[tuple]:
    """The Run button and the `/conjure` API: stream both trajectories, the plot and the score; end with the files.

    Inputs: the two prompts, then the model (a name from the allow-list; None: the default), sampler steps,
    Monte-Carlo samples k, guidance scale, seed, image size (0 = the model's default) and morph stages.
    Outputs, in order: `OUTPUTS`.
    """
    limits = app_limits()
    request = check_request(text_a, text_b, model or default_model(), steps, samples, guidance, seed, size, stages,
                            limits)
    text_a, text_b, model_name, stages = request["text_a"], request["text_b"], request["model"], request["stages"]
    steps = request["settings"].steps
    yield updates(status=loading(model_name), plot=None, result="", details=None, morph_gif=None,
                  trajectory_gif=None, **{name: gr.DownloadButton(value=None, visible=False) for name in DOWNLOADS})
    model = loaded(model_name, request["settings"], limits)
    run = check_morph(model, text_a, text_b, stages, request["settings"], limits, trajectories=True,
                      lower="choose a smaller image size, fewer samples (k) or fewer morph stages")
    images_a, images_b, differences, ab, ba = [], [], [], [], []
    result = morph = summary = None
    started = time.perf_counter()
    for kind, *payload in conjure_on_device(model_name, text_a, text_b, run, stages):
        if kind == "step":
            event = payload[0]
            if not math.isfinite(event.jeffreys):
                raise ConjureError(f"the divergence became {event.jeffreys} at step {event.step}: the model produced "
                                   "NaN or inf (half-precision overflow?); try another seed or guidance")
            result = event.result
            ab.append(event.kl_ab)
            ba.append(event.kl_ba)
            images_a.append(event.image_a)
            images_b.append(event.image_b)
            differences.append(event.difference)
            # No y_lim: the axis scales to the data, which only grows. (A y_lim sent when it grew was not always
            # applied by the page, and the curves ran off the top.)
            yield updates(
                image_a=event.image_a, image_b=event.image_b,
                difference=animation.difference_map(event.difference, event.image_a), plot=plot_frame(ab, ba, steps),
                status=f"**Step {event.step}/{steps}** {progress_bar(event.step, steps)} t = {event.timestep} · "
                       f"Jeffreys so far **{animation.format_number(event.jeffreys)}** · "
                       f"{event.step / (time.perf_counter() - started):.2f} steps/s",
            )
        elif kind == "baseline":
            cosine, encoder = payload
            for which, cut in zip("AB", result.truncated):
                if cut:
                    gr.Warning(f"prompt {which} was longer than the text encoder accepts and was truncated")
            summary = {"result": format_result(result, cosine, encoder),
                       "details": {**result.to_dict(), "text_similarity": cosine, "text_encoder": encoder}}
            yield updates(**summary,
                          status=f"{done(result)} · morphing {text_a!r} → {text_b!r} in {stages} stages…")
        elif kind == "morph":
            morph = payload[0]
            yield updates(status=f"{done(result)} · morphing: step {morph.step}/{morph.steps} "
                                 f"{progress_bar(morph.step, morph.steps)}")

    yield updates(status=f"{done(result)} · writing the GIFs and MP4s…")
    side = images_a[-1].shape[0]  # pixel art (the embedded model's 32 px) gets videos enlarged twofold
    animations = {  # name -> frames, durations (ms), video scale
        "morph": (animation.morph_frames(morph.images, morph.weights, text_a, text_b),
                  animation.morph_durations(stages), animation.video_scale(side, animation.MORPH_PANEL)),
        "trajectories": (animation.trajectory_frames(images_a, images_b, differences, result.per_step, text_a,
                                                     text_b), animation.trajectory_durations(steps),
                         animation.video_scale(side, animation.TRAJECTORY_PANEL)),
    }
    with tempfile.TemporaryDirectory(prefix="conjure-app-") as tmp:  # removed once Gradio has copied the files
        name = Path(tmp) / f"{slug(text_a)}-vs-{slug(text_b)}"
        gifs = {kind: str(animation.write_gif(frames, f"{name}-{kind}.gif", durations))
                for kind, (frames, durations, _) in animations.items()}
        videos, missing = write_videos(animations, name)
        status = f"{done(result)} in {time.perf_counter() - started:.1f} s"
        if missing:  # the GIFs are served anyway; say why a video is missing
            what = "not every MP4 could be written" if videos else "GIFs only, no MP4"
            gr.Warning(html.escape(f"{what}: {missing}"))
            status += f" · {what}: {html.escape(missing)}"
        # The last update carries every output, so an API caller's final result is complete on its own.
        yield updates(
            image_a=images_a[-1], image_b=images_b[-1],
            difference=animation.difference_map(differences[-1], images_a[-1]),
            plot=plot_frame(ab, ba, steps), **summary,
            status=status, morph_gif=gifs["morph"], trajectory_gif=gifs["trajectories"],
            morph_download=gr.DownloadButton(value=gifs["morph"], visible=True),
            trajectory_download=gr.DownloadButton(value=gifs["trajectories"], visible=True),
            **{output: gr.DownloadButton(value=videos.get(output), visible=output in videos)
               for output in VIDEO_OUTPUTS},
        )


def write_videos(animations: dict, name: Path) -> tuple[dict[str, str], str | None]:
    """The MP4 files of the animations (output name -> path), and why any are missing (or None).

    A missing or broken ffmpeg costs the videos, never the run: the GIFs are served regardless. WebM is left to
    the library and the CLI: smaller, but slower to encode (docs/performance.md#animations).
    """
    videos = {}
    reason = animation.video_unavailable()
    if reason:
        log.warning("no videos: %s", reason)
        return videos, reason
    for output, kind in VIDEO_OUTPUTS.items():
        frames, durations, scale = animations[kind]
        try:
            videos[output] = str(animation.write_video(frames, f"{name}-{kind}.mp4", durations, scale=scale))
        except animation.VideoError as err:
            log.warning("no MP4 of the %s: %s", kind, err)
            reason = str(err)
    return videos, reason


def on_model_change(model_name: str):
    """Offer the image sides that model allows."""
    return gr.Dropdown(choices=size_choices(model_name), value=0)


# --- "Compare many": the matrix of many phrases (the `/matrix` API) ----------------------------------

# The matrix event's outputs, in order; new outputs go at the end.
MATRIX_OUTPUTS = ("matrix_status", "matrix_heatmap", "matrix_text_heatmap", "matrix_map", "matrix_neighbours",
                  "matrix_details", "matrix_csv", "matrix_heatmap_png", "matrix_map_png")
MATRIX_DOWNLOADS = ("matrix_csv", "matrix_heatmap_png", "matrix_map_png")
MATRIX_EXAMPLE = "leopard\ncheetah\ntiger\nhouse cat\nlion\nzebra"


matrix_updates = outputs_of(MATRIX_OUTPUTS)


def check_matrix_request(phrases, model_name, steps, samples, guidance, seed, size,
                         limits: Limits | None = None) -> dict:
    """The validated matrix request: distinct phrases (one per line), the repeated ones, the model and settings."""
    limits = limits or app_limits()
    if phrases is None:
        phrases = ""
    if not isinstance(phrases, str):
        raise ConjureError("phrases must be text, one phrase per line")
    most = 2 * limits.max_phrases * (limits.max_prompt_chars + 1)  # generous room for blank lines and spaces
    if len(phrases) > most:
        raise ConjureError(f"the phrases are {len(phrases)} characters long; the limit is {limits.max_phrases} "
                           f"phrases of at most {limits.max_prompt_chars} characters each")
    lines = phrases.splitlines()
    for n, line in enumerate(lines, 1):
        if len(line.strip()) > limits.max_prompt_chars:
            raise ConjureError(f"line {n} is {len(line.strip())} characters long; the limit is {limits.max_prompt_chars}")
    kept, repeated = check_phrases(lines, limits)
    model_name, settings = check_settings_request(model_name, steps, samples, guidance, seed, size, limits,
                                                  cosine=True)
    return {"phrases": kept, "duplicates": repeated, "model": model_name, "settings": settings}


@on_gpu(duration=300)
@reports_out_of_memory("fewer phrases, a smaller image size or fewer samples (k)")
def matrix_on_device(model_name: str, phrases: list[str], duplicates: list[str],
                     run: validation.Checked) -> Iterator[tuple]:
    """All model work of a matrix, as plain data, on input `run_matrix` checked: ("step", MatrixProgress) per
    sampler step of each batch; the last one carries the MatrixResult."""
    model = MODELS.loaded(model_name) or MODELS.get(model_name)
    for event in scored_matrix(model, phrases, duplicates, run):
        yield "step", event


def cell(text: str) -> str:
    """A user's phrase, safe inside a Markdown table."""
    return html.escape(text).replace("|", "\\|")


def format_neighbours(result, encoder: str) -> str:
    """Each phrase's nearest neighbour by the images (the cosine of the pulls where the matrix has it, else the
    divergence) and by the words, side by side."""
    number = animation.format_number
    by_text = {p: (q, v) for p, q, v in result.nearest("text")}
    by = result.images_measure
    percentiles = result.cosine_percentile if by == "cosine" else result.percentile
    measure = "cosine" if by == "cosine" else "Jeffreys, nats"
    rows = [f"| phrase | nearest by the images ({measure}) | nearest by the words (cosine) |", "|---|---|---|"]
    agree = 0
    for p, q, v in result.nearest(by):
        tq, tv = by_text[p]
        agree += q == tq
        closer = ""
        if percentiles is not None:
            closer = f", closer than {percentiles[result.phrases.index(p), result.phrases.index(q)]:.0f}%"
        value = f"{v:.2f}" if by == "cosine" else number(v)
        rows.append(f"| {cell(p)} | **{cell(q)}** ({value}{closer}) | {cell(tq)} ({tv:.2f}) |")
    s = result.settings
    lines = rows + ["", f"The images and the words agree on {agree} of {len(result.phrases)} nearest neighbours "
                        f"({encoder} for the words)."]
    if result.duplicates:
        lines.append(f"Repeated, scored once: {', '.join(cell(d) for d in result.duplicates)}.")
    if result.percentile is None:
        lines.append("No calibration for these settings, so no percentiles (`python -m conjure calibrate`).")
    lines.append(f"{result.model} ({result.dtype}) · {s['steps']} steps · k = {s['samples']} · "
                 f"guidance {s['guidance']:g} · seed {s['seed']} · {result.pairs} pairs in {result.seconds:.1f} s")
    return "\n".join(lines)


@reports_errors
def run_matrix(phrases: str, model: str | None = None, steps: int = DEFAULTS["steps"],
               samples: int = DEFAULTS["samples"], guidance: float = DEFAULTS["guidance"],
               seed: int = DEFAULTS["seed"], size: int = DEFAULTS["size"]) -> Iterator[tuple]:
    """The "Compare many" Run button and the `/matrix` API: score every pair of the phrases, then show the matrix.

    Inputs: the phrases (one per line, at most CONJURE_MAX_PHRASES different ones; repeats and blank
    lines are dropped), then the model, sampler steps, samples k, guidance, seed and image size, as for
    `/conjure`. Streams a progress line while pairs are scored; the last update carries every output
    (`MATRIX_OUTPUTS`): the heatmaps, the map, the neighbours, the JSON and the three files.
    """
    from conjure.figures import matrix_figures

    limits = app_limits()
    request = check_matrix_request(phrases, model or default_model(), steps, samples, guidance, seed, size, limits)
    phrases, model_name, n = request["phrases"], request["model"], len(request["phrases"])
    total = n * (n - 1) // 2
    repeated = ""
    if request["duplicates"]:
        repeated = f" · repeated, scored once: {', '.join(html.escape(d) for d in request['duplicates'])}"
        gr.Info(f"Repeated phrases are scored once: {', '.join(request['duplicates'])}")
    hidden = {name: gr.DownloadButton(value=None, visible=False) for name in MATRIX_DOWNLOADS}
    yield matrix_updates(matrix_status=loading(model_name) + repeated, matrix_heatmap=None, matrix_text_heatmap=None,
                         matrix_map=None, matrix_neighbours="", matrix_details=None, **hidden)
    model = loaded(model_name, request["settings"], limits)
    phrases, run = check_matrix(model, phrases, request["settings"], limits=limits,
                                lower="choose fewer phrases, a smaller image size or fewer samples (k)")
    batch_size = run.batch_size
    result, started = None, time.perf_counter()
    for _, event in matrix_on_device(model_name, phrases, request["duplicates"], run):
        if event.result is not None:
            result = event.result
            break
        in_batch = min(batch_size, event.pairs - event.pairs_done)
        done_pairs = event.pairs_done + in_batch * event.step / event.steps
        yield matrix_updates(matrix_status=(
            f"**Scoring pairs {event.pairs_done + 1}–{event.pairs_done + in_batch} of {total}** "
            f"{progress_bar(done_pairs, total)} batch {event.batch}/{event.batches}, step {event.step}/{event.steps} · "
            f"{done_pairs / (time.perf_counter() - started):.2f} pairs/s{repeated}"))
    yield matrix_updates(matrix_status=f"Scored {total} pairs · drawing the heatmaps and the map…{repeated}")
    encoder = getattr(model, "text_encoder_name", "the model's text encoder")
    pictures = matrix_figures(result, encoder)
    with tempfile.TemporaryDirectory(prefix="conjure-matrix-") as tmp:  # removed once Gradio has copied the files
        base = Path(tmp) / f"conjure-{n}-phrases"
        files = {"matrix_csv": base.with_name(base.name + "-jeffreys.csv"),
                 "matrix_heatmap_png": base.with_name(base.name + "-heatmap.png"),
                 "matrix_map_png": base.with_name(base.name + "-map.png")}
        files["matrix_csv"].write_text(result.to_csv(), encoding="utf-8")
        pictures["heatmap"].save(files["matrix_heatmap_png"])
        pictures["map"].save(files["matrix_map_png"])
        nearest = ", ".join(f"{html.escape(p)} → {html.escape(q)}" for p, q, _ in result.nearest(result.images_measure))
        yield matrix_updates(
            matrix_status=f"**Done: {n} phrases, {total} pairs in {time.perf_counter() - started:.1f} s**{repeated}"
                          f" · nearest: {nearest}",
            matrix_heatmap=pictures["heatmap"], matrix_text_heatmap=pictures["text_heatmap"],
            matrix_map=pictures["map"], matrix_neighbours=format_neighbours(result, encoder),
            matrix_details={**result.to_dict(), "text_encoder": encoder},
            **{name: gr.DownloadButton(value=str(path), visible=True) for name, path in files.items()},
        )


# --- "Why do they differ?": each word's contribution (the `/explain` API) ------------------------------------

# The Why panel's outputs, in order; new outputs go at the end.
EXPLAIN_OUTPUTS = ("why_status", "why_a", "why_b", "why_table", "why_maps", "why_without", "why_details")
WHY_TILE = 128  # side of each word's map and image in the panel, in pixels


explain_updates = outputs_of(EXPLAIN_OUTPUTS)


@on_gpu(duration=120)
@reports_out_of_memory("a smaller image size, fewer samples (k) or fewer words")
def explain_on_device(model_name: str, text_a: str, text_b: str, run: validation.Checked,
                      leave_out: str) -> Iterator[Explanation]:
    """All model work of an explanation, on input `run_explain` checked: yields the Explanation (plain data:
    numbers, words, arrays), once."""
    model = MODELS.loaded(model_name) or MODELS.get(model_name)  # the handler has loaded it
    yield explained(model, text_a, text_b, run, leave_out=leave_out)


def highlighted(words, peaks: tuple[float, float]) -> list[tuple[str, float]]:
    """A prompt for gr.HighlightedText: each word with its contribution scaled to [-1, 1] (red > 0, purple < 0).

    `peaks` = (largest positive, largest negative magnitude) of both prompts: each sign has its own scale, since
    shared content words ("horse" in "a black horse" / "a white horse") pull the prompts together far more than
    the differing word pushes them apart, and one scale would leave the word asked about nearly white."""
    def scaled(c):
        peak = peaks[0] if c > 0 else peaks[1]
        return c / peak if peak > 0 else 0.0

    return [(w.word + (" " if i < len(words) - 1 else ""), scaled(w.contribution)) for i, w in enumerate(words)]


def most_apart(e) -> str:
    """Which word of each prompt pushes the two apart most: 'most in A “tiger”, most in B “snow”'. Where every word
    of a prompt pulls them together (each contribution negative), none is named."""
    return ", ".join(f"most in {which} “{html.escape(top.word)}”" if top else f"no word of {which} pushes them apart"
                     for which, top in (("A", e.top_pushing("a")), ("B", e.top_pushing("b"))))


def format_why(e) -> str:
    """The contributions as a table: each prompt's words in order, the largest in bold where it is positive."""
    number = animation.format_number
    rows = ["| prompt | word | contribution (nats) | the prompt without it |", "|---|---|---:|---|"]
    for which, words in (("A", e.words_a), ("B", e.words_b)):
        top = e.top_pushing(which)
        for w in words:
            word = f"**{cell(w.word)}**" if w is top else cell(w.word)
            se = f" ± {number(w.stderr)}" if w.stderr is not None else ""
            without = cell(w.without) if w.without else "*(the empty prompt)*"
            rows.append(f"| {which} | {word} | {'+' if w.contribution > 0 else ''}{number(w.contribution)}{se} "
                        f"| {without} |")
    s = e.settings
    return "\n".join(rows + [
        "", f"A word's contribution is how much the divergence falls when the word is left out of its prompt "
            f"({LEAVE_OUT[e.leave_out]}): positive (red) pushes the prompts apart, negative (purple) pulls them "
            "together.",
        f"{e.model} ({e.dtype}) · {s['steps']} steps · k = {s['samples']} · guidance {s['guidance']:g} · "
        f"seed {s['seed']} · {e.seconds:.1f} s"])


def why_galleries(e) -> tuple[list, list]:
    """(each word's map, captioned), (the image drawn without each word, captioned): A's words, then B's.

    Each map has its own colour scale (where this word acts); the caption gives its size. A tile shows about a
    dozen characters of its caption: the word first, then its contribution (whole nats from 100 up; the table
    under the galleries has the exact figures and each prompt without the word)."""
    words = [(w, e.images[0] if e.images else None) for w in e.words_a] + \
        [(w, e.images[1] if e.images else None) for w in e.words_b]
    maps, without = [], []
    for w, under in words:
        c = w.contribution
        size = f"{c:+.0f}" if 100 <= abs(c) < 1e5 else ("+" if c > 0 else "") + animation.format_number(c)
        if w.map is not None:
            maps.append((animation.resize(animation.contribution_map(w.map, under), WHY_TILE), f"{w.word} {size}"))
        if w.image is not None:
            without.append((animation.resize(w.image, WHY_TILE), f"− {w.word}"))
    return maps, without


@reports_errors
def run_explain(text_a: str, text_b: str, model: str | None = None, steps: int = DEFAULTS["steps"],
                samples: int = DEFAULTS["samples"], guidance: float = DEFAULTS["guidance"],
                seed: int = DEFAULTS["seed"], size: int = DEFAULTS["size"]) -> Iterator[tuple]:
    """The Why panel's button and the `/explain` API: each word's contribution to the divergence, and its map.

    Inputs as for `/conjure` (without the morph stages). Outputs, in order: `EXPLAIN_OUTPUTS`: the status, both
    prompts highlighted by contribution, the table, the per-word maps, the images without each word, the JSON.
    """
    limits = app_limits()
    text_a = check_text_request(text_a, "prompt A", limits)
    text_b = check_text_request(text_b, "prompt B", limits)
    words = len(check_words(text_a, "A", limits)) + len(check_words(text_b, "B", limits))  # before the model
    model_name, settings = check_settings_request(model or default_model(), steps, samples, guidance, seed, size,
                                                  limits)
    yield explain_updates(why_status=f"Explaining: leaving out each of the {words} words in turn…", why_a=None,
                          why_b=None, why_table="", why_maps=None, why_without=None, why_details=None)
    model = loaded(model_name, settings, limits)
    leave_out, run = check_explain(model, text_a, text_b, settings, limits=limits,
                                   lower="choose a smaller image size or fewer samples (k), or use fewer words")
    [e] = explain_on_device(model_name, text_a, text_b, run, leave_out)
    contributions = [w.contribution for w in e.words_a + e.words_b]
    peaks = (max([c for c in contributions if c > 0], default=0.0),
             max([-c for c in contributions if c < 0], default=0.0))
    maps, without = why_galleries(e)
    yield explain_updates(
        why_status=f"**Why they differ (Jeffreys divergence {animation.format_number(e.jeffreys)}):** "
                   f"{most_apart(e)} · {e.seconds:.1f} s",
        why_a=highlighted(e.words_a, peaks), why_b=highlighted(e.words_b, peaks), why_table=format_why(e),
        why_maps=maps, why_without=without, why_details=e.to_dict())
