"""Why do two prompts differ (`conjure.explain`)? Each word's share of their divergence, and where it acts.

    import conjure
    e = conjure.explain(model, "a black horse", "a white horse")
    e.jeffreys                        # D_J(a, b), nats
    e.words_a, e.words_b              # WordContribution per word, in prompt order
    e.top("a").word                   # the word of prompt A that pushes the prompts apart most
    e.words_a[1].map                  # (H, W): where in the image that word acts; sums to its contribution

A word w of prompt a contributes what the divergence loses when w is left out of a:

    c(w) = D_J(a, b) - D_J(a without w, b)        (and likewise D_J(a, b) - D_J(a, b without v) for b)

Positive: the word pushes the prompts apart; negative: it pulls them together; about 0: the images do not
depend on it (as with Info-Decomp, Kong et al., ICLR 2024, which measures a word by the same epsilon gaps).

**Leaving a word out.** The prompt's words are split on whitespace (punctuation stays with its word, stop words
count like any other). Two ways were measured on the embedded model (`bench/bench_explain.py`, docs/explain.md):
removing the word from the text (the other words joined by single spaces, encoded afresh), and masking its
tokens in the text encoder's output (the full prompt encoded once; the word's token states dropped from the
cross-attention and from the pooled embedding). On the minimal pairs the differing word ranked first more often
when masked, at every seed tried, so where a model's adapter can mask (`encode_masked`: the embedded model,
MiniLM) that is what `leave_out="auto"` does; elsewhere (Stable Diffusion's CLIP, whose causal encoder would
keep the word in every later token's state, and whose pooled embedding SDXL reads) the word is removed from the
text. `Explanation.leave_out` says which. A one-word prompt without its word is the empty prompt, i.e. the
model's unconditional input (`model.encode_null()`, what classifier-free guidance uses), either way.

**Cost.** All variants run through the estimator's machinery at once (`conjure.jeffreys.conditioned_steps`):
one trajectory per distinct prompt (a, b and each variant), all from the same noise (common random numbers, so
a difference of two divergences is low-variance), one batched model call per step. With n_a and n_b words that
is 4 + 3(n_a + n_b) evaluations per step against a pair's 4: about 5.5x a score for two three-word prompts.
More leave-one-out pairs than `batch_size` (chosen from the model, the device and its memory when not given)
run in chunks, each with the full pair again; the same noise makes each chunk's D_J(a, b) the same.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

from conjure import validation
from conjure.errors import ConjureError
from conjure.jeffreys import conditioned_steps, dtype_name
from conjure.models.base import Conditioning
from conjure.settings import LIMITS, Limits
from conjure.validation import Checked

# How a word is left out (see the module docstring): "mask" where the model's adapter can mask a word's tokens
# (`encode_masked`: the embedded model), else "remove"; "auto" picks so.
LEAVE_OUT = {"remove": "removed from the text", "mask": "its tokens masked in the text encoder's output"}
LOWER = "lower samples (k), the image size or the batch size, or use fewer words"

# Minimal pairs: exactly one word differs (the last two fields). Each prompt names one thing the embedded emoji
# model draws (an emoji concept); the shared words only qualify it (articles, "a slice of", a size, an age, a
# colour), and the differing word changes what is drawn. The differing word should carry the largest
# contribution in its prompt (tests/test_attribution.py; docs/explain.md gives the hit rate and why prompts that
# name two things, "a boy with a kite", are left out: see `TWO_THINGS` in bench/bench_explain.py).
MINIMAL_PAIRS = [
    ("a black horse", "a white horse", "black", "white"),
    ("a cute cat", "a cute dog", "cat", "dog"),
    ("a green apple", "a green pear", "apple", "pear"),
    ("a slice of pizza", "a slice of cake", "pizza", "cake"),
    ("a yellow car", "a yellow bus", "car", "bus"),
    ("the bright sun", "the bright moon", "sun", "moon"),
    ("a smiling face", "a crying face", "smiling", "crying"),
    ("a big tiger", "a big snake", "tiger", "snake"),
    ("a cup of coffee", "a cup of tea", "coffee", "tea"),
    ("a blue heart", "a green heart", "blue", "green"),
    ("a happy man", "a happy woman", "man", "woman"),
    ("a fresh banana", "a fresh carrot", "banana", "carrot"),
    ("a small airplane", "a small rocket", "airplane", "rocket"),
    ("a small fish", "a small whale", "fish", "whale"),
    ("a lion face", "a monkey face", "lion", "monkey"),
    ("a snowy mountain", "a snowy house", "mountain", "house"),
    ("a glass of wine", "a glass of milk", "wine", "milk"),
    ("heavy rain", "heavy snow", "rain", "snow"),
    ("a purple flower", "a purple umbrella", "flower", "umbrella"),
    ("an old drum", "an old trumpet", "drum", "trumpet"),
    ("an old key", "an old clock", "key", "clock"),
    ("a little chick", "a little penguin", "chick", "penguin"),
]


# --- the words of a prompt ------------------------------------------------------------------------------


def words_of(text: str) -> list[str]:
    """The words of a prompt: split on whitespace, punctuation kept with its word ("a dog," -> ["a", "dog,"])."""
    return text.split()


def without_word(words: Sequence[str], i: int) -> str:
    """The prompt with word i left out: the other words joined by single spaces ("" when it was the only one)."""
    return " ".join(w for j, w in enumerate(words) if j != i)


def check_words(text, which: str, limits: Limits = LIMITS) -> list[str]:
    """A prompt's words, or a ConjureError: not a string, empty, or more than `limits.max_words` words."""
    words = words_of(validation.check_prompt(text, which))
    if limits.max_words is not None and len(words) > limits.max_words:
        raise ConjureError(f"prompt {which} has {len(words)} words; explain takes at most {limits.max_words} per "
                           "prompt (each word left out is one more trajectory to run): shorten it")
    return words


