"""A model whose UNet runs through torch.compile: the padding of its batches lives here, not in the estimator.

    model = CompiledModel(model)        # what `load_model(compile=True)` returns, after compiling the UNet in place

torch.compile with static shapes compiles once per batch size. The estimator's batches vary in size (repeated
prompts, the last batch of a run), so each call is padded to one of a few sizes (`compiled_batch_size`) by
repeating its last row, and the padding is cut off the output. Rows are independent, so the results are the
unpadded ones. As k-diffusion's `external.py` wraps a denoiser for its samplers, this wraps a model for the
estimator, which stays model-agnostic.
"""

from __future__ import annotations

import torch

from conjure.models.base import Conditioning


def compiled_batch_size(rows: int) -> int:
    """The batch a compiled model runs `rows` rows in: rows rounded up to a multiple of a quarter of the largest
    power of two not above it (1-8 stay; 9-16 go in steps of 2, 17-32 in steps of 4, ...). A run's batches,
    which vary with repeated prompts and the last batch, then fall on a few shapes, each padded by under 25%."""
    step = max(1, (1 << (rows.bit_length() - 1)) // 4)
    return -(-rows // step) * step


class CompiledModel:
    """The model, with every `predict_noise` call padded to a compiled batch size; all else is the model's own."""

    compiled = True  # results say so: compiled scores differ from eager ones in the last digits

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict_noise(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        n = len(x)
        keep = torch.arange(compiled_batch_size(n)).clamp(max=n - 1)
        on_device = keep.to(x.device)
        return self.model.predict_noise(x[on_device], t[on_device], cond.take(keep))[:n]


def unwrapped(model):
    """The model inside any CompiledModel wrappers."""
    while isinstance(model, CompiledModel):
        model = model.model
    return model
