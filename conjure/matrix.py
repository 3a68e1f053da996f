"""Many phrases at once: the N x N Jeffreys matrix, nearest neighbours, a ranking, and a 2-D map of meanings.

    import conjure
    m = conjure.similarity_matrix(model, ["leopard", "cheetah", "tiger", "house cat", "lion", "zebra"])
    m.jeffreys            # (N, N) Jeffreys divergences, zero diagonal, symmetric
    m.text_cosine         # (N, N) the text encoder's cosine similarities, for comparison
    m.images              # (N, H, W, 3) uint8: the image each phrase conjures
    m.nearest()           # [(phrase, nearest phrase, divergence), ...]
    m.mds()               # (N, 2) coordinates of the map of meanings
    conjure.rank(model, "leopard", ["cheetah", "zebra", "house cat"])   # JeffreysResults, most alike first

Every unordered pair {i, j}, i < j, is scored once by the estimator (`conjure.jeffreys.jeffreys_steps`),
`batch_size` pairs per batched model call per sampler step, so the matrix costs what `score_pairs` costs
for the same N(N-1)/2 pairs. Trajectory A of pair (i, j) runs under phrase i, trajectory B under phrase j,
so kl[i, j] = KL(P_i || P_j) and kl[j, i] = KL(P_j || P_i) come from the same pair.

The image of a phrase is the final state (noise sample 0) of that phrase's own trajectory in the first
pair that holds it: trajectory A, or B for the last phrase. Every trajectory under a phrase starts from the
same noise and draws the same step noise, whatever the other phrase is, so this is the image
`conjure.sample(model, [phrase], **settings)[0, 0]` draws (up to the float rounding of batching), at no
extra cost.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from conjure import calibration, validation
from conjure.errors import ConjureError
from conjure.jeffreys import JeffreysResult, dtype_name, jeffreys_steps, score_batches, summarize
from conjure.settings import LIMITS, Limits
from conjure.validation import Checked


def distinct_phrases(phrases: Iterable[str], name: str = "phrase") -> tuple[list[str], list[str]]:
    """The phrases, stripped, empty ones dropped and repeats kept once (first place), and the repeated phrases.

    Raises ConjureError for anything that is not text: a non-string, a string that cannot be
    written as UTF-8 (lone surrogates: undecodable bytes on a command line), or one of only control
    or invisible characters. `name` names the items in messages ("phrase 3", "candidate 3").
    """
    if isinstance(phrases, str) or not isinstance(phrases, Iterable):
        raise ConjureError(f"give the {name}s as a list of strings, not {type(phrases).__name__}")
    kept: list[str] = []
    seen: set[str] = set()
    repeated: list[str] = []
    for n, text in enumerate(phrases, 1):
        if not isinstance(text, str) or text.strip():
            validation.check_text(text, f"{name} {n}")
        text = text.strip()
        if not text:
            continue
        if text in seen:
            if text not in repeated:
                repeated.append(text)
            continue
        seen.add(text)
        kept.append(text)
    return kept, repeated


def classical_mds(squared: np.ndarray, dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Classical (Torgerson) MDS: coordinates whose squared Euclidean distances best fit `squared`.

    B = -1/2 J S J with J = I - 11^T/N (double centring); the coordinates are the top `dims`
    eigenvectors of B scaled by the square roots of their eigenvalues. Negative eigenvalues (a
    non-Euclidean input) are dropped. Each axis is signed so that its largest coordinate is
    positive, so the same input always gives the same picture. Returns (N, dims) coordinates and
    all eigenvalues of B, largest first.
    """
    s = np.asarray(squared, dtype=np.float64)
    n = len(s)
    centre = np.eye(n) - np.full((n, n), 1.0 / n)
    b = -0.5 * centre @ s @ centre
    values, vectors = np.linalg.eigh((b + b.T) / 2)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    coords = np.zeros((n, dims))
    use = min(dims, n)
    coords[:, :use] = vectors[:, :use] * np.sqrt(np.clip(values[:use], 0.0, None))
    for d in range(use):
        if coords[np.argmax(np.abs(coords[:, d])), d] < 0:
            coords[:, d] *= -1
    return coords, values


