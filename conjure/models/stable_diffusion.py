"""Adapters for diffusers' Stable Diffusion pipelines: SD 1.x (epsilon), 2.x (v-prediction), SDXL.

The pipelines' own `encode_prompt` builds the text conditioning, so prompts are
encoded exactly as the pipeline would; the UNet is called directly. States are
VAE latents; `preview` maps them to RGB with a fixed linear map (no VAE decode),
cheap enough for every streamed step.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from conjure.errors import PromptTruncatedWarning
from conjure.models.base import Conditioning, to_epsilon, to_uint8
from conjure.text import prepare

# Linear latent -> RGB approximations (as used by common SD UIs for live previews).
SD_LATENT_RGB = torch.tensor(
    [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]]
)
SDXL_LATENT_RGB = torch.tensor(
    [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]]
)
SDXL_LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


def warn_if_truncated(tokenizer, prompts: list[str]) -> list[bool]:
    """The caller sees a PromptTruncatedWarning for every prompt longer than the encoder's limit."""
    limit = tokenizer.model_max_length
    lengths = [len(ids) for ids in tokenizer(prompts, truncation=False)["input_ids"]]
    for prompt, n in zip(prompts, lengths):
        if n > limit:
            warnings.warn(
                f"prompt of {n} tokens truncated to the text encoder's {limit}: {prompt[:60]!r}...",
                PromptTruncatedWarning,
                stacklevel=4,
            )
    return [n > limit for n in lengths]


class StableDiffusionModel:
    """StableDiffusionPipeline (1.x, 2.x): latent diffusion conditioned on CLIP token states."""

    text_encoder_name = "CLIP text encoder"  # whose cosine `text_embedding` gives (the baseline)

    latent_rgb = SD_LATENT_RGB
    latent_rgb_bias = torch.zeros(3)

    def __init__(self, pipe, name: str = "stable-diffusion"):
        self.pipe = pipe
        self.name = name
        self.unet = pipe.unet
        self.device = pipe.unet.device
        self.dtype = pipe.unet.dtype
        self.scheduler_config = dict(pipe.scheduler.config)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        self.alphas_cumprod = pipe.scheduler.alphas_cumprod.double().cpu()
        self.vae_scale_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.default_size = pipe.unet.config.sample_size * self.vae_scale_factor
        # the UNet halves the latent once per block but the last
        self.size_multiple = self.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)

    # --- text -------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        prompts, rewritten = prepare(self.pipe.tokenizer, prompts)  # emoji the tokenizer cannot read, as words
        truncated = warn_if_truncated(self.pipe.tokenizer, prompts)
        embeds, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return Conditioning({"prompt_embeds": embeds}, truncated, rewritten)

    @torch.no_grad()
    def encode_null(self) -> Conditioning:
        return self.encode([""])

    @torch.no_grad()
    def text_embedding(self, prompts: list[str]) -> torch.Tensor:
        """CLIP's pooled sentence embedding (the EOS token after the final layer norm)."""
        tok = self.pipe.tokenizer(
            prepare(self.pipe.tokenizer, prompts)[0], padding="max_length", truncation=True, max_length=self.pipe.tokenizer.model_max_length, return_tensors="pt"
        )
        return self.pipe.text_encoder(tok.input_ids.to(self.device))[1].float().cpu()

    # --- diffusion ----------------------------------------------------------------
    def latent_shape(self, size: int) -> tuple[int, int, int]:
        if size % self.size_multiple:
            raise ValueError(f"image size must be a multiple of {self.size_multiple} for {self.name}, got {size}")
        side = size // self.vae_scale_factor
        return (self.unet.config.in_channels, side, side)

    def unet_kwargs(self, x: torch.Tensor, cond: Conditioning) -> dict:
        return {"encoder_hidden_states": cond.tensors["prompt_embeds"]}

    @torch.no_grad()
    def predict_noise(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        out = self.unet(x.to(self.dtype), t.to(self.device), **self.unet_kwargs(x, cond)).sample.float()
        abar = self.alphas_cumprod.to(x.device, torch.float32)[t.to(x.device)].view(-1, 1, 1, 1)
        return to_epsilon(self.prediction_type, x.float(), out, abar)

    # --- images -------------------------------------------------------------------
    def preview(self, x0: torch.Tensor) -> np.ndarray:
        return preview_latents(x0, self.latent_rgb, self.latent_rgb_bias)

    def decode(self, x0: torch.Tensor) -> np.ndarray:
        return decode_latents(self.pipe.vae, x0, self.device)


@torch.no_grad()
def preview_latents(x0: torch.Tensor, latent_rgb: torch.Tensor, latent_rgb_bias: torch.Tensor) -> np.ndarray:
    """A cheap picture of latents for the live view: a linear map of their channels to RGB, no VAE."""
    rgb = torch.einsum("bchw,cr->brhw", x0.float().cpu(), latent_rgb) + latent_rgb_bias.view(1, 3, 1, 1)
    return to_uint8(rgb)


@torch.no_grad()
def decode_latents(vae, x0: torch.Tensor, device) -> np.ndarray:
    """The VAE's pictures of latents x0; in float32 where the VAE asks to be upcast. SD3's and Flux's VAEs also
    shift their latents (`shift_factor`); SD 1.x/2.x/XL's have none."""
    dtype = torch.float32 if getattr(vae.config, "force_upcast", False) else vae.dtype
    if vae.dtype != dtype:
        vae.to(dtype)
    latents = x0.to(device, dtype) / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
    return to_uint8(vae.decode(latents).sample)


class StableDiffusionXLModel(StableDiffusionModel):
    """StableDiffusionXLPipeline: two text encoders, pooled embedding and size/crop time ids."""

    latent_rgb = SDXL_LATENT_RGB
    latent_rgb_bias = SDXL_LATENT_RGB_BIAS
    text_encoder_name = "CLIP ViT-bigG text encoder"

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        tokenizer = self.pipe.tokenizer or self.pipe.tokenizer_2
        prompts, rewritten = prepare(tokenizer, prompts)
        truncated = warn_if_truncated(tokenizer, prompts)
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return Conditioning({"prompt_embeds": embeds, "pooled": pooled}, truncated, rewritten)

    @torch.no_grad()
    def encode_null(self) -> Conditioning:
        null = self.encode([""])
        if self.pipe.config.get("force_zeros_for_empty_prompt", True):  # what SDXL's pipeline does for CFG
            null = Conditioning({k: torch.zeros_like(v) for k, v in null.tensors.items()}, [False])
        return null

    @torch.no_grad()
    def text_embedding(self, prompts: list[str]) -> torch.Tensor:
        return self.encode(prompts).tensors["pooled"].float().cpu()

    def unet_kwargs(self, x: torch.Tensor, cond: Conditioning) -> dict:
        h, w = x.shape[-2] * self.vae_scale_factor, x.shape[-1] * self.vae_scale_factor
        # original size, crop top-left, target size: an uncropped image of the sampled size
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=self.device, dtype=self.dtype).repeat(len(x), 1)
        return {
            "encoder_hidden_states": cond.tensors["prompt_embeds"],
            "added_cond_kwargs": {"text_embeds": cond.tensors["pooled"], "time_ids": time_ids},
        }
