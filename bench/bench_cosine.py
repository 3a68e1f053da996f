"""The cosine, measured against the raw divergence and against the other ways of normalising it.

    python bench/bench_cosine.py men-dev --limit 300 --seed 0 --out runs/cosine/men-dev-s0.jsonl
    python bench/bench_cosine.py --report runs/cosine/men-dev-s0.jsonl runs/cosine/stsb-dev-s0.jsonl
    python bench/bench_cosine.py --timing [--repeats 3]      # what the cosine costs, at guidance 1 and 3

One estimator run per chunk of pairs scores, from the same noise, each pair (a, b) and each of its prompts against
the null prompt, (a, null) and (null, b), and keeps:

- d: D_J(a, b), the raw divergence;
- d_a0, d_0b: D_J(a, null) and D_J(null, b), each along its own two trajectories (the null prompt's is one more);
- uu, vv, uv: the same-state sums of the library's cosine (`conjure.jeffreys`), sum_i w_i (|u|^2 at x_A + at
  x_B) / 2 and likewise for |v|^2 and <u, v>, with u = eps(x|a) - eps(x|null), v = eps(x|b) - eps(x|null),
  read from the gaps of the three pairs at the states of trajectories A and B.

The report gives Spearman x 100 against the gold scores for -D_J, for the two cosines (the law of cosines on the
three divergences, "trajectories"; and the library's, "same states"), and for simpler normalisations of D_J by the
null divergences. Rows are appended to the --out file as they finish (a rerun resumes). Choose on dev splits.

--timing scores the same 16 everyday pairs (`conjure.score_pairs`, automatic batch size) with and without the
setting `cosine`, at guidance 1 and 3, after one warm-up each, `--repeats` times in this process: pairs/s median
(min-max), and the ratio against cosine=False at the same guidance, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import conjure  # noqa: E402
from conjure import validation  # noqa: E402
from conjure.jeffreys import conditioned_steps  # noqa: E402
from conjure.models.base import Conditioning  # noqa: E402
from conjure.sts.data import load_dataset, subsample  # noqa: E402


def inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """<x, y> over each state's numbers, mean over samples: (P, k, C, H, W) -> (P,)."""
    return (x.double() * y.double()).flatten(2).sum(-1).mean(-1)


def score_chunk(model, pairs: list[tuple[str, str]], run) -> list[dict]:
    texts = [t for pair in pairs for t in pair]
    cond = Conditioning.cat([model.encode(texts), model.encode_null()])
    n, null = len(pairs), len(texts)
    rows = [(2 * i, 2 * i + 1) for i in range(n)] + [(2 * i, null) for i in range(n)] + \
        [(null, 2 * i + 1) for i in range(n)]
    d = torch.zeros(3 * n, dtype=torch.float64)
    uu, vv, uv = (torch.zeros(n, dtype=torch.float64) for _ in range(3))
    with torch.inference_mode():
        for step in conditioned_steps(model, cond, rows, run):
            d += ((step.kl_ab + step.kl_ba) / 2).mean(-1)
            gap = step.eps_gap  # (3n, 2, k, C, H, W): eps(x|first) - eps(x|second) at each trajectory's state
            ab, a0, zb = gap[:n], gap[n : 2 * n], gap[2 * n :]
            u_at_a, v_at_a = a0[:, 0], a0[:, 0] - ab[:, 0]  # at x_A: u = eps_a - eps_null, v = eps_b - eps_null
            v_at_b, u_at_b = -zb[:, 1], ab[:, 1] - zb[:, 1]  # at x_B
            w = step.weight / 2
            uu += w * (inner(u_at_a, u_at_a) + inner(u_at_b, u_at_b))
            vv += w * (inner(v_at_a, v_at_a) + inner(v_at_b, v_at_b))
            uv += w * (inner(u_at_a, v_at_a) + inner(u_at_b, v_at_b))
    return [dict(a=a, b=b, d=float(d[i]), d_a0=float(d[n + i]), d_0b=float(d[2 * n + i]), uu=float(uu[i]),
                 vv=float(vv[i]), uv=float(uv[i])) for i, (a, b) in enumerate(pairs)]