# --- results ---------------------------------------------------------------------------------------------


@dataclass
class WordContribution:
    word: str
    contribution: float  # D_J(a, b) - D_J(with this word left out), nats; > 0: the word pushes the prompts apart
    stderr: float | None  # standard error of the contribution over the k noise samples (None for k = 1)
    without: str  # the prompt with the word left out; "" is the empty prompt (the model's unconditional input)
    # (H, W) float64, the state's grid: per position, the contribution's share (summed over channels, the
    # weighted per-pixel gap terms of D_J(a, b) minus those of the variant); sums to `contribution`.
    map: np.ndarray | None = field(default=None, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)  # uint8 HWC: the final image under `without`

    def to_dict(self) -> dict:
        return {"word": self.word, "contribution": self.contribution, "stderr": self.stderr}


@dataclass
class Explanation:
    text_a: str
    text_b: str
    jeffreys: float  # D_J(a, b), nats, mean over samples
    stderr: float | None  # of jeffreys over the k samples (None for k = 1)
    words_a: list[WordContribution]  # in prompt order
    words_b: list[WordContribution]
    settings: dict  # the estimator settings (conjure.Settings as a dict)
    model: str
    dtype: str
    seconds: float  # wall time of the whole explanation
    compiled: bool = False
    leave_out: str = "remove"  # how each word was left out: "remove" or "mask" (LEAVE_OUT says what they mean)
    truncated: list[bool] = field(default_factory=lambda: [False, False])
    images: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # final images under a and b

    def top(self, which: str) -> WordContribution:
        """The word of prompt "a" or "b" with the largest contribution (the first such, on a tie)."""
        if which not in ("a", "b", "A", "B"):
            raise ConjureError(f"which prompt: 'a' or 'b', got {which!r}")
        words = self.words_a if which in ("a", "A") else self.words_b
        return max(words, key=lambda w: w.contribution)

    def top_pushing(self, which: str) -> WordContribution | None:
        """`top(which)` where it pushes the prompts apart (contribution > 0); None where every word of the prompt
        pulls them together, so that no word is named as the reason they differ."""
        top = self.top(which)
        return top if top.contribution > 0 else None

    def to_dict(self) -> dict:
        """JSON-ready: texts, jeffreys, words_a and words_b ([{"word", "contribution", "stderr"}] in prompt
        order), the settings and how it was computed; no maps or images."""
        return {"text_a": self.text_a, "text_b": self.text_b, "jeffreys": self.jeffreys, "stderr": self.stderr,
                "words_a": [w.to_dict() for w in self.words_a], "words_b": [w.to_dict() for w in self.words_b],
                "settings": self.settings, "model": self.model, "dtype": self.dtype, "compiled": self.compiled,
                "leave_out": self.leave_out, "truncated": self.truncated, "seconds": self.seconds}


# --- the estimator over leave-one-out variants -------------------------------------------------------------


@dataclass
class LeaveOneOut:
    """The raw numbers of one explanation: D_J per sample of the full pair and of every variant pair."""

    full: torch.Tensor  # (k,) D_J(a, b) per noise sample
    variants: torch.Tensor  # (V, k) D_J of each variant pair per sample (V = n_a + n_b, words of a first)
    full_map: torch.Tensor  # (H, W) the full pair's D_J per position (mean over samples)
    variant_maps: torch.Tensor  # (V, H, W)
    images: np.ndarray | None  # (2 + V, H, W, 3) uint8: final images under a, b and each variant (sample 0)


