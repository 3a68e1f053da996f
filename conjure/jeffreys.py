"""The estimator: Jeffreys divergence between the reverse diffusion processes of two prompts.

Both trajectories start from the same noise x_T. Trajectory A is sampled under
prompt a, trajectory B under prompt b, with the same ancestral sampler (DDIM with
eta > 0; eta = 1 is DDPM). At every visited state the model is evaluated under
both prompts. A stochastic step t -> s is Gaussian with mean mu(x_t | y) and a
variance sigma^2 that does not depend on the prompt, so its KL is exact:

    KL_step = ||mu(x_t|a) - mu(x_t|b)||^2 / (2 sigma^2) = w(t, s) * ||eps(x_t|a) - eps(x_t|b)||^2

KL(A||B) sums it along trajectory A, KL(B||A) along trajectory B, and
D_J = (KL(A||B) + KL(B||A)) / 2, averaged over k noise samples. With eta = 1,
w = (SNR_s / SNR_t - 1) / 2, so as steps -> infinity the sum becomes the Girsanov
form 1/2 * integral ||eps_a - eps_b||^2 d(log SNR). The final step, which outputs
the clean image, has sigma = 0 and carries no KL term.

Per step, one batched model call evaluates eps(x_A|a), eps(x_A|b), eps(x_B|a),
eps(x_B|b) (and eps(x_A|null), eps(x_B|null) under classifier-free guidance) for
every sample of every pair in the batch. Noise depends only on the seed, so all
pairs share it (common random numbers): rankings across pairs are not noise.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from conjure.errors import ConjureError
from conjure.models.base import Conditioning

WEIGHTINGS = ("exact", "uniform")


@dataclass(frozen=True)
class Settings:
    steps: int = 10  # sampler steps, as in the paper
    samples: int = 1  # k: Monte-Carlo noise samples per pair
    guidance: float = 1.0  # classifier-free guidance scale steering both trajectories; 1 = none
    seed: int = 0
    size: int | None = None  # image side in pixels; None = the model's default
    eta: float = 1.0  # DDIM eta of the stochastic sampler; 1 = DDPM ancestral sampling
    weighting: str = "exact"  # "exact": the sampler's path KL; "uniform": 1/2 ||d eps||^2 per step (ablation)


# --- the sampler, in equations ------------------------------------------------------


def ddim_sigma(abar_t: float, abar_s: float, eta: float) -> float:
    """Std of the step t -> s: eta * sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))."""
    return eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))


def predicted_x0(x: torch.Tensor, eps: torch.Tensor, abar_t: float) -> torch.Tensor:
    return (x - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)


def step_mean(x: torch.Tensor, eps: torch.Tensor, abar_t: float, abar_s: float, sigma: float) -> torch.Tensor:
    """mu = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps."""
    return math.sqrt(abar_s) * predicted_x0(x, eps, abar_t) + math.sqrt(max(1 - abar_s - sigma**2, 0.0)) * eps


def kl_weight(abar_t: float, abar_s: float, eta: float, weighting: str = "exact") -> float:
    """w(t, s) with KL_step = w * ||eps_a - eps_b||^2 at a shared state; 0 for the noise-free last step.

    mu is linear in eps with coefficient c = sqrt(1 - abar_s - sigma^2) - sqrt(abar_s (1 - abar_t) / abar_t),
    so ||mu_a - mu_b||^2 / (2 sigma^2) = c^2 / (2 sigma^2) * ||eps_a - eps_b||^2.
    """
    sigma = ddim_sigma(abar_t, abar_s, eta)
    if sigma == 0.0:
        return 0.0
    if weighting == "uniform":
        return 0.5
    c = math.sqrt(max(1 - abar_s - sigma**2, 0.0)) - math.sqrt(abar_s * (1 - abar_t) / abar_t)
    return c * c / (2 * sigma**2)


def guided(eps_cond: torch.Tensor, eps_null: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Classifier-free guidance: eps_null + scale * (eps_cond - eps_null)."""
    return eps_cond if eps_null is None else eps_null + scale * (eps_cond - eps_null)


