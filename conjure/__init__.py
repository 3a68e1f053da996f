"""conjure: semantic similarity of texts by the images they conjure.

    import conjure
    model = conjure.load_model()                       # the embedded emoji model; or "sd-v1-4", a folder, a hub id
    r = conjure.score(model, "snow leopard", "bengal tiger")
    r.jeffreys, r.kl_ab, r.kl_ba, r.stderr, r.per_step
    r = conjure.score(model, "snow leopard", "bengal tiger", cosine=True)
    r.cosine, r.cosine_percentile                      # the two texts' pulls as a cosine: 1 = the same
    for event in conjure.stream(model, "snow leopard", "bengal tiger"):
        event.step, event.image_a, event.image_b, event.jeffreys
    results = conjure.score_pairs(model, [("a", "b"), ...])            # batch size chosen from model and device
    m = conjure.similarity_matrix(model, ["leopard", "cheetah", "zebra"])    # N x N, images, map
    conjure.rank(model, "leopard", ["cheetah", "zebra"])                    # most alike first
    e = conjure.explain(model, "a black horse", "a white horse")            # each word's share, and where
    model = conjure.load_model(compile=True)           # torch.compile'd UNet: for long runs (docs/performance.md)

The divergence is the Jeffreys divergence between the reverse diffusion processes
that the model runs under each text (Liu & Soatto, "Conjuring Semantic
Similarity", ICLR 2026). Estimator settings are keyword arguments: steps,
samples, guidance, seed, size, eta, weighting, cosine (see `conjure.Settings`); the limits of one call
(phrases, candidates, morph stages, words) are `conjure.LIMITS` (see `conjure.Limits`).

    jeffreys.py      the estimator, top to bottom          sampler.py    the one sampler (schedule, noise)
    models/          the DiffusionModel protocol, adapters, loading and the alias table
    matrix.py        many phrases at once                  morph.py      the concept morph
    attribution.py   why two prompts differ: each word's contribution (conjure.explain)
    calibration.py   percentiles                           animation.py, figures.py   GIFs, videos, plots
    settings.py      Settings and Limits                   validation.py   the checks every entry point runs once
    text.py          emoji read as words
    cli.py, options.py, sts/   the command line and the STS benchmark
    app_handlers.py  the web app's server side (app.py at the top level only wires widgets to it)

Training the embedded model lives outside the package, in `training/`; nothing here imports it.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from conjure.errors import ConjureError, ModelLoadError, PromptTruncatedWarning
from conjure.calibration import add_percentiles
from conjure.jeffreys import JeffreysResult, StepEvent, jeffreys_steps, score_batches
from conjure.jeffreys import stream as _stream
from conjure import attribution, validation
from conjure.attribution import Explanation, WordContribution
from conjure.matrix import MatrixResult, rank, similarity_matrix
from conjure.models import MODEL_ALIASES, default_model, load_model
from conjure.settings import LIMITS, Limits, Settings

__all__ = [
    "load_model", "score", "score_pairs", "stream", "text_similarity", "sample",
    "Settings", "Limits", "JeffreysResult", "StepEvent", "ConjureError", "ModelLoadError", "PromptTruncatedWarning",
    "MODEL_ALIASES", "default_model", "similarity_matrix", "rank", "MatrixResult",
    "explain", "Explanation", "WordContribution",
]
__version__ = "0.1.0"

# Each function here is an entry point: it checks its input once (`conjure.validation.check_run`) and hands the
# checked run to the functions that do the work, which check nothing again.


def stream(model, text_a: str, text_b: str, *, previews: bool = True, decode_final: bool = True,
           **settings) -> Iterator[StepEvent]:
    """One StepEvent per sampler step (images, per-step KL, running totals); the last carries the result."""
    model = load_model(model)
    text_a, text_b = validation.check_pairs([(text_a, text_b)], model)[0]
    run = validation.check_run(model, settings)
    for event in _stream(model, text_a, text_b, run, previews=previews, decode_final=decode_final):
        if event.result is not None:
            add_percentiles(model, [event.result], run.settings)
        yield event


def score(model, text_a: str, text_b: str, **settings) -> JeffreysResult:
    """Jeffreys divergence between the reverse processes of two texts (smaller = more similar)."""
    *_, last = stream(model, text_a, text_b, previews=False, decode_final=False, **settings)
    return last.result


def score_pairs(model, pairs: Iterable[tuple[str, str]], *, batch_size: int | None = None, progress: bool = False,
                **settings) -> list[JeffreysResult]:
    """Score many pairs, `batch_size` pairs per model call (default: chosen from the model, device and memory,
    see `conjure.validation.auto_batch_size`); the same seed gives every pair the same noise."""
    model, s = load_model(model), validation.make_settings(settings)
    pairs = validation.check_pairs(pairs, model)  # every pair, before any is scored
    run = validation.check_run(model, s, pairs=len(pairs), batch_size=batch_size)
    results = score_batches(model, pairs, run, progress)
    add_percentiles(model, results, s)
    return results


def explain(model, text_a: str, text_b: str, *, batch_size: int | None = None, images: bool = True,
            leave_out: str = "auto", limits: Limits = LIMITS, **settings) -> Explanation:
    """Why the two texts differ: for each word of each prompt, how much D_J(a, b) falls when that word is left
    out of its prompt, and a map of where in the image it acts. See conjure.attribution and docs/explain.md.

    A one-word prompt without its word is the empty prompt (the model's unconditional input). At most
    `limits.max_words` (16) words per prompt; `images=False` skips decoding the final images.
    `leave_out`: "remove" the word from the text, or "mask" its tokens in the text encoder's output (models whose
    adapter can: the embedded model); "auto" masks where the model can, else removes.
    """
    model, s = load_model(model), validation.make_settings(settings)
    attribution.check_words(text_a, "A", limits)
    attribution.check_words(text_b, "B", limits)
    leave_out, run = attribution.check_explain(model, text_a, text_b, s, batch_size=batch_size, images=images,
                                               leave_out=leave_out, limits=limits)
    return attribution.explained(model, text_a, text_b, run, leave_out=leave_out, images=images)


def text_similarity(model, text_a: str, text_b: str) -> float:
    """Cosine similarity of the model's own text embeddings: the 'what the words say' baseline."""
    from conjure.models.base import cosine

    model = load_model(model)
    emb = model.text_embedding(list(validation.check_pairs([(text_a, text_b)], model)[0]))
    return cosine(emb[0], emb[1])


def sample(model, prompts: list[str], **settings) -> np.ndarray:
    """Images drawn under each prompt by the estimator's own sampler: uint8 (len(prompts), k, H, W, 3).

    A pair of identical prompts runs a single trajectory, so this costs one evaluation per
    prompt, sample and step.
    """
    model, s = load_model(model), validation.make_settings(settings)
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise ConjureError(f"prompts must be a list of strings, got {validation.describe(prompts)}")
    if not prompts:
        raise ConjureError("no prompts to sample")
    prompts = [validation.check_prompt(p, str(n), model) for n, p in enumerate(prompts, 1)]
    run = validation.check_run(model, s, pairs=len(prompts), batch_size=len(prompts),
                               decoded_images=len(prompts) * s.samples)
    *_, last = jeffreys_steps(model, [(p, p) for p in prompts], run)
    x0 = last.x0[:, 0]  # trajectory A of each pair: (N, k, C, H, W)
    try:
        images = model.decode(x0.flatten(0, 1))
    except Exception as err:
        if validation.is_out_of_memory(err):
            raise validation.out_of_memory("decode fewer prompts or samples at once") from None
        raise
    return images.reshape(*x0.shape[:2], *images.shape[1:])
