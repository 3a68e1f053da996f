"""The estimator: Jeffreys divergence between the reverse diffusion processes of two prompts.

Both trajectories start from the same noise x_T. Trajectory A is sampled under
prompt a, trajectory B under prompt b, with the same ancestral sampler (DDIM with
eta > 0; eta = 1 is DDPM). At every visited state x_i (step i = 0..T-1, timestep t_i)
the model is evaluated under both prompts, giving the squared prediction gap

    g_i = ||eps(x_i|a) - eps(x_i|b)||^2.

KL(A||B) sums w_i g_i along trajectory A, KL(B||A) along trajectory B, and
D_J = (KL(A||B) + KL(B||A)) / 2, averaged over k noise samples. The weighting w_i says
which quantity the sum estimates:

- "girsanov" (default): the continuous-time divergence the paper defines. By Girsanov's
  theorem the KL between two reverse SDEs that differ only in their drift is
  1/2 int E||drift_a - drift_b||^2 / g(t)^2 dt; for the VP process in epsilon form that is
  c(eta)/2 int ||eps_a - eps_b||^2 d(lambda), lambda = log SNR = log(abar / (1 - abar)), and
  c(eta) = (1 + eta^2)^2 / (4 eta^2) for the DDIM-eta family (c = 1 for DDPM). The integral over
  [t_0, t_{T-1}] is taken by the trapezoid rule in lambda, w_i = c/4 (lambda_{i+1} - lambda_{i-1})
  (one-sided at the ends), which uses every evaluated state. The sampler's last stochastic
  step spans a large lambda interval (t = 101 -> 1 at 10 steps: 3.7 -> 10.4 on the cosine
  schedule); the trapezoid splits it between both ends instead of charging it all to x_101.
- "exact": the KL between the two T-step Markov chains themselves. A step t -> s is Gaussian
  with mean mu(x_t|y) and a prompt-independent variance sigma^2, so
  KL_step = ||mu_a - mu_b||^2 / (2 sigma^2) = w(t,s) g_t, with w = 1/2 (SNR_s/SNR_t - 1) at eta = 1.
  It tends to the girsanov value as T grows, but at T = 10 the last stochastic step's weight
  (about 170 on the embedded model, against 0.4-1.6 for the others) makes it nearly the whole score.
- "girsanov-left": the same integral by the left-point rule, w_i = c/2 (lambda_{i+1} - lambda_i).
- "uniform": 1/2 g_i per stochastic step (an ablation: no weighting at all).

The final step, which outputs the clean image, has sigma = 0 and lambda = inf: no chain KL
term, and the integral ends at t_{T-1}. Results keep the unweighted gaps g_i of both
trajectories (`per_step["gap_a"]`, `["gap_b"]`), so `reweight` recomputes any weighting,
direction or subset of steps without running the model again.

Per step, one batched model call evaluates eps(x_A|a), eps(x_A|b), eps(x_B|a),
eps(x_B|b) (and eps(x_A|null), eps(x_B|null) under classifier-free guidance) for
every sample of every pair in the batch. Noise depends only on the seed, so all pairs
share it (common random numbers): rankings across pairs are not noise. It also makes a
prompt's trajectory the same in every pair it is part of, so a batch runs one trajectory
per distinct prompt and makes each evaluation once however many pairs read it (N phrases
against each other: N^2 evaluations per step, not 4 per pair); at the first step, where
every trajectory is still at x_T, one evaluation per distinct prompt serves them all.

The cosine (setting `cosine=True`) turns the divergence into a similarity on a fixed scale. At
every visited state the model is also evaluated under the null prompt (no text), and each text's
pull on the model, u = eps(x|a) - eps(x|null) and v = eps(x|b) - eps(x|null), is weighted as the
gaps are: P_a = sum_i w_i (||u||^2 at x_A + at x_B) / 2, likewise P_b, so that D_J = P_a + P_b - 2 U
with U the same sum of <u, v>. The cosine of the two pulls is then

    cos(a, b) = U / sqrt(P_a P_b) = (P_a + P_b - D_J) / (2 sqrt(P_a P_b)),

the law of cosines with D_J as the squared distance and the null prompt as the origin. It is 1 for
identical texts, near 0 for texts that move the model in unrelated directions, and in [-1, 1]; it no
longer grows with how strongly each text alone moves the model (a vague word pulls little, a vivid
one a lot), which the raw divergence mixes into every pair. Under classifier-free guidance the null
evaluations are already made, and guidance scales both pulls alike, so the cosine is free and does
not depend on the scale; without guidance it costs two more evaluations per pair and step (6, not 4).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np
import torch

from conjure import validation
from conjure.errors import ConjureError
from conjure.models.base import Conditioning
from conjure.sampler import advance, common_noise, ddim_sigma, guided, schedule, uses_null_prompt, with_guidance
from conjure.settings import WEIGHTINGS, Settings  # noqa: F401 (Settings: where the estimator's users look)
from conjure.validation import Checked


# --- the weights of the per-step gaps (the sampler itself is conjure.sampler) -------------


def kl_weight(abar_t: float, abar_s: float, eta: float) -> float:
    """w(t, s) with the chain's KL_step = w * ||eps_a - eps_b||^2 at a shared state; 0 for the noise-free last step.

    mu is linear in eps with coefficient c = sqrt(1 - abar_s - sigma^2) - sqrt(abar_s (1 - abar_t) / abar_t),
    so ||mu_a - mu_b||^2 / (2 sigma^2) = c^2 / (2 sigma^2) * ||eps_a - eps_b||^2.
    """
    sigma = ddim_sigma(abar_t, abar_s, eta)
    if sigma == 0.0:
        return 0.0
    c = math.sqrt(max(1 - abar_s - sigma**2, 0.0)) - math.sqrt(abar_s * (1 - abar_t) / abar_t)
    return c * c / (2 * sigma**2)


def log_snr(abar: float) -> float:
    """lambda = log(abar / (1 - abar))."""
    return math.log(abar / (1 - abar))


def girsanov_factor(eta: float) -> float:
    """c(eta) = (1 + eta^2)^2 / (4 eta^2): the continuous KL per unit of 1/2 ||d eps||^2 d(lambda) (1 for DDPM)."""
    return (1 + eta**2) ** 2 / (4 * eta**2)


def step_weights(abars: Sequence[float], eta: float, weighting: str) -> list[float]:
    """w_i for the T evaluated states, abars[i] = abar at step i's timestep (the step after the last outputs x0)."""
    T = len(abars)
    if weighting == "exact":
        return [kl_weight(abars[i], abars[i + 1] if i + 1 < T else 1.0, eta) for i in range(T)]
    if weighting == "uniform":
        return [0.5] * (T - 1) + [0.0]
    lam, c = [log_snr(a) for a in abars], girsanov_factor(eta)
    if weighting == "girsanov-left":
        return [c / 2 * (lam[i + 1] - lam[i]) for i in range(T - 1)] + [0.0]
    if weighting == "girsanov":  # trapezoid rule on [lambda_0, lambda_{T-1}]
        return [c / 4 * (lam[min(i + 1, T - 1)] - lam[max(i - 1, 0)]) for i in range(T)]
    raise ConjureError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")


