"""How to leave a word out, measured: removed from the text, or its token states masked; and what it costs.

    python bench/bench_explain.py [--leave-out remove,mask] [--pairs 22] [--model emoji] [--samples 1]

On the minimal pairs of `conjure.attribution.MINIMAL_PAIRS` (exactly one word differs), for each way of
leaving a word out: in how many prompts the differing word carries the largest contribution (the hit rate),
the mean rank of the differing word, and the seconds per pair (wall time of the whole explanation).

- remove: `conjure.explain` itself: the prompt without the word, encoded afresh.
- mask: the full prompt is encoded once; the word's token states are dropped from the cross-attention
  (attention mask 0, states zeroed) and from the pooled sentence embedding (mean of the remaining token
  states, normalised and scaled as the encoder does). For the embedded model's MiniLM only (a pixel model):
  the mapping of words to tokens uses the fast tokenizer's offsets. The other tokens' states still carry the
  word (MiniLM attends both ways), which is what this measures.

Both use the same estimator run (`conjure.attribution.leave_one_out`), settings and noise; a one-word
prompt's word is compared against the empty prompt (the model's unconditional input) in both.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import conjure  # noqa: E402
from conjure import attribution  # noqa: E402
from conjure.jeffreys import Settings, check_settings  # noqa: E402
from conjure.models.base import Conditioning  # noqa: E402


def word_tokens(tokenizer, text: str, max_tokens: int) -> list[list[int]]:
    """For each whitespace word of `text`, the positions of its tokens in the encoder's padded input."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    offsets = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=max_tokens)["offset_mapping"]
    positions = [[] for _ in spans]
    for pos, (start, end) in enumerate(offsets):
        if end <= start:  # [CLS], [SEP]
            continue
        for i, (ws, we) in enumerate(spans):
            if ws <= start < we:
                positions[i].append(pos)
    return positions


def masked_rows(model, text: str) -> Conditioning:
    """One conditioning row per word of `text`: the full prompt's encoding with that word's tokens masked."""
    encoder = model.text_encoder
    out = encoder([text])
    positions = word_tokens(encoder.tokenizer, text, encoder.max_tokens)
    rows = []
    for pos in positions:
        mask = out.mask.clone()
        mask[0, pos] = 0
        if mask.sum() <= 2:  # only [CLS] and [SEP] left: the word was the prompt, so the empty prompt stands in
            rows.append(model.encode_null())
            continue
        tokens = out.tokens * mask[..., None]
        pooled = torch.nn.functional.normalize(tokens.sum(1) / mask.sum(1, keepdim=True), dim=-1)
        rows.append(Conditioning({"tokens": tokens.to(model.dtype), "mask": mask.bool(),
                                  "pooled": (pooled * model.pooled_scale).to(model.dtype)}))
    return Conditioning.cat(rows)


def explain_masked(model, text_a: str, text_b: str, settings: Settings) -> tuple[list[float], list[float]]:
    """Contributions of the words of a and b with masking as the way to leave a word out."""
    size = check_settings(model, settings)
    full = model.encode([text_a, text_b])
    masked_a, masked_b = masked_rows(model, text_a), masked_rows(model, text_b)
    cond = Conditioning.cat([full, masked_a, masked_b])
    n_a, n_b = len(masked_a), len(masked_b)
    pairs = 1 + n_a + n_b
    run = attribution.leave_one_out(model, cond, (0, 1), list(range(2, 2 + n_a)), list(range(2 + n_a, 2 + n_a + n_b)),
                                    settings, conjure.validation.auto_batch_size(model, settings, pairs), size,
                                    decode=False)
    c = (run.full - run.variants).mean(1).tolist()
    return c[:n_a], c[n_a:]


def rank_of(values: list[float], index: int) -> int:
    """1 for the largest."""
    return 1 + sum(v > values[index] for v in values)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--leave-out", default="remove,mask")
    p.add_argument("--pairs", type=int, default=len(attribution.MINIMAL_PAIRS))
    p.add_argument("--model", default="emoji")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--verbose", action="store_true", help="print every pair's contributions")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = conjure.load_model(args.model)
    settings = Settings(samples=args.samples, seed=args.seed, guidance=args.guidance)
    pairs = attribution.MINIMAL_PAIRS[: args.pairs]
    conjure.explain(model, "a cat", "a dog", images=False)  # warm-up, untimed
    print(f"{model.name} in {conjure.jeffreys.dtype_name(model)}, {settings.steps} steps, k={settings.samples}, "
          f"guidance {settings.guidance:g}, seed {settings.seed}; torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {len(pairs)} minimal pairs")
    print("| leave-out | hits A | hits B | hit rate | mean rank of the differing word | s per pair, median (min-max) |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in args.leave_out.split(","):
        hits, ranks, seconds = {"a": 0, "b": 0}, [], []
        for text_a, text_b, word_a, word_b in pairs:
            start = time.perf_counter()
            if mode == "remove":
                e = conjure.explain(model, text_a, text_b, images=False, samples=args.samples, seed=args.seed,
                                    guidance=args.guidance)
                c_a, c_b = [w.contribution for w in e.words_a], [w.contribution for w in e.words_b]
            elif mode == "mask":
                c_a, c_b = explain_masked(model, text_a, text_b, settings)
            else:
                raise SystemExit(f"unknown --leave-out {mode!r}: remove or mask")
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