@dataclass
class MatrixResult:
    phrases: list[str]  # the N distinct phrases, in the order given (stripped, empty lines and repeats dropped)
    jeffreys: np.ndarray  # (N, N) Jeffreys divergence D_J (nats), symmetric, zero diagonal
    kl: np.ndarray  # (N, N) kl[i, j] = KL(P_i || P_j), along trajectories sampled under phrase i
    stderr: np.ndarray | None  # (N, N) standard error of D_J over the k noise samples; None for k = 1
    text_cosine: np.ndarray  # (N, N) cosine similarity of the model's own text embeddings (1 on the diagonal)
    images: np.ndarray  # (N, H, W, 3) uint8: the final image of each phrase's own trajectory (see the module doc)
    percentile: np.ndarray | None  # (N, N) % of random everyday pairs farther apart; None without a calibration
    duplicates: list[str]  # phrases given more than once: scored once, shown once
    truncated: list[bool]  # per phrase: cut to the text encoder's limit
    settings: dict  # the estimator settings (conjure.Settings as a dict)
    model: str
    dtype: str  # what the model computed in ("float32", "bfloat16", ...)
    seconds: float  # wall time of the whole matrix: scoring, images, text encoder and percentiles
    pair_results: list[JeffreysResult] = field(default_factory=list, repr=False)  # pair (i, j), i < j, row by row
    compiled: bool = False  # the UNet ran through torch.compile (load_model(compile=True))
    # with the setting cosine=True (else None): (N, N) the cosine of the two phrases' pulls (1 on the diagonal; nan
    # where a phrase does not move the model), and the % of random everyday pairs with a smaller cosine
    cosine: np.ndarray | None = None
    cosine_percentile: np.ndarray | None = None

    @property
    def pairs(self) -> int:
        return len(self.phrases) * (len(self.phrases) - 1) // 2

    @property
    def images_measure(self) -> str:
        """What "nearest by the images" reads: the cosine of the pulls where the matrix has it, else the divergence."""
        return "cosine" if self.cosine is not None else "jeffreys"

    @property
    def map_measure(self) -> str:
        """What the map of meanings and the heatmap of the images draw: `images_measure`, except that a matrix
        with a phrase that does not move the model (no cosine) falls back to the divergence."""
        if self.cosine is not None and np.isfinite(self.cosine).all():
            return "cosine"
        return "jeffreys"

    def nearest(self, by: str = "jeffreys") -> list[tuple[str, str, float]]:
        """For each phrase, (phrase, its nearest other phrase, the value): the smallest divergence, with
        by="cosine" the largest cosine of the pulls (a matrix made with cosine=True), or with by="text" the
        largest text-encoder cosine."""
        if by not in ("jeffreys", "cosine", "text"):
            raise ConjureError(f"nearest(by=...) is 'jeffreys', 'cosine' or 'text', got {by!r}")
        if by == "cosine" and self.cosine is None:
            raise ConjureError("this matrix has no cosines: make it with cosine=True")
        values = {"jeffreys": self.jeffreys, "cosine": self.cosine, "text": self.text_cosine}[by]
        order = np.nan_to_num(values if by == "jeffreys" else -values, nan=np.inf)  # smaller = nearer
        out = []
        for i, phrase in enumerate(self.phrases):
            j = int(np.argmin(np.where(np.arange(len(self.phrases)) == i, np.inf, order[i])))
            out.append((phrase, self.phrases[j], float(values[i, j])))
        return out

    def squared_distances(self, by: str = "jeffreys") -> np.ndarray:
        """What the map of meanings draws as squared distances: D_J itself, or with by="cosine" the squared chord
        2 (1 - cos) between the two phrases' pulls scaled to unit length (a matrix made with cosine=True, where
        every phrase moves the model)."""
        if by == "jeffreys":
            return self.jeffreys
        if by != "cosine":
            raise ConjureError(f"by=... is 'jeffreys' or 'cosine', got {by!r}")
        if self.cosine is None:
            raise ConjureError("this matrix has no cosines: make it with cosine=True")
        if not np.isfinite(self.cosine).all():
            raise ConjureError("a phrase that does not move the model has no cosine, so no place on its map; "
                               "use by='jeffreys'")
        return 2.0 * (1.0 - self.cosine)

    def mds(self, dims: int = 2, by: str = "jeffreys") -> np.ndarray:
        """(N, dims) coordinates of the map of meanings: classical MDS of `squared_distances(by)`.

        With D_J as the squared distance, sqrt(D_J) is the distance being drawn. D_J is a divergence, not a
        metric (the triangle inequality can fail), but it grows like a squared distance: between nearby
        processes a KL is half a squared (Fisher) length, and on a Gaussian model (x0 ~ N(m_y, I)) D_J is
        exactly c ||m_a - m_b||^2, so the map recovers the means' layout. With by="cosine" the drawn distance
        is sqrt(2 (1 - cos)), the chord between unit vectors at that cosine (on the Gaussian model, the layout
        of the means' directions). The part of the input that no Euclidean layout can show appears as negative
        eigenvalues, which are dropped (see `mds_share`).
        """
        return classical_mds(self.squared_distances(by), dims)[0]

    def mds_share(self, dims: int = 2, by: str = "jeffreys") -> float:
        """The share of the positive MDS spectrum that the first `dims` axes show (1 = the map is exact)."""
        values = classical_mds(self.squared_distances(by), dims)[1]
        positive = values[values > 0]
        return float(positive[:dims].sum() / positive.sum()) if positive.sum() > 0 else 1.0

    def to_dict(self) -> dict:
        """Everything but the images, as JSON-ready lists."""
        listed = lambda a: None if a is None else np.asarray(a).tolist()  # noqa: E731
        return {
            "phrases": self.phrases, "jeffreys": listed(self.jeffreys), "kl": listed(self.kl),
            "stderr": listed(self.stderr), "text_cosine": listed(self.text_cosine), "percentile": listed(self.percentile),
            "duplicates": self.duplicates, "truncated": self.truncated,
            "nearest": [{"phrase": p, "nearest": q, "jeffreys": v} for p, q, v in self.nearest()],
            "nearest_by_text": [{"phrase": p, "nearest": q, "cosine": v} for p, q, v in self.nearest("text")],
            "mds": listed(self.mds(by=self.map_measure)), "mds_share": self.mds_share(by=self.map_measure),
            "mds_by": self.map_measure,
            "pairs": self.pairs, "settings": self.settings, "model": self.model, "dtype": self.dtype,
            "compiled": self.compiled, "seconds": self.seconds,
            **({"cosine": [[None if math.isnan(v) else v for v in row] for row in self.cosine.tolist()],
                "cosine_percentile": listed(self.cosine_percentile),
                "nearest_by_cosine": [{"phrase": p, "nearest": q, "cosine": v} for p, q, v in self.nearest("cosine")]}
               if self.cosine is not None else {}),
        }

    def to_csv(self, which: str = "jeffreys") -> str:
        """The square matrix as CSV: a header row of phrases, then one row per phrase (full precision)."""
        values = {"jeffreys": self.jeffreys, "kl": self.kl, "text_cosine": self.text_cosine,
                  "percentile": self.percentile, "cosine": self.cosine}.get(which)
        if values is None:
            raise ConjureError(f"no {which!r} matrix (jeffreys, kl, text_cosine, percentile with a calibration, or "
                               "cosine of a matrix made with cosine=True)")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([which, *self.phrases])
        for phrase, row in zip(self.phrases, np.asarray(values)):
            writer.writerow([phrase, *(repr(float(v)) for v in row)])
        return out.getvalue()


