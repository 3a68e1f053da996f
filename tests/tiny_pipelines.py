"""Tiny Stable Diffusion 1.x / 2.x / SDXL / 3 and Flux pipelines with random weights, built from configs.

This is how diffusers tests its own pipelines; the only difference is the tokenizers:
instead of downloading `hf-internal-testing/tiny-random-clip` (and `-t5`), character-level
CLIP and T5 tokenizers are built here (no hub access at all).
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


def char_t5_tokenizer():
    """A T5 (Unigram) tokenizer that reads one character per token; emoji are unknown to it, as to T5's own."""
    from transformers import T5Tokenizer

    chars = sorted(set(string.printable) - set(string.whitespace))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(piece, -3.0) for c in chars for piece in (c, "\u2581" + c)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def tiny_t5(d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=256, d_model=d_model, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                   dropout_rate=0.0)).eval()  # as from_pretrained loads it: no dropout


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


def flow_vae():
    """A 16-channel latent space, as SD3's and Flux's VAEs (with their shift and scale)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=16,
                         norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, use_quant_conv=False, use_post_quant_conv=False,
                         shift_factor=0.0609, scaling_factor=1.5035)


def tiny_sd3(seed: int = 0, shift: float = 3.0, t5: bool = True):
    """SD3 / 3.5: an MMDiT on CLIP-L + CLIP-G + T5 token states, SD3's shifted flow schedule (shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64,
        pos_embed_max_size=32,
    )
    config = clip_config(hidden_act="gelu", projection_dim=32)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=flow_vae(),
        text_encoder=CLIPTextModelWithProjection(config), tokenizer=char_clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(config), tokenizer_2=char_clip_tokenizer(),
        text_encoder_3=tiny_t5(64) if t5 else None, tokenizer_3=char_t5_tokenizer() if t5 else None,
    )


def flux_scheduler(dev: bool):
    """FLUX.1's scheduler configs: dev shifts by the image's token count (mu); schnell does not shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0 if dev else 1.0, use_dynamic_shifting=dev, base_shift=0.5,
                                           max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def tiny_flux(dev: bool = True, seed: int = 0):
    """FLUX.1 dev (guidance-distilled: guidance is an input) or, with dev=False, schnell (no guidance input)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8), guidance_embeds=dev,
    )
    pipe = FluxPipeline(
        scheduler=flux_scheduler(dev), vae=flow_vae(), text_encoder=CLIPTextModel(clip_config(hidden_act="gelu")),
        tokenizer=char_clip_tokenizer(), text_encoder_2=tiny_t5(32), tokenizer_2=char_t5_tokenizer(),
        transformer=transformer,
    )
    pipe.default_sample_size = 16  # latent side (FluxPipeline's is 128): 32 px images here, 1024 for FLUX.1
    return pipe
