"""The prepared GPU check: half precision against fp32, and pairs/s by batch size, in one table.

On a CUDA machine (no hub access needed; about a minute on one modern GPU, capped by --max-seconds):

    python bench/gpu_check.py --json results/gpu_check.json

A fresh CUDA machine needs a CUDA build of torch before the requirements (the README's
`pip install torch==2.13.0` picks this project's local CPU wheel); for example:

    python -m venv .venv && . .venv/bin/activate \\
      && pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/<your CUDA, e.g. cu128> \\
      && pip install -r requirements.txt && python bench/gpu_check.py --json results/gpu_check.json

For development on a CPU: `python bench/gpu_check.py --device cpu --quick`.

For each model (the test suite's tiny random-weight SD 1.x, 2.x, SDXL, SD3 and Flux dev/schnell
pipelines, built from configs in tests/tiny_pipelines.py, and the embedded `emoji` model) and each dtype (fp32, then
half: fp16 on a GPU, or bf16 where its torch cannot run fp16 convolutions; bf16 on a CPU, whose
fp16 kernels are slow; --half chooses), it scores a fixed list of phrase pairs with
`conjure.score_pairs` (same seed, so every pair gets the same noise in every run) at each batch
size, warm-up first, best of --repeats, with the device synchronised around every timing.
Accuracy is against fp32 at batch size 1 of the same model: the median and largest relative
difference of the Jeffreys divergences, and Spearman's rank correlation over the pairs (fp32 rows
at larger batches show what batching alone changes). On CUDA the fp32 reference runs in strict
fp32: TF32 convolutions and matmuls are turned off unless --tf32 is given. Batch sizes above the
number of pairs time the list repeated up to the batch size.

Prints one Markdown table; --json PATH saves every row (with the scores) and what was skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub: the tiny pipelines are built, emoji is embedded

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import torch  # noqa: E402

import conjure  # noqa: E402
from conjure.errors import ConjureError  # noqa: E402

# Varied pairs: near-synonyms, related, unrelated, longer phrases and one emoji pair, for a spread of ranks.
PAIRS = [
    ("snow leopard", "bengal tiger"), ("a red apple", "a green pear"), ("a bicycle", "a motorbike"),
    ("a cup of tea", "a cup of coffee"), ("a dog", "a cat"), ("the sun", "the moon"), ("a house", "a castle"),
    ("rain", "snow"), ("a guitar", "a violin"), ("a car", "a bus"), ("a rose", "a tulip"),
    ("a whale", "a dolphin"), ("pizza", "a hamburger"), ("a clock", "a watch"), ("a tree", "a cactus"),
    ("a dog", "a puppy"), ("a sailboat", "a submarine"), ("a candle", "a lightbulb"), ("a mountain", "a hill"),
    ("an old man", "a young woman"), ("a pencil", "an elephant"), ("ice cream", "a volcano"),
    ("a red car", "a blue car"), ("a smiling face", "a crying face"), ("a key", "a lock"),
    ("a loaf of bread", "a croissant"), ("a rocket", "a butterfly"), ("a spider", "an octopus"),
    ("a cat sleeping on a sofa", "a kitten asleep on a couch"), ("a train", "a banana"),
    ("🐆", "🐅"), ("a crown", "a hat"),
]

MODELS = {  # name -> (label, how to build it: "tiny" pipelines from configs, or a load_model name)
    "tiny-sd1": "tiny SD 1.x (random, 32 px)",
    "tiny-sd2": "tiny SD 2.x (random, v-pred, 32 px)",
    "tiny-sdxl": "tiny SDXL (random, 32 px)",
    "tiny-sd3": "tiny SD3 (random, flow, 32 px)",
    "tiny-flux-dev": "tiny Flux-dev (random, flow, guidance input, 32 px)",
    "tiny-flux-schnell": "tiny Flux-schnell (random, flow, 32 px)",
    "emoji": "emoji (embedded, 32 px)",
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def quiet() -> None:
    """Silence the libraries' notes about casting pipelines (the cast is what this check measures)."""
    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers"):
        try:
            __import__(name).utils.logging.set_verbosity_error()
        except Exception:
            pass


