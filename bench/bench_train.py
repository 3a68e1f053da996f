"""Speed and memory of one training step of the embedded model, per setting, measured in the same run.

    python bench/bench_train.py [--batch-size 64] [--steps 6] [--threads 2] [--compile]
    python bench/bench_train.py --capacity      # widths, attention levels and image sizes instead

One step is `training.train.training_step`, as training runs it per batch: UNet forward, weighted
epsilon MSE, backward, gradient clipping, AdamW. Each setting runs in its own process (so its peak RSS is its own), on random
inputs of the training shapes; the first two steps are warm-up and the median of the rest is
reported. The reference row is the setting the shipped model trained with up to step 3,591:
diffusers' `attention_head_dim=32`, which it reads as 32 heads of 4 channels, in float32.
With `--capacity` the rows are model shapes (width, levels with cross-attention, image size) in the
training default (4 heads of 32, bf16 autocast), against the shipped shape.
Prints a Markdown table; ratios are against the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (attention heads, bf16 autocast, channels-last, torch.compile[, width, attention levels, image size])
SETTINGS = {
    "32 heads of 4, fp32 (reference)": (32, False, True, False),
    "4 heads of 32, fp32": (4, False, True, False),
    "4 heads of 32, fp32, contiguous memory": (4, False, False, False),
    "4 heads of 32, bf16 autocast, channels-last (used for steps 3,591-8,064)": (4, True, True, False),
    "4 heads of 32, bf16 autocast, contiguous memory (training default)": (4, True, False, False),
}
COMPILED = {"4 heads of 32, bf16 autocast, contiguous memory, torch.compile": (4, True, False, True)}
CAPACITY = {
    "width 64, attention at level 1, 32 px (the shipped shape; reference)": (4, True, False, False, 64, (1,), 32),
    "width 64, attention at levels 1 and 2, 32 px": (4, True, False, False, 64, (1, 2), 32),
    "width 96, attention at level 1, 32 px": (4, True, False, False, 96, (1,), 32),
    "width 64, attention at level 1, 48 px": (4, True, False, False, 64, (1,), 48),
    "width 64, attention at level 1, 64 px": (4, True, False, False, 64, (1,), 64),
}


def one_setting(heads: int, bf16: bool, channels_last: bool, compile_: bool, width: int = 64,
                levels: tuple[int, ...] = (1,), size: int = 32, *, batch_size: int, steps: int, threads: int) -> dict:
    import resource

    import torch

    from training.train import CAPTION_TOKENS, loss_weights, make_scheduler, make_unet, training_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet = make_unet(width=width, size=size, heads=heads, attention_levels=tuple(levels))
    weights = loss_weights(make_scheduler().alphas_cumprod)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    unet = unet.to(memory_format=fmt)
    forward = torch.compile(unet) if compile_ else unet
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, size, size).contiguous(memory_format=fmt)
    noise = torch.randn_like(x)
    tokens = torch.randn(batch_size, CAPTION_TOKENS, 384)
    mask = torch.ones(batch_size, CAPTION_TOKENS, dtype=torch.bool)
    pooled = torch.randn(batch_size, 384)
    t = torch.randint(0, 1000, (batch_size,))
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        training_step(forward, optimizer, x, t, noise, tokens, mask, pooled, weights, bf16)
        seconds.append(time.perf_counter() - start)
    return {"seconds": statistics.median(seconds[2:]), "first": seconds[0],
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "parameters": sum(p.numel() for p in unet.parameters()), "torch": torch.__version__}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=6, help="steps per setting; the first two are warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to start on CPU)")
    p.add_argument("--capacity", action="store_true", help="compare model shapes (width, attention levels, size)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting, print JSON
    args = p.parse_args()
    settings = CAPACITY if args.capacity else SETTINGS | (COMPILED if args.compile else {})
    if args.one:
        print(json.dumps(one_setting(*settings[args.one], batch_size=args.batch_size, steps=max(args.steps, 3),
                                     threads=args.threads)))
        return
    rows = {}
    for name in settings:
        cmd = [sys.executable, __file__, "--one", name, "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--threads", str(args.threads)] + (["--compile"] if args.compile else []) \
            + (["--capacity"] if args.capacity else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name}: {rows[name]['seconds']:.2f} s/step", file=sys.stderr, flush=True)
    first = next(iter(rows.values()))
    base = first["seconds"]
    print(f"\nbatch {args.batch_size}, reference {first['parameters'] / 1e6:.1f} M parameters, torch {first['torch']}, "
          f"{args.threads} threads, {os.cpu_count()} CPUs; median of {max(args.steps, 3) - 2} steps after 2 warm-up\n")
    print("| setting | parameters (M) | s / step | images / s | first step (s) | peak RSS (MB) | speed-up vs reference |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['parameters'] / 1e6:.1f} | {r['seconds']:.2f} | {args.batch_size / r['seconds']:.0f} | "
              f"{r['first']:.1f} | {r['rss_mb']:.0f} | {base / r['seconds']:.2f}x |")


if __name__ == "__main__":
    main()
