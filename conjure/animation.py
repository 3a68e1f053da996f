"""Pictures of a run, drawn with Pillow: difference maps, animation frames, looping GIFs and videos.

    difference_map(event.difference, event.image_a)            # where the two prompts' predictions differ
    frames = trajectory_frames(images_a, images_b, differences, per_step, "snow leopard", "bengal tiger")
    durations = trajectory_durations(len(frames))               # per-frame milliseconds, end frame held
    write_gif(frames, "trajectories.gif", durations)            # palette-optimised, loops forever
    write_video(frames, "trajectories.mp4", durations)          # H.264 (or .webm: VP9), same timing

UI-free: plain numpy arrays in, PIL images and files out, so the app, notebooks and
scripts draw the same pictures. GIFs are written with Pillow; videos with imageio's
ffmpeg plugin (the `imageio-ffmpeg` wheel ships its own ffmpeg binary).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from functools import lru_cache, reduce
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from conjure.errors import ConjureError

# One colour per curve, shared with the app's live plot.
COLOR_A = "#1c7ed6"  # along trajectory A (prompt 1): KL(A||B) per step
COLOR_B = "#f76707"  # along trajectory B (prompt 2): KL(B||A) per step
COLOR_TOTAL = "#862e9c"  # the running Jeffreys divergence
INK, GRID, PAPER = (33, 37, 41), (222, 226, 230), (255, 255, 255)

# Anchors of a perceptually ordered black -> purple -> orange -> yellow map (like matplotlib's inferno).
_HEAT_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                          [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float32)
HEAT_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_HEAT_ANCHORS)), _HEAT_ANCHORS[:, c])
                     for c in range(3)], axis=1).round().astype(np.uint8)


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


# --- single images ----------------------------------------------------------------------


def resize(image: np.ndarray, side: int) -> Image.Image:
    """A square panel: nearest-neighbour when enlarging (keeps tiny images crisp), Lanczos when shrinking."""
    img = Image.fromarray(image)
    if img.size == (side, side):
        return img
    return img.resize((side, side), Image.NEAREST if img.width < side else Image.LANCZOS)


def difference_map(difference: np.ndarray, under: np.ndarray | None = None, opacity: float = 0.75) -> np.ndarray:
    """Colour the per-pixel size of the prediction difference (scaled to this map's maximum).

    Laid over a grey copy of `under` (an image of the trajectory) so the hot spots can be
    located in the picture; the map is resized to `under`'s resolution.
    """
    d = np.nan_to_num(np.asarray(difference, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(d.max()) if d.size else 0.0
    heat = HEAT_LUT[np.clip(d / peak * 255, 0, 255).astype(np.uint8) if peak > 0 else np.zeros(d.shape, np.uint8)]
    return heat if under is None else laid_over(heat, under, opacity)


def laid_over(colour: np.ndarray, under: np.ndarray, opacity: float) -> np.ndarray:
    """A coloured map (uint8 HWC) resized to `under` and laid over a grey copy of it, at `opacity`."""
    h, w = under.shape[:2]
    if colour.shape[:2] != (h, w):
        colour = np.asarray(Image.fromarray(colour).resize((w, h), Image.BILINEAR))
    grey = under.astype(np.float32).mean(axis=2, keepdims=True)
    return (opacity * colour + (1 - opacity) * grey).round().astype(np.uint8)


# A word's contribution map (conjure.explain): red where it pushes the prompts apart, purple where it pulls them
# together, the colours the app's highlighted words use.
PUSHES_APART, PULLS_TOGETHER = (239, 68, 60), (128, 90, 213)


def contribution_map(values: np.ndarray, under: np.ndarray | None = None, peak: float | None = None,
                     opacity: float = 0.8) -> np.ndarray:
    """Colour a signed per-position map: white at 0, red towards +peak, purple towards -peak.

    `peak` (default: this map's largest magnitude) lets several maps share one scale. Laid over a grey copy of
    `under` and resized to it, as `difference_map` does.
    """
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.abs(v).max()) if peak is None else float(peak)
    t = np.clip(v / peak, -1, 1)[..., None] if peak > 0 else np.zeros((*v.shape, 1), np.float32)
    paper = np.float32(255)
    colour = np.where(t >= 0, paper + t * (np.array(PUSHES_APART, np.float32) - paper),
                      paper - t * (np.array(PULLS_TOGETHER, np.float32) - paper))
    colour = colour.round().astype(np.uint8)
    return colour if under is None else laid_over(colour, under, opacity)


def fit_text(text: str, size: int, width: int) -> str:
    """`text`, shortened with an ellipsis to fit `width` pixels."""
    f = font(size)
    if f.getlength(text) <= width:
        return text
    while text and f.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 5 x 10^n at or above `value` (an axis limit that changes rarely)."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * 10**exponent >= value * (1 - 1e-9):
            return m * 10.0**exponent
    return 10.0 ** (exponent + 1)


def format_number(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2e}"


# --- the divergence curve ---------------------------------------------------------------


def draw_curves(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], per_step: dict, upto: int,
                y_max: float) -> None:
    """The divergence each step adds along A and along B, for steps 1..upto, on fixed axes (as the app's plot).

    `per_step` has lists "kl_ab" and "kl_ba" over all steps; the axes span all steps and
    0..y_max, so the curves grow frame by frame instead of rescaling. The running total is in the
    frame's header, not on this axis, where it would dwarf the per-step terms.
    """
    left, top, right, bottom = box
    small = font(11)
    label_w = int(max(small.getlength(format_number(v)) for v in (y_max, y_max / 2))) + 6
    x0, x1, y0, y1 = left + label_w, right - 4, bottom - 16, top + 16
    steps = len(per_step["kl_ab"])

    def px(step: int) -> float:
        return x0 + (x1 - x0) * ((step - 1) / max(steps - 1, 1))

    def py(value: float) -> float:
        return y0 - (y0 - y1) * min(max(value / y_max, 0.0), 1.0)

    for frac in (0.0, 0.5, 1.0):
        y = py(frac * y_max)
        draw.line([(x0, y), (x1, y)], fill=GRID)
        draw.text((x0 - 4, y), format_number(frac * y_max), fill=INK, font=small, anchor="rm")
    for step in range(1, steps + 1):
        if steps <= 12 or step in (1, steps) or step % math.ceil(steps / 10) == 0:
            draw.text((px(step), y0 + 3), str(step), fill=INK, font=small, anchor="mt")
    draw.line([(px(upto), y1), (px(upto), y0)], fill=GRID, width=2)

    ab, ba = per_step["kl_ab"][:upto], per_step["kl_ba"][:upto]
    for values, color, width in ((ab, COLOR_A, 2), (ba, COLOR_B, 2)):
        points = [(px(s + 1), py(v)) for s, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill=color, width=width, joint="curve")
        for x, y in points:
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=color)

    legend_x = x0
    for text, color in (("KL added along A", COLOR_A), ("KL added along B", COLOR_B)):
        draw.rectangle([legend_x, top + 3, legend_x + 10, top + 11], fill=color)
        draw.text((legend_x + 14, top + 7), text, fill=INK, font=small, anchor="lm")
        legend_x += 24 + int(small.getlength(text))


def curve_limit(per_step: dict) -> float:
    """A y-axis limit that holds every curve of `draw_curves` at every step."""
    ab, ba = np.asarray(per_step["kl_ab"]), np.asarray(per_step["kl_ba"])
    return nice_ceiling(max(float(np.max(ab, initial=0)), float(np.max(ba, initial=0))))


# --- animation frames -------------------------------------------------------------------

MORPH_PANEL, TRAJECTORY_PANEL = 256, 160  # default side of the pictures in the frames, in pixels


def trajectory_frames(images_a: Sequence[np.ndarray], images_b: Sequence[np.ndarray],
                      differences: Sequence[np.ndarray], per_step: dict, text_a: str, text_b: str,
                      panel: int = TRAJECTORY_PANEL) -> list[Image.Image]:
    """One frame per sampler step: trajectory A | trajectory B | difference map, the step, and the curves."""
    steps, gap, header, caption, chart = len(images_a), 8, 26, 20, 150
    width = 3 * panel + 4 * gap
    height = header + panel + caption + chart + gap
    y_max = curve_limit(per_step)
    total = np.cumsum((np.asarray(per_step["kl_ab"]) + np.asarray(per_step["kl_ba"])) / 2)
    frames = []
    for i in range(steps):
        frame = Image.new("RGB", (width, height), PAPER)
        draw = ImageDraw.Draw(frame)
        draw.text((gap, header // 2), f"step {i + 1}/{steps}", fill=INK, font=font(15), anchor="lm")
        draw.text((width - gap, header // 2), f"Jeffreys so far {format_number(float(total[i]))}",
                  fill=COLOR_TOTAL, font=font(15), anchor="rm")
        diff = difference_map(differences[i], images_a[i])
        for n, (image, label, color) in enumerate(((images_a[i], text_a, COLOR_A), (images_b[i], text_b, COLOR_B),
                                                   (diff, "where they differ", INK))):
            x = gap + n * (panel + gap)
            frame.paste(resize(image, panel), (x, header))
            draw.text((x + panel / 2, header + panel + caption / 2), fit_text(label, 13, panel), fill=color,
                      font=font(13), anchor="mm")
        draw_curves(draw, (gap, header + panel + caption, width - gap, height - gap), per_step, i + 1, y_max)
        frames.append(frame)
    return frames


def morph_frames(images: np.ndarray, weights: Sequence[float], text_a: str, text_b: str,
                 panel: int = MORPH_PANEL) -> list[Image.Image]:
    """One frame per stage: the image, both prompts, and a bar at the stage's interpolation weight."""
    gap, caption = 8, 44
    width, height = panel + 2 * gap, panel + caption + gap
    frames = []
    for image, w in zip(images, weights):
        frame = Image.new("RGB", (width, height), PAPER)
        draw = ImageDraw.Draw(frame)
        frame.paste(resize(image, panel), (gap, gap))
        top = panel + gap + 6
        draw.text((gap, top), fit_text(text_a, 13, panel // 2 - 4), fill=COLOR_A, font=font(13), anchor="lt")
        draw.text((width - gap, top), fit_text(text_b, 13, panel // 2 - 4), fill=COLOR_B, font=font(13), anchor="rt")
        bar_y = top + 22
        draw.rounded_rectangle([gap, bar_y, width - gap, bar_y + 8], radius=4, fill=GRID)
        knob = gap + (width - 2 * gap) * float(w)
        draw.rounded_rectangle([gap, bar_y, max(knob, gap + 8), bar_y + 8], radius=4, fill=COLOR_B)
        draw.ellipse([knob - 6, bar_y - 2, knob + 6, bar_y + 10], fill=COLOR_A if w < 0.5 else COLOR_B)
        frames.append(frame)
    return frames


# --- GIF ----------------------------------------------------------------------------------


def shared_palette(frames: Sequence[Image.Image], colors: int = 255) -> Image.Image:
    """One adaptive palette for all frames (a sample of their pixels), so frames differ only where they change."""
    sample = [f.resize((max(f.width // 2, 1), max(f.height // 2, 1)), Image.NEAREST) for f in frames]
    strip = Image.new("RGB", (max(s.width for s in sample), sum(s.height for s in sample)), PAPER)
    y = 0
    for s in sample:
        strip.paste(s, (0, y))
        y += s.height
    return strip.quantize(colors=colors, method=Image.Quantize.MEDIANCUT)


def write_gif(frames: Sequence[Image.Image], path: str | Path, durations: int | Sequence[int] = 400) -> Path:
    """A looping GIF: shared palette, no dithering (flat colours compress well), changed regions only."""
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    palette = shared_palette(frames)
    indexed = [f.convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    path = Path(path)
    indexed[0].save(path, save_all=True, append_images=indexed[1:], duration=durations, loop=0, optimize=True,
                    disposal=1)
    return path


def hold_ends(n: int, frame_ms: int, hold_ms: int, hold_first: bool = True) -> list[int]:
    """Per-frame durations: `frame_ms` each, the last (and optionally the first) held for `hold_ms`."""
    durations = [frame_ms] * n
    if n:
        durations[-1] = hold_ms
        if hold_first and n > 1:
            durations[0] = hold_ms
    return durations


def morph_durations(n: int) -> list[int]:
    """The morph's timing (ms per frame): 0.3 s a stage, both prompts' own images held 1.2 s."""
    return hold_ends(n, 300, 1200)


def trajectory_durations(n: int) -> list[int]:
    """The trajectories' timing (ms per frame): 0.4 s a step, the final step held 2 s."""
    return hold_ends(n, 400, 2000, hold_first=False)


# --- video (MP4, WebM) ----------------------------------------------------------------------


class VideoError(ConjureError):
    """A video could not be written: no usable ffmpeg, or ffmpeg failed."""


# Encoder and settings per container. H.264 High in yuv420p plays everywhere (browsers, phones,
# chat apps, slides); +faststart puts the index first so a browser starts playing at once.
# VP9 at constant quality (-b:v 0) is smaller again and slower to encode (docs/performance.md#animations).
VIDEO_CODECS = {
    ".mp4": ("libx264", ["-crf", "20", "-preset", "medium", "-profile:v", "high", "-movflags", "+faststart"]),
    ".webm": ("libvpx-vp9", ["-crf", "32", "-b:v", "0", "-deadline", "good", "-cpu-used", "4", "-row-mt", "1"]),
}
# sRGB frames to BT.709 limited-range YUV, tagged as such, so every player converts them back alike.
VIDEO_COLOR = ["-vf", "scale=out_color_matrix=bt709:out_range=tv,"
                      "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv"]
ANIMATION_FORMATS = (".gif", *VIDEO_CODECS)


def video_unavailable() -> str | None:
    """None when MP4 and WebM can be written here; otherwise why not, in words for the user."""
    try:
        import imageio.v3  # noqa: F401
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as err:  # not installed, no binary for this platform, a broken install
        return f"ffmpeg is not available ({type(err).__name__}: {err}); `pip install imageio-ffmpeg` provides it"
    return None


def video_timing(durations: int | Sequence[int], n: int, min_fps: int = 10, max_fps: int = 60
                 ) -> tuple[Fraction, list[int]]:
    """A constant frame rate and how many times to repeat each frame so the video keeps the GIF's timing.

    The frame period divides every duration exactly (their greatest common divisor), refined to at
    least `min_fps` frames per second: some players and sites mishandle very low rates, and repeated
    frames cost a few bytes. Durations with no common period of at least 1/`max_fps` s are rounded to
    1/30 s (at least one frame each).
    """
    ms = [durations] * n if isinstance(durations, (int, float)) else list(durations)
    if len(ms) != n:
        raise ValueError(f"{len(ms)} durations for {n} frames")
    ms = [int(round(d)) for d in ms]
    if any(d <= 0 for d in ms):
        raise ValueError(f"frame durations must be positive milliseconds, got {ms}")
    period = reduce(math.gcd, ms)
    fps = Fraction(1000, period)
    if fps > max_fps:
        return Fraction(30), [max(1, round(d * 30 / 1000)) for d in ms]
    times = max(1, math.ceil(min_fps / fps))
    return fps * times, [d // period * times for d in ms]


def video_scale(image_side: int, panel: int) -> int:
    """How much to enlarge the video of frames whose `panel`-px pictures show `image_side`-px images.

    2 when the frames enlarged them at least twofold by nearest neighbour (pixel art: the embedded
    model's 32 px), else 1. Enlarged twofold, every frame pixel becomes a 2x2 block, so H.264's
    half-resolution colour (yuv420p) keeps each pixel's own colour, and players that stretch a small
    video smoothly have less to blur. Measured in bench/bench_video.py.
    """
    return 2 if 2 * image_side <= panel else 1


def even_sides(frame: np.ndarray) -> np.ndarray:
    """Pad a frame to even width and height by repeating its last row/column (yuv420p needs even sides)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(frames: Sequence[Image.Image | np.ndarray], path: str | Path,
                durations: int | Sequence[int] = 400, scale: int = 1, threads: int | None = None) -> Path:
    """An MP4 (H.264) or WebM (VP9) of `frames`, by the suffix of `path`, with the same timing as `write_gif`.

    Frames are RGB images of one size; `durations` are milliseconds per frame (as for GIFs), kept
    exactly by repeating frames at a constant frame rate (`video_timing`). `scale` enlarges every
    frame by nearest neighbour (2 for pixel art: see `video_scale`); odd sides are padded to even.
    Videos do not loop by themselves; players and pages loop them. `threads` caps ffmpeg's threads
    (default: its own choice). Raises VideoError when ffmpeg is missing or fails; a failed write
    leaves no file behind.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_CODECS:
        raise ConjureError(f"cannot write {path.name}: video formats are {', '.join(VIDEO_CODECS)}")
    if not len(frames):
        raise ValueError("a video needs at least one frame")
    if not isinstance(scale, int) or not 1 <= scale <= 8:
        raise ValueError(f"scale must be a whole number from 1 to 8, got {scale!r}")
    arrays = [np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f, dtype=np.uint8) for f in frames]
    if len({a.shape for a in arrays}) > 1 or arrays[0].ndim != 3 or arrays[0].shape[2] != 3:
        raise ValueError(f"video frames must be RGB images of one size, got {sorted({a.shape for a in arrays})}")
    if scale > 1:
        arrays = [np.repeat(np.repeat(a, scale, axis=0), scale, axis=1) for a in arrays]
    arrays = [even_sides(a) for a in arrays]
    fps, repeats = video_timing(durations, len(arrays))
    reason = video_unavailable()
    if reason:
        raise VideoError(f"cannot write {path.name}: {reason}")

    import imageio.v3 as iio

    codec, options = VIDEO_CODECS[suffix]
    options = [*VIDEO_COLOR, *options, *(["-threads", str(threads)] if threads else [])]
    partial = path.with_name(f".{path.stem}.partial{suffix}")  # renamed into place once complete
    try:
        iio.imwrite(partial, [a for a, r in zip(arrays, repeats) for _ in range(r)], plugin="FFMPEG", fps=fps,
                    codec=codec, quality=None, pixelformat="yuv420p", macro_block_size=1, output_params=options,
                    ffmpeg_log_level="error")
        if not partial.is_file() or partial.stat().st_size == 0:  # ffmpeg quit early (its message is on stderr)
            raise OSError("ffmpeg wrote no file")
    except Exception as err:
        partial.unlink(missing_ok=True)
        raise VideoError(f"could not write {path.name}: {type(err).__name__}: {str(err).strip()[:300]}") from err
    os.replace(partial, path)
    return path


def write_animation(frames: Sequence[Image.Image], path: str | Path, durations: int | Sequence[int] = 400,
                    scale: int = 1) -> Path:
    """`write_gif` or `write_video` (enlarged `scale` times), by the suffix of `path` (.gif, .mp4, .webm)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return write_gif(frames, path, durations)
    if suffix in VIDEO_CODECS:
        return write_video(frames, path, durations, scale=scale)
    raise ConjureError(f"cannot write {Path(path).name}: animation formats are {', '.join(ANIMATION_FORMATS)}")
