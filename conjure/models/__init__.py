"""Loading models: the embedded default, local folders, Hugging Face hub ids, or pipeline objects.

`BUILTIN_MODELS` is the one table of model aliases; the CLI, the app's allow-list and the API read it.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from conjure.errors import ConjureError, ModelLoadError


def assets_folder() -> Path:
    """The embedded model's folder: packaged as `conjure/assets` in a wheel, `assets/` beside a checkout."""
    packaged = resources.files("conjure") / "assets"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "assets"


ASSETS = assets_folder()
EMBEDDED_MODEL = ASSETS / "emoji-32"


@dataclass(frozen=True)
class BuiltinModel:
    source: str  # a Hugging Face hub id, or the embedded model's folder
    label: str  # how the app names it
    sizes: tuple[int, ...]  # image sides the app offers besides the model's default


BUILTIN_MODELS = {
    "emoji": BuiltinModel(str(EMBEDDED_MODEL), "Embedded emoji model (32 px, CPU)", (32, 48, 64)),
    "sd-v1-4": BuiltinModel("CompVis/stable-diffusion-v1-4", "Stable Diffusion v1.4", (256, 384, 512, 640, 768)),
    "sd-v1-5": BuiltinModel("stable-diffusion-v1-5/stable-diffusion-v1-5", "Stable Diffusion v1.5",
                            (256, 384, 512, 640, 768)),
    "sd-2-1": BuiltinModel("stabilityai/stable-diffusion-2-1", "Stable Diffusion 2.1", (512, 768, 1024)),
    "sdxl": BuiltinModel("stabilityai/stable-diffusion-xl-base-1.0", "Stable Diffusion XL base 1.0", (512, 768, 1024)),
    # Rectified-flow models (conjure/models/flow.py; docs/models.md): 1024 px by default, as they were trained.
    "sd3-medium": BuiltinModel("stabilityai/stable-diffusion-3-medium-diffusers", "Stable Diffusion 3 Medium",
                               (512, 768, 1024)),
    "sd3.5-large": BuiltinModel("stabilityai/stable-diffusion-3.5-large", "Stable Diffusion 3.5 Large",
                                (512, 768, 1024)),
    "flux-schnell": BuiltinModel("black-forest-labs/FLUX.1-schnell", "FLUX.1 schnell", (512, 768, 1024)),
    "flux-dev": BuiltinModel("black-forest-labs/FLUX.1-dev", "FLUX.1 dev (guidance-distilled)", (512, 768, 1024)),
}
# Short names accepted anywhere a model is named (CLI, app, API).
MODEL_ALIASES = {alias: model.source for alias, model in BUILTIN_MODELS.items()}


def default_model() -> str:
    """The model used when none is named: $CONJURE_MODEL, else the embedded emoji model."""
    return os.environ.get("CONJURE_MODEL") or "emoji"


def pick_device(device: str | None = None) -> torch.device:
    """The device asked for, if this machine has it (else a ConjureError); by default the best available."""
    from conjure.validation import check_device

    if check_device(device) not in (None, "auto"):
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX). Without them torch emulates bf16,
    which is slower than float32, so bf16 is only ever chosen where they exist."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up defensively
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device, cpu_dtype: str | None = None) -> torch.dtype:
    """The dtype asked for; by default ("auto") fp16 on a GPU, and on a CPU fp32, or bf16 where the model's
    folder names it (`cpu_dtype`, set only for weights measured to score like fp32 in bf16) and the CPU
    computes bf16 natively."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None and not isinstance(dtype, str):
        raise ConjureError(f"dtype must be a name such as 'float32' or a torch.dtype, got {type(dtype).__name__}")
    if dtype in (None, "auto"):
        if device.type in ("cuda", "mps"):
            return torch.float16
        return torch.bfloat16 if cpu_dtype == "bfloat16" and cpu_computes_bfloat16() else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ConjureError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def wrap_pipeline(pipe, name: str):
    """The adapter for a diffusers pipeline object, chosen by its class."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    from conjure.models.flow import FluxModel, StableDiffusion3Model
    from conjure.models.stable_diffusion import StableDiffusionModel, StableDiffusionXLModel

    if isinstance(pipe, FluxPipeline):
        return FluxModel(pipe, name)
    if isinstance(pipe, StableDiffusion3Pipeline):
        return StableDiffusion3Model(pipe, name)
    if isinstance(pipe, StableDiffusionXLPipeline):
        return StableDiffusionXLModel(pipe, name)
    if isinstance(pipe, StableDiffusionPipeline):
        return StableDiffusionModel(pipe, name)
    raise ModelLoadError(
        f"{name}: no adapter for {type(pipe).__name__}; supported are StableDiffusionPipeline (1.x, 2.x), "
        "StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline and conjure pixel models "
        "(see conjure/models/base.py to add one)"
    )


def load_model(model=None, device: str | None = None, dtype: str | torch.dtype | None = None,
               compile: bool = False):
    """Load a model for the estimator.

    `model` may be None (the default model), an alias ("emoji", "sd-v1-4", ...), a local folder
    (a conjure pixel model or a diffusers pipeline), a Hugging Face hub id, a diffusers pipeline
    object, or an object that already implements the model interface (returned as is, compiled if asked).
    Weights load as safetensors only and no remote code is ever run. `compile=True` compiles the UNet
    (`compile_denoiser`): faster per call, after a compilation per batch shape; worth it for long runs.
    """
    if not isinstance(compile, bool):
        raise ConjureError(f"compile must be True or False, got {compile!r}")
    loaded = _load(model, device, dtype)
    return compile_denoiser(loaded) if compile else loaded