def cosine_from_pulls(jeffreys: float, pull_a: float, pull_b: float) -> float | None:
    """The law of cosines (see the module docstring): (P_a + P_b - D_J) / (2 sqrt(P_a P_b)); None where a text
    does not move the model at all (a pull of 0), since the angle of a zero pull is undefined. The three sums come
    from the same states, so the value is in [-1, 1]; the clamp only removes float rounding."""
    if not (pull_a > 0 and pull_b > 0):
        return None
    return min(1.0, max(-1.0, (pull_a + pull_b - jeffreys) / (2 * math.sqrt(pull_a * pull_b))))


# --- results ------------------------------------------------------------------------


def dtype_name(model) -> str:
    return str(model.dtype).removeprefix("torch.")


def computed_in(dtype: str, compiled: bool) -> str:
    """How a result was computed, for headers and reports: "bfloat16", or "bfloat16, compiled"."""
    return f"{dtype.removeprefix('torch.')}, compiled" if compiled else dtype.removeprefix("torch.")


@dataclass
class JeffreysResult:
    text_a: str
    text_b: str
    jeffreys: float  # (kl_ab + kl_ba) / 2, mean over samples
    kl_ab: float  # KL(P_a || P_b), along trajectories sampled under a
    kl_ba: float
    stderr: float | None  # standard error of jeffreys over the k samples (None for k = 1)
    # Per sampler step, means over samples: "timestep", "abar" (abar of the timestep), "weight" (w_i),
    # "kl_ab", "kl_ba" (the weighted terms, summing to kl_ab and kl_ba), and "gap_a", "gap_b": the unweighted
    # ||eps(x|a) - eps(x|b)||^2 at trajectory A's and B's states, from which `reweight` recomputes any weighting;
    # with cosine=True also "pull_a", "pull_b": ||eps(x|a) - eps(x|null)||^2 (and b's), the mean over both states.
    per_step: dict
    per_sample: list[float]  # jeffreys of each noise sample
    seconds: float
    settings: dict
    model: str
    dtype: str  # what the model computed in ("float32", "bfloat16", ...): it moves a score's last digits
    compiled: bool = False  # the UNet ran through torch.compile (load_model(compile=True)), which moves them too
    truncated: list[bool] = field(default_factory=lambda: [False, False])
    # The texts the encoder read where it could not read the given ones as they were (emoji it cannot read
    # became their names, see conjure.text); None where a prompt was read as given.
    rewritten: list[str | None] = field(default_factory=lambda: [None, None])
    dims: int = 0  # numbers in one state (C*H*W): divide by it to compare models with different state sizes
    percentile: float | None = None  # % of random everyday phrase pairs that are farther apart (see conjure.calibration)
    # With cosine=True (else None): [P_a, P_b], each text's weighted squared pull away from the null prompt at the
    # pair's states (per step: per_step["pull_a"], ["pull_b"]); the cosine of the two pulls (`cosine_from_pulls`);
    # and the % of random everyday phrase pairs with a smaller cosine.
    pulls: list[float] | None = None
    cosine: float | None = None
    cosine_percentile: float | None = None
    images: tuple[np.ndarray, np.ndarray] | None = None  # final sample 0 of trajectories A and B (uint8 HWC)

    @property
    def jeffreys_per_dim(self) -> float:
        return self.jeffreys / self.dims if self.dims else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("images")
        d["jeffreys_per_dim"] = self.jeffreys_per_dim
        return d


