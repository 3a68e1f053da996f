"""The one layer that checks what a user sends, shared by the Python API, the CLI and the app.

Each entry point checks its input once, before any model work, and hands the functions that do the work a
`Checked` run, which they trust. Every check raises `conjure.ConjureError` with a message that says what was wrong
and what to do:

    conjure.settings.Settings        types and ranges of the estimator settings, checked when one is made
    check_run(model, settings, ...)  -> Checked: steps against the model's schedule, sizes it can sample, the
                                     limits (`conjure.settings.Limits`), the batch size and the memory estimate
    check_text(text, name)           a string, valid Unicode, not empty, not only control or invisible characters
    check_readable(model, named)     the model's text encoder reads something of each prompt (after emoji -> words)
    check_pairs(pairs)               a list of (text_a, text_b) pairs of valid prompts
    check_count(n, limit, ...)       at most so many phrases, candidates or stages
    check_batch_size(n), check_device(device), check_model_argument(model)
    check_output_path(path), check_input_file(path)   a file opened for writing, or a file (not a folder) to read
    estimate_memory(model, settings, batch_size)  what a run of the estimator needs, against
    check_memory(...)                             `memory_limit(device)`: $CONJURE_MAX_MEMORY_GB, else a
                                                  fraction of the free GPU memory or of the available RAM
    reports_out_of_memory           out of memory during a run becomes a ConjureError saying what to lower
"""

from __future__ import annotations

import functools
import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from conjure.errors import ConjureError
from conjure.settings import LIMITS, SEED_MAX, Limits, Settings, describe, is_number, is_whole  # noqa: F401

RAM_FRACTION = 0.8  # of the available RAM, when CONJURE_MAX_MEMORY_GB is not set
GPU_FRACTION = 0.9  # of the free GPU memory
LOWER = "lower samples (k), the batch size or the image size (or raise CONJURE_MAX_MEMORY_GB)"