@dataclass
class MatrixProgress:
    """One sampler step of one batch of pairs; the last event carries the result."""

    pairs_done: int  # pairs finished before this batch
    pairs: int  # N(N-1)/2
    batch: int  # 1-based
    batches: int
    step: int  # sampler step within the batch, 1-based
    steps: int
    result: MatrixResult | None = None


def check_phrases(phrases, limits: Limits = LIMITS, hint: str = "") -> tuple[list[str], list[str]]:
    """The distinct phrases of a matrix and the repeated ones: at least two, at most `limits.max_phrases`."""
    kept, repeated = distinct_phrases(phrases)
    if len(kept) < 2:
        only = f" (only {kept[0]!r}{', repeated' if repeated else ''})" if kept else ""
        raise ConjureError(f"a matrix needs at least two different phrases{only}")
    validation.check_count(len(kept), limits.max_phrases, "different phrases",
                           f"{hint} (every pair is scored: {len(kept) * (len(kept) - 1) // 2} pairs)")
    return kept, repeated


def check_matrix(model, phrases: list[str], settings, *, batch_size: int | None = None, limits: Limits = LIMITS,
                 lower: str = validation.LOWER, option: str = "batch_size") -> tuple[list[str], Checked]:
    """The rest of a matrix's checks once the model is loaded: each distinct phrase (from `check_phrases`) is read
    by its text encoder, and the run of N(N-1)/2 pairs fits the model, the limits and the memory."""
    phrases = [validation.check_text(p, f"phrase {i}", model) for i, p in enumerate(phrases, 1)]
    n = len(phrases)
    run = validation.check_run(model, settings, pairs=n * (n - 1) // 2, batch_size=batch_size, decoded_images=n,
                               limits=limits, lower=lower, option=option)
    return phrases, run


