"""Pictures of a similarity matrix, drawn with Pillow: a heatmap with the values, and a map of meanings.

    m = conjure.similarity_matrix(model, phrases)
    heatmap(m.jeffreys, m.phrases, m.images).save("heatmap.png")                  # smaller = more alike
    heatmap(m.text_cosine, m.phrases, m.images, alike="high", title="...").save("text.png")
    meaning_map(m).save("map.png")         # each phrase's own image at its MDS point

UI-free, like `conjure.animation` (whose fonts, colours and helpers it shares): numpy arrays in,
PIL images out.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from conjure.animation import GRID, INK, PAPER, fit_text, font, format_number, resize

# Sequential map from "alike" (dark blue) to "far apart" (pale yellow), in the spirit of viridis/cividis:
# lightness grows monotonically, so the order reads in grey too, and values stay legible on every cell.
_ANCHORS = np.array([[13, 42, 96], [35, 82, 140], [54, 120, 160], [84, 156, 160], [140, 188, 146],
                     [203, 214, 140], [250, 238, 170]], dtype=np.float32)
ALIKE_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c])
                      for c in range(3)], axis=1).round().astype(np.uint8)
DIAGONAL = (236, 238, 241)
POINT = (134, 142, 150)


def _luminance(rgb) -> float:
    r, g, b = (c / 255 for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _shade(value: float, low: float, high: float, alike: str) -> tuple[int, int, int]:
    t = 0.5 if high <= low else (value - low) / (high - low)
    t = min(max(t, 0.0), 1.0)
    if alike == "high":
        t = 1 - t
    return tuple(int(c) for c in ALIKE_LUT[round(t * 255)])


def matrix_number(values: np.ndarray) -> Callable[[float], str]:
    """One format for every cell of a matrix: the same decimals throughout, no exponents below 10^5."""
    finite = np.abs(np.asarray(values, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    peak = float(finite.max()) if finite.size else 0.0
    if peak < 1 or peak >= 1e5:
        return format_number
    decimals = 0 if peak >= 100 else 1 if peak >= 10 else 2
    return lambda v: f"{v:.{decimals}f}"


def _slanted_label(text: str, size: int, angle: float = 40.0) -> tuple[Image.Image, tuple[float, float]]:
    """`text` drawn at `angle` degrees up from the horizontal; returns the image and where its start lies."""
    f = font(size)
    w, h = int(math.ceil(f.getlength(text))) + 4, size + 6
    flat = Image.new("L", (w, h), 0)
    ImageDraw.Draw(flat).text((2, h / 2), text, fill=255, font=f, anchor="lm")
    turned = flat.rotate(angle, expand=True, resample=Image.BICUBIC)
    a = math.radians(angle)
    dx, dy = -w / 2 + 2, 0.0  # the start of the text, relative to the flat image's centre
    x = turned.width / 2 + dx * math.cos(a) + dy * math.sin(a)
    y = turned.height / 2 - dx * math.sin(a) + dy * math.cos(a)
    return turned, (x, y)


def heatmap(values: np.ndarray, phrases: Sequence[str], images: np.ndarray | None = None, *,
            title: str = "Jeffreys divergence (nats)", alike: str = "low",
            fmt: Callable[[float], str] | None = None, note: str = "") -> Image.Image:
    """The N x N matrix as coloured cells with their values, phrases (and their images) on both axes.

    Colours span the off-diagonal values, darkest where the phrases are most alike: the smallest
    values with `alike="low"` (divergences), the largest with `alike="high"` (cosines). The diagonal
    (a phrase against itself) is grey. `fmt` formats the values (default `matrix_number`: the same
    decimals in every cell). `note` is a line under the colour bar. The default font
    has Latin-1 glyphs only (no dashes, arrows or maths signs), so labels are kept to those.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(phrases)
    fmt = fmt or matrix_number(values)
    if values.shape != (n, n):
        raise ValueError(f"a {values.shape} matrix for {n} phrases")
    off = values[~np.eye(n, dtype=bool)] if n > 1 else values.ravel()
    finite = off[np.isfinite(off)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)

    cell = 76 if n <= 10 else 60 if n <= 14 else 44
    value_size = 15 if cell >= 60 else 12
    label_size, pad, thumb = 14, 14, (cell - 12 if images is not None else 0)
    if thumb and 2 * images.shape[1] <= thumb:  # pixel art: a whole number of screen pixels per image pixel
        thumb -= thumb % images.shape[1]
    label_w = int(min(200, max(font(label_size).getlength(p) for p in phrases) + 8))
    slant_h = int(label_w * math.sin(math.radians(40))) + 20
    left = pad + label_w + (thumb + 8 if thumb else 0)
    top = pad + 30 + slant_h + (thumb + 8 if thumb else 0)
    grid_w = n * cell
    right = pad + int(label_w * math.cos(math.radians(40)))  # room for the last column's label
    width = max(left + grid_w + right, 420)
    height = top + grid_w + 86 + (18 if note else 0)
    image = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad + 10), title, fill=INK, font=font(18), anchor="lm")

    for i, phrase in enumerate(phrases):
        y = top + i * cell
        x = left + i * cell
        text = fit_text(phrase, label_size, label_w - 8)
        # row label (left) and column label (slanted, above), each beside its phrase's image
        draw.text((pad + label_w - 6, y + cell / 2), text, fill=INK, font=font(label_size), anchor="rm")
        label, (sx, sy) = _slanted_label(text, label_size)
        anchor_y = top - (thumb + 12 if thumb else 6)
        image.paste(INK, (int(round(x + cell / 2 - 4 - sx)), int(round(anchor_y - sy))), label)
        if thumb:
            tile = resize(images[i], thumb)
            image.paste(tile, (left - thumb - 8, y + (cell - thumb) // 2))
            image.paste(tile, (x + (cell - thumb) // 2, top - thumb - 8))
        for j in range(n):
            box = [left + j * cell, y, left + (j + 1) * cell - 1, y + cell - 1]
            if i == j:
                draw.rectangle(box, fill=DIAGONAL)
                draw.text((box[0] + cell / 2, y + cell / 2), fmt(float(values[i, i])), fill=POINT,
                          font=font(value_size), anchor="mm")
                continue
            v = float(values[i, j])
            colour = _shade(v, low, high, alike) if math.isfinite(v) else DIAGONAL
            draw.rectangle(box, fill=colour)
            ink = PAPER if _luminance(colour) < 0.5 else INK
            draw.text((box[0] + cell / 2, y + cell / 2), fmt(v), fill=ink, font=font(value_size), anchor="mm")
    draw.rectangle([left - 1, top - 1, left + grid_w, top + grid_w], outline=GRID)

    # colour bar: dark = more alike
    bar_y, bar_w = top + grid_w + 30, min(max(grid_w, 300), 360, width - 2 * pad)
    bar_x = min(max(left + (grid_w - bar_w) // 2, pad), width - pad - bar_w)
    ramp = ALIKE_LUT[np.linspace(0, 255, bar_w).round().astype(int)][None].repeat(14, axis=0)
    image.paste(Image.fromarray(ramp), (bar_x, bar_y))
    small = font(12)
    first, last = (low, high) if alike == "low" else (high, low)
    draw.text((bar_x, bar_y - 4), f"{fmt(first)}  more alike", fill=INK, font=small, anchor="ld")
    draw.text((bar_x + bar_w, bar_y - 4), f"less alike  {fmt(last)}", fill=INK, font=small, anchor="rd")
    if note:
        draw.text((left + grid_w / 2, bar_y + 30), note, fill=POINT, font=small, anchor="mm")
    return image


def _spread(centres: np.ndarray, half: np.ndarray, bounds: tuple[float, float, float, float],
            rounds: int = 300) -> np.ndarray:
    """Move boxes (centres, half-sizes) apart until they stop overlapping, staying inside bounds."""
    c = centres.astype(np.float64).copy()
    x0, y0, x1, y1 = bounds
    for _ in range(rounds):
        moved = False
        for i in range(len(c)):
            for j in range(i + 1, len(c)):
                d = c[j] - c[i]
                overlap = half[i] + half[j] + 4 - np.abs(d)
                if overlap[0] > 0 and overlap[1] > 0:
                    axis = int(np.argmin(overlap / (half[i] + half[j])))  # the cheaper way out
                    step = overlap[axis] / 2 + 0.5
                    sign = 1.0 if d[axis] > 0 or (d[axis] == 0 and i % 2) else -1.0
                    c[i, axis] -= sign * step
                    c[j, axis] += sign * step
                    moved = True
        c[:, 0] = np.clip(c[:, 0], x0 + half[:, 0], x1 - half[:, 0])
        c[:, 1] = np.clip(c[:, 1], y0 + half[:, 1], y1 - half[:, 1])
        if not moved:
            break
    return c


def meaning_map(result, *, size: tuple[int, int] | None = None, thumb: int | None = None,
                title: str = "A map of meanings") -> Image.Image:
    """Each phrase's own image at its point of a 2-D classical MDS of the matrix (`MatrixResult.map_measure`).

    Distances on the page approximate sqrt(D_J), or sqrt(2 (1 - cos)) for a matrix with cosines
    (`MatrixResult.mds`); both axes share one scale.
    A grey line joins each phrase's picture to its nearest neighbour's (by the cosine where the matrix has it, else
    by divergence); where pictures would overlap they are nudged apart, and a hair-line leads from the picture to
    its true point.
    """
    phrases, images = result.phrases, result.images
    n = len(phrases)
    by = result.map_measure
    coords = result.mds(2, by=by)
    share = result.mds_share(2, by=by)
    width, height = size or ((760, 620) if n <= 10 else (1000, 820) if n <= 20 else (1240, 1000))
    thumb = thumb or (96 if n <= 6 else 80 if n <= 10 else 56 if n <= 20 else 40)
    if 2 * images.shape[1] <= thumb:  # pixel art: a whole number of screen pixels per image pixel
        thumb -= thumb % images.shape[1]
    caption, pad, header = 18, 16, 56
    labels = [fit_text(p, 13, thumb + 40) for p in phrases]
    # a picture and its caption are kept apart from the others as one box
    half = np.array([[max(thumb, font(13).getlength(label) + 6) / 2 + 2, (thumb + caption) / 2 + 2]
                     for label in labels])
    area = (pad, header + pad, width - pad, height - pad - 18)
    edge = half.max(axis=0)
    inner = (area[0] + edge[0], area[1] + edge[1], area[2] - edge[0], area[3] - edge[1])
    span = np.ptp(coords, axis=0) if n > 1 else np.zeros(2)
    scale = min((inner[2] - inner[0]) / span[0] if span[0] > 0 else math.inf,
                (inner[3] - inner[1]) / span[1] if span[1] > 0 else math.inf)
    scale = 1.0 if not math.isfinite(scale) else scale
    middle = (coords.max(axis=0) + coords.min(axis=0)) / 2
    # page y grows downwards: the second axis is flipped so "up" is positive, as on any chart
    points = np.stack([(inner[0] + inner[2]) / 2 + (coords[:, 0] - middle[0]) * scale,
                       (inner[1] + inner[3]) / 2 - (coords[:, 1] - middle[1]) * scale], axis=1)
    # the picture's centre sits above the caption: offset boxes so the image centre is at the point
    box_centres = points + np.array([0, caption / 2])
    placed = _spread(box_centres, half, area) - np.array([0, caption / 2])

    image = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad + 8), title, fill=INK, font=font(18), anchor="lm")
    drawn = ("the cosines of the pulls: distance on the page ~ sqrt(1 - cosine)" if by == "cosine" else
             "the Jeffreys divergences: distance on the page ~ sqrt(divergence)")
    draw.text((pad, pad + 32), f"classical MDS of {drawn}; the two axes show {100 * share:.0f}% of the spread",
              fill=POINT, font=font(12), anchor="lm")
    draw.line([(area[0], header + 4), (area[2], header + 4)], fill=GRID)
    for phrase, neighbour, _ in result.nearest(result.images_measure):  # between the pictures, so lines can be followed
        i, j = phrases.index(phrase), phrases.index(neighbour)
        draw.line([tuple(placed[i]), tuple(placed[j])], fill=GRID, width=3)
    for i in range(n):
        if np.hypot(*(placed[i] - points[i])) > 2:
            draw.line([tuple(points[i]), tuple(placed[i])], fill=POINT, width=1)
        draw.ellipse([points[i][0] - 3, points[i][1] - 3, points[i][0] + 3, points[i][1] + 3], fill=POINT)
    for i in range(n):
        x, y = int(round(placed[i][0] - thumb / 2)), int(round(placed[i][1] - thumb / 2))
        draw.rectangle([x - 2, y - 2, x + thumb + 1, y + thumb + 1], fill=PAPER, outline=GRID)
        image.paste(resize(images[i], thumb), (x, y))
        label = labels[i]
        lw = font(13).getlength(label)
        cx, cy = placed[i][0], y + thumb + caption / 2 + 2
        draw.rectangle([cx - lw / 2 - 3, cy - 8, cx + lw / 2 + 3, cy + 8], fill=PAPER)
        draw.text((cx, cy), label, fill=INK, font=font(13), anchor="mm")
    draw.text((width - pad, height - pad), "lines: each phrase to its nearest neighbour", fill=POINT,
              font=font(11), anchor="rd")
    return image


def matrix_figures(result, text_encoder: str = "text encoder") -> dict[str, Image.Image]:
    """The three pictures of a MatrixResult: "heatmap" (what the images say: the cosine of the pulls where the
    matrix has it, else the Jeffreys divergence; `MatrixResult.map_measure`), "text_heatmap" (the text encoder's
    cosine) and "map" (drawn from the same measure as the heatmap)."""
    settings = result.settings
    note = f"{result.model} · {settings['steps']} steps · k = {settings['samples']} · seed {settings['seed']}"
    if result.map_measure == "cosine":
        images = heatmap(result.cosine, result.phrases, result.images, alike="high", fmt=lambda v: f"{v:.2f}",
                         title="What the images say: cosine of the pulls", note=note)
    else:
        images = heatmap(result.jeffreys, result.phrases, result.images,
                         title="What the images say: Jeffreys divergence (nats)", note=note)
    return {
        "heatmap": images,
        "text_heatmap": heatmap(result.text_cosine, result.phrases, result.images, alike="high",
                                fmt=lambda v: f"{v:.2f}",
                                title="What the words say: cosine similarity", note=f"{text_encoder} embeddings"),
        "map": meaning_map(result),
    }