# --- a run, checked once ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """Settings checked against the model they run on, at an entry point; the estimator, the matrix and the morph
    take one and check nothing again. Plain data, so it crosses a process boundary (the app on ZeroGPU)."""

    settings: Settings
    size: int  # the image side in pixels: settings.size or the model's default
    batch_size: int  # pairs per batched model call


def make_settings(settings) -> Settings:
    """A `Settings` as given, or made from a dict of keyword arguments (unknown names refused)."""
    return settings if isinstance(settings, Settings) else Settings.from_dict(settings)


def check_count(count: int, limit: int | None, what: str, hint: str = "") -> None:
    """At most `limit` of something (phrases, candidates, stages) in one call: `what` names them ("5 phrases")."""
    if limit is not None and count > limit:
        raise ConjureError(f"{count} {what}; the limit is {limit}{hint}")


def check_for_model(model, s: Settings, limits: Limits = LIMITS) -> int:
    """The settings against the model and the limits; the image side to use."""
    if s.steps > len(model.alphas_cumprod):
        raise ConjureError(f"steps must be at most the model's {len(model.alphas_cumprod)} training timesteps, "
                           f"got {s.steps}")
    for name, value, limit in (("steps", s.steps, limits.max_steps), ("samples (k)", s.samples, limits.max_samples),
                               ("image size", s.size, limits.max_size)):
        if limit is not None and value is not None and value > limit:
            raise ConjureError(f"{name} must be at most {limit}, got {value}")
    size = s.size or model.default_size
    try:
        model.latent_shape(size)
    except ValueError as err:
        raise ConjureError(str(err)) from None
    return size


def check_run(model, settings, *, pairs: int = 1, batch_size: int | None = None, decoded_images: int = 0,
              limits: Limits = LIMITS, memory: bool = True, lower: str = LOWER, option: str = "batch_size") -> Checked:
    """Everything about a run of `pairs` pairs that depends on the model, checked once, before any model work:
    the settings (a `Settings` or a dict of them) against the model and the limits, the batch size (chosen when
    not given) and, unless `memory=False` (the morph estimates its own), the memory of one batch."""
    s = make_settings(settings)
    size = check_for_model(model, s, limits)
    batch_size = check_batch_size(batch_size, option) or auto_batch_size(model, s, max(pairs, 1), decoded_images)
    if memory and pairs:
        check_memory(model, s, min(batch_size, pairs), decoded_images=decoded_images, lower=lower)
    return Checked(s, size, batch_size)


# --- prompts and pairs ------------------------------------------------------------------------------


def _invisible(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp")


def printable(text: str, limit: int = 60) -> str:
    """repr of a text, cut, safe to print even with lone surrogates in it."""
    return describe(text.encode("utf-8", "backslashreplace").decode("utf-8"), limit)


def check_text(text, name: str, model=None) -> str:
    """A text a user gave (`name`: "prompt A", "phrase 3", "the query"): a string of valid Unicode with something
    visible in it, and with a model, something its text encoder reads (`check_readable`). Returned unchanged."""
    if not isinstance(text, str):
        raise ConjureError(f"{name} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ConjureError(
            f"{name} is not valid text: it holds a lone surrogate U+{ord(text[err.start]):04X} at position "
            f"{err.start} (undecodable bytes, or half of a UTF-16 pair); send proper Unicode text"
        ) from None
    if not text.strip():
        raise ConjureError(f"{name} is empty")
    if all(_invisible(ch) for ch in text):
        codes = ", ".join(sorted({f"U+{ord(ch):04X}" for ch in text if not ch.isspace()}))
        raise ConjureError(f"{name} is empty: it holds only control or invisible characters ({codes})")
    if model is not None:
        check_readable(model, [(name, text)])
    return text


def check_prompt(text, which: str = "A", model=None) -> str:
    """Prompt A or B (or "A of pair 3"): see `check_text`."""
    return check_text(text, f"prompt {which}", model)


def check_readable(model, named: list[tuple[str, str]]) -> None:
    """Refuse a prompt of which the model's text encoder reads nothing but unknown or special tokens.

    `named` is [(name, text), ...], named as in `check_text`. Emoji the tokenizer cannot read are read as their
    names (conjure.text), so "🦁" passes; a prompt of characters the tokenizer does not know ("𓀀") encodes like the empty prompt.
    """
    from conjure import text as texts

    tokenizer = texts.tokenizer_of(model)
    if tokenizer is None:
        return
    seen: set[str] = set()
    for name, text in named:
        if text in seen:
            continue
        seen.add(text)
        if not texts.readable(tokenizer, texts.emoji_as_words(tokenizer, text)):
            encoder = getattr(model, "text_encoder_name", "the text encoder")
            raise ConjureError(f"{name} is empty to the model: {encoder} reads nothing of {printable(text)} "
                               "(only characters its tokenizer does not know); use words")


def check_pairs(pairs, model=None) -> list[tuple[str, str]]:
    """A list of (text_a, text_b) pairs of valid prompts (with a model: that its text encoder reads something of);
    anything else is refused, never guessed at."""
    if isinstance(pairs, (str, bytes)):
        raise ConjureError("pairs must be a list of (text_a, text_b) pairs, not one string")
    try:
        items = list(pairs)
    except TypeError:
        raise ConjureError(f"pairs must be a list of (text_a, text_b) pairs, got {describe(pairs)}") from None
    out = []
    for n, pair in enumerate(items, 1):
        if isinstance(pair, (str, bytes, dict)) or not hasattr(pair, "__iter__"):
            raise ConjureError(f"pair {n} must be two texts (text_a, text_b), got {describe(pair)}")
        pair = tuple(pair)
        if len(pair) != 2:
            raise ConjureError(f"pair {n} must be two texts (text_a, text_b), got {len(pair)} "
                               f"{'text' if len(pair) == 1 else 'texts'}: {describe(pair).rsplit(' (', 1)[0]}")
        where = "" if len(items) == 1 else f" of pair {n}"
        out.append((check_prompt(pair[0], "A" + where), check_prompt(pair[1], "B" + where)))
    if model is not None:
        check_readable(model, [(f"prompt {ab}{'' if len(out) == 1 else f' of pair {n}'}", text)
                               for n, pair in enumerate(out, 1) for ab, text in zip("AB", pair)])
    return out


def check_batch_size(batch_size, name: str = "batch_size") -> int | None:
    """A positive whole number of pairs per model call, or None (choose one: `auto_batch_size`)."""
    if batch_size is None:
        return None
    if not is_whole(batch_size) or batch_size < 1:
        raise ConjureError(f"{name} must be a positive integer (pairs per model call), got {describe(batch_size)}")
    return int(batch_size)


# --- devices, models, files ------------------------------------------------------------------------------


def check_device(device):
    """None or "auto" (the best available), or a device that exists here; returned as given."""
    if device is None or device == "auto":
        return device
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise ConjureError(f"unknown device {printable(device)}; use auto, cpu, cuda, cuda:N or mps") from None
    else:
        raise ConjureError(f"device must be a name such as 'cpu', 'cuda' or 'cuda:1', got {describe(device)}")
    if dev.type == "cpu":
        return device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU was found"
            raise ConjureError(f"device {str(dev)!r} is not available: {why}; use cpu (or leave the device out)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConjureError(f"device {str(dev)!r} is not available: there are {torch.cuda.device_count()} "
                               "CUDA devices, numbered from 0")
        return device
    backend = getattr(torch.backends, dev.type, None) if dev.type == "mps" else getattr(torch, dev.type, None)
    if backend is None or not hasattr(backend, "is_available"):
        raise ConjureError(f"device {str(dev)!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    if not backend.is_available():
        raise ConjureError(f"device {str(dev)!r} is not available on this machine; use cpu (or leave the device out)")
    return device


def check_model_argument(model):
    """What load_model accepts: None, a name (alias, folder or hub id), a path, a pipeline or a model object."""
    if model is None or hasattr(model, "predict_noise"):
        return model
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if isinstance(model, str):
        if not model.strip():
            raise ConjureError("the model name is empty; give an alias, a folder or a hub id, or None for the default")
        try:
            model.encode("utf-8")
        except UnicodeEncodeError:
            raise ConjureError(f"the model name {printable(model)} is not valid text") from None
        return model
    if (hasattr(model, "unet") or hasattr(model, "transformer")) and hasattr(model, "to"):  # a diffusers pipeline
        return model
    raise ConjureError(f"model must be a name (an alias such as 'emoji' or 'sd-v1-4', a folder or a hub id), a "
                       f"diffusers pipeline or a conjure model, got {describe(model)}")


def check_output_path(path, option: str = "-o", suffixes: tuple[str, ...] = ()) -> Path:
    """A file that can be written, found by opening it for appending before any model work (a file that was not
    there is removed again); `suffixes`: the endings its name may have (".png", ...)."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConjureError(f"{option} must be a file name, got {describe(path)}")
    file = Path(path)
    if suffixes and file.suffix.lower() not in suffixes:
        raise ConjureError(f"{option} needs a file name ending in {' or '.join(suffixes)}, got {path}")
    if file.is_dir():
        raise ConjureError(f"cannot write {path}: it is a folder; give a file name")
    if not file.parent.is_dir():
        raise ConjureError(f"cannot write {path}: no folder {file.parent}")
    existed = file.exists()
    try:
        with open(file, "ab"):
            pass
    except OSError as err:
        raise ConjureError(f"cannot write {path}: {err.strerror or err}") from None
    if not existed:
        file.unlink(missing_ok=True)
    return file