def sampler_timesteps(model, steps: int) -> list[int]:
    """The timesteps the model's own scheduler config visits for `steps` steps (its spacing and offset)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


# --- results ------------------------------------------------------------------------


@dataclass
class JeffreysResult:
    text_a: str
    text_b: str
    jeffreys: float  # (kl_ab + kl_ba) / 2, mean over samples
    kl_ab: float  # KL(P_a || P_b), along trajectories sampled under a
    kl_ba: float
    stderr: float | None  # standard error of jeffreys over the k samples (None for k = 1)
    per_step: dict  # {"timestep": [...], "kl_ab": [...], "kl_ba": [...]}, means over samples
    per_sample: list[float]  # jeffreys of each noise sample
    seconds: float
    settings: dict
    model: str
    truncated: list[bool] = field(default_factory=lambda: [False, False])
    images: tuple[np.ndarray, np.ndarray] | None = None  # final sample 0 of trajectories A and B (uint8 HWC)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("images")
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
class BatchStep:
    """One sampler step of a batch of P pairs; arrays have shape (P, k)."""

    index: int
    timestep: int
    kl_ab: torch.Tensor
    kl_ba: torch.Tensor
    x0: torch.Tensor  # (P, 2, k, C, H, W) predicted clean states of trajectories A and B
    eps_gap: torch.Tensor  # (P, 2, k, C, H, W) eps(x|a) - eps(x|b) at each trajectory's state
    truncated: list[list[bool]]


# --- validation -------------------------------------------------------------------


def check_settings(model, s: Settings) -> int:
    """Raise ConjureError for unusable settings; return the image size to use."""
    if not isinstance(s.steps, int) or s.steps < 1:
        raise ConjureError(f"steps must be a positive integer, got {s.steps!r}")
    if s.steps > len(model.alphas_cumprod):
        raise ConjureError(f"steps must be at most the model's {len(model.alphas_cumprod)} training timesteps, got {s.steps}")
    if not isinstance(s.samples, int) or s.samples < 1:
        raise ConjureError(f"samples (k) must be a positive integer, got {s.samples!r}")
    if not (isinstance(s.guidance, (int, float)) and s.guidance > 0 and math.isfinite(s.guidance)):
        raise ConjureError(f"guidance must be a positive number (1 = no classifier-free guidance), got {s.guidance!r}")
    if not (isinstance(s.eta, (int, float)) and 0 <= s.eta <= 1):
        raise ConjureError(f"eta must be in (0, 1], got {s.eta!r}")
    if s.eta == 0:
        raise ConjureError(
            "eta=0 is deterministic DDIM: each reverse process is a point mass, so the path KL between two "
            "prompts is infinite. Use a stochastic sampler, eta in (0, 1] (1 = DDPM ancestral sampling)."
        )
    if s.weighting not in WEIGHTINGS:
        raise ConjureError(f"weighting must be one of {WEIGHTINGS}, got {s.weighting!r}")
    size = s.size or model.default_size
    if not isinstance(size, int) or size < 1:
        raise ConjureError(f"size must be a positive integer, got {size!r}")
    try:
        model.latent_shape(size)
    except ValueError as err:
        raise ConjureError(str(err)) from None
    return size


def check_prompt(text, which: str) -> str:
    if not isinstance(text, str):
        raise ConjureError(f"prompt {which} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ConjureError(f"prompt {which} is empty")
    return text


# --- the estimator ----------------------------------------------------------------


def jeffreys_steps(model, pairs: Sequence[tuple[str, str]], settings: Settings = Settings()) -> Iterator[BatchStep]:
    """Run both trajectories of every pair, one batched model call per step; yield each step's KL terms."""
    size = check_settings(model, settings)
    pairs = [(check_prompt(a, "A"), check_prompt(b, "B")) for a, b in pairs]
    if not pairs:
        raise ConjureError("no pairs to score")
    k, use_null = settings.samples, settings.guidance != 1

    # Text is encoded once per distinct prompt; the null prompt is the last row.
    prompts = sorted({p for pair in pairs for p in pair})
    row_of = {p: i for i, p in enumerate(prompts)}
    cond = model.encode(prompts)
    truncated = [[cond.truncated[row_of[a]], cond.truncated[row_of[b]]] if cond.truncated else [False, False]
                 for a, b in pairs]
    if use_null:
        cond = Conditioning.cat([cond, model.encode_null()])
    null_row = len(prompts)

    # Which (state, prompt) evaluations each pair needs. eps[p, trajectory, prompt]: prompt 0 = a, 1 = b, 2 = null.
    # A pair of identical prompts has identical trajectories, so it needs trajectory A under a only.
    plan: list[tuple[int, int, int, int]] = []  # (pair, trajectory, prompt slot, conditioning row)
    for p, (a, b) in enumerate(pairs):
        slots = [(0, 0, row_of[a])] if a == b else [(0, 0, row_of[a]), (0, 1, row_of[b]), (1, 0, row_of[a]), (1, 1, row_of[b])]
        if use_null:
            slots += [(0, 2, null_row)] if a == b else [(0, 2, null_row), (1, 2, null_row)]
        plan += [(p, traj, slot, row) for traj, slot, row in slots]
    state_index = torch.tensor([p * 2 + traj for p, traj, _, _ in plan])
    row_cond = cond.take(torch.tensor([row for *_, row in plan]).repeat_interleave(k))

    # Common random numbers: x_T and every step's noise depend on the seed only.
    shape = model.latent_shape(size)
    generator = torch.Generator().manual_seed(settings.seed)
    x_T = torch.randn((k, *shape), generator=generator)
    noises = torch.randn((settings.steps, k, *shape), generator=generator)
    P, device = len(pairs), model.device
    x = x_T.to(device).expand(P, 2, *x_T.shape).clone()  # (P, 2, k, C, H, W)

    timesteps = sampler_timesteps(model, settings.steps)
    abar = model.alphas_cumprod.tolist()
    if abar[timesteps[0]] <= 0:
        raise ConjureError(
            f"the model's schedule has zero signal at t={timesteps[0]} (a zero-terminal-SNR schedule with trailing "
            "spacing): an epsilon step from pure noise has no finite KL; use timestep_spacing='leading'"
        )
    for i, t in enumerate(timesteps):
        abar_t = abar[t]
        abar_s = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0  # the last step outputs x0
        sigma = ddim_sigma(abar_t, abar_s, settings.eta)

        states = x.reshape(P * 2, k, *shape)[state_index].reshape(-1, *shape)
        t_batch = torch.full((len(states),), t, dtype=torch.long, device=device)
        out = model.predict_noise(states, t_batch, row_cond).float().reshape(len(plan), k, *shape)
        eps = torch.empty((P, 2, 3, k, *shape), device=out.device)
        for r, (p, traj, slot, _) in enumerate(plan):
            eps[p, traj, slot] = out[r]
        for p, (a, b) in enumerate(pairs):
            if a == b:  # B is A, and prompt b is prompt a
                eps[p, 0, 1] = eps[p, 0, 0]
                eps[p, 1] = eps[p, 0]

        null = eps[:, :, 2] if use_null else None
        eps_a = guided(eps[:, :, 0], null, settings.guidance)  # (P, 2, k, C, H, W), under prompt a
        eps_b = guided(eps[:, :, 1], null, settings.guidance)
        gap = eps_a - eps_b
        w = kl_weight(abar_t, abar_s, settings.eta, settings.weighting)
        kl = w * gap.double().pow(2).flatten(3).sum(-1)  # (P, 2, k)

        # A follows prompt a, B follows prompt b; both use the same noise.
        own = torch.stack([eps_a[:, 0], eps_b[:, 1]], dim=1)
        x0 = predicted_x0(x, own, abar_t)
        x = step_mean(x, own, abar_t, abar_s, sigma) + sigma * noises[i].to(device)
        yield BatchStep(i, t, kl[:, 0].cpu(), kl[:, 1].cpu(), x0, gap, truncated)


