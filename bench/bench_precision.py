"""Does a reduced-precision model give the same scores? bfloat16 (or float16) against float32, same run.

    python bench/bench_precision.py --data-dir ../shared/data [--model emoji] [--dtype bfloat16] [--pairs 200] [--compile]

Scores the same STS-B *dev* pairs (a fixed-seed subsample, as `conjure sts --limit`) and the 44
triplets of `training.emoji_eval` with the model loaded in float32 and in the reduced dtype, and
prints one Markdown table: pairs/s of each, the Spearman correlation between the two score lists
(the bar for a reduced-precision default is >= 0.999), their relative differences, each one's
Spearman against the human scores, and how many triplets change their verdict ("the near word
is closer than the far one"). Estimator settings are conjure's defaults unless given. With `--compile`
the reduced dtype runs compiled (`load_model(compile=True)`), the path that would have to pass the same bars;
its pairs/s is timed on a second pass over the dev pairs, after every batch shape has compiled.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import conjure  # noqa: E402
from conjure.sts.data import load_dataset, subsample  # noqa: E402
from training.emoji_eval import TRIPLETS  # noqa: E402


def scores(model, pairs, batch_size: int, settings: dict) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    results = conjure.score_pairs(model, pairs, batch_size=batch_size, progress=True, **settings)
    return np.array([r.jeffreys for r in results]), len(pairs) / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder with stsbenchmark/sts-dev.csv (e.g. ../shared/data)")
    p.add_argument("--model", default="emoji")
    p.add_argument("--dtype", default="bfloat16", help="the reduced precision to check against float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--pairs", type=int, default=200, help="STS-B dev pairs (fixed-seed subsample)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--compile", action="store_true", help="run the reduced dtype compiled")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = {"steps": args.steps, "samples": args.samples, "guidance": args.guidance}

    dev = subsample(load_dataset("stsb-dev", args.data_dir), args.pairs)
    triplet_pairs = [p for a, n, f in TRIPLETS for p in ((a, n), (a, f))]
    runs = {}
    low_name = f"{args.dtype}, compiled" if args.compile else args.dtype
    for name, dtype, compile_ in (("float32", "float32", False), (low_name, args.dtype, args.compile)):
        model = conjure.load_model(args.model, device=args.device, dtype=dtype, compile=compile_)
        if compile_:
            scores(model, dev.pairs, args.batch_size, settings)  # compiles every batch shape
        dev_scores, speed = scores(model, dev.pairs, args.batch_size, settings)
        triplet_scores, _ = scores(model, triplet_pairs, args.batch_size, settings)
        runs[name] = {"dev": dev_scores, "pairs_per_s": speed,
                      "verdicts": triplet_scores[0::2] < triplet_scores[1::2],
                      "human": 100 * spearmanr(-dev_scores, dev.gold).statistic}

    ref, low = runs["float32"], runs[low_name]
    rel = np.abs(low["dev"] - ref["dev"]) / np.maximum(np.abs(ref["dev"]), 1e-12)
    agreement = spearmanr(low["dev"], ref["dev"]).statistic
    flips = int((low["verdicts"] != ref["verdicts"]).sum())
    print(f"\n{args.model}, {len(dev)} STS-B dev pairs + {len(TRIPLETS)} triplets, {args.steps} steps, "
          f"k={args.samples}, guidance {args.guidance:g}, batch {args.batch_size}, {args.device}\n")
    print("| dtype | pairs/s | ratio | Spearman vs float32 | rel. diff median / max | Spearman vs human x100 "
          "| triplets right | triplet verdicts changed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for dtype, run in runs.items():
        same = dtype == "float32"
        print(f"| {dtype} | {run['pairs_per_s']:.2f} | {run['pairs_per_s'] / ref['pairs_per_s']:.2f}x | "
              f"{'1 (reference)' if same else f'{agreement:.5f}'} | "
              f"{'-' if same else f'{statistics.median(rel):.2e} / {rel.max():.2e}'} | {run['human']:.2f} | "
              f"{int(run['verdicts'].sum())}/{len(TRIPLETS)} | {'-' if same else flips} |")


if __name__ == "__main__":
    main()