def check_input_file(path, what: str) -> Path:
    """A file to read (`what`: "pairs file", "phrases file"): there, and a file, not a folder."""
    file = Path(path)
    if file.is_dir():
        raise ConjureError(f"{what} {path} is a folder; give a file")
    if not file.is_file():
        raise ConjureError(f"{what} not found: {path}")
    return file


# --- memory ----------------------------------------------------------------------------------------

# Elements of activation per element of a UNet level's feature map (channels x pixels), measured and rounded up
# (docs/performance.md#the-memory-estimate): the skip connections kept for the up path (layers + 1 per level), plus
# the peak of one block, a resnet or, where the level attends, a transformer block (GEGLU's 8x channels, q, k, v).
RESNET_PEAK, ATTENTION_PEAK = 8, 44
STATE_COPIES = 40  # float32 copies of each pair's 2k states the estimator holds in one step (x, eps, gaps, ...)


@dataclass
class MemoryEstimate:
    total: int  # bytes
    evaluations: int  # model evaluations in one batched call
    per_evaluation: int  # bytes of activations per evaluation
    held: int  # bytes held through the run: noise and states
    decode: int  # bytes to decode the final images
    explain: str  # what drives it, for a message


def human_bytes(n: float) -> str:
    """3 significant figures and a unit: 1.23 GB, 244 TB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 999.5 or unit == "TB":
            return f"{n:.3g} {unit}" if n < 999.5 else f"{n:,.0f} {unit}"
        n /= 1000
    raise AssertionError


def _dtype_bytes(dtype) -> int:
    try:
        return torch.finfo(dtype).bits // 8
    except (TypeError, ValueError):
        return 4


def unet_activations(unet, height: int, width: int) -> int | None:
    """Activation elements of one UNet evaluation at a (height, width) state; None if the UNet is unknown."""
    config = getattr(unet, "config", None)
    try:
        channels = list(config.block_out_channels)
        layers = config.layers_per_block
        layers = max(layers) if isinstance(layers, (list, tuple)) else int(layers)
        kinds = list(config.down_block_types)
    except (AttributeError, TypeError, ValueError):
        return None
    held = peak = 0
    for level, (c, kind) in enumerate(zip(channels, kinds)):
        pixels = math.ceil(height / 2**level) * math.ceil(width / 2**level)
        attends = "Attn" in kind or (level == len(channels) - 1 and "Attn" in str(config.mid_block_type or ""))
        held += (layers + 1) * c * pixels
        peak = max(peak, (ATTENTION_PEAK if attends else RESNET_PEAK) * c * pixels)
    return held + peak


def decode_activations(model, size: int) -> int:
    """Bytes to decode one image of side `size` with the model's VAE (0 for pixel-space models)."""
    vae = getattr(getattr(model, "pipe", None), "vae", None)
    try:
        top = list(vae.config.block_out_channels)[0]
    except (AttributeError, TypeError, IndexError):
        return 0
    bytes_per = 4 if getattr(vae.config, "force_upcast", False) else _dtype_bytes(getattr(vae, "dtype", None))
    return 10 * top * size * size * bytes_per