@dataclass
class StepEvent:
    """One sampler step of one pair, as streamed to a UI."""

    step: int  # 1-based
    steps: int
    timestep: int
    kl_ab: float  # this step's term along trajectory A (mean over samples)
    kl_ba: float
    total_kl_ab: float  # running sums
    total_kl_ba: float
    jeffreys: float  # running (total_kl_ab + total_kl_ba) / 2
    image_a: np.ndarray | None  # predicted clean image of trajectory A, sample 0 (cheap preview)
    image_b: np.ndarray | None
    difference: np.ndarray | None  # per-pixel ||eps(x_A|a) - eps(x_A|b)|| at trajectory A's state, sample 0
    result: JeffreysResult | None = None  # set on the last event


@dataclass
class Evaluations:
    """The model evaluations of one step of a batch: eps(x[states[j]] | rows[j]) for every j."""

    states: torch.Tensor  # (E,) which trajectory's state each evaluation is at
    rows: Conditioning  # E * k conditioning rows (each repeated for the k noise samples)
    serves: torch.Tensor  # (len(needed),) which evaluation serves each needed (trajectory, prompt)


@dataclass
class BatchStep:
    """One sampler step of a batch of P pairs; arrays have shape (P, k)."""

    index: int
    timestep: int
    abar: float  # abar of the timestep
    weight: float  # w_i: this step's KL terms are weight * gap_sq
    gap_sq: torch.Tensor  # (P, 2, k) ||eps(x|a) - eps(x|b)||^2 at trajectory A's [:, 0] and B's [:, 1] states
    kl_ab: torch.Tensor
    kl_ba: torch.Tensor
    x0: torch.Tensor  # (P, 2, k, C, H, W) predicted clean states of trajectories A and B
    eps_gap: torch.Tensor  # (P, 2, k, C, H, W) eps(x|a) - eps(x|b) at each trajectory's state
    truncated: list[list[bool]]
    rewritten: list[list[str | None]] = field(default_factory=list)  # per pair: the texts read, where rewritten
    # with cosine=True: (P, 2, 2, k) ||eps(x|prompt) - eps(x|null)||^2 at [:, trajectory, prompt a or b]
    pull_sq: torch.Tensor | None = None


