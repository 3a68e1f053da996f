"""Morph from one prompt to another: the same noise, sampled under conditioning interpolated in N stages.

    from conjure.morph import morph
    result = morph(model, "snow leopard", "bengal tiger", stages=8, steps=10, seed=0)
    result.weights, result.images            # (N,), (N, H, W, 3) uint8

Stage i is conditioned on (1 - w_i) * encode(a) + w_i * encode(b), w = 0 .. 1. Every
stage walks the estimator's own sampler (`conjure.sampler`: the same schedule, x_T and
step noise, sample 0), so the first stage is the image that trajectory A ends in and the
last is trajectory B's: the morph walks between the two images the divergence was
measured on. All stages go through one model call per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import torch

from conjure import validation
from conjure.errors import ConjureError
from conjure.models.base import Conditioning
from conjure.sampler import advance, common_noise, guided, schedule, uses_null_prompt, with_guidance
from conjure.settings import LIMITS, Limits
from conjure.validation import Checked


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


def check_stages(stages, limits: Limits = LIMITS) -> int:
    """Morph stages: a whole number from 2 to `limits.max_stages`."""
    if not validation.is_whole(stages) or stages < 2:
        raise ConjureError(f"a morph needs at least 2 stages, got {stages!r}")
    validation.check_count(stages, limits.max_stages, "morph stages")
    return int(stages)


def check_morph(model, text_a: str, text_b: str, stages: int, settings, limits: Limits = LIMITS,
                trajectories: bool = False, lower: str = "lower the morph stages or the image size (or raise "
                                                         "CONJURE_MAX_MEMORY_GB)") -> Checked:
    """The rest of a morph's checks once the model is loaded (the stages and the prompts' text are checked before):
    the prompts are read by its text encoder, the settings fit the model and the limits, and its one batched call
    per step fits the memory (and the pair's trajectories, when they are drawn too)."""
    validation.check_readable(model, [("prompt A", text_a), ("prompt B", text_b)])
    run = validation.check_run(model, settings, batch_size=1, limits=limits, memory=trajectories, lower=lower)
    evaluations = stages * (2 if run.settings.guidance != 1 else 1)  # one batched call: as many as ceil(n / 4) pairs
    validation.check_memory(model, replace(run.settings, samples=1, guidance=1), math.ceil(evaluations / 4),
                            decoded_images=stages, lower=lower, explain=f"{stages} morph stages at {run.size} px")
    return run


@validation.reports_out_of_memory
def morph_steps(model, text_a: str, text_b: str, stages: int, run: Checked,
                ends: tuple[np.ndarray, np.ndarray] | None = None) -> Iterator[MorphStep]:
    """Sample all stages together, yielding after every step (so a UI can report progress or stop).

    `ends`: the end stages' images when they are drawn already: the final images of the estimator's trajectories
    at the same settings (sample 0; (2, H, W, 3) uint8). Then only the interior stages are sampled (the app saves
    2 of its 8 stages' model calls) and the ends are exactly those images.
    Trusts its input: `check_stages` and `check_morph` checked it at the entry point (`morph`, the CLI, the app)."""
    settings, size = run.settings, run.size
    weights = np.linspace(0.0, 1.0, stages)
    ends = None if ends is None else np.stack(ends)
    drawn = weights if ends is None else weights[1:-1]  # the stages sampled here
    n = len(drawn)
    use_null = uses_null_prompt(model, settings.guidance)
    if n:
        encoded = model.encode([text_a, text_b])
        cond = with_guidance(model, interpolate(encoded.take([0]), encoded.take([1]), drawn), settings.guidance)
        if use_null:  # conditioned rows first, then the null prompt once per stage
            cond = Conditioning.cat([cond, model.encode_null().take([0] * n)])
    # The estimator's noise for k samples, of which the morph keeps sample 0: the end stages are A and B.
    shape = model.latent_shape(size)
    steps = schedule(model, settings.steps, settings.eta, size)
    x_T, noises = common_noise(shape, settings.samples, len(steps), settings.seed)
    device = model.device
    x = x_T[0].to(device).expand(n, *shape).clone()
    for step in steps:
        if n:
            states = torch.cat([x, x]) if use_null else x
            t_batch = torch.full((len(states),), step.timestep, dtype=torch.long, device=device)
            out = model.predict_noise(states, t_batch, cond).float()
            eps = guided(out[:n], out[n:] if use_null else None, settings.guidance)
            x0, x = advance(x, eps, step, noises[step.index, 0])
        images = None
        if step.index == len(steps) - 1:
            images = model.decode(x0) if n else ends[:0]  # two stages, both given: nothing to decode
            if ends is not None:
                images = np.concatenate([ends[:1], images, ends[1:]])
        yield MorphStep(step.index + 1, settings.steps, weights, images)


def morph(model, text_a: str, text_b: str, stages: int = 8, *, limits: Limits = LIMITS, **settings) -> MorphStep:
    """Run the whole morph; returns the last MorphStep (weights and decoded images). At most `limits.max_stages`
    stages (64 by default)."""
    from conjure.models import load_model

    model = load_model(model)
    text_a, text_b = validation.check_pairs([(text_a, text_b)])[0]
    stages = check_stages(stages, limits)
    run = check_morph(model, text_a, text_b, stages, settings, limits)
    *_, last = morph_steps(model, text_a, text_b, stages, run)
    return last