def evaluations_per_pair(settings) -> int:
    """Model evaluations per pair, sample and step, at most: both states under both prompts, and under the null
    prompt too with classifier-free guidance or the cosine."""
    return 6 if settings.guidance != 1 or settings.cosine else 4


def estimate_memory(model, settings, batch_size: int, decoded_images: int = 0) -> MemoryEstimate:
    """The memory one batch of `batch_size` pairs needs in the estimator (and decoding `decoded_images`).

    Per sampler step one batched call evaluates `evaluations_per_pair` states per pair and sample; its
    activations come on top of the noise (every step's, made up front) and the states and
    gaps the estimator holds. Decoding comes after the steps, so the peak is the larger of the two.
    """
    size = settings.size or model.default_size
    c, h, w = model.latent_shape(size)
    state = c * h * w
    k = settings.samples
    per_pair = evaluations_per_pair(settings)
    evaluations = batch_size * per_pair * k
    activations = unet_activations(getattr(model, "unet", None), h, w)
    if activations is None:  # not a diffusers UNet: a modest multiple of the state
        activations = 16 * state
    per_evaluation = activations * _dtype_bytes(getattr(model, "dtype", None))
    held = 4 * state * ((settings.steps + 1) * k + STATE_COPIES * batch_size * k)
    decode = decoded_images * decode_activations(model, size)
    total = held + max(evaluations * per_evaluation, decode)
    explain = (f"{batch_size} pair{'s' if batch_size != 1 else ''} x k = {k} sample{'s' if k != 1 else ''} x "
               f"{per_pair} model evaluations at {size} px, about {human_bytes(per_evaluation)} each")
    return MemoryEstimate(total, evaluations, per_evaluation, held, decode, explain)