def strict_fp32(enabled: bool) -> None:
    """Turn TF32 off (or leave torch's defaults) for CUDA convolutions and matmuls."""
    if not enabled:
        return
    try:
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    except AttributeError:  # older torch
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def half_dtype(choice: str, device: torch.device) -> tuple[str, str]:
    """(the half dtype to run, why it is that one): fp16 on a GPU, bf16 on a CPU, unless asked otherwise."""
    if choice != "auto":
        return choice, f"{choice}, as asked"
    if device.type == "cpu":  # CPU fp16 convolutions and attention run, but up to 50x slower than fp32
        return "bf16", "bf16 (the CPU's half type; fp16 runs on CPUs only through slow kernels, --half fp16 forces it)"
    try:
        conv = torch.nn.Conv2d(4, 8, 3, padding=1).to(device, torch.float16)
        with torch.no_grad():
            conv(torch.randn(1, 4, 8, 8, device=device, dtype=torch.float16))
        return "fp16", "fp16"
    except Exception as err:
        return "bf16", f"bf16 (fp16 convolutions fail on {device.type}: {type(err).__name__})"


def build(name: str, device: torch.device, dtype: torch.dtype):
    """The model on `device` in `dtype`; the tiny pipelines are seeded, so fp32 and half share their weights."""
    if name == "emoji":
        return conjure.load_model("emoji", device=str(device), dtype=dtype)
    import tiny_pipelines

    builders = {
        "tiny-sd1": lambda: tiny_pipelines.tiny_sd(1, seed=0), "tiny-sd2": lambda: tiny_pipelines.tiny_sd(2, seed=0),
        "tiny-sdxl": lambda: tiny_pipelines.tiny_sdxl(seed=0), "tiny-sd3": lambda: tiny_pipelines.tiny_sd3(seed=0),
        "tiny-flux-dev": lambda: tiny_pipelines.tiny_flux(dev=True, seed=0),
        "tiny-flux-schnell": lambda: tiny_pipelines.tiny_flux(dev=False, seed=0),
    }
    pipe = builders[name]()
    # load_model(pipeline) moves a pipeline object to the device but leaves its dtype: cast it here.
    pipe.to(dtype=dtype)
    return conjure.load_model(pipe, device=str(device))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def relative_differences(scores: list[float], reference: list[float]) -> list[float]:
    return [abs(s - r) / max(abs(r), 1e-12) for s, r in zip(scores, reference)]


