"""Morph from one prompt to another: the same noise, sampled under conditioning interpolated in N stages.

    from conjure.morph import morph
    result = morph(model, "snow leopard", "bengal tiger", stages=8, steps=10, seed=0)
    result.weights, result.images            # (N,), (N, H, W, 3) uint8

Stage i is conditioned on (1 - w_i) * encode(a) + w_i * encode(b), w = 0 .. 1. Every
stage starts from the same x_T and draws the same step noise as the estimator
(`conjure.jeffreys.jeffreys_steps`, noise sample 0), so the first stage is the image
that trajectory A ends in and the last is trajectory B's: the morph walks between the
two images the divergence was measured on. All stages go through one model call per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from conjure.errors import ConjureError
from conjure.jeffreys import (
    Settings, check_prompt, check_settings, ddim_sigma, guided, predicted_x0, sampler_timesteps, step_mean,
)
from conjure.models.base import Conditioning


@dataclass
class MorphStep:
    """One sampler step of all morph stages; the last one carries the finished images."""

    step: int  # 1-based
    steps: int
    weights: np.ndarray  # (N,) interpolation weight of prompt b in each stage
    images: np.ndarray | None  # (N, H, W, 3) uint8, decoded, on the last step only


def interpolate(a: Conditioning, b: Conditioning, weights) -> Conditioning:
    """One row per weight w: (1 - w) * a + w * b for every tensor of two one-row Conditionings.

    Boolean tensors (attention masks) cannot be interpolated: the interior stages attend to
    the union of both prompts' tokens, and the end stages use their own prompt's mask, so
    w = 0 and w = 1 reproduce the two prompts exactly.
    """
    w = torch.as_tensor(weights, dtype=torch.float32)
    tensors = {}
    for key, ta in a.tensors.items():
        tb = b.tensors[key]
        if ta.dtype == torch.bool:
            rows = [ta[0] if wi == 0 else tb[0] if wi == 1 else ta[0] | tb[0] for wi in w.tolist()]
            tensors[key] = torch.stack(rows)
        else:
            wi = w.to(ta.device).view(-1, *[1] * (ta.dim() - 1))
            tensors[key] = ((1 - wi) * ta.float() + wi * tb.float()).to(ta.dtype)
    return Conditioning(tensors)


def morph_steps(model, text_a: str, text_b: str, stages: int = 8,
                settings: Settings = Settings()) -> Iterator[MorphStep]:
    """Sample all stages together, yielding after every step (so a UI can report progress or stop)."""
    size = check_settings(model, settings)
    text_a, text_b = check_prompt(text_a, "A"), check_prompt(text_b, "B")
    if not isinstance(stages, int) or stages < 2:
        raise ConjureError(f"a morph needs at least 2 stages, got {stages!r}")
    weights = np.linspace(0.0, 1.0, stages)

    encoded = model.encode([text_a, text_b])
    cond = interpolate(encoded.take([0]), encoded.take([1]), weights)
    use_null = settings.guidance != 1
    if use_null:  # conditioned rows first, then the null prompt once per stage
        cond = Conditioning.cat([cond, model.encode_null().take([0] * stages)])

    # The estimator's noise: x_T and then every step's noise for k samples, from one generator.
    # Drawing the same tensors and keeping sample 0 makes the end stages trajectories A and B.
    shape, k = model.latent_shape(size), settings.samples
    generator = torch.Generator().manual_seed(settings.seed)
    x_T = torch.randn((k, *shape), generator=generator)[0]
    noises = torch.randn((settings.steps, k, *shape), generator=generator)[:, 0]
    device = model.device
    x = x_T.to(device).expand(stages, *shape).clone()

    timesteps = sampler_timesteps(model, settings.steps)
    abar = model.alphas_cumprod.tolist()
    for i, t in enumerate(timesteps):
        abar_t = abar[t]
        abar_s = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        sigma = ddim_sigma(abar_t, abar_s, settings.eta)
        states = torch.cat([x, x]) if use_null else x
        t_batch = torch.full((len(states),), t, dtype=torch.long, device=device)
        out = model.predict_noise(states, t_batch, cond).float()
        eps = guided(out[:stages], out[stages:] if use_null else None, settings.guidance)
        x0 = predicted_x0(x, eps, abar_t)
        x = step_mean(x, eps, abar_t, abar_s, sigma) + sigma * noises[i].to(device)
        last = i == len(timesteps) - 1
        yield MorphStep(i + 1, settings.steps, weights, model.decode(x0) if last else None)


def morph(model, text_a: str, text_b: str, stages: int = 8, **settings) -> MorphStep:
    """Run the whole morph; returns the last MorphStep (weights and decoded images)."""
    from conjure.models import load_model

    *_, last = morph_steps(load_model(model), text_a, text_b, stages, Settings(**settings))
    return last