def available_ram() -> int | None:
    """Bytes of RAM available to this process: MemAvailable, capped by a cgroup (container) limit."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(available, 0)


# State elements (C x H x W, summed over a call's rows) per batched model call when no batch size is given: enough
# work per call that batching has paid off (where, measured: docs/performance.md#batch-size). A GPU runs far more
# rows at the cost of one, where the memory limit below decides.
WORK_PER_CALL = {"cpu": 2**17, "mps": 2**20, "cuda": 2**23}


def auto_batch_size(model, settings, pairs: int, decoded_images: int = 0) -> int:
    """Pairs per model call when the user gives none: about WORK_PER_CALL for the device, no more than `pairs`,
    halved until the run fits the memory limit (at 1 pair that does not fit, `check_memory` says what to lower)."""
    c, h, w = model.latent_shape(settings.size or model.default_size)
    per_pair = evaluations_per_pair(settings) * settings.samples * c * h * w
    device = getattr(model, "device", None)
    budget = WORK_PER_CALL.get(torch.device(device if device is not None else "cpu").type, WORK_PER_CALL["cpu"])
    size = max(1, min(pairs, budget // per_pair))
    limit, _ = memory_limit(device)
    while size > 1 and limit is not None and estimate_memory(model, settings, size, decoded_images).total > limit:
        size //= 2
    return size


def memory_limit(device) -> tuple[int | None, str]:
    """(bytes a run may use, where that figure comes from); None where it cannot be known without harm."""
    setting = os.environ.get("CONJURE_MAX_MEMORY_GB", "").strip()
    if setting:
        try:
            gb = float(setting)
        except ValueError:
            gb = float("nan")
        if not gb > 0 or not math.isfinite(gb):
            raise ConjureError(f"CONJURE_MAX_MEMORY_GB must be a positive number of GB, got {setting!r}")
        return int(gb * 1e9), "CONJURE_MAX_MEMORY_GB"
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_initialized():  # never the first CUDA call (ZeroGPU's main process forbids it)
            return None, "unknown"
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached by torch
        return int(GPU_FRACTION * free), f"{GPU_FRACTION:.0%} of the {human_bytes(free)} free on {device}"
    available = available_ram()
    if available is None:
        return None, "unknown"
    return int(RAM_FRACTION * available), f"{RAM_FRACTION:.0%} of the {human_bytes(available)} of RAM available"


def check_memory(model, settings, batch_size: int, decoded_images: int = 0, lower: str = LOWER,
                 explain: str | None = None) -> MemoryEstimate:
    """Refuse a run whose estimated memory is over the limit, saying both figures and what to lower."""
    estimate = estimate_memory(model, settings, batch_size, decoded_images)
    limit, where = memory_limit(getattr(model, "device", None))
    if limit is not None and estimate.total > limit:
        raise ConjureError(f"this run would need about {human_bytes(estimate.total)} of memory "
                           f"({explain or estimate.explain}), more than the {human_bytes(limit)} allowed ({where}); "
                           f"{lower}")
    return estimate


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory"))


class OutOfMemory(ConjureError):
    """A run ran out of memory (the up-front estimate let it through)."""


def out_of_memory(lower: str = "lower samples (k), the batch size or the image size") -> OutOfMemory:
    """The error for an out-of-memory failure; frees what the GPU cache holds."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return OutOfMemory(f"out of memory during the run: {lower} (CONJURE_MAX_MEMORY_GB set below what this "
                       "machine really has refuses such runs up front)")


def reports_out_of_memory(generator_function):
    """Decorate a generator function: running out of memory inside it raises a ConjureError saying what to lower."""

    @functools.wraps(generator_function)
    def wrapper(*args, **kwargs) -> Iterator:
        try:
            yield from generator_function(*args, **kwargs)
        except Exception as err:
            if is_out_of_memory(err):
                raise out_of_memory() from None
            raise

    return wrapper
