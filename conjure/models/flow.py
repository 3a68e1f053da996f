"""Adapters for rectified-flow (flow-matching) pipelines: Stable Diffusion 3 / 3.5 and Flux (dev, schnell).

A rectified-flow model is trained on the straight path between data and noise,

    x_t = (1 - t) x0 + t eps,      t in [0, 1] (diffusers calls t "sigma"),

and predicts the velocity v = dx_t/dt = eps - x0. That path is Gaussian, so it is the variance-preserving
(VP) path the estimator works in, rescaled:

    x_t = s(t) (sqrt(abar) x0 + sqrt(1 - abar) eps),   s(t) = sqrt((1 - t)^2 + t^2),
    abar(t) = (1 - t)^2 / ((1 - t)^2 + t^2),             log SNR = 2 log((1 - t) / t),

and the velocity gives epsilon directly: eps = x_t + (1 - t) v (substitute x0 = x_t - t v into the path).
So an adapter only maps in and out (`FlowMatchingModel.predict_noise`): the sampler's VP state x is
scaled to the flow state s(t) x, the network's velocity there becomes epsilon, and the sampler, its
guidance and the Girsanov weighting in log SNR run unchanged. The estimator's ancestral step in these
coordinates is the flow scheduler's Euler step when eta = 0 (DDIM is Euler on this path), and its
stochastic counterpart at full re-noising (tests/test_flow.py checks both against diffusers).

Time is discretised on a fine grid: the sampler's integer timestep i stands for t = (i + 1) / GRID. The
steps visited are the model's own scheduler's (FlowMatchEulerDiscreteScheduler: its shift, or for Flux
the shift `mu` that grows with the image's token count), rounded to the grid; the first, t = 1, is pure
noise, where eps = x_t carries nothing of the prompt and log SNR = -inf, so the walk starts one grid
step below it.
"""

from __future__ import annotations

import numpy as np
import torch

from conjure.errors import ConjureError
from conjure.models.base import Conditioning
from conjure.models.stable_diffusion import decode_latents, preview_latents, warn_if_truncated
from conjure.text import prepare

GRID = 10_000  # the sampler's timestep i stands for flow time t = (i + 1) / GRID

