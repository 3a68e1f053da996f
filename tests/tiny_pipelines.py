"""Tiny Stable Diffusion 1.x / 2.x / SDXL pipelines with random weights, built from configs.

This is how diffusers tests its own pipelines; the only difference is the tokenizer:
instead of downloading `hf-internal-testing/tiny-random-clip`, a character-level CLIP
tokenizer is written to a temporary folder (no hub access at all).
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch


def char_clip_tokenizer():
    from transformers import CLIPTokenizer

    folder = Path(tempfile.mkdtemp(prefix="clip-tok-"))
    chars = sorted(set(string.printable.lower()) - set(string.whitespace))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                         pad_token="<|endoftext|>")


def clip_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                          layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=200, **extra)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def sd_scheduler(prediction_type="epsilon"):
    from diffusers import PNDMScheduler

    # What the Stable Diffusion repos ship: a PNDM config with SD's schedule and spacing. The estimator
    # takes only the schedule and the spacing from it and runs its own stochastic sampler.
    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, timestep_spacing="leading",
                         prediction_type=prediction_type)


def tiny_sd(version: int = 1, seed: int = 0):
    """SD 1.x (epsilon) or, with version=2, SD 2.x (v-prediction, linear projections)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8,
        attention_head_dim=(2, 4) if version == 2 else 8, use_linear_projection=version == 2,
    )
    return StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(clip_config(hidden_act="gelu" if version == 2 else "quick_gelu")),
        tokenizer=char_clip_tokenizer(), unet=unet,
        scheduler=sd_scheduler("v_prediction" if version == 2 else "epsilon"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def tiny_sdxl(seed: int = 0):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=8,
    )
    config = clip_config(hidden_act="gelu", projection_dim=32)
    return StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=char_clip_tokenizer(), tokenizer_2=char_clip_tokenizer(), unet=unet, scheduler=sd_scheduler(),
    )
