"""The model interface the estimator needs ("bring your own model"): `DiffusionModel`.

A model is any object with the attributes and methods of the `DiffusionModel` protocol below.
The estimator, the sampler, the app and the STS harness use nothing else, so a new model family
is one small adapter (`pixel.py`, `stable_diffusion.py`, `flow.py`). Models that predict v or x0 convert to
epsilon inside `predict_noise`, so the estimator's math is written once, in epsilon; rectified-flow
models (SD3, Flux) convert their states, times and velocities too (`flow.py`).

Optional members, read where present (`conjure.sampler`, `conjure.attribution`):
    sampler_timesteps(steps, size) -> list[int]   the timesteps to visit, when the scheduler config's
                                                  spacing is not enough (flow models' size-dependent shift)
    takes_guidance: bool                          guidance-distilled (Flux-dev): the guidance scale is an
                                                  input, each conditioning row's "guidance"; no null branch
    encode_masked(words) -> Conditioning          one row per word: the prompt with that word's tokens
                                                  masked, how `conjure.explain` leaves a word out (pixel.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@dataclass
class Conditioning:
    """Encoded prompts: every tensor has one row per prompt (batch dimension first)."""

    tensors: dict[str, torch.Tensor]
    truncated: list[bool] = field(default_factory=list)
    rewritten: list[str | None] = field(default_factory=list)  # the text read where it differs from the prompt

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def take(self, index: torch.Tensor | list[int]) -> "Conditioning":
        index = torch.as_tensor(index, dtype=torch.long)
        return Conditioning({k: v[index.to(v.device)] for k, v in self.tensors.items()})

    @staticmethod
    def cat(parts: list["Conditioning"]) -> "Conditioning":
        keys = parts[0].tensors.keys()
        return Conditioning(
            {k: torch.cat([p.tensors[k] for p in parts]) for k in keys}, [t for p in parts for t in p.truncated],
            [r for p in parts for r in (p.rewritten or [None] * len(p))],
        )


@runtime_checkable
class DiffusionModel(Protocol):
    """What conjure reads of a model. Tensors are (batch, C, H, W) states in the model's own space."""

    name: str  # shown in results and tables
    device: torch.device
    dtype: torch.dtype
    default_size: int  # image side in pixels when none is asked for
    size_multiple: int  # image sides must be multiples of this
    scheduler_config: dict  # a diffusers scheduler config: the sampler's timestep spacing and offset
    alphas_cumprod: torch.Tensor  # the training schedule, abar_t for t = 0..N-1 (float64, CPU)
    text_encoder_name: str  # whose embedding `text_embedding` returns, for the "what the words say" baseline

    def encode(self, prompts: list[str]) -> "Conditioning":
        """One conditioning row per prompt; `truncated` says which prompts the text encoder cut, and `rewritten`
        (optional) the text read where it differs (emoji the tokenizer cannot read, as words: conjure.text)."""

    def encode_null(self) -> "Conditioning":
        """The unconditional prompt's row, for classifier-free guidance."""

    def predict_noise(self, x: torch.Tensor, t: torch.Tensor, cond: "Conditioning") -> torch.Tensor:
        """epsilon at states x (B, C, H, W) and integer timesteps t (B,), one conditioning row per state."""

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        """(C, H, W) of the state for a size x size image; ValueError with a message for an unusable size."""

    def preview(self, x0: torch.Tensor) -> np.ndarray:
        """Cheap uint8 RGB images (B, H, W, 3) of predicted clean states, for streaming."""

    def decode(self, x0: torch.Tensor) -> np.ndarray:
        """Full-quality uint8 RGB images (B, H, W, 3) of clean states."""

    def text_embedding(self, prompts: list[str]) -> torch.Tensor:
        """One embedding per prompt from the model's own text encoder (for the cosine baseline)."""


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