def matrix_steps(model, phrases: Sequence[str], *, batch_size: int | None = None, limits: Limits = LIMITS,
                 **settings) -> Iterator[MatrixProgress]:
    """Score every pair of distinct phrases, yielding after each sampler step (so a UI can report and stop)."""
    from conjure.models import load_model

    start = time.perf_counter()
    model, s = load_model(model), validation.make_settings(settings)
    phrases, duplicates = check_phrases(phrases, limits)
    phrases, run = check_matrix(model, phrases, s, batch_size=batch_size, limits=limits)
    yield from scored_matrix(model, phrases, duplicates, run, start)


@validation.reports_out_of_memory
def scored_matrix(model, phrases: list[str], duplicates: list[str], run: Checked,
                  start: float | None = None) -> Iterator[MatrixProgress]:
    """The work of `matrix_steps` on checked, distinct phrases (trusted: the entry point checked them)."""
    start = time.perf_counter() if start is None else start
    s, n = run.settings, len(phrases)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    batches = [pairs[b : b + run.batch_size] for b in range(0, len(pairs), run.batch_size)]

    jeffreys, kl, stderr = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    final: dict[int, torch.Tensor] = {}  # phrase -> final state of its first trajectory, noise sample 0
    truncated = [False] * n
    pair_results: list[JeffreysResult] = []
    done = 0
    for number, batch in enumerate(batches, 1):
        texts = [(phrases[i], phrases[j]) for i, j in batch]
        started, steps = time.perf_counter(), []
        for event in jeffreys_steps(model, texts, run):
            if event.index == s.steps - 1:  # the last step's x0 is the final state
                for p, (i, j) in enumerate(batch):
                    for trajectory, phrase in ((0, i), (1, j)):
                        if phrase not in final:
                            final[phrase] = event.x0[p, trajectory, 0].detach().clone()
            steps.append(replace(event, x0=None, eps_gap=None))
            yield MatrixProgress(done, len(pairs), number, len(batches), event.index + 1, s.steps)
        results = summarize(texts, steps, (time.perf_counter() - started) / len(batch), s, model, steps[-1].truncated)
        for (i, j), r in zip(batch, results):
            jeffreys[i, j] = jeffreys[j, i] = r.jeffreys
            kl[i, j], kl[j, i] = r.kl_ab, r.kl_ba
            stderr[i, j] = stderr[j, i] = r.stderr if r.stderr is not None else math.nan
            truncated[i] |= bool(r.truncated[0])
            truncated[j] |= bool(r.truncated[1])
        pair_results += results
        done += len(batch)

    images = model.decode(torch.stack([final[i] for i in range(n)]))
    embeddings = torch.nn.functional.normalize(torch.as_tensor(model.text_embedding(phrases)).float().flatten(1), dim=1)
    cosine = (embeddings @ embeddings.T).clamp(-1, 1).double().numpy()
    np.fill_diagonal(cosine, 1.0)
    found = calibration.find(model, s)
    calibration.set_percentiles(pair_results, found, s.weighting)
    percentile = pair_matrix(pairs, [r.percentile for r in pair_results], n, 100.0) if found is not None else None
    cosines = cosine_percentile = None
    if s.cosine:
        cosines = pair_matrix(pairs, [r.cosine for r in pair_results], n, 1.0)
        if found is not None and found.reference_cosines(s.weighting) is not None:
            cosine_percentile = pair_matrix(pairs, [r.cosine_percentile for r in pair_results], n, 100.0)
    result = MatrixResult(
        phrases=phrases, jeffreys=jeffreys, kl=kl, stderr=stderr if s.samples > 1 else None, text_cosine=cosine,
        images=np.asarray(images), percentile=percentile, duplicates=duplicates, truncated=truncated,
        settings=asdict(s), model=model.name, dtype=dtype_name(model), seconds=time.perf_counter() - start,
        pair_results=pair_results, compiled=getattr(model, "compiled", False), cosine=cosines,
        cosine_percentile=cosine_percentile,
    )
    yield MatrixProgress(len(pairs), len(pairs), len(batches), len(batches), s.steps, s.steps, result)