def summarize(pairs, per_step_ab, per_step_ba, timesteps, seconds, settings, model, truncated) -> list[JeffreysResult]:
    """Turn per-step KL terms, each (steps, P, k), into one result per pair."""
    ab, ba = torch.stack(per_step_ab), torch.stack(per_step_ba)  # (steps, P, k)
    results = []
    for p, (a, b) in enumerate(pairs):
        kl_ab, kl_ba = ab[:, p].sum(0), ba[:, p].sum(0)  # (k,)
        j = (kl_ab + kl_ba) / 2
        if not torch.isfinite(j).all():
            raise ConjureError(
                f"the divergence for ({a!r}, {b!r}) is not finite: the model produced NaN or inf "
                "(half precision overflow? try dtype float32)"
            )
        k = len(j)
        results.append(JeffreysResult(
            text_a=a, text_b=b,
            jeffreys=float(j.mean()), kl_ab=float(kl_ab.mean()), kl_ba=float(kl_ba.mean()),
            stderr=float(j.std(unbiased=True) / math.sqrt(k)) if k > 1 else None,
            per_step={"timestep": list(timesteps), "kl_ab": ab[:, p].mean(1).tolist(), "kl_ba": ba[:, p].mean(1).tolist()},
            per_sample=j.tolist(), seconds=seconds, settings=asdict(settings), model=model.name,
            truncated=truncated[p],
        ))
    return results


