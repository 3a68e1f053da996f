"""The command-line options shared by every command that runs the estimator (score, sts, calibrate, ...)."""

from __future__ import annotations

import argparse

from conjure.models import MODEL_ALIASES
from conjure.settings import WEIGHTINGS, Settings


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help=f"alias ({', '.join(MODEL_ALIASES)}), local folder or hub id; "
                        "default: $CONJURE_MODEL or the embedded emoji model")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps; default: the best available")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "float16", "bfloat16"],
                   help="default (auto): float16 on a GPU; on a CPU float32, or bfloat16 for models measured to "
                        "score alike in it (the embedded model) where the CPU computes bfloat16 natively")
    p.add_argument("--compile", action="store_true",
                   help="compile the UNet with torch.compile: faster per call after a compilation per batch shape; "
                        "for long runs (docs/performance.md)")


def model_from(args, device: str | None = None):
    """The model the options name (`device` overrides --device, as `sts` picks one per process)."""
    import conjure  # looked up at call time, so that tests can stand a model in for conjure.load_model

    return conjure.load_model(args.model, device=device or args.device, dtype=args.dtype, compile=args.compile)


def add_batch_size_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=None,
                   help="pairs per batched model call (default: chosen from the model, the device and its memory)")


def add_estimator_options(p: argparse.ArgumentParser) -> None:
    d = Settings()
    p.add_argument("--steps", type=int, default=d.steps, help=f"sampler steps (default {d.steps}, as in the paper)")
    p.add_argument("--samples", "-k", type=int, default=d.samples, help="Monte-Carlo noise samples per pair")
    p.add_argument("--guidance", type=float, default=d.guidance, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--seed", type=int, default=d.seed, help="the noise: a whole number from 0 to 2**64 - 1")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    p.add_argument("--eta", type=float, default=d.eta, help="DDIM eta of the stochastic sampler (1 = DDPM; 0 is refused)")
    p.add_argument("--weighting", default=d.weighting, choices=WEIGHTINGS,
                   help="girsanov: the continuous-time divergence (trapezoid in log SNR; default); exact: the KL "
                        "between the two discrete chains; girsanov-left: left-point rule; uniform: unweighted (ablation)")


def add_cosine_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cosine", action="store_true",
                   help="also read every state under the null prompt and report the cosine of the two texts' pulls "
                        "away from it: a similarity from -1 to 1 (1 = the same); free under guidance, else 1.5x")


def settings_from(args) -> Settings:
    """The estimator settings the options give, checked (a bad value is a ConjureError)."""
    return Settings(steps=args.steps, samples=args.samples, guidance=args.guidance, seed=args.seed, size=args.size,
                    eta=args.eta, weighting=args.weighting, cosine=getattr(args, "cosine", False))
