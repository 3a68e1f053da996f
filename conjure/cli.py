"""Command line: `python -m conjure score A B`, `score --pairs FILE`, and `sts` (the benchmark).

Output contract for scripts: `--json` prints one JSON object per pair with at least
jeffreys, kl_ab, kl_ba, per_step, stderr, seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from conjure.errors import ConjureError
from conjure.jeffreys import WEIGHTINGS, Settings


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="alias (emoji, sd-v1-4, sd-v1-5, sd-2-1, sdxl), local folder or hub id; default: $CONJURE_MODEL or the embedded emoji model")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps; default: the best available")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "float16", "bfloat16"],
                   help="default: float16 on a GPU, float32 on a CPU")


def add_estimator_options(p: argparse.ArgumentParser) -> None:
    d = Settings()
    p.add_argument("--steps", type=int, default=d.steps, help=f"sampler steps (default {d.steps}, as in the paper)")
    p.add_argument("--samples", "-k", type=int, default=d.samples, help="Monte-Carlo noise samples per pair")
    p.add_argument("--guidance", type=float, default=d.guidance, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    p.add_argument("--eta", type=float, default=d.eta, help="DDIM eta of the stochastic sampler (1 = DDPM; 0 is refused)")
    p.add_argument("--weighting", default=d.weighting, choices=WEIGHTINGS,
                   help="girsanov: the continuous-time divergence (trapezoid in log SNR; default); exact: the KL "
                        "between the two discrete chains; girsanov-left: left-point rule; uniform: unweighted (ablation)")


def settings_from(args) -> Settings:
    return Settings(steps=args.steps, samples=args.samples, guidance=args.guidance, seed=args.seed, size=args.size,
                    eta=args.eta, weighting=args.weighting)


def read_pairs(path: str) -> list[tuple[str, str]]:
    """TSV lines `text_a<TAB>text_b`, or JSONL objects with text_a/text_b (or a/b, sentence1/sentence2)."""
    file = Path(path)
    if not file.is_file():
        raise ConjureError(f"pairs file not found: {path}")
    pairs = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConjureError(f"{path}:{n}: invalid JSON: {err}") from None
            for ka, kb in (("text_a", "text_b"), ("a", "b"), ("sentence1", "sentence2")):
                if ka in obj and kb in obj:
                    pairs.append((obj[ka], obj[kb]))
                    break
            else:
                raise ConjureError(f"{path}:{n}: a JSON line needs text_a and text_b")
        else:
            cols = line.split("\t")
            if len(cols) != 2:
                raise ConjureError(f"{path}:{n}: expected two tab-separated texts, found {len(cols)} columns")
            pairs.append((cols[0], cols[1]))
    if not pairs:
        raise ConjureError(f"{path}: no pairs")
    return pairs


def format_result(r) -> str:
    se = f" ± {r.stderr:.4g}" if r.stderr is not None else ""
    if r.percentile is not None:
        scale = f"closer than {r.percentile:.1f}% of random pairs of everyday phrases"
    else:
        scale = "no calibration for these settings (python -m conjure calibrate)"
    lines = [
        f"{r.text_a!r} vs {r.text_b!r}  ({r.model}, {r.settings['steps']} steps, k={r.settings['samples']}, "
        f"{r.settings['weighting']} weighting)",
        f"  Jeffreys divergence  {r.jeffreys:.4f}{se} nats ({r.jeffreys_per_dim:.3g} per dimension)",
        f"  on a human scale     {scale}",
        f"  KL(A||B)             {r.kl_ab:.4f}",
        f"  KL(B||A)             {r.kl_ba:.4f}",
        f"  time                 {r.seconds:.2f} s",
        "  per step (t: KL_AB, KL_BA): " + ", ".join(
            f"{t}: {a:.3g}, {b:.3g}" for t, a, b in zip(r.per_step["timestep"], r.per_step["kl_ab"], r.per_step["kl_ba"])),
    ]
    return "\n".join(lines)


def cmd_score(args) -> int:
    import conjure

    settings = settings_from(args)
    if args.pairs:
        pairs = read_pairs(args.pairs)
    elif args.text_a is not None and args.text_b is not None:
        pairs = [(args.text_a, args.text_b)]
    else:
        raise ConjureError("give two texts, or --pairs FILE")
    model = conjure.load_model(args.model, device=args.device, dtype=args.dtype)
    reference = None
    if args.calibration:  # checked before scoring: a file for another model or settings is an error
        from conjure import calibration

        reference = calibration.find(model, settings, args.calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("always", conjure.PromptTruncatedWarning)
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        if args.pairs:
            results = conjure.score_pairs(model, pairs, batch_size=args.batch_size, progress=True, **vars(settings))
        else:
            results = [conjure.score(model, *pairs[0], **vars(settings))]
    if reference is not None:
        for r in results:
            r.percentile = reference.percentile(r.jeffreys, settings.weighting)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    for r in results:
        print(json.dumps(r.to_dict()) if (args.json or args.pairs) else format_result(r), file=out)
    return 0


def cmd_calibrate(args) -> int:
    import numpy as np

    import conjure
    from conjure import calibration

    if args.pairs < 10:
        raise ConjureError(f"--pairs must be at least 10 for a usable reference distribution, got {args.pairs}")
    settings = settings_from(args)
    model = conjure.load_model(args.model, device=args.device, dtype=args.dtype)
    path = Path(args.output) if args.output else calibration.default_path(model)
    result = calibration.calibrate(model, pairs=args.pairs, batch_size=args.batch_size, **vars(settings))
    try:
        calibration.save(result, path)
    except OSError as err:  # e.g. an installed, read-only model folder: keep it in the user's cache
        if args.output:
            raise ConjureError(f"cannot write {path}: {err.strerror}") from None
        path = calibration.save(result, calibration.cache_folder() / f"{calibration.model_digest(model)}.json")
    ref = result.reference(settings.weighting)
    q = np.percentile(ref, [5, 50, 95])
    print(f"{len(ref)} random pairs of everyday phrases under {model.name} ({settings.weighting} weighting): "
          f"5% {q[0]:.4g}, median {q[1]:.4g}, 95% {q[2]:.4g} nats")
    print(f"wrote {path}")
    return 0


MORPH_FORMATS = {"gif": ".gif", "mp4": ".mp4", "webm": ".webm"}


def animation_outputs(args) -> list[tuple[str, Path]]:
    """The (animation, file) pairs asked of `morph`, checked before any model work."""
    from conjure import animation

    wanted = [("morph", getattr(args, fmt), suffix) for fmt, suffix in MORPH_FORMATS.items() if getattr(args, fmt)]
    wanted += [("trajectories", path, None) for path in args.trajectories]
    if not wanted:
        raise ConjureError("nothing to write: give --gif, --mp4, --webm and/or --trajectories FILE")
    outputs = []
    for kind, name, suffix in wanted:
        path = Path(name)
        if suffix and path.suffix.lower() != suffix:
            raise ConjureError(f"--{suffix[1:]} needs a file name ending in {suffix}, got {name}")
        if path.suffix.lower() not in animation.ANIMATION_FORMATS:
            raise ConjureError(f"--trajectories {name}: the file name must end in "
                               f"{', '.join(animation.ANIMATION_FORMATS)}")
        if not path.parent.is_dir():
            raise ConjureError(f"cannot write {name}: no folder {path.parent}")
        reason = animation.video_unavailable() if path.suffix.lower() != ".gif" else None
        if reason:
            raise ConjureError(f"cannot write {name}: {reason}")
        outputs.append((kind, path))
    return outputs


def cmd_morph(args) -> int:
    import conjure
    from conjure import animation
    from conjure.morph import morph_steps

    outputs = animation_outputs(args)
    if args.stages < 2:
        raise ConjureError(f"a morph needs at least 2 stages, got {args.stages}")
    if args.panel is not None and not 16 <= args.panel <= 4096:
        raise ConjureError(f"--panel must be from 16 to 4096 pixels, got {args.panel}")
    if args.video_scale is not None and not 1 <= args.video_scale <= 8:
        raise ConjureError(f"--video-scale must be from 1 to 8, got {args.video_scale}")
    kinds = {kind for kind, _ in outputs}
    settings = settings_from(args)
    panel = {"panel": args.panel} if args.panel else {}
    model = conjure.load_model(args.model, device=args.device, dtype=args.dtype)
    animations = {}
    if "trajectories" in kinds:
        events = list(conjure.stream(model, args.text_a, args.text_b, **vars(settings)))
        r = events[-1].result
        frames = animation.trajectory_frames([e.image_a for e in events], [e.image_b for e in events],
                                             [e.difference for e in events], r.per_step, args.text_a, args.text_b,
                                             **panel)
        side = args.panel or animation.TRAJECTORY_PANEL
        scale = args.video_scale or animation.video_scale(events[-1].image_a.shape[0], side)
        animations["trajectories"] = frames, animation.trajectory_durations(len(frames)), scale
        print(f"Jeffreys divergence {r.jeffreys:.4f} nats (KL(A||B) {r.kl_ab:.4f}, KL(B||A) {r.kl_ba:.4f})")
    if "morph" in kinds:
        *_, last = morph_steps(model, args.text_a, args.text_b, args.stages, settings)
        frames = animation.morph_frames(last.images, last.weights, args.text_a, args.text_b, **panel)
        scale = args.video_scale or animation.video_scale(last.images.shape[1], args.panel or animation.MORPH_PANEL)
        animations["morph"] = frames, animation.morph_durations(len(frames)), scale
    for kind, path in outputs:
        frames, durations, scale = animations[kind]
        animation.write_animation(frames, path, durations, scale=scale)
        print(f"wrote {path} ({kind}, {len(frames)} frames, {sum(durations) / 1000:g} s, "
              f"{path.stat().st_size / 1024:.0f} KB)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conjure", description="Semantic similarity by the images texts conjure.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="Jeffreys divergence between two texts, or many pairs from a file")
    p.add_argument("text_a", nargs="?")
    p.add_argument("text_b", nargs="?")
    p.add_argument("--pairs", help="TSV (text_a<TAB>text_b) or JSONL file; prints one JSON line per pair")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per batched model call with --pairs")
    p.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    p.add_argument("--output", "-o", help="write results here instead of stdout")
    p.add_argument("--calibration", default=None,
                   help="calibration file for the percentile (default: the model's own, or the user's cache)")
    add_model_options(p)
    add_estimator_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("calibrate", help="score random pairs of everyday phrases: the reference for percentiles",
                       description="Score a fixed random draw of pairs of everyday phrases under a model and settings, "
                                   "so scores can say 'closer than X%% of random pairs'. Written to the model folder "
                                   "(calibration.json) or the user's cache.")
    p.add_argument("--pairs", type=int, default=300, help="reference pairs to score (default 300)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per batched model call")
    p.add_argument("--output", "-o", help="calibration file to write (default: beside the model, else the cache)")
    add_model_options(p)
    add_estimator_options(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("morph", help="animate two texts: the morph from one to the other, and both trajectories",
                       description="Sample the same noise under conditioning interpolated from text A to text B and "
                                   "write it as GIF, MP4 (H.264) and/or WebM (VP9); --trajectories also writes both "
                                   "denoising trajectories with the divergence curve (format by file name).")
    p.add_argument("text_a")
    p.add_argument("text_b")
    for fmt in MORPH_FORMATS:
        p.add_argument(f"--{fmt}", metavar="FILE", help=f"write the morph as {fmt.upper() if fmt != 'webm' else 'WebM'}")
    p.add_argument("--trajectories", metavar="FILE", action="append", default=[],
                   help="write both trajectories step by step (.gif, .mp4 or .webm; repeat for several)")
    p.add_argument("--stages", type=int, default=8, help="morph stages (default 8)")
    p.add_argument("--panel", type=int, default=None,
                   help="side of each image in the frames, in pixels (default: 256 for the morph, 160 for the "
                        "trajectories; small images are enlarged by nearest neighbour, so they stay crisp)")
    p.add_argument("--video-scale", type=int, default=None,
                   help="enlarge the MP4 and WebM frames this many times by nearest neighbour (default: 2 when "
                        "the pictures are pixel art, enlarged at least twofold in the frames, as the app does; else 1)")
    add_model_options(p)
    add_estimator_options(p)
    p.set_defaults(func=cmd_morph)

    try:
        from conjure import sts
    except ImportError:
        sts = None
    if sts is not None:
        sts.add_parser(sub)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConjureError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