def pixel_terms(weight: float, eps_gap: torch.Tensor) -> torch.Tensor:
    """w_i/2 * sum over channels of (eps_a - eps_b)^2 per position, summed over both trajectories, mean over
    samples: (P, 2, k, C, H, W) -> (P, H, W). Summed over positions and steps it is each pair's D_J."""
    return (weight / 2) * eps_gap.double().pow(2).sum(3).sum(1).mean(1).cpu()


def run_pairs(model, cond: Conditioning, pairs: list[tuple[int, int]], run: Checked,
              decode: bool) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    """Run `pairs` (rows of `cond`) through the estimator in one batch: per-sample D_J (P, k), per-position D_J
    (P, H, W), and the final images of each pair's two trajectories, sample 0 (P, 2, H, W, 3), if `decode`."""
    rows = sorted({u for pair in pairs for u in pair})  # the estimator runs a trajectory for every row it gets
    local = {u: i for i, u in enumerate(rows)}
    kl = maps = x0 = None
    try:
        for step in conditioned_steps(model, cond.take(rows), [(local[a], local[b]) for a, b in pairs], run):
            terms, here = step.kl_ab + step.kl_ba, pixel_terms(step.weight, step.eps_gap)
            kl, maps = (terms, here) if kl is None else (kl + terms, maps + here)
            x0 = step.x0
        images = None
        if decode:
            images = model.decode(x0[:, :, 0].flatten(0, 1))
            images = images.reshape(len(pairs), 2, *images.shape[1:])
    except Exception as err:  # the estimator's steps or the decoding
        if isinstance(err, validation.OutOfMemory) or validation.is_out_of_memory(err):
            raise validation.out_of_memory(LOWER) from None
        raise
    return kl / 2, maps, images


def leave_one_out(model, cond: Conditioning, full: tuple[int, int], rows_a: Sequence[int], rows_b: Sequence[int],
                  run: Checked, decode: bool = True) -> LeaveOneOut:
    """D_J of the full pair and of every variant pair, all from the same noise.

    `full` = (row of a, row of b) in `cond`; `rows_a` are the rows of a's variants (each compared with b),
    `rows_b` those of b's (each compared with a). At most `run.batch_size` pairs per model call: the variant
    pairs run in chunks of batch_size - 1, each chunk with the full pair first.
    """
    ra, rb = full
    variant_pairs = [(u, rb) for u in rows_a] + [(ra, v) for v in rows_b]
    per_chunk = max(1, run.batch_size - 1)
    j_full = map_full = images_full = None
    j_variants, maps_variants, images_variants = [], [], []
    for start in range(0, max(len(variant_pairs), 1), per_chunk):
        chunk = variant_pairs[start : start + per_chunk]
        j, maps, images = run_pairs(model, cond, [full] + chunk, run, decode)
        if j_full is None:  # every chunk's full pair is the same (same noise); the first one's is kept
            j_full, map_full = j[0], maps[0]
            images_full = None if images is None else images[0]
        j_variants.append(j[1:])
        maps_variants.append(maps[1:])
        if images is not None:  # each variant's own trajectory: A for a's words, B for b's
            own = np.array([0 if n < len(rows_a) else 1 for n in range(start, start + len(chunk))])
            images_variants.append(images[1:][np.arange(len(chunk)), own])
    images = None
    if images_full is not None:
        images = np.concatenate([images_full, *images_variants])
    return LeaveOneOut(j_full, torch.cat(j_variants), map_full, torch.cat(maps_variants), images)


def contributions(words: Sequence[str], full: torch.Tensor, variants: torch.Tensor, full_map: torch.Tensor,
                  variant_maps: torch.Tensor, images: np.ndarray | None) -> list[WordContribution]:
    """One WordContribution per word: D_J(a, b) - D_J(variant), with its standard error and map."""
    out = []
    for i, word in enumerate(words):
        c = full - variants[i]  # (k,) per noise sample: low-variance, both from the same noise
        k = len(c)
        out.append(WordContribution(
            word=word, contribution=float(c.mean()),
            stderr=float(c.std(unbiased=True) / math.sqrt(k)) if k > 1 else None,
            without=without_word(words, i), map=(full_map - variant_maps[i]).numpy(),
            image=None if images is None else images[i],
        ))
    return out


def check_leave_out(model, leave_out) -> str:
    """"remove" or "mask" for this model: "auto" is "mask" where the adapter can mask a word's tokens."""
    if leave_out not in ("auto", *LEAVE_OUT):
        raise ConjureError(f"leave_out must be 'auto', 'remove' or 'mask', got {validation.describe(leave_out)}")
    can_mask = callable(getattr(model, "encode_masked", None))
    if leave_out == "mask" and not can_mask:
        raise ConjureError(f"{model.name} cannot mask a word's tokens (its adapter has no encode_masked); "
                           "use leave_out='remove'")
    return leave_out if leave_out != "auto" else "mask" if can_mask else "remove"