def spearman(scores: list[float], reference: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(scores) < 3:
        return None
    rho = float(spearmanr(scores, reference)[0])
    return None if math.isnan(rho) else rho


def measure(model, device, pairs, batch, settings, repeats, deadline: float) -> dict:
    """Warm up at this batch size, then the best of `repeats` timed runs over `pairs`.

    Raises TimeoutError, before any timed run, when the warm-up's pace says they would end after `deadline`.
    """
    start = time.perf_counter()
    conjure.score_pairs(model, pairs[:batch], batch_size=batch, **settings)
    sync(device)
    needed = repeats * len(pairs) / min(batch, len(pairs)) * (time.perf_counter() - start)
    if time.monotonic() + needed > deadline:
        raise TimeoutError(f"over --max-seconds: the warm-up's pace says about {needed:.0f} s more")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best, scores = math.inf, None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        results = conjure.score_pairs(model, pairs, batch_size=batch, **settings)
        sync(device)
        seconds = time.perf_counter() - start
        if seconds < best:
            best, scores = seconds, [r.jeffreys for r in results]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"seconds": best, "pairs_per_s": len(pairs) / best, "peak_mib": peak, "scores": scores}


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    lines = ["| model | dtype | batch | pairs/s | vs fp32 batch 1 | peak MiB | rel. diff median | rel. diff max "
             "| Spearman |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['dtype']} | {r['batch']} | {r['pairs_per_s']:.2f} | "
                     f"{fmt(r['ratio_vs_fp32_b1'], '.2f')}{'x' if r['ratio_vs_fp32_b1'] is not None else ''} | "
                     f"{fmt(r['peak_mib'], '.0f')} | {fmt(r['rel_diff_median'], '.1e')} | "
                     f"{fmt(r['rel_diff_max'], '.1e')} | {fmt(r['spearman'], '.4f')} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for development")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--quick", action="store_true", help="batch sizes 1 and 4, 8 pairs, 1 timed run each")
    p.add_argument("--pairs", type=int, help=f"pairs scored for accuracy (default {len(PAIRS)}; 8 with --quick)")
    p.add_argument("--batch-sizes", help="comma-separated (default 1,4,16,64; 1,4 with --quick)")
    p.add_argument("--repeats", type=int, help="timed runs per row, best kept (default 2; 1 with --quick)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--half", choices=("auto", "fp16", "bf16"), default="auto",
                   help="the half dtype compared with fp32; auto = fp16 unless the device cannot run it")
    p.add_argument("--tf32", action="store_true", help="leave torch's TF32 defaults on for CUDA fp32")
    p.add_argument("--max-seconds", type=float, default=270.0,
                   help="stop starting new rows after this long (default 270); what is skipped is printed")
    p.add_argument("--json", metavar="PATH", help="also write the rows, scores and settings here")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    args.pairs = args.pairs or (8 if args.quick else len(PAIRS))
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,4" if args.quick else "1,4,16,64")).split(",")]
    args.repeats = args.repeats or (1 if args.quick else 2)
    if not 1 <= args.pairs <= len(PAIRS):
        p.error(f"--pairs must be between 1 and {len(PAIRS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        conjure.validation.check_device(args.device)
    except ConjureError as err:
        why = str(err).split("; use ")[0]  # conjure's advice ("leave the device out") does not fit here
        print(f"gpu_check: {why}; run this on a CUDA machine, or pass --device cpu to try it here", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    quiet()
    strict_fp32(device.type == "cuda" and not args.tf32)
    half, half_note = half_dtype(args.half, device)
    settings = {"steps": args.steps, "samples": args.samples, "seed": 0}
    pairs = PAIRS[: args.pairs]
    began = time.monotonic()
    rows, skipped = [], []

    for name in args.models:
        reference, base_rate = None, None  # fp32 batch-1 scores and pairs/s of this model
        for dtype_name in ("fp32", half):
            label = MODELS[name]
            if time.monotonic() - began > args.max_seconds:
                skipped += [f"{name} {dtype_name} batch {b} (over --max-seconds)" for b in args.batch_sizes]
                continue
            try:
                model = build(name, device, DTYPES[dtype_name])
            except Exception as err:
                skipped += [f"{name} {dtype_name} (load failed: {type(err).__name__}: {err})"]
                continue
            conjure.score_pairs(model, pairs[:1], **settings)  # first-call costs (kernels, caches) before any pace
            rate = None
            for batch in args.batch_sizes:
                timed = (pairs * math.ceil(batch / len(pairs)))[: max(len(pairs), batch)]
                elapsed = time.monotonic() - began
                guess = (args.repeats + 1) * len(timed) / rate if rate else 0.0
                if elapsed + guess > args.max_seconds:
                    more = f", about {guess:.0f} s more needed" if rate else ""
                    skipped.append(f"{name} {dtype_name} batch {batch} (over --max-seconds: {elapsed:.0f} s spent{more})")
                    continue
                try:
                    m = measure(model, device, timed, batch, settings, args.repeats, began + args.max_seconds)
                except TimeoutError as err:
                    skipped.append(f"{name} {dtype_name} batch {batch} ({err})")
                    continue
                except Exception as err:  # an out-of-memory or a dtype the device lacks: say so, go on
                    skipped.append(f"{name} {dtype_name} batch {batch} ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0] if str(err) else ''})")
                    continue
                rate = m["pairs_per_s"]
                scores = m["scores"][: len(pairs)]
                if dtype_name == "fp32" and batch == 1:
                    reference, base_rate = scores, rate
                diffs = relative_differences(scores, reference) if reference else None
                rows.append({
                    "model": name, "label": label, "dtype": dtype_name, "batch": batch, "pairs_timed": len(timed),
                    "seconds": m["seconds"], "pairs_per_s": rate,
                    "ratio_vs_fp32_b1": rate / base_rate if base_rate else None,
                    "peak_mib": m["peak_mib"],
                    "rel_diff_median": statistics.median(diffs) if diffs else None,
                    "rel_diff_max": max(diffs) if diffs else None,
                    "spearman": spearman(scores, reference) if reference else None,
                    "scores": scores,
                })
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()

    elapsed = time.monotonic() - began
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU ({platform.processor() or platform.machine()})")
    fp32 = "" if device.type != "cuda" else "fp32 with TF32; " if args.tf32 else "fp32 strict (no TF32); "
    print(f"\n{where}; torch {torch.__version__} (CUDA {torch.version.cuda}); {torch.get_num_threads()} threads; "
          f"half = {half_note}; {fp32}{len(pairs)} pairs, {args.steps} steps, k = {args.samples}, seed 0; "
          f"best of {args.repeats}; {elapsed:.0f} s in all. Accuracy and ratios are against fp32 at batch 1 "
          "of the same model.\n")
    print(table(rows))
    if skipped:
        print("\nskipped:\n" + "\n".join(f"- {s}" for s in skipped))
    if args.json:
        report = {
            "device": str(device), "device_name": where, "torch": torch.__version__, "cuda": torch.version.cuda,
            "threads": torch.get_num_threads(), "half": half, "half_note": half_note,
            "tf32": device.type == "cuda" and args.tf32, "settings": settings, "repeats": args.repeats,
            "batch_sizes": args.batch_sizes, "pairs": [list(p) for p in pairs], "rows": rows, "skipped": skipped,
            "elapsed_s": elapsed, "max_seconds": args.max_seconds,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
