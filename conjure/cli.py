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
from conjure.jeffreys import Settings


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
    p.add_argument("--weighting", default=d.weighting, choices=["exact", "uniform"],
                   help="exact: the sampler's path KL; uniform: unweighted squared eps difference per step")


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
    lines = [
        f"{r.text_a!r} vs {r.text_b!r}  ({r.model}, {r.settings['steps']} steps, k={r.settings['samples']})",
        f"  Jeffreys divergence  {r.jeffreys:.4f}{se}",
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
    with warnings.catch_warnings():
        warnings.simplefilter("always", conjure.PromptTruncatedWarning)
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        if args.pairs:
            results = conjure.score_pairs(model, pairs, batch_size=args.batch_size, progress=True, **vars(settings))
        else:
            results = [conjure.score(model, *pairs[0], **vars(settings))]
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    for r in results:
        print(json.dumps(r.to_dict()) if (args.json or args.pairs) else format_result(r), file=out)
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
    add_model_options(p)
    add_estimator_options(p)
    p.set_defaults(func=cmd_score)

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
