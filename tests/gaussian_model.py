"""Analytic models: data x0 ~ N(m_y, I) under the VP forward process, with its exact epsilon-prediction
(`GaussianModel`), and under the rectified-flow path, with its exact velocity (`GaussianFlowModel`).

x_t = sqrt(abar) x0 + sqrt(1 - abar) eps is then N(sqrt(abar) m_y, I), and
E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) m_y): linear in x. The prompt gap
eps_a - eps_b = -sqrt(abar (1 - abar)) (m_a - m_b) does not depend on x, and the
continuous Jeffreys divergence between the reverse processes from t_start to t_end is

    1/2 ||m_a - m_b||^2 (abar(t_end) - abar(t_start)).
"""

from __future__ import annotations

import numpy as np
import torch

from conjure.models.base import Conditioning, to_uint8
from conjure.models.flow import FlowMatchingModel


class GaussianModel:
    name = "gaussian"
    text_encoder_name = "the class means"
    device = torch.device("cpu")
    dtype = torch.float32
    default_size = 4
    size_multiple = 1

    def __init__(self, means: dict[str, torch.Tensor], beta_schedule: str = "linear"):
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
        self.scheduler_config = dict(scheduler.config)
        self.alphas_cumprod = scheduler.alphas_cumprod.double()
        self.means = means
        self.calls = 0

    def encode(self, prompts):
        return Conditioning({"mean": torch.stack([self.means[p] for p in prompts])}, [False] * len(prompts))

    def encode_null(self):
        return Conditioning({"mean": torch.zeros_like(next(iter(self.means.values())))[None]}, [False])

    def text_embedding(self, prompts):
        return self.encode(prompts).tensors["mean"].flatten(1)

    def latent_shape(self, size):
        return (3, size, size)

    def predict_noise(self, x, t, cond):
        self.calls += 1
        abar = self.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
        return (1 - abar).sqrt() * (x - abar.sqrt() * cond.tensors["mean"])

    def preview(self, x0):
        return to_uint8(x0.clamp(-1, 1))

    decode = preview

    def exact_jeffreys(self, a: str, b: str, t_start: int, t_end: int) -> float:
        gap = (self.means[a] - self.means[b]).double().pow(2).sum()
        return float(0.5 * gap * (self.alphas_cumprod[t_end] - self.alphas_cumprod[t_start]))


def random_means(names, seed=0, scale=0.5, size=4):
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn((3, size, size), generator=g) for n in names}


class GaussianFlowModel(FlowMatchingModel, GaussianModel):
    """The same data, x0 ~ N(m_y, I), under the rectified-flow path x_t = (1 - t) x0 + t eps, with its exact
    velocity: the estimator sees it only through the flow adapter's conversion (conjure.models.flow).

    x_t ~ N((1 - t) m, s^2 I) with s^2 = (1 - t)^2 + t^2, so with r = (x_t - (1 - t) m) / s^2,
    E[eps | x_t] = t r and E[x0 | x_t] = m + (1 - t) r, and v = E[eps - x0 | x_t] = (2t - 1) r - m.
    The continuous divergence is the VP model's, 1/2 ||m_a - m_b||^2 (abar(t_end) - abar(t_start)), with
    abar = (1 - t)^2 / s^2: the path KL does not depend on how the path is scaled.
    """

    name = "gaussian-flow"

    def __init__(self, means: dict[str, torch.Tensor], shift: float = 1.0):
        from diffusers import FlowMatchEulerDiscreteScheduler

        FlowMatchingModel.__init__(self, FlowMatchEulerDiscreteScheduler(shift=shift).config)
        self.means = means
        self.calls = 0

    def velocity(self, x_flow, t, cond):
        self.calls += 1
        t = t.view(-1, 1, 1, 1)
        r = (x_flow - (1 - t) * cond.tensors["mean"]) / ((1 - t) ** 2 + t**2)
        return (2 * t - 1) * r - cond.tensors["mean"]
