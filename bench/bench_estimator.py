"""Throughput of the estimator against a naive reference, measured in the same run.

    python bench/bench_estimator.py [--pairs 16] [--steps 10] [--samples 1] [--models tiny-sd,emoji]

The naive reference is the estimator as a reader of the paper would first write it: one
model call per prompt per trajectory per step (k samples stacked), pairs one at a time.
conjure makes one call per step for all four evaluations, and with batch_size > 1 one call
per step for a whole batch of pairs. All three give the same numbers (checked here).
Prints a Markdown table; ratios are against the naive reference.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]

import conjure  # noqa: E402
from conjure.jeffreys import kl_weight  # noqa: E402
from conjure.sampler import ddim_sigma, guided, sampler_timesteps, step_mean  # noqa: E402

PAIRS = [("snow leopard", "bengal tiger"), ("a red apple", "a green pear"), ("a bicycle", "a motorbike"),
         ("a cup of tea", "a cup of coffee"), ("a dog", "a cat"), ("the sun", "the moon"), ("a house", "a castle"),
         ("a bag of chips", "a bag of fries"), ("rain", "snow"), ("a guitar", "a violin"), ("a car", "a bus"),
         ("a rose", "a tulip"), ("a whale", "a dolphin"), ("pizza", "a hamburger"), ("a clock", "a watch"),
         ("a tree", "a cactus")]


class CallCounter:
    def __init__(self, model):
        self.model, self.calls, self.rows = model, 0, 0
        self.inner = model.predict_noise

    def __call__(self, x, t, cond):
        self.calls += 1
        self.rows += len(x)
        return self.inner(x, t, cond)


def naive_jeffreys(model, a: str, b: str, steps: int, samples: int, seed: int = 0) -> float:
    """One call per (trajectory, prompt) per step; same sampler, same noise, same numbers."""
    size = model.default_size
    shape = model.latent_shape(size)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((samples, *shape), generator=g)
    noises = torch.randn((steps, samples, *shape), generator=g)
    cond_a, cond_b = model.encode([a]), model.encode([b])
    rows = torch.zeros(samples, dtype=torch.long)
    cond_a, cond_b = cond_a.take(rows), cond_b.take(rows)
    x_A, x_B = x_T.clone().to(model.device), x_T.clone().to(model.device)
    timesteps = sampler_timesteps(model, steps)
    abar = model.alphas_cumprod.tolist()
    kl_ab = kl_ba = 0.0
    for i, t in enumerate(timesteps):
        abar_t, abar_s = abar[t], (abar[timesteps[i + 1]] if i + 1 < steps else 1.0)
        sigma = ddim_sigma(abar_t, abar_s, 1.0)
        tt = torch.full((samples,), t, dtype=torch.long)
        eps_Aa, eps_Ab = model.predict_noise(x_A, tt, cond_a), model.predict_noise(x_A, tt, cond_b)
        eps_Ba, eps_Bb = model.predict_noise(x_B, tt, cond_a), model.predict_noise(x_B, tt, cond_b)
        w = kl_weight(abar_t, abar_s, 1.0)
        kl_ab += w * float((eps_Aa - eps_Ab).double().pow(2).flatten(1).sum(1).mean())
        kl_ba += w * float((eps_Ba - eps_Bb).double().pow(2).flatten(1).sum(1).mean())
        x_A = step_mean(x_A, eps_Aa, abar_t, abar_s, sigma) + sigma * noises[i]
        x_B = step_mean(x_B, eps_Bb, abar_t, abar_s, sigma) + sigma * noises[i]
    return (kl_ab + kl_ba) / 2


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_model(name, model, pairs, steps, samples, repeats):
    counter = CallCounter(model)
    model.predict_noise = counter
    rows = []

    def timed(label, fn):
        best, out = math.inf, None
        for _ in range(repeats):
            counter.calls = counter.rows = 0
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
        rows.append({"model": name, "method": label, "seconds": best, "pairs_per_s": len(pairs) / best,
                     "calls_per_pair": counter.calls / len(pairs), "evals_per_pair": counter.rows / len(pairs)})
        return out

    naive = timed("naive reference (1 call per prompt per trajectory per step)",
                  lambda: [naive_jeffreys(model, a, b, steps, samples) for a, b in pairs])
    single = timed("conjure, one pair at a time", lambda: [
        conjure.score(model, a, b, steps=steps, samples=samples).jeffreys for a, b in pairs])
    for bs in (4, len(pairs)):
        batched = timed(f"conjure, batch_size={bs}", lambda bs=bs: [
            r.jeffreys for r in conjure.score_pairs(model, pairs, batch_size=bs, steps=steps, samples=samples)])
        for x, y in zip(batched, naive):
            assert math.isclose(x, y, rel_tol=1e-3, abs_tol=1e-6), (x, y)
    for x, y in zip(single, naive):
        assert math.isclose(x, y, rel_tol=1e-3, abs_tol=1e-6), (x, y)
    model.predict_noise = counter.inner
    base = rows[0]["pairs_per_s"]
    for r in rows:
        r["speedup"] = r["pairs_per_s"] / base
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="best of N runs per method")
    p.add_argument("--models", default="tiny-sd,emoji", help="tiny-sd (random weights), emoji, or any load_model name")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    pairs = (PAIRS * math.ceil(args.pairs / len(PAIRS)))[: args.pairs]
    rows = []
    for name in args.models.split(","):
        if name == "tiny-sd":
            from tiny_pipelines import tiny_sd

            model, label = conjure.load_model(tiny_sd(1)), "tiny SD 1.x (random weights, 32 px)"
        else:
            model, label = conjure.load_model(name), name
        rows += bench_model(label, model, pairs, args.steps, args.samples, args.repeats)

    print(f"\n{args.pairs} pairs, {args.steps} steps, k={args.samples}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs; peak RSS {peak_rss_mb():.0f} MB\n")
    print("| model | method | pairs/s | model calls / pair | evaluations / pair | speed-up vs naive |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['method']} | {r['pairs_per_s']:.2f} | {r['calls_per_pair']:.2f} | "
              f"{r['evals_per_pair']:.0f} | {r['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