def check_explain(model, text_a: str, text_b: str, settings, *, batch_size: int | None = None, images: bool = True,
                  leave_out: str = "auto", limits: Limits = LIMITS, lower: str = LOWER,
                  option: str = "batch_size") -> tuple[str, Checked]:
    """The rest of an explanation's checks once the model is loaded (each prompt's words are checked before it,
    `check_words`): how this model leaves a word out, that its text encoder reads both prompts, and that the run
    of 1 + n_a + n_b pairs fits the model, the limits and, a chunk of `batch_size` pairs at a time, the memory.
    Returns ("remove" or "mask", the checked run)."""
    leave_out = check_leave_out(model, leave_out)
    validation.check_readable(model, [("prompt A", text_a), ("prompt B", text_b)])
    pairs = 1 + len(words_of(text_a)) + len(words_of(text_b))
    run = validation.check_run(model, settings, pairs=pairs, batch_size=batch_size,
                               decoded_images=2 * pairs if images else 0, limits=limits, memory=False, option=option)
    chunk = min(run.batch_size, pairs)  # each chunk decodes the final images of its pairs' two trajectories
    validation.check_memory(model, run.settings, chunk, decoded_images=2 * chunk if images else 0, lower=lower)
    return leave_out, run


def explained(model, text_a: str, text_b: str, run: Checked, *, leave_out: str, images: bool = True) -> Explanation:
    """Each word's contribution to D_J(a, b): how much the divergence falls when the word is left out of its
    prompt (the only word of a prompt becomes the empty prompt). See the module docstring.

    Trusts its input: `check_words` and `check_explain` checked it at the entry point (`conjure.explain`, the CLI,
    the app)."""
    start = time.perf_counter()
    words_a, words_b = words_of(text_a), words_of(text_b)
    variants = [without_word(words_a, i) for i in range(len(words_a))] + \
        [without_word(words_b, i) for i in range(len(words_b))]
    if leave_out == "mask":  # rows: a, b, a's words masked in turn, then b's
        cond = Conditioning.cat([model.encode([text_a, text_b]), model.encode_masked(words_a),
                                 model.encode_masked(words_b)])
        full, rows = (0, 1), list(range(2, 2 + len(variants)))
        truncated = [bool(t) for t in cond.truncated[:2]] if cond.truncated else [False, False]
    else:  # one row per distinct text (a, b and the variants, encoded in one call); "" (a one-word prompt without
        # its word) is the model's unconditional input, its null row
        distinct = list(dict.fromkeys(t for t in [text_a, text_b, *variants] if t))
        row_of = {t: i for i, t in enumerate(distinct)}
        cond = model.encode(distinct)
        truncated = [bool(cond.truncated[row_of[t]]) if cond.truncated else False for t in (text_a, text_b)]
        if "" in variants:
            row_of[""] = len(distinct)
            cond = Conditioning.cat([cond, model.encode_null()])
        full, rows = (row_of[text_a], row_of[text_b]), [row_of[t] for t in variants]
    out = leave_one_out(model, cond, full, rows[: len(words_a)], rows[len(words_a):], run, decode=images)
    if not (torch.isfinite(out.full).all() and torch.isfinite(out.variants).all()):
        raise ConjureError(f"the divergence for ({text_a!r}, {text_b!r}) or a variant is not finite: the model "
                           "produced NaN or inf (half precision overflow? try dtype float32)")

    n_a = len(words_a)
    variant_images = out.images[2:] if out.images is not None else None
    full = out.full
    k = len(full)
    return Explanation(
        text_a=text_a, text_b=text_b, jeffreys=float(full.mean()),
        stderr=float(full.std(unbiased=True) / math.sqrt(k)) if k > 1 else None,
        words_a=contributions(words_a, full, out.variants[:n_a], out.full_map, out.variant_maps[:n_a],
                              None if variant_images is None else variant_images[:n_a]),
        words_b=contributions(words_b, full, out.variants[n_a:], out.full_map, out.variant_maps[n_a:],
                              None if variant_images is None else variant_images[n_a:]),
        settings=asdict(run.settings), model=model.name, dtype=dtype_name(model),
        seconds=time.perf_counter() - start, compiled=getattr(model, "compiled", False), leave_out=leave_out,
        truncated=truncated,
        images=None if out.images is None else (out.images[0], out.images[1]),
    )
