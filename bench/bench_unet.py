"""One denoiser call of the embedded model under each inference lever: what bounds scoring speed on a CPU.

    python bench/bench_unet.py [--batch-sizes 4,32] [--calls 12] [--threads 2]

A pair at T = 10 costs 38 UNet evaluations, so the UNet's time per sample bounds pairs/s (the estimator
adds little: see bench_estimator.py). Each setting runs in its own process on the same inputs (batch 4 is
one pair per call, batch 32 eight pairs), times `--calls` calls after one untimed call, and reports the
median, the spread (min-max), the ratio against eager float32 in the same run, the first call (which
includes torch.compile's compilation, less where inductor's on-disk cache already holds the graph) and the relative error of the output against eager float32.

Settings: eager float32 (reference), channels-last, bfloat16 autocast, bfloat16 weights (also
channels-last), and torch.compile (inductor: one static shape; `dynamic=True`, which the estimator would need since its
batch changes from call to call; and static with freezing, where inductor treats the weights as constants
and prepacks them for oneDNN once instead of at every call, which its on-disk cache cannot hold, so every
process compiles again).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name: (dtype of the weights, autocast, channels-last, compile: None, "static", "dynamic" or "frozen")
    "eager, float32 (reference)": ("float32", False, False, None),
    "eager, float32, channels-last": ("float32", False, True, None),
    "eager, bfloat16 autocast": ("float32", True, False, None),
    "eager, bfloat16 weights": ("bfloat16", False, False, None),
    "eager, bfloat16 weights, channels-last": ("bfloat16", False, True, None),
    "torch.compile static, float32": ("float32", False, False, "static"),
    "torch.compile dynamic, float32": ("float32", False, False, "dynamic"),
    "torch.compile static, bfloat16 weights": ("bfloat16", False, False, "static"),
    "torch.compile static + freezing, bfloat16 weights": ("bfloat16", False, False, "frozen"),
}


def one_setting(name: str, batch: int, calls: int, threads: int) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    dtype_name, autocast, channels_last, compile_ = SETTINGS[name]
    torch.set_num_threads(threads)
    unet = UNet2DConditionModel.from_pretrained(ROOT / "assets" / "emoji-32" / "unet", torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    t = torch.randint(1, 1000, (batch,), generator=g)
    tokens = torch.randn(batch, 64, 384, generator=g)  # MiniLM's states, padded to its 64 tokens as conjure does
    mask = torch.ones(batch, 64, dtype=torch.bool)
    mask[:, 8:] = False
    pooled = torch.randn(batch, 384, generator=g)

    def call(m, dtype, autocast=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return m(x.to(dtype).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format),
                     t, encoder_hidden_states=tokens.to(dtype), encoder_attention_mask=mask,
                     class_labels=pooled.to(dtype)).sample.float()

    with torch.no_grad():
        reference = call(unet, torch.float32)
        dtype = getattr(torch, dtype_name)
        unet = unet.to(dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        if compile_:  # freezing: weights become constants, so inductor prepacks them for oneDNN once
            unet.compile(dynamic=compile_ == "dynamic", options={"freezing": compile_ == "frozen"})
        start = time.perf_counter()
        out = call(unet, dtype, autocast)
        first = time.perf_counter() - start
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            call(unet, dtype, autocast)
            seconds.append(time.perf_counter() - start)
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "first": first,
            "error": ((out - reference).norm() / reference.norm()).item(), "torch": torch.__version__}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="4,32")
    p.add_argument("--calls", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_setting(args.one, args.batch, args.calls, args.threads)))
        return
    print(f"embedded model's UNet (emoji-32), 32x32, {args.calls} timed calls per setting, {args.threads} threads; "
          "ratio = reference median / this median, in the same run\n")
    print("| batch | setting | ms per call, median (min-max) | ms per sample | ratio | first call (s) | rel. error |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        reference = None
        for name in SETTINGS:
            cmd = [sys.executable, __file__, "--one", name, "--batch", str(batch), "--calls", str(args.calls),
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
            r = json.loads(out.strip().splitlines()[-1])
            reference = reference or r["median"]
            print(f"| {batch} | {name} | {1000 * r['median']:.1f} ({1000 * r['min']:.1f}-{1000 * r['max']:.1f}) | "
                  f"{1000 * r['median'] / batch:.1f} | {reference / r['median']:.2f}x | {r['first']:.1f} | "
                  f"{r['error']:.1e} |", flush=True)
    print(f"\ntorch {r['torch']}")


if __name__ == "__main__":
    main()