def score_batch(model, pairs: Sequence[tuple[str, str]], settings: Settings = Settings()) -> list[JeffreysResult]:
    """Score a batch of pairs together: one model call per step for all of them."""
    start = time.perf_counter()
    ab, ba, timesteps, truncated = [], [], [], None
    for event in jeffreys_steps(model, pairs, settings):
        ab.append(event.kl_ab)
        ba.append(event.kl_ba)
        timesteps.append(event.timestep)
        truncated = event.truncated
    seconds = (time.perf_counter() - start) / len(pairs)
    return summarize(list(pairs), ab, ba, timesteps, seconds, settings, model, truncated)


def stream(model, text_a: str, text_b: str, settings: Settings = Settings(), previews: bool = True,
           decode_final: bool = True) -> Iterator[StepEvent]:
    """Yield one StepEvent per sampler step for a single pair; the last one carries the JeffreysResult."""
    start = time.perf_counter()
    ab, ba, timesteps = [], [], []
    for event in jeffreys_steps(model, [(text_a, text_b)], settings):
        ab.append(event.kl_ab)
        ba.append(event.kl_ba)
        timesteps.append(event.timestep)
        total_ab, total_ba = float(torch.stack(ab)[:, 0].sum(0).mean()), float(torch.stack(ba)[:, 0].sum(0).mean())
        last = event.index == settings.steps - 1
        image_a = image_b = difference = None
        if previews or last:
            sample0 = event.x0[0, :, 0]  # trajectories A and B, first noise sample
            render = model.decode if (last and decode_final) else model.preview
            image_a, image_b = render(sample0)
            difference = event.eps_gap[0, 0, 0].float().norm(dim=0).cpu().numpy()
        result = None
        if last:
            result = summarize([(text_a, text_b)], ab, ba, timesteps, time.perf_counter() - start, settings, model,
                               event.truncated)[0]
            result.images = (image_a, image_b)
        yield StepEvent(
            step=event.index + 1, steps=settings.steps, timestep=event.timestep,
            kl_ab=float(event.kl_ab[0].mean()), kl_ba=float(event.kl_ba[0].mean()),
            total_kl_ab=total_ab, total_kl_ba=total_ba, jeffreys=(total_ab + total_ba) / 2,
            image_a=image_a, image_b=image_b, difference=difference, result=result,
        )