# --- the estimator ----------------------------------------------------------------


@validation.reports_out_of_memory
def jeffreys_steps(model, pairs: Sequence[tuple[str, str]], run: Checked) -> Iterator[BatchStep]:
    """Run both trajectories of every pair, one batched model call per step; yield each step's KL terms.

    Trusts its input: the pairs and `run` were checked at the entry point (`conjure.score`, the CLI, the app).
    """
    # Text is encoded once per distinct prompt.
    prompts = sorted({p for pair in pairs for p in pair})
    row_of = {p: i for i, p in enumerate(prompts)}
    cond = model.encode(prompts)
    truncated = [[cond.truncated[row_of[a]], cond.truncated[row_of[b]]] if cond.truncated else [False, False]
                 for a, b in pairs]
    rewritten = [[cond.rewritten[row_of[a]], cond.rewritten[row_of[b]]] if cond.rewritten else [None, None]
                 for a, b in pairs]
    yield from conditioned_steps(model, cond, [(row_of[a], row_of[b]) for a, b in pairs], run, truncated, rewritten)


@validation.reports_out_of_memory
def conditioned_steps(model, cond: Conditioning, pairs: Sequence[tuple[int, int]], run: Checked,
                      truncated: list[list[bool]] | None = None,
                      rewritten: list[list[str | None]] | None = None) -> Iterator[BatchStep]:
    """`jeffreys_steps` on conditioning rows instead of texts: pair p compares rows pairs[p] of `cond`.

    For callers that build conditioning themselves (`conjure.explain` leaves words out, and compares a
    one-word prompt against the model's unconditional input). Every row must belong to a pair (each row is a
    trajectory). Trusts `run`, checked at the entry point.
    """
    settings, size = run.settings, run.size
    # Guidance: an unconditional branch, or for a guidance-distilled model (Flux-dev) an input of each row.
    # The cosine reads every state under the null prompt too (guidance already does, where it guides by it).
    k, guide = settings.samples, uses_null_prompt(model, settings.guidance)
    use_null = guide or settings.cosine
    truncated = truncated or [[False, False] for _ in pairs]
    rewritten = rewritten or [[None, None] for _ in pairs]
    n_rows = null = len(cond)
    if use_null:  # the null prompt is the last row (with the guidance input too, on a model that takes one)
        cond = Conditioning.cat([cond, model.encode_null()])
    cond = with_guidance(model, cond, settings.guidance)
    pairs = [(int(a), int(b)) for a, b in pairs]

    # One trajectory per distinct prompt, sampled under it: with common random numbers a prompt's trajectory
    # is the same in every pair it is part of, so the batch runs it once (trajectory u = prompt row u).
    # A pair (a, b) reads eps(x_u | v) for u, v in {a, b} (and v = null under guidance); each such
    # evaluation is made once per step however many pairs read it.
    if {u for pair in pairs for u in pair} != set(range(n_rows)):
        raise ValueError("every conditioning row must belong to a pair (each row is a trajectory)")
    needed = sorted({(u, v) for pair in pairs for u in pair for v in pair}
                    | ({(u, null) for u in range(n_rows)} if use_null else set()))
    column = {uv: j for j, uv in enumerate(needed)}
    trajectories = torch.tensor(pairs)  # (P, 2): pair p's A and B
    # eps[p, trajectory, slot] = evaluation reads[p, trajectory, slot]; slots: prompt a, prompt b, null
    # (without guidance or the cosine the null slot repeats prompt a's and is never used).
    reads = torch.tensor([[[column[(u, a)], column[(u, b)], column[(u, null if use_null else a)]] for u in (a, b)]
                          for a, b in pairs])
    # Each trajectory follows its own prompt (guided by the null prompt's eps under guidance).
    own = torch.tensor([column[(u, u)] for u in range(n_rows)])
    own_null = torch.tensor([column[(u, null)] for u in range(n_rows)]) if guide else None
    # At step 0 every trajectory is still at the shared x_T, so one evaluation per distinct prompt serves all.
    first_rows = sorted({v for _, v in needed})
    first_column = {v: j for j, v in enumerate(first_rows)}
    first = Evaluations(states=torch.zeros(len(first_rows), dtype=torch.long),
                        rows=cond.take(torch.tensor(first_rows).repeat_interleave(k)),
                        serves=torch.tensor([first_column[v] for _, v in needed]))
    later = Evaluations(states=torch.tensor([u for u, _ in needed]),
                        rows=cond.take(torch.tensor([v for _, v in needed]).repeat_interleave(k)),
                        serves=torch.arange(len(needed)))

    # Common random numbers: x_T and every step's noise depend on the seed only.
    shape = model.latent_shape(size)
    steps = schedule(model, settings.steps, settings.eta, size)
    x_T, noises = common_noise(shape, k, len(steps), settings.seed)
    device = model.device
    x = x_T.to(device).expand(n_rows, *x_T.shape).clone()  # (trajectories, k, C, H, W)
    weights = step_weights([step.abar_t for step in steps], settings.eta, settings.weighting)

    for i, step in enumerate(steps):
        call = first if i == 0 else later
        states = x[call.states.to(device)].reshape(-1, *shape)
        t_batch = torch.full((len(states),), step.timestep, dtype=torch.long, device=device)
        out = model.predict_noise(states, t_batch, call.rows).float().reshape(len(call.states), k, *shape)
        evaluations = out[call.serves.to(out.device)]  # (len(needed), k, C, H, W)

        eps = evaluations[reads.to(out.device)]  # (P, 2, 3, k, C, H, W)
        eps_null = eps[:, :, 2] if use_null else None
        eps_a = guided(eps[:, :, 0], eps_null if guide else None, settings.guidance)  # (P, 2, k, C, H, W), under a
        eps_b = guided(eps[:, :, 1], eps_null if guide else None, settings.guidance)
        gap = eps_a - eps_b
        gap_sq = squared_norm(gap)  # (P, 2, k)
        kl = weights[i] * gap_sq
        # each prompt's pull from the null prompt, as guided: gap = pull_a - pull_b exactly
        pull_sq = torch.stack([squared_norm(eps_a - eps_null), squared_norm(eps_b - eps_null)], 2) \
            if settings.cosine else None

        # Every trajectory steps under its own prompt; all use the same noise.
        eps_own = guided(evaluations[own.to(out.device)],
                         None if own_null is None else evaluations[own_null.to(out.device)], settings.guidance)
        x0, x = advance(x, eps_own, step, noises[i])
        yield BatchStep(i, step.timestep, step.abar_t, weights[i], gap_sq, kl[:, 0], kl[:, 1],
                        x0[trajectories.to(x0.device)], gap, truncated, rewritten, pull_sq)


