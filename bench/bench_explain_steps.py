"""Does weighting the sampler's steps differently find the differing word of a minimal pair more often?

    python bench/bench_explain_steps.py [--set dev|minimal|two-things] [--seeds 0,1,2] [--steps 10]

`conjure.explain` (masking, the library's default on the embedded model) is run once per pair and seed, and each
step's KL terms of the full pair and of every variant pair are recorded as the estimator yields them. A word's
contribution is then recomputed with the steps re-weighted: the library's girsanov weighting (all steps, as run:
this row equals bench_explain.py's), no weighting (each step's squared gap, as `weighting="uniform"` up to a
constant), the first or the last half of the steps only, and each step alone. The hit rate is as in
bench_explain.py: in how many prompts the differing word carries the largest contribution.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import conjure  # noqa: E402
from bench_explain import SETS, rank_of  # noqa: E402
from conjure import attribution  # noqa: E402
from conjure.settings import Settings  # noqa: E402


def recording(steps_seen: list):
    """`conditioned_steps` as explain calls it, appending each step's (P,) terms: (girsanov KL terms, squared gaps),
    each the mean over both trajectories and the noise samples."""
    real = attribution.conditioned_steps

    def steps(*args, **kwargs):
        for step in real(*args, **kwargs):
            steps_seen.append((((step.kl_ab + step.kl_ba) / 2).mean(1).double(),
                               step.gap_sq.double().mean(2).sum(1) / 2))
            yield step

    return steps


def contributions(terms: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(T, P) per-step terms of pair 0 (the full pair) and the variants -> (P - 1,) D_J(full) - D_J(variant)."""
    total = (weights[:, None] * terms).sum(0)
    return total[0] - total[1:]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="dev", choices=list(SETS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=Settings().steps)
    p.add_argument("--model", default="emoji")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = conjure.load_model(args.model)
    seen: list = []
    attribution.conditioned_steps = recording(seen)
    T = args.steps
    half = T // 2
    weightings = {"girsanov (the library's)": ("kl", torch.ones(T)), "none (squared gaps)": ("gap", torch.ones(T)),
                  f"first {half} steps": ("kl", (torch.arange(T) < half).double()),
                  f"last {T - half} steps": ("kl", (torch.arange(T) >= half).double())}
    weightings.update({f"step {i + 1} alone": ("kl", (torch.arange(T) == i).double()) for i in range(T)})
    seeds = [int(s) for s in args.seeds.split(",")]
    hits = {name: {seed: 0 for seed in seeds} for name in weightings}
    pairs = SETS[args.set]
    for seed in seeds:
        for text_a, text_b, word_a, word_b in pairs:
            seen.clear()
            e = conjure.explain(model, text_a, text_b, images=False, seed=seed, steps=T)
            if len(seen) != T:
                raise SystemExit(f"{len(seen)} steps recorded for {T}: the variants ran in several chunks")
            kl, gap = (torch.stack([s[i] for s in seen]) for i in (0, 1))
            n_a = len(e.words_a)
            for name, (which, weights) in weightings.items():
                c = contributions(kl if which == "kl" else gap, weights.double()).tolist()
                for words, cs, word in ((e.words_a, c[:n_a], word_a), (e.words_b, c[n_a:], word_b)):
                    hits[name][seed] += rank_of(cs, [w.word for w in words].index(word)) == 1
    print(f"{model.name} in {conjure.jeffreys.dtype_name(model)}, {T} steps, k=1, guidance 1, masking; "
          f"{len(pairs)} pairs ({args.set}); hit rate per seed")
    print("| steps weighted | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|" + "---:|" * len(seeds))
    for name in weightings:
        print(f"| {name} | " + " | ".join(f"{100 * hits[name][s] / (2 * len(pairs)):.0f}%" for s in seeds) + " |")


if __name__ == "__main__":
    main()