def measure(args) -> None:
    data = subsample(load_dataset(args.dataset, args.data_dir), args.limit)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["a"], r["b"]) for r in map(json.loads, out.read_text().splitlines())} if out.exists() else set()
    model = conjure.load_model(args.model)
    gold = dict(zip(data.pairs, data.gold))
    todo = [p for p in data.pairs if p not in done]
    run = validation.check_run(model, dict(seed=args.seed, steps=args.steps, guidance=args.guidance),
                               pairs=3 * args.chunk, batch_size=3 * args.chunk)
    with out.open("a") as f:
        for start in range(0, len(todo), args.chunk):
            for row in score_chunk(model, todo[start : start + args.chunk], run):
                f.write(json.dumps({**row, "gold": gold[(row["a"], row["b"])]}) + "\n")
            f.flush()


def report(paths: list[str]) -> None:
    print("| scores | pairs | -D_J | cosine, same states (library) | cosine, trajectories | -D_J / (D_a0 + D_0b) "
          "| -D_J / sqrt(D_a0 D_0b) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        g, d, a0, b0, uu, vv, uv = (np.array([r[k] for r in rows]) for k in ("gold", "d", "d_a0", "d_0b", "uu", "vv",
                                                                               "uv"))
        scores = [-d, uv / np.sqrt(uu * vv), (a0 + b0 - d) / (2 * np.sqrt(a0 * b0)), -d / (a0 + b0),
                  -d / np.sqrt(a0 * b0)]
        print(f"| {Path(path).name} | {len(rows)} | " +
              " | ".join(f"{100 * spearmanr(s, g)[0]:.2f}" for s in scores) + " |")


TIMING_PAIRS = [("snow leopard", "bengal tiger"), ("a red apple", "a green pear"), ("a bicycle", "a motorbike"),
                ("a cup of tea", "a cup of coffee"), ("a dog", "a cat"), ("the sun", "the moon"), ("a house", "a castle"),
                ("a bag of chips", "a bag of fries"), ("rain", "snow"), ("a guitar", "a violin"), ("a car", "a bus"),
                ("a rose", "a tulip"), ("a whale", "a dolphin"), ("pizza", "a hamburger"), ("a clock", "a watch"),
                ("a king", "a queen")]


def timing(args) -> None:
    import os
    import statistics
    import time

    model = conjure.load_model(args.model)
    print(f"{args.model} ({str(model.dtype).removeprefix('torch.')}), {len(TIMING_PAIRS)} pairs, T={args.steps}, k=1, "
          f"{torch.get_num_threads()} torch threads, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{args.repeats} repeats after one warm-up\n")
    print("| guidance | cosine | pairs/s median (min-max) | ratio to cosine off |")
    print("|---:|---|---:|---:|")
    for guidance in (1.0, 3.0):
        medians = {}
        for cosine in (False, True):
            settings = dict(steps=args.steps, guidance=guidance, cosine=cosine)
            conjure.score_pairs(model, TIMING_PAIRS[:2], **settings)  # warm-up
            rates = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                conjure.score_pairs(model, TIMING_PAIRS, **settings)
                rates.append(len(TIMING_PAIRS) / (time.perf_counter() - start))
            medians[cosine] = statistics.median(rates)
            print(f"| {guidance:g} | {'on' if cosine else 'off'} | {medians[cosine]:.2f} ({min(rates):.2f}-"
                  f"{max(rates):.2f}) | {medians[cosine] / medians[False]:.2f}x |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", nargs="?", help="a dataset name of `python -m conjure sts` (men-dev, stsb-dev, ...)")
    p.add_argument("--limit", type=int, default=None, help="a fixed-seed random subsample of N pairs")
    p.add_argument("--out", help="JSON lines file the rows are appended to")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default="emoji")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--chunk", type=int, default=6, help="pairs per estimator run (3 pairs each)")
    p.add_argument("--report", nargs="+", metavar="JSONL", help="print the Spearman table of finished files")
    p.add_argument("--timing", action="store_true", help="time scoring with and without the cosine")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.timing:
        timing(args)
    elif args.report:
        report(args.report)
    elif args.dataset and args.out:
        measure(args)
    else:
        p.error("give a dataset and --out, or --report FILES")


if __name__ == "__main__":
    main()