def squared_norm(eps: torch.Tensor) -> torch.Tensor:
    """||.||^2 over each state's numbers (C, H, W), in float64 on the CPU: (P, 2, k, C, H, W) -> (P, 2, k)."""
    return eps.double().pow(2).flatten(3).sum(-1).cpu()


def summarize(pairs, steps: list[BatchStep], seconds, settings, model, truncated) -> list[JeffreysResult]:
    """Turn the steps of a batch (each with gaps of shape (P, 2, k)) into one result per pair."""
    gaps = torch.stack([s.gap_sq for s in steps])  # (steps, P, 2, k)
    w = torch.tensor([s.weight for s in steps], dtype=gaps.dtype).view(-1, 1, 1, 1)
    kl = w * gaps
    pull_sq = torch.stack([s.pull_sq for s in steps]) if steps[0].pull_sq is not None else None  # (steps, P, 2, 2, k)
    dims = int(np.prod(model.latent_shape(settings.size or model.default_size)))
    results = []
    for p, (a, b) in enumerate(pairs):
        kl_ab, kl_ba = kl[:, p, 0].sum(0), kl[:, p, 1].sum(0)  # (k,)
        j = (kl_ab + kl_ba) / 2
        if not torch.isfinite(j).all():
            raise ConjureError(
                f"the divergence for ({a!r}, {b!r}) is not finite: the model produced NaN or inf "
                "(half precision overflow? try dtype float32)"
            )
        k = len(j)
        per_step = {
            "timestep": [s.timestep for s in steps], "abar": [s.abar for s in steps], "weight": [s.weight for s in steps],
            "kl_ab": kl[:, p, 0].mean(1).tolist(), "kl_ba": kl[:, p, 1].mean(1).tolist(),
            "gap_a": gaps[:, p, 0].mean(1).tolist(), "gap_b": gaps[:, p, 1].mean(1).tolist(),
        }
        pulls = cosine = None
        if pull_sq is not None:  # each prompt's pull: the mean over both trajectories' states, weighted as the gaps
            per_step["pull_a"] = pull_sq[:, p, :, 0].mean((1, 2)).tolist()
            per_step["pull_b"] = pull_sq[:, p, :, 1].mean((1, 2)).tolist()
            pulls = [float((w.flatten() * pull_sq[:, p, :, which].mean((1, 2))).sum()) for which in (0, 1)]
            cosine = cosine_from_pulls(float(j.mean()), *pulls)
        results.append(JeffreysResult(
            text_a=a, text_b=b,
            jeffreys=float(j.mean()), kl_ab=float(kl_ab.mean()), kl_ba=float(kl_ba.mean()),
            stderr=float(j.std(unbiased=True) / math.sqrt(k)) if k > 1 else None,
            per_step=per_step, per_sample=j.tolist(), seconds=seconds, settings=asdict(settings), model=model.name,
            dtype=dtype_name(model), compiled=getattr(model, "compiled", False), truncated=truncated[p],
            rewritten=steps[-1].rewritten[p] if steps[-1].rewritten else [None, None], dims=dims,
            pulls=pulls, cosine=cosine,
        ))
    return results


