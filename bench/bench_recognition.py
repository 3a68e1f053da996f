"""Recognition of the embedded model's pictures across sampler settings: to choose the app's guidance on prompts
that are not the ones its figures are reported on.

    python bench/bench_recognition.py [--set dev|test] [--steps 20] [--guidance 2,3,4,5] [--seeds 5] [--samples 2]

For each (steps, guidance): the 10-way and the 50-way recognition of `training/emoji_eval.py` (a sample counts
when it is nearer its own emoji than any other prompt's, among the references of all three styles), over noise
seeds 0..seeds-1, as a markdown table of the mean and each seed's figure. `--set dev` uses RECOGNITION_DEV_10
and RECOGNITION_DEV (to choose on), `--set test` RECOGNITION and RECOGNITION_50 (the figures the model card and
issue 24 report).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import conjure  # noqa: E402
from training import emoji_eval  # noqa: E402

SETS = {"dev": (emoji_eval.RECOGNITION_DEV_10, emoji_eval.RECOGNITION_DEV),
        "test": (emoji_eval.RECOGNITION, emoji_eval.RECOGNITION_50)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="dev", choices=list(SETS))
    p.add_argument("--model", default="emoji")
    p.add_argument("--steps", default="20", help="comma-separated sampler steps")
    p.add_argument("--guidance", default="3", help="comma-separated guidance scales")
    p.add_argument("--seeds", type=int, default=5, help="noise seeds 0..SEEDS-1")
    p.add_argument("--samples", "-k", type=int, default=2, help="samples per prompt and seed")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = conjure.load_model(args.model)
    ten, fifty = SETS[args.set]
    print(f"{model.name} in {conjure.jeffreys.dtype_name(model)}; {args.set} prompts; k={args.samples}, seeds "
          f"0-{args.seeds - 1}; torch threads {torch.get_num_threads()}")
    print("| steps | guidance | 10-way: mean (per seed) | 50-way: mean (per seed) | seconds |")
    print("|---:|---:|---|---|---:|")
    for steps in (int(s) for s in args.steps.split(",")):
        for guidance in (float(g) for g in args.guidance.split(",")):
            start, cells = time.perf_counter(), []
            for prompts in (ten, fifty):
                per_seed = [r.fraction for r in emoji_eval.recognition_over_seeds(model, prompts, args.samples, steps,
                                                                                   guidance, args.seeds)]
                cells.append(f"{100 * np.mean(per_seed):.1f}% ({', '.join(f'{100 * f:.0f}' for f in per_seed)})")
            print(f"| {steps} | {guidance:g} | {cells[0]} | {cells[1]} | {time.perf_counter() - start:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