# Linear latent -> RGB approximations of the 16-channel VAE latents (as used by common SD UIs for live previews).
SD3_LATENT_RGB = torch.tensor([
    [-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458], [0.0856, 0.0339, 0.0902],
    [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309], [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358],
    [-0.0194, 0.0020, 0.0669], [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
    [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293], [-0.1448, -0.1463, -0.1189],
])
SD3_LATENT_RGB_BIAS = torch.tensor([0.2394, 0.2135, 0.1925])
FLUX_LATENT_RGB = torch.tensor([
    [-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433], [-0.0174, 0.0160, 0.0617],
    [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115], [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259],
    [-0.0245, 0.0250, 0.1180], [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
    [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499], [-0.1262, -0.0982, -0.0778],
])
FLUX_LATENT_RGB_BIAS = torch.tensor([-0.0329, -0.0718, -0.0851])


# --- the flow path as a VP path ---------------------------------------------------------------


def flow_time(timestep: torch.Tensor) -> torch.Tensor:
    """t = (i + 1) / GRID for the sampler's integer timesteps i (float64)."""
    return (timestep.double() + 1) / GRID


def flow_alpha_bar(t):
    """abar(t) = (1 - t)^2 / ((1 - t)^2 + t^2): the VP path's abar at flow time t."""
    return (1 - t) ** 2 / ((1 - t) ** 2 + t**2)


def flow_scale(t):
    """s(t) = sqrt((1 - t)^2 + t^2): the flow state is s(t) times the VP state."""
    return ((1 - t) ** 2 + t**2) ** 0.5


def epsilon_from_velocity(x_flow: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
    """eps = x_t + (1 - t) v, from x_t = (1 - t) x0 + t eps and v = eps - x0."""
    return x_flow + (1 - t) * v


def velocity_from_epsilon(x_flow: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    """v = (eps - x_t) / (1 - t): the inverse of `epsilon_from_velocity` (t < 1)."""
    return (eps - x_flow) / (1 - t)


def grid_timesteps(sigmas: list[float]) -> list[int]:
    """The sampler's integer timesteps for a flow scheduler's sigmas (high to low), rounded to the grid.

    t = 1 (pure noise: abar = 0, log SNR = -inf) becomes the grid's last point below it.
    """
    timesteps = [min(max(round(s * GRID) - 1, 0), GRID - 2) for s in sigmas]
    if any(a <= b for a, b in zip(timesteps, timesteps[1:])):
        raise ConjureError(f"{len(sigmas)} steps put two sampler steps at the same time on the flow grid "
                           f"(1/{GRID}); use fewer steps")
    return timesteps


def flow_training_schedule() -> torch.Tensor:
    """abar at every grid timestep (float64, CPU): what `DiffusionModel.alphas_cumprod` holds for a flow model."""
    return flow_alpha_bar(flow_time(torch.arange(GRID)))


# --- the adapter base --------------------------------------------------------------------------


class FlowMatchingModel:
    """What every flow model shares: the grid, the sampler's timesteps and the conversion to epsilon.

    A subclass sets the model interface's attributes (name, device, dtype, default_size, size_multiple,
    text_encoder_name) and implements `velocity`, `encode`, `encode_null`, `latent_shape`, `preview`,
    `decode`, `text_embedding`, and `scheduler_arguments` if its pipeline sets the scheduler's steps its own way.
    """

    takes_guidance = False  # guidance-distilled models (Flux-dev) take the guidance scale as an input instead

    def __init__(self, scheduler_config: dict):
        self.scheduler_config = dict(scheduler_config)
        self.alphas_cumprod = flow_training_schedule()

    def scheduler_arguments(self, steps: int, size: int) -> dict:
        """How the model's pipeline calls its scheduler's `set_timesteps` (the SD3 pipeline's way by default)."""
        return {"num_inference_steps": steps}

    def sampler_timesteps(self, steps: int, size: int | None = None) -> list[int]:
        """The grid timesteps of the sigmas the model's own scheduler visits, at this image size."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(**self.scheduler_arguments(steps, size or self.default_size))
        return grid_timesteps(scheduler.sigmas[:-1].tolist())  # the last sigma, 0, is the clean image

    def velocity(self, x_flow: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The network's v at flow states (B, C, H, W) and flow times t (B,) in [0, 1]."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_noise(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        time = flow_time(t.to(x.device)).float().view(-1, 1, 1, 1)
        x_flow = flow_scale(time) * x.float()
        v = self.velocity(x_flow, time.flatten(), cond).float()
        return epsilon_from_velocity(x_flow, v, time)


def resolution_shift(image_tokens: int, config: dict, max_shift: float = 1.15) -> float:
    """mu of a dynamically shifted schedule: linear in the image's token count, as the Flux and SD3 pipelines set it."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", max_shift)
    return base + (top - base) * (image_tokens - base_len) / (max_len - base_len)


class DiffusersFlowModel(FlowMatchingModel):
    """The parts of a diffusers flow pipeline both families share: the VAE, the latent preview, the sizes."""

    latent_rgb = SD3_LATENT_RGB
    latent_rgb_bias = SD3_LATENT_RGB_BIAS
    patch = 1  # latent pixels per side of one transformer token
    t5_tokenizer = ""  # the pipeline's attribute holding T5's tokenizer

    def __init__(self, pipe, name: str):
        super().__init__(pipe.scheduler.config)
        self.pipe = pipe
        self.name = name
        self.transformer = pipe.transformer
        self.device = pipe.transformer.device
        self.dtype = pipe.transformer.dtype
        self.vae_scale_factor = pipe.vae_scale_factor
        self.latent_channels = pipe.vae.config.latent_channels
        self.default_size = pipe.default_sample_size * self.vae_scale_factor
        self.size_multiple = self.vae_scale_factor * self.patch

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        if size % self.size_multiple:
            raise ValueError(f"image size must be a multiple of {self.size_multiple} for {self.name}, got {size}")
        side = size // self.vae_scale_factor
        return (self.latent_channels, side, side)

    def image_tokens(self, size: int) -> int:
        return (size // self.vae_scale_factor // self.patch) ** 2

    def conditioning_text(self, prompts: list[str]) -> tuple[list[str], list[bool], list[str | None]]:
        """The prompts as the encoders read them (emoji T5 cannot read, as words), and which CLIP truncates."""
        reader = getattr(self.pipe, self.t5_tokenizer, None) or self.pipe.tokenizer
        prompts, rewritten = prepare(reader, prompts)
        return prompts, warn_if_truncated(self.pipe.tokenizer, prompts), rewritten

    @torch.no_grad()
    def encode_null(self) -> Conditioning:
        return self.encode([""])  # what the pipelines' true classifier-free guidance uses as the negative prompt

    @torch.no_grad()
    def text_embedding(self, prompts: list[str]) -> torch.Tensor:
        return self.encode(prompts).tensors["pooled"].float().cpu()

    def preview(self, x0: torch.Tensor) -> np.ndarray:
        return preview_latents(x0, self.latent_rgb, self.latent_rgb_bias)

    def decode(self, x0: torch.Tensor) -> np.ndarray:
        return decode_latents(self.pipe.vae, x0, self.device)


class StableDiffusion3Model(DiffusersFlowModel):
    """StableDiffusion3Pipeline (SD3, SD3.5): an MMDiT conditioned on CLIP-L, CLIP-G and T5 token states.

    T5 is used as the pipeline loads it. A pipeline built with `text_encoder_3=None` (to save its ~9 GB)
    conditions on zeros in T5's place, exactly as diffusers does; `text_encoder_name` says which it is.
    Guidance is ordinary classifier-free guidance with the empty prompt, as the pipeline's.
    """

    t5_tokenizer = "tokenizer_3"
    max_sequence_length = 256  # T5 tokens, the pipeline's default

    def __init__(self, pipe, name: str = "stable-diffusion-3"):
        self.patch = pipe.transformer.config.patch_size
        super().__init__(pipe, name)
        self.uses_t5 = pipe.text_encoder_3 is not None
        self.text_encoder_name = "CLIP ViT-L and ViT-bigG text encoders (pooled)"
        self.max_size = pipe.transformer.config.pos_embed_max_size * self.patch * self.vae_scale_factor

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        if size > self.max_size:  # the transformer's position embedding covers no more
            raise ValueError(f"image size must be at most {self.max_size} for {self.name}, got {size}")
        return super().latent_shape(size)

    def scheduler_arguments(self, steps: int, size: int) -> dict:
        if self.scheduler_config.get("use_dynamic_shifting"):
            return {"num_inference_steps": steps, "mu": resolution_shift(self.image_tokens(size),
                                                                         self.scheduler_config, 1.16)}
        return {"num_inference_steps": steps}

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        prompts, truncated, rewritten = self.conditioning_text(prompts)
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts, None, None, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return Conditioning({"prompt_embeds": embeds, "pooled": pooled}, truncated, rewritten)

    def velocity(self, x_flow: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.transformer(
            hidden_states=x_flow.to(self.dtype), timestep=(t * 1000).to(self.device),  # SD3 reads t in [0, 1000]
            encoder_hidden_states=cond.tensors["prompt_embeds"], pooled_projections=cond.tensors["pooled"],
            return_dict=False,
        )[0]


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): Flux reads 2 x 2 latent patches as tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack_latents`, for latents of side h x w."""
    b, _, channels = tokens.shape
    c = channels // 4
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def latent_token_positions(h: int, w: int, device, dtype) -> torch.Tensor:
    """Flux's image token ids: (row, column) of each 2 x 2 patch (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device, dtype)


class FluxModel(DiffusersFlowModel):
    """FluxPipeline (FLUX.1 dev and schnell): a transformer on T5 token states and CLIP-L's pooled embedding.

    Flux-dev is guidance-distilled: it takes the guidance scale as an input and was never trained to run
    without a prompt, so conjure's guidance g goes in as that input and no unconditional branch runs
    (g = 1: the conditional model, as for every other model; diffusers' default for pictures is 3.5).
    Flux-schnell has no guidance input; a guidance other than 1 is ordinary classifier-free guidance with
    the empty prompt (diffusers' `true_cfg_scale`), not something it was distilled for.
    """

    latent_rgb, latent_rgb_bias = FLUX_LATENT_RGB, FLUX_LATENT_RGB_BIAS
    t5_tokenizer = "tokenizer_2"
    patch = 2  # Flux packs 2 x 2 latent pixels into a token

    def __init__(self, pipe, name: str = "flux"):
        super().__init__(pipe, name)
        self.takes_guidance = bool(pipe.transformer.config.guidance_embeds)
        # T5 tokens as the pipelines are run: 512 for dev; schnell was trained on 256
        self.max_sequence_length = 512 if self.takes_guidance else 256
        self.text_encoder_name = "CLIP ViT-L text encoder (pooled)"

    def scheduler_arguments(self, steps: int, size: int) -> dict:
        """FluxPipeline's call: sigmas evenly from 1 to 1/steps, shifted by mu for the image's token count."""
        return {"sigmas": np.linspace(1.0, 1 / steps, steps),
                "mu": resolution_shift(self.image_tokens(size), self.scheduler_config)}

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        prompts, truncated, rewritten = self.conditioning_text(prompts)
        embeds, pooled, _ = self.pipe.encode_prompt(prompts, None, device=self.device,
                                                    max_sequence_length=self.max_sequence_length)
        return Conditioning({"prompt_embeds": embeds, "pooled": pooled}, truncated, rewritten)

    def velocity(self, x_flow: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        b, _, h, w = x_flow.shape
        c = cond.tensors
        guidance = None
        if self.takes_guidance:  # the scale the estimator put in each row; 1 (none) if called without one
            guidance = c["guidance"].float() if "guidance" in c else torch.ones(b)
        out = self.transformer(
            hidden_states=pack_latents(x_flow.to(self.dtype)), timestep=t.to(self.device, self.dtype),  # in [0, 1]
            guidance=None if guidance is None else guidance.to(self.device),
            encoder_hidden_states=c["prompt_embeds"], pooled_projections=c["pooled"],
            txt_ids=torch.zeros(c["prompt_embeds"].shape[1], 3, device=self.device, dtype=self.dtype),
            img_ids=latent_token_positions(h, w, self.device, self.dtype), return_dict=False,
        )[0]
        return unpack_latents(out, h, w)