@dataclass
class Reweighted:
    kl_ab: float
    kl_ba: float
    jeffreys: float
    kl_ab_per_step: list[float]
    kl_ba_per_step: list[float]
    pulls: list[float] | None = None  # [P_a, P_b], where the gaps were kept with the pulls (cosine=True)
    cosine: float | None = None


def reweight(per_step: dict, weighting: str, eta: float = 1.0, steps: Sequence[int] | None = None) -> Reweighted:
    """KL(A||B), KL(B||A) and D_J from a result's kept gaps under another weighting, over a subset of steps.

    `steps` are 0-based step indices (default: all). Needs no model: `per_step` is JeffreysResult.per_step
    (or the same dict from JSON or the STS cache).
    """
    try:
        abars, gap_a, gap_b = per_step["abar"], per_step["gap_a"], per_step["gap_b"]
    except (KeyError, TypeError):
        raise ConjureError("these results carry no per-step gaps (made before conjure kept them); score again") from None
    w = step_weights(abars, eta, weighting)
    chosen = set(range(len(w)) if steps is None else steps)
    ab = [w[i] * gap_a[i] if i in chosen else 0.0 for i in range(len(w))]
    ba = [w[i] * gap_b[i] if i in chosen else 0.0 for i in range(len(w))]
    jeffreys = (sum(ab) + sum(ba)) / 2
    pulls = cosine = None
    if "pull_a" in per_step:  # kept with cosine=True
        pulls = [sum(w[i] * pull[i] for i in chosen) for pull in (per_step["pull_a"], per_step["pull_b"])]
        cosine = cosine_from_pulls(jeffreys, *pulls)
    return Reweighted(sum(ab), sum(ba), jeffreys, ab, ba, pulls, cosine)


