"""The sampler, in equations: DDIM with eta > 0 (eta = 1 is DDPM ancestral sampling), in epsilon form.

    steps = schedule(model, settings.steps, settings.eta, size)  # timesteps, abar_t, abar_s, sigma
    x_T, noises = common_noise(shape, samples, len(steps), seed)
    for step in steps:
        eps = ...                                                 # the model, under some conditioning
        x0, x = advance(x, eps, step, noises[step.index])

Every walk through a schedule in conjure goes through here: the estimator's two trajectories
(`conjure.jeffreys`), `conjure.sample` (a pair of identical prompts) and the morph
(`conjure.morph`). Noise depends only on the seed (common random numbers), so the morph's
end stages are the estimator's two trajectories by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from conjure.errors import ConjureError
from conjure.models.base import Conditioning


@dataclass(frozen=True)
class SamplerStep:
    index: int  # 0-based
    timestep: int  # t: the model is evaluated at this timestep
    abar_t: float
    abar_s: float  # abar of the next timestep; 1.0 for the last step, which outputs x0
    sigma: float  # std of the step's noise; 0 for the last step


def ddim_sigma(abar_t: float, abar_s: float, eta: float) -> float:
    """Std of the step t -> s: eta * sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))."""
    return eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))


def predicted_x0(x: torch.Tensor, eps: torch.Tensor, abar_t: float) -> torch.Tensor:
    return (x - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)


def step_mean(x: torch.Tensor, eps: torch.Tensor, abar_t: float, abar_s: float, sigma: float) -> torch.Tensor:
    """mu = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps."""
    return math.sqrt(abar_s) * predicted_x0(x, eps, abar_t) + math.sqrt(max(1 - abar_s - sigma**2, 0.0)) * eps


def guided(eps_cond: torch.Tensor, eps_null: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Classifier-free guidance: eps_null + scale * (eps_cond - eps_null)."""
    return eps_cond if eps_null is None else eps_null + scale * (eps_cond - eps_null)


def takes_guidance(model) -> bool:
    """Whether the model takes the guidance scale as an input (guidance-distilled, as Flux-dev) rather than
    being guided by an unconditional branch."""
    return bool(getattr(model, "takes_guidance", False))


def uses_null_prompt(model, guidance: float) -> bool:
    """Whether guidance needs eps under the null prompt: a scale other than 1, on a model without a guidance input."""
    return guidance != 1 and not takes_guidance(model)


def with_guidance(model, cond: Conditioning, guidance: float) -> Conditioning:
    """The conditioning with the guidance scale as a per-row input ("guidance"), for a model that takes one."""
    if not takes_guidance(model):
        return cond
    scale = torch.full((len(cond),), float(guidance), device=next(iter(cond.tensors.values())).device)
    return Conditioning({**cond.tensors, "guidance": scale}, cond.truncated, cond.rewritten)


def sampler_timesteps(model, steps: int, size: int | None = None) -> list[int]:
    """The timesteps the model's own scheduler config visits for `steps` steps (its spacing and offset).

    A model whose steps depend on more than the config defines `sampler_timesteps(steps, size)` itself:
    flow models (conjure.models.flow), whose time shift can grow with the image size.
    """
    own = getattr(model, "sampler_timesteps", None)
    if callable(own):
        return own(steps, size)
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def schedule(model, steps: int, eta: float, size: int | None = None) -> list[SamplerStep]:
    """The sampler's steps for this model (at this image size): timesteps high to low, with abar_t, abar_s and sigma."""
    timesteps = sampler_timesteps(model, steps, size)
    abar = model.alphas_cumprod.tolist()
    if abar[timesteps[0]] <= 0:
        raise ConjureError(
            f"the model's schedule has zero signal at t={timesteps[0]} (a zero-terminal-SNR schedule with trailing "
            "spacing): an epsilon step from pure noise is undefined; use timestep_spacing='leading'"
        )
    out = []
    for i, t in enumerate(timesteps):
        abar_s = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0  # the last step outputs x0
        out.append(SamplerStep(i, t, abar[t], abar_s, ddim_sigma(abar[t], abar_s, eta)))
    return out


def common_noise(shape: tuple[int, ...], samples: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T (samples, *shape) and every step's noise (steps, samples, *shape), from the seed alone, on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((samples, *shape), generator=generator)
    noises = torch.randn((steps, samples, *shape), generator=generator)
    return x_T, noises


def advance(x: torch.Tensor, eps: torch.Tensor, step: SamplerStep, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One sampler step: the predicted clean state, and the next state mu + sigma * noise."""
    x0 = predicted_x0(x, eps, step.abar_t)
    return x0, step_mean(x, eps, step.abar_t, step.abar_s, step.sigma) + step.sigma * noise.to(x.device)