def _load(model, device: str | None, dtype: str | torch.dtype | None):
    from conjure.validation import check_model_argument

    model = check_model_argument(model)  # None, a name or path, a pipeline or a model; else a ConjureError
    if model is None:
        model = default_model()
    if hasattr(model, "predict_noise"):
        return model
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    if not isinstance(model, str):  # a pipeline object keeps the dtype it was built in unless one is asked for
        return wrap_pipeline(model.to(dev) if dtype in (None, "auto") else model.to(dev, torch_dtype),
                             type(model).__name__)

    name = MODEL_ALIASES.get(model, model)
    path = Path(name).expanduser()
    if (path / "conjure.json").is_file():
        from conjure.models.pixel import PixelModel, measured_cpu_dtype

        return PixelModel.from_folder(path, device=dev, dtype=pick_dtype(dtype, dev, measured_cpu_dtype(path)))
    if model == "emoji" or path == EMBEDDED_MODEL:
        raise ModelLoadError(f"the embedded model is missing from {EMBEDDED_MODEL}; train it with `python -m training.train`")
    default_half = dtype in (None, "auto") and torch_dtype == torch.float16
    return wrap_pipeline(_from_pretrained(name, torch_dtype, default_half).to(dev), model)


def compiler_missing(device: torch.device) -> str | None:
    """Why torch.compile's inductor backend cannot build kernels for this device here, or None if it can."""
    if device.type == "cuda":
        import importlib.util

        return None if importlib.util.find_spec("triton") else "compiling for CUDA needs triton (pip install triton)"
    if device.type != "cpu":
        return f"conjure compiles for CPU and CUDA only, not {device.type}"
    names = [os.environ["CXX"]] if os.environ.get("CXX") else (["clang++"] if sys.platform == "darwin" else ["g++"])
    if not any(shutil.which(name) for name in names):
        return f"compiling for the CPU needs a C++ compiler ({' or '.join(names)}) on PATH"
    return None


def compile_denoiser(model):
    """Compile the model's UNet in place with torch.compile (inductor, static shapes); the model, wrapped so that
    its batches fall on a few compiled shapes (`conjure.models.compiled.CompiledModel`).

    Each batch shape compiles once per process (seconds to tens of seconds; inductor's on-disk cache,
    $TORCHINDUCTOR_CACHE_DIR, keeps them across processes), so it pays off on long runs; docs/performance.md has
    the measured figures. Compiled scores differ from eager ones in the last digits, as another dtype's do;
    `model.compiled` says so, and results carry it.
    """
    from conjure.models.compiled import CompiledModel

    unet = getattr(model, "unet", None)
    if not isinstance(unet, torch.nn.Module):
        raise ConjureError(f"{getattr(model, 'name', type(model).__name__)}: no `unet` module to compile")
    reason = compiler_missing(torch.device(getattr(model, "device", "cpu")))
    if reason:
        raise ConjureError(f"cannot compile the UNet: {reason}; or run without compiling it")
    # diffusers' version checks are lru_cache'd functions; dynamo traces through them, correctly here, and
    # would say so on stderr at every compile
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`",
                            category=UserWarning)
    unet.compile(dynamic=False)  # in place: the module, its config and its weights' names stay as they were
    return CompiledModel(model)


# Pipelines loaded in bfloat16, not float16, by default on a GPU: diffusers' recipes run Flux and SD3.5 in bfloat16
# (float16's range is too small for T5-XXL's activations), and SD3 shares SD3.5's pipeline class.
BFLOAT16_PIPELINES = ("FluxPipeline", "StableDiffusion3Pipeline")


def default_half_dtype(pipeline_class: str | None) -> torch.dtype:
    """The half precision a pipeline loads in when none is asked for on a GPU: bfloat16 for the flow pipelines
    where the GPU computes it, else float16."""
    if pipeline_class in BFLOAT16_PIPELINES and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _from_pretrained(name: str, torch_dtype: torch.dtype, default_half: bool = False):
    """DiffusionPipeline.from_pretrained with safetensors only and no remote code; errors made readable.

    `default_half`: float16 was chosen by default, not asked for; the pipeline's class may prefer bfloat16."""
    from diffusers import DiffusionPipeline

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    local = Path(name).expanduser().is_dir()
    if not local and (Path(name).expanduser().exists() or name.startswith((".", "/", "~"))):
        raise ModelLoadError(f"{name!r} is not a model folder")
    try:
        config = DiffusionPipeline.load_config(name)
        if default_half:
            torch_dtype = default_half_dtype(config.get("_class_name"))
        kwargs = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in config else {}
        return DiffusionPipeline.from_pretrained(
            name, torch_dtype=torch_dtype, use_safetensors=True, trust_remote_code=False, **kwargs
        )
    except ModelLoadError:
        raise
    except Exception as err:  # hub, file-system and config errors all mean the same thing to a user
        where = "the local folder" if local else (
            "the local cache (HF_HUB_OFFLINE is set, so the hub is not asked)" if offline
            else "the local cache or the Hugging Face hub"
        )
        raise ModelLoadError(
            f"could not load model {name!r} from {where}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