def score_batch(model, pairs: Sequence[tuple[str, str]], run: Checked) -> list[JeffreysResult]:
    """Score a batch of pairs together: one model call per step for all of them."""
    start = time.perf_counter()
    steps = [replace(event, x0=None, eps_gap=None) for event in jeffreys_steps(model, pairs, run)]
    seconds = (time.perf_counter() - start) / len(pairs)
    return summarize(list(pairs), steps, seconds, run.settings, model, steps[-1].truncated)


def score_batches(model, pairs: Sequence[tuple[str, str]], run: Checked, progress: bool = False) -> list[JeffreysResult]:
    """Score the pairs `run.batch_size` at a time, with a progress bar of pairs if asked."""
    from tqdm.auto import tqdm

    results: list[JeffreysResult] = []
    with tqdm(total=len(pairs), unit="pair", disable=not progress) as bar:
        for i in range(0, len(pairs), run.batch_size):
            results += score_batch(model, pairs[i : i + run.batch_size], run)
            bar.update(len(pairs[i : i + run.batch_size]))
    return results


def stream(model, text_a: str, text_b: str, run: Checked, previews: bool = True,
           decode_final: bool = True) -> Iterator[StepEvent]:
    """Yield one StepEvent per sampler step for a single pair; the last one carries the JeffreysResult."""
    settings = run.settings
    start = time.perf_counter()
    steps: list[BatchStep] = []
    total_ab = total_ba = 0.0
    for event in jeffreys_steps(model, [(text_a, text_b)], run):
        kl_ab, kl_ba = float(event.kl_ab[0].mean()), float(event.kl_ba[0].mean())
        total_ab, total_ba = total_ab + kl_ab, total_ba + kl_ba
        last = event.index == settings.steps - 1
        image_a = image_b = difference = None
        if previews or last:
            sample0 = event.x0[0, :, 0]  # trajectories A and B, first noise sample
            render = model.decode if (last and decode_final) else model.preview
            image_a, image_b = render(sample0)
            difference = event.eps_gap[0, 0, 0].float().norm(dim=0).cpu().numpy()
        steps.append(replace(event, x0=None, eps_gap=None))  # keep the numbers, not the states
        result = None
        if last:
            result = summarize([(text_a, text_b)], steps, time.perf_counter() - start, settings, model,
                               event.truncated)[0]
            result.images = (image_a, image_b)
        yield StepEvent(
            step=event.index + 1, steps=settings.steps, timestep=event.timestep, kl_ab=kl_ab, kl_ba=kl_ba,
            total_kl_ab=total_ab, total_kl_ba=total_ba, jeffreys=(total_ab + total_ba) / 2,
            image_a=image_a, image_b=image_b, difference=difference, result=result,
        )
