"""How to leave a word out, measured: removed from the text, or its token states masked; and what it costs.

    python bench/bench_explain.py [--leave-out remove,mask] [--pairs 22] [--model emoji] [--samples 1]

On the minimal pairs of `conjure.attribution.MINIMAL_PAIRS` (exactly one word differs), for each way of
leaving a word out: in how many prompts the differing word carries the largest contribution (the hit rate),
the mean rank of the differing word, and the seconds per pair (wall time of the whole explanation).

- remove (`conjure.explain(..., leave_out="remove")`): the prompt without the word, encoded afresh.
- mask (`leave_out="mask"`, the embedded model's `PixelModel.encode_masked`): the full prompt is encoded once;
  the word's token states are dropped from the cross-attention (attention mask 0) and from the pooled sentence
  embedding (mean of the remaining token states, normalised and scaled as the encoder does). The other tokens'
  states still carry some of the word (MiniLM attends both ways).

Both use the same estimator run, settings and noise; a one-word prompt's word is compared against the empty
prompt (the model's unconditional input) in both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import conjure  # noqa: E402
from conjure import attribution  # noqa: E402
from conjure.settings import Settings  # noqa: E402


# The first draft of the minimal pairs: prompts that name two things (a subject and a scene or object shared by
# both prompts). Leaving the subject out leaves the other thing, which the model then draws, so the subject's
# contribution is often negative; docs/explain.md. `--set two-things` measures them.
TWO_THINGS = [
    ("a boy with a kite", "a girl with a kite", "boy", "girl"),
    ("a cat in a box", "a dog in a box", "cat", "dog"),
    ("the sun over the sea", "the moon over the sea", "sun", "moon"),
    ("a tiger in the grass", "a snake in the grass", "tiger", "snake"),
    ("a man on a bicycle", "a woman on a bicycle", "man", "woman"),
    ("a banana on a plate", "a carrot on a plate", "banana", "carrot"),
    ("a fish in the water", "a whale in the water", "fish", "whale"),
    ("rain over the city", "snow over the city", "rain", "snow"),
    ("a guitar and a drum", "a guitar and a trumpet", "drum", "trumpet"),
]


def rank_of(values: list[float], index: int) -> int:
    """1 for the largest."""
    return 1 + sum(v > values[index] for v in values)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--leave-out", default="remove,mask")
    p.add_argument("--set", default="minimal", choices=["minimal", "two-things"],
                   help="minimal: conjure.attribution.MINIMAL_PAIRS (the tested set); two-things: TWO_THINGS")
    p.add_argument("--pairs", type=int, default=None, help="only the first N pairs of the set")
    p.add_argument("--model", default="emoji")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--verbose", action="store_true", help="print every pair's contributions")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = conjure.load_model(args.model)
    settings = Settings(samples=args.samples, seed=args.seed, guidance=args.guidance)
    pairs = (attribution.MINIMAL_PAIRS if args.set == "minimal" else TWO_THINGS)[: args.pairs]
    conjure.explain(model, "a cat", "a dog", images=False)  # warm-up, untimed
    print(f"{model.name} in {conjure.jeffreys.dtype_name(model)}, {settings.steps} steps, k={settings.samples}, "
          f"guidance {settings.guidance:g}, seed {settings.seed}; torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {len(pairs)} pairs ({args.set})")
    print("| leave-out | hits A | hits B | hit rate | mean rank of the differing word | s per pair, median (min-max) |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in args.leave_out.split(","):
        hits, ranks, seconds = {"a": 0, "b": 0}, [], []
        for text_a, text_b, word_a, word_b in pairs:
            start = time.perf_counter()
            e = conjure.explain(model, text_a, text_b, images=False, leave_out=mode, samples=args.samples,
                                seed=args.seed, guidance=args.guidance)
            c_a, c_b = [w.contribution for w in e.words_a], [w.contribution for w in e.words_b]
            seconds.append(time.perf_counter() - start)
            for which, text, word, c in (("a", text_a, word_a, c_a), ("b", text_b, word_b, c_b)):
                r = rank_of(c, text.split().index(word))
                hits[which] += r == 1
                ranks.append(r)
                if args.verbose:
                    print(f"  {mode} {text!r}: " + ", ".join(f"{w} {v:+.3g}" for w, v in zip(text.split(), c))
                          + f"  -> {word!r} rank {r}", file=sys.stderr)
        n = len(pairs)
        print(f"| {mode} | {hits['a']}/{n} | {hits['b']}/{n} | {100 * (hits['a'] + hits['b']) / (2 * n):.0f}% | "
              f"{statistics.mean(ranks):.2f} | {statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f}) |",
              flush=True)


if __name__ == "__main__":
    main()