def pair_matrix(pairs: list[tuple[int, int]], values: list[float | None], n: int, diagonal: float) -> np.ndarray:
    """(N, N) symmetric from one value per pair (i, j), i < j (None as nan), `diagonal` on the diagonal."""
    out = np.full((n, n), diagonal)
    for (i, j), v in zip(pairs, values):
        out[i, j] = out[j, i] = math.nan if v is None else v
    return out


def similarity_matrix(model, phrases: Sequence[str], *, batch_size: int | None = None, progress: bool = False,
                      limits: Limits = LIMITS, **settings) -> MatrixResult:
    """The N x N Jeffreys matrix of distinct phrases, each pair scored once, `batch_size` pairs per model call
    (default: chosen from the model, device and memory).

    Repeated phrases are scored once (listed in `duplicates`), empty ones dropped; fewer than two
    different phrases is a ConjureError, and so are more than `limits.max_phrases` (100 by default:
    4,950 pairs; pass a larger `conjure.Limits` to go further). `progress=True` shows a progress bar of
    pairs. Settings as for `conjure.score` (steps, samples, guidance, seed, size, eta, weighting).
    """
    return collect(matrix_steps(model, phrases, batch_size=batch_size, limits=limits, **settings), progress)


def collect(events: Iterator[MatrixProgress], progress: bool = False) -> MatrixResult:
    """The result of a matrix's events, with a progress bar of pairs if asked."""
    from tqdm.auto import tqdm

    result, bar = None, None
    try:
        for event in events:
            if bar is None:  # made once the number of pairs is known, so it never shows an empty bar
                bar = tqdm(total=event.pairs, unit="pair", disable=not progress)
            bar.n = event.pairs_done if event.result is None else event.pairs
            bar.refresh()
            result = event.result
    finally:
        if bar is not None:
            bar.close()
    return result


def check_candidates(query, candidates, limits: Limits = LIMITS, hint: str = "") -> tuple[str, list[str], list[str]]:
    """A ranking's query (stripped), its distinct candidates (at most `limits.max_candidates`) and the repeated ones."""
    query = validation.check_text(query, "the query").strip()
    kept, repeated = distinct_phrases(candidates, "candidate")
    if not kept:
        raise ConjureError("no candidates to rank")
    validation.check_count(len(kept), limits.max_candidates, "different candidates", hint)
    return query, kept, repeated


def ranked(model, pairs: list[tuple[str, str]], run: Checked, progress: bool = False) -> list[JeffreysResult]:
    """The (query, candidate) pairs scored and sorted, most alike first: by the divergence, or with the setting
    cosine by the cosine (an undefined one last). Trusted: checked at the entry point."""
    results = score_batches(model, pairs, run, progress)
    calibration.add_percentiles(model, results, run.settings)
    if run.settings.cosine:
        return sorted(results, key=lambda r: -math.inf if r.cosine is None else r.cosine, reverse=True)
    return sorted(results, key=lambda r: r.jeffreys)


def rank(model, query: str, candidates: Sequence[str], *, batch_size: int | None = None, progress: bool = False,
         limits: Limits = LIMITS, **settings) -> list[JeffreysResult]:
    """The candidates sorted by Jeffreys divergence from `query` (with cosine=True by the cosine), most alike
    first: one result per distinct candidate (text_a = query, text_b = candidate; repeats and empty strings dropped), at most
    `limits.max_candidates` (1000 by default)."""
    from conjure.models import load_model

    model, s = load_model(model), validation.make_settings(settings)
    query, kept, _ = check_candidates(query, candidates, limits)
    pairs = validation.check_pairs([(query, c) for c in kept], model)
    run = validation.check_run(model, s, pairs=len(pairs), batch_size=batch_size, limits=limits)
    return ranked(model, pairs, run, progress)
