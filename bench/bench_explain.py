"""How to leave a word out, measured: removed from the text, or its token states masked; and what it costs.

    python bench/bench_explain.py [--set minimal|dev|two-things] [--leave-out remove,mask] [--seeds 0,1,2]
                                  [--pairs N] [--model emoji] [--samples 1] [--steps 10]

On pairs of prompts where exactly one word differs, for each way of leaving a word out and each seed: in how
many prompts the differing word carries the largest contribution (the hit rate), the mean rank of the
differing word, and the seconds per pair (wall time of the whole explanation).

The sets: `minimal` is `conjure.attribution.MINIMAL_PAIRS`, the tested set (tests/test_attribution.py); `dev`
is `ONE_THING_DEV` below, built the same way (one thing per prompt) with no pair of the tested set, to choose
on; `two-things` is `TWO_THINGS`, the first draft, whose prompts name two things.

The ways of leaving a word out:
- remove (`conjure.explain(..., leave_out="remove")`): the prompt without the word, encoded afresh.
- mask (`leave_out="mask"`, the embedded model's `PixelModel.encode_masked`): the full prompt is encoded once;
  the word's token states are dropped from the cross-attention (attention mask 0) and from the pooled sentence
  embedding (mean of the remaining token states, normalised and scaled as the encoder does). The other tokens'
  states still carry some of the word (MiniLM attends both ways).
- measured here only, not in the library (`masked_variant`): isolate (as mask, and the word is also hidden from
  every other token inside the encoder, its positions kept); cross-attention (the word dropped from the
  cross-attention only, the pooled embedding of the full prompt kept); pooled (the word dropped from the pooled
  embedding only, the cross-attention reads every token).

All use the same estimator run, settings and noise; a one-word prompt's word is compared against the empty
prompt (the model's unconditional input) in all.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import conjure  # noqa: E402
from conjure import attribution  # noqa: E402
from conjure.models.base import Conditioning  # noqa: E402
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

# To choose on: minimal pairs built as `conjure.attribution.MINIMAL_PAIRS` is (one thing per prompt, the shared
# words only qualify it), none of them in it.
ONE_THING_DEV = [
    ("a red rose", "a red tulip", "rose", "tulip"),
    ("a brown bear", "a brown cow", "bear", "cow"),
    ("a blue car", "a red car", "blue", "red"),
    ("a wooden chair", "a wooden door", "chair", "door"),
    ("a sleepy cat", "a sleepy owl", "cat", "owl"),
    ("a tall giraffe", "a tall tree", "giraffe", "tree"),
    ("a bowl of soup", "a bowl of rice", "soup", "rice"),
    ("a green book", "a blue book", "green", "blue"),
    ("a red balloon", "a red kite", "balloon", "kite"),
    ("a cute rabbit", "a cute mouse", "rabbit", "mouse"),
    ("a bright star", "a bright candle", "star", "candle"),
    ("a pink pig", "a pink octopus", "pig", "octopus"),
    ("a small frog", "a small turtle", "frog", "turtle"),
    ("a fresh lemon", "a fresh cherry", "lemon", "cherry"),
    ("a red dragon", "a red crab", "dragon", "crab"),
    ("a golden crown", "a golden bell", "crown", "bell"),
    ("a scary ghost", "a scary robot", "ghost", "robot"),
    ("a white cloud", "a white sheep", "cloud", "sheep"),
    ("a running dog", "a running deer", "dog", "deer"),
    ("a sad face", "a sleepy face", "sad", "sleepy"),
    ("a yellow lemon", "a green lemon", "yellow", "green"),
    ("a silver spoon", "a silver fork", "spoon", "fork"),
]
SETS = {"minimal": attribution.MINIMAL_PAIRS, "dev": ONE_THING_DEV, "two-things": TWO_THINGS}
BENCH_ONLY = ("isolate", "cross-attention", "pooled")  # ways of masking measured here, not kept in the library


@torch.no_grad()
def masked_variant(model, words: list[str], how: str) -> Conditioning:
    """`PixelModel.encode_masked` with the word masked in another place (`how`, one of BENCH_ONLY): the library's
    rows, changed where `how` differs from them (rows with nothing left stay the unconditional input)."""
    text, out, masks = model.word_masks(words)
    rows = type(model).encode_masked(model, words)  # the adapter's own, even while main() patches the instance
    tokens, cross, pooled = (rows.tensors[key].clone() for key in ("tokens", "mask", "pooled"))
    encoder = model.text_encoder
    batch = encoder.tokenizer([text], padding="max_length", truncation=True, max_length=encoder.max_tokens,
                              return_tensors="pt").to(encoder.device)
    for i, mask in enumerate(masks):
        if mask is None:
            continue
        if how == "isolate":  # the encoder run again with the word's tokens hidden from every token
            batch["attention_mask"] = mask.to(batch["attention_mask"].dtype)
            kept = encoder.model(**batch).last_hidden_state * mask[..., None]
            tokens[i] = kept[0].to(tokens.dtype)
            pooled[i] = (torch.nn.functional.normalize(kept.sum(1) / mask.sum(1, keepdim=True), dim=-1)[0]
                         * model.pooled_scale).to(pooled.dtype)
        if how == "cross-attention":  # the pooled embedding of the full prompt
            pooled[i] = (out.pooled[0] * model.pooled_scale).to(pooled.dtype)
        if how == "pooled":  # the cross-attention reads every token
            tokens[i], cross[i] = out.tokens[0].to(tokens.dtype), out.mask[0].bool()
    return Conditioning({"tokens": tokens, "mask": cross, "pooled": pooled}, rows.truncated, rows.rewritten)


def use_leave_out(model, mode: str) -> str:
    """Set the model up to leave words out by `mode` and return `conjure.explain`'s leave_out for it: a BENCH_ONLY
    way goes through explain's mask path, with `masked_variant` as this model instance's way of masking."""
    model.__dict__.pop("encode_masked", None)  # the adapter's own method again
    if mode not in BENCH_ONLY:
        return mode
    model.encode_masked = types.MethodType(lambda m, words: masked_variant(m, words, mode), model)
    return "mask"


def rank_of(values: list[float], index: int) -> int:
    """1 for the largest."""
    return 1 + sum(v > values[index] for v in values)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--leave-out", default="remove,mask", help=f"of remove, mask, {', '.join(BENCH_ONLY)}")
    p.add_argument("--set", default="minimal", choices=list(SETS),
                   help="minimal: conjure.attribution.MINIMAL_PAIRS (the tested set); dev: ONE_THING_DEV (to choose "
                        "on); two-things: TWO_THINGS")
    p.add_argument("--pairs", type=int, default=None, help="only the first N pairs of the set")
    p.add_argument("--model", default="emoji")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--seeds", default="0", help="comma-separated noise seeds, one row each")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=Settings().steps, help="denoising steps (the library's default)")
    p.add_argument("--verbose", action="store_true", help="print every pair's contributions")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = conjure.load_model(args.model)
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = Settings(samples=args.samples, guidance=args.guidance, steps=args.steps)
    pairs = SETS[args.set][: args.pairs]
    conjure.explain(model, "a cat", "a dog", images=False)  # warm-up, untimed
    print(f"{model.name} in {conjure.jeffreys.dtype_name(model)}, {settings.steps} steps, k={settings.samples}, "
          f"guidance {settings.guidance:g}; torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {len(pairs)} pairs ({args.set})")
    print("| leave-out | seed | hits A | hits B | hit rate | mean rank of the differing word "
          "| s per pair, median (min-max) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in args.leave_out.split(","):
        leave_out = use_leave_out(model, mode)
        for seed in seeds:
            hits, ranks, seconds = {"a": 0, "b": 0}, [], []
            for text_a, text_b, word_a, word_b in pairs:
                start = time.perf_counter()
                e = conjure.explain(model, text_a, text_b, images=False, leave_out=leave_out,
                                    samples=args.samples, seed=seed, guidance=args.guidance,
                                    steps=args.steps)
                c_a, c_b = [w.contribution for w in e.words_a], [w.contribution for w in e.words_b]
                seconds.append(time.perf_counter() - start)
                for which, text, word, c in (("a", text_a, word_a, c_a), ("b", text_b, word_b, c_b)):
                    r = rank_of(c, text.split().index(word))
                    hits[which] += r == 1
                    ranks.append(r)
                    if args.verbose:
                        print(f"  {mode} seed {seed} {text!r}: " + ", ".join(f"{w} {v:+.3g}" for w, v in
                              zip(text.split(), c)) + f"  -> {word!r} rank {r}", file=sys.stderr)
            n = len(pairs)
            print(f"| {mode} | {seed} | {hits['a']}/{n} | {hits['b']}/{n} | "
                  f"{100 * (hits['a'] + hits['b']) / (2 * n):.0f}% | {statistics.mean(ranks):.2f} | "
                  f"{statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f}) |", flush=True)


if __name__ == "__main__":
    main()
