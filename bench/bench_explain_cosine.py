"""Leave-one-out on the cosine instead of the divergence, measured against it on the explanation's minimal pairs.

    python bench/bench_explain_cosine.py --set dev --seeds 0,1,2

For each minimal pair (bench/bench_explain.py's sets; each word left out by masking, as `conjure.explain` does on
the embedded model), one estimator run with the setting `cosine` scores the full pair and every variant from the
same noise. A word's contribution is then D_J(a, b) - D_J(a without it, b), the library's, or
cos(a without it, b) - cos(a, b), the same question asked of the cosine of the pulls (positive: the word pushes the
prompts apart). The hit rate counts the prompts whose differing word has the largest contribution.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import conjure  # noqa: E402
from bench_explain import SETS  # noqa: E402
from conjure import validation  # noqa: E402
from conjure.attribution import words_of  # noqa: E402
from conjure.jeffreys import conditioned_steps, cosine_from_pulls  # noqa: E402
from conjure.models.base import Conditioning  # noqa: E402


def contributions(model, text_a: str, text_b: str, seed: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per measure ("jeffreys", "cosine"), each word's contribution in prompt a and in prompt b."""
    words_a, words_b = words_of(text_a), words_of(text_b)
    cond = Conditioning.cat([model.encode([text_a, text_b]), model.encode_masked(words_a),
                             model.encode_masked(words_b)])
    n_a, n_b = len(words_a), len(words_b)
    pairs = [(0, 1)] + [(2 + i, 1) for i in range(n_a)] + [(0, 2 + n_a + i) for i in range(n_b)]
    run = validation.check_run(model, dict(seed=seed, cosine=True), pairs=len(pairs), batch_size=len(pairs))
    jeffreys = torch.zeros(len(pairs), dtype=torch.float64)
    pull_a, pull_b = torch.zeros_like(jeffreys), torch.zeros_like(jeffreys)
    with torch.inference_mode():
        for step in conditioned_steps(model, cond, pairs, run):
            jeffreys += ((step.kl_ab + step.kl_ba) / 2).mean(-1)
            pull_a += step.weight * step.pull_sq[:, :, 0].mean((1, 2))
            pull_b += step.weight * step.pull_sq[:, :, 1].mean((1, 2))
    cos = [cosine_from_pulls(float(jeffreys[i]), float(pull_a[i]), float(pull_b[i])) for i in range(len(pairs))]
    by_divergence = [float(jeffreys[0] - jeffreys[i]) for i in range(1, len(pairs))]
    by_cosine = [cos[i] - cos[0] for i in range(1, len(pairs))]
    return {"jeffreys": (by_divergence[:n_a], by_divergence[n_a:]), "cosine": (by_cosine[:n_a], by_cosine[n_a:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", default="dev", choices=list(SETS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--model", default="emoji")
    args = p.parse_args()
    model = conjure.load_model(args.model)
    print("| set | seed | hit rate, D_J (the library's) | hit rate, cosine |")
    print("|---|---:|---:|---:|")
    for seed in (int(s) for s in args.seeds.split(",")):
        hits, prompts = {"jeffreys": 0, "cosine": 0}, 0
        for text_a, text_b, word_a, word_b in SETS[args.set]:
            found = contributions(model, text_a, text_b, seed)
            for side, text, word in ((0, text_a, word_a), (1, text_b, word_b)):
                prompts += 1
                for measure, values in found.items():
                    c = values[side]
                    hits[measure] += max(range(len(c)), key=c.__getitem__) == text.split().index(word)
        print(f"| {args.set} | {seed} | {hits['jeffreys']}/{prompts} = {100 * hits['jeffreys'] / prompts:.0f}% "
              f"| {hits['cosine']}/{prompts} = {100 * hits['cosine'] / prompts:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
