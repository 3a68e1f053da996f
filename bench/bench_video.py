"""File size, encode time and fidelity of the app's animations: GIF (Pillow, imageio) against MP4 and WebM.

    python bench/bench_video.py [--repeats 3] [--threads 1] [--steps 10] [--stages 8] [--synthetic]

The frames are the app's own (`conjure.animation.morph_frames` / `trajectory_frames`) for one run of
the embedded model ("snow leopard" vs "bengal tiger", the app's defaults), drawn at three sizes:

- default: the app's panels (morph 256 px, trajectories 160 px) of the 32 px images, nearest-neighbour enlarged;
- 512 px: 512 px panels, the same images enlarged by nearest neighbour (what a 512 px model's frames
  would measure if its pictures were pixel art);
- 512 px, smooth: the same, enlarged bicubically: smooth gradients, a stand-in for a photographic
  512 px model such as Stable Diffusion (GIF's hard case: 256 colours, banding).

Writers: conjure's `write_gif` (Pillow, one shared palette, no dithering), imageio's own GIF writer
(`imageio.v3.imwrite(..., extension=".gif")`, its Pillow plugin: a palette per frame), and
`write_video` to MP4 (H.264, CRF 20) and WebM (VP9, CRF 32) through imageio's ffmpeg plugin, with
ffmpeg limited to `--threads` threads; at the default size also the MP4 the app serves for pixel art,
enlarged twofold by nearest neighbour (`video_scale`). Each is timed `--repeats` times (median, and min-max spread);
sizes do not vary between repeats. Fidelity is the PSNR (dB) of every frame as decoded, against the
frame drawn. `--synthetic` uses seeded random blocky images instead of running the model.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from conjure import animation  # noqa: E402

TEXT_A, TEXT_B = "snow leopard", "bengal tiger"


def run_model(steps: int, stages: int) -> dict:
    """One app run's pictures: both trajectories step by step, and the morph's final images."""
    import conjure
    from conjure.jeffreys import Settings
    from conjure.morph import check_morph, morph_steps

    model = conjure.load_model("emoji")
    events = list(conjure.stream(model, TEXT_A, TEXT_B, steps=steps))
    run = check_morph(model, TEXT_A, TEXT_B, stages, Settings(steps=steps))
    *_, morph = morph_steps(model, TEXT_A, TEXT_B, stages, run)
    return {"a": [e.image_a for e in events], "b": [e.image_b for e in events],
            "difference": [e.difference for e in events], "per_step": events[-1].result.per_step,
            "morph": list(morph.images), "weights": morph.weights}


def synthetic(steps: int, stages: int) -> dict:
    rng = np.random.default_rng(0)

    def image():
        return np.kron(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))

    return {"a": [image() for _ in range(steps)], "b": [image() for _ in range(steps)],
            "difference": [rng.random((32, 32)) for _ in range(steps)],
            "per_step": {"kl_ab": list(rng.random(steps)), "kl_ba": list(rng.random(steps))},
            "morph": [image() for _ in range(stages)], "weights": np.linspace(0, 1, stages)}


def enlarge(images, side: int, smooth: bool):
    if not smooth:
        return images  # the frame functions enlarge by nearest neighbour themselves
    return [np.asarray(Image.fromarray(im).resize((side, side), Image.BICUBIC)) for im in images]


def animations(run: dict, sizes: list[str]) -> list[tuple[str, str, list, list]]:
    """(animation, size, frames, durations) for each animation at each size."""
    out = []
    for size in sizes:
        smooth = size.endswith("smooth")
        morph_panel, trajectory_panel = (256, 160) if size == "default" else (512, 512)
        frames = animation.morph_frames(enlarge(run["morph"], morph_panel, smooth), run["weights"], TEXT_A, TEXT_B,
                                        panel=morph_panel)
        out.append(("morph", size, frames, animation.morph_durations(len(frames))))
        frames = animation.trajectory_frames(enlarge(run["a"], trajectory_panel, smooth),
                                             enlarge(run["b"], trajectory_panel, smooth), run["difference"],
                                             run["per_step"], TEXT_A, TEXT_B, panel=trajectory_panel)
        out.append(("trajectories", size, frames, animation.trajectory_durations(len(frames))))
    return out


def imageio_gif(frames, path, durations):
    import imageio.v3 as iio

    iio.imwrite(path, np.stack([np.asarray(f) for f in frames]), extension=".gif", duration=list(durations), loop=0)
    return Path(path)


def decoded(path: Path, durations) -> list[np.ndarray]:
    """The frames as a viewer shows them: one per drawn frame (a video's first copy of each)."""
    if path.suffix == ".gif":
        with Image.open(path) as gif:
            frames = []
            for i in range(gif.n_frames):
                gif.seek(i)
                frames.append(np.asarray(gif.convert("RGB")))
            return frames
    import imageio.v3 as iio

    video = iio.imread(path, plugin="FFMPEG", index=None)
    _, repeats = animation.video_timing(durations, len(durations))
    starts = np.cumsum([0, *repeats[:-1]])
    assert len(video) == sum(repeats), (path, len(video), sum(repeats))
    return [video[i] for i in starts]


def psnr(shown: list[np.ndarray], drawn: list[Image.Image], scale: int = 1) -> float:
    drawn = [np.kron(np.asarray(d), np.ones((scale, scale, 1), np.uint8)) for d in drawn]
    h, w = drawn[0].shape[:2]  # a video may be padded to even sides
    mse = np.mean([np.mean((s[:h, :w].astype(np.float64) - d) ** 2) for s, d in zip(shown, drawn)])
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="timed encodes per writer and animation (default 3)")
    p.add_argument("--threads", type=int, default=1, help="ffmpeg threads (default 1; 0: ffmpeg's choice)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--stages", type=int, default=8)
    p.add_argument("--sizes", default="default,512,512-smooth", help="comma-separated: default, 512, 512-smooth")
    p.add_argument("--synthetic", action="store_true", help="random blocky images instead of the embedded model")
    args = p.parse_args()
    reason = animation.video_unavailable()
    if reason:
        sys.exit(f"no videos to measure: {reason}")

    run = synthetic(args.steps, args.stages) if args.synthetic else run_model(args.steps, args.stages)
    threads = args.threads or None
    writers = {  # name -> suffix, writer, scale
        "GIF, Pillow (`write_gif`)": (".gif", animation.write_gif, 1),
        "GIF, imageio": (".gif", imageio_gif, 1),
        "MP4 (H.264)": (".mp4", lambda f, p, d: animation.write_video(f, p, d, threads=threads), 1),
        "MP4, 2× (the app's, pixel art)": (".mp4", lambda f, p, d: animation.write_video(f, p, d, scale=2,
                                                                                        threads=threads), 2),
        "WebM (VP9)": (".webm", lambda f, p, d: animation.write_video(f, p, d, threads=threads), 1),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, size, frames, durations in animations(run, args.sizes.split(",")):
            row = {"animation": kind, "size": size, "frame": frames[0].size, "frames": len(frames),
                   "seconds": sum(durations) / 1000}
            for name, (suffix, write, scale) in writers.items():
                if scale > 1 and size != "default":
                    continue  # the app enlarges only its own (default-size) frames of pixel art
                times, sizes = [], set()
                for r in range(args.repeats):
                    path = Path(tmp) / f"{kind}-{size}-{r}{suffix}"
                    start = time.perf_counter()
                    write(frames, path, durations)
                    times.append(time.perf_counter() - start)
                    sizes.add(path.stat().st_size)
                row[name] = {"kb": max(sizes) / 1024, "ms": 1000 * statistics.median(times),
                             "min": 1000 * min(times), "max": 1000 * max(times),
                             "db": psnr(decoded(path, durations), frames, scale)}
                print(f"{kind:12s} {size:10s} {name:28s} {row[name]['kb']:8.1f} KB {row[name]['ms']:8.0f} ms "
                      f"({row[name]['min']:.0f}-{row[name]['max']:.0f}) {row[name]['db']:5.1f} dB", file=sys.stderr)
            rows.append(row)

    import imageio
    import imageio_ffmpeg

    print(f"\n{'synthetic images' if args.synthetic else 'embedded model'}, {TEXT_A!r} vs {TEXT_B!r}, "
          f"{args.steps} steps, {args.stages} morph stages; median of {args.repeats} encodes (min-max); ffmpeg "
          f"{imageio_ffmpeg.get_ffmpeg_version()} with {args.threads or 'its default'} thread(s); imageio "
          f"{imageio.__version__}, Pillow {Image.__version__}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs\n")
    names = list(writers)
    print("| animation | frames | " + " | ".join(names) + " |")
    print("|---|---|" + "---:|" * len(names))
    for row in rows:
        w, h = row["frame"]
        cells = [f"{row[n]['kb']:.0f} KB · {row[n]['ms']:.0f} ms ({row[n]['min']:.0f}–{row[n]['max']:.0f})"
                 if n in row else "–" for n in names]
        print(f"| {row['animation']}, {row['size']} | {row['frames']} × {w}×{h}, {row['seconds']:g} s | "
              + " | ".join(cells) + " |")
    print("\nFidelity: PSNR (dB) of every frame as decoded against the frame drawn (higher is closer)\n")
    print("| animation | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for row in rows:
        print(f"| {row['animation']}, {row['size']} | "
              + " | ".join(f"{row[n]['db']:.1f}" if n in row else "–" for n in names) + " |")


if __name__ == "__main__":
    main()
