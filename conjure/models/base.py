"""The model interface the estimator needs ("bring your own model").

A model is anything with these attributes and methods. The estimator never
touches a diffusers object directly, so a new model family is one small adapter:

    encode(prompts)            -> Conditioning: one row per prompt, encoded once
    predict_noise(x, t, cond)  -> epsilon-prediction at states x, timesteps t
    alphas_cumprod             -> the training noise schedule, abar_t for t = 0..N-1
    timesteps(steps)           -> the sampler's timesteps, high to low
    latent_shape(size)         -> (C, H, W) of the state for an image of size x size pixels
    preview(x0)                -> cheap uint8 RGB images of predicted clean states (for streaming)
    decode(x0)                 -> full-quality uint8 RGB images
    text_similarity(a, b)      -> cosine similarity of the model's own text embeddings (a baseline)

Models that predict v or x0 convert to epsilon inside `predict_noise`, so the
estimator's math is written once, in epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Conditioning:
    """Encoded prompts: every tensor has one row per prompt (batch dimension first)."""

    tensors: dict[str, torch.Tensor]
    truncated: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def take(self, index: torch.Tensor | list[int]) -> "Conditioning":
        index = torch.as_tensor(index, dtype=torch.long)
        return Conditioning({k: v[index.to(v.device)] for k, v in self.tensors.items()})

    @staticmethod
    def cat(parts: list["Conditioning"]) -> "Conditioning":
        keys = parts[0].tensors.keys()
        return Conditioning(
            {k: torch.cat([p.tensors[k] for p in parts]) for k in keys}, [t for p in parts for t in p.truncated]
        )


def epsilon_from_v(x: torch.Tensor, v: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """v = sqrt(abar) eps - sqrt(1 - abar) x0  =>  eps = sqrt(abar) v + sqrt(1 - abar) x."""
    return abar.sqrt() * v + (1 - abar).sqrt() * x


def epsilon_from_x0(x: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    return (x - abar.sqrt() * x0) / (1 - abar).sqrt()


def to_epsilon(prediction_type: str, x: torch.Tensor, out: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Convert a network output to epsilon; abar broadcasts against x (shape (B,1,1,1))."""
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return epsilon_from_v(x, out, abar)
    if prediction_type == "sample":
        return epsilon_from_x0(x, out, abar)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) in [-1,1] -> (B,H,W,3) uint8."""
    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))
