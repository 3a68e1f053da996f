"""Time of a similarity matrix against scoring its pairs with `score_pairs` and with `score`, in the same run.

    python bench/bench_matrix.py [--sizes 6,10] [--repeats 2] [--model emoji] [--batch-size 8]

For N phrases the matrix scores N(N-1)/2 pairs (15 for 6 phrases, 45 for 10). Each repeat times, in
turn, `conjure.similarity_matrix`, `conjure.score_pairs` over the same pairs (same batch size) and one
`conjure.score` call per pair, at the default estimator settings; methods are interleaved so that a
slower moment of a shared machine falls on all of them. Checks that all three give the same numbers.
Prints a Markdown table: mean seconds over the repeats with the spread (min-max), seconds per pair,
the speed against one `score` call per pair, and the model calls and evaluations (rows) each made per pair
(counted, so equal work shows as equal whatever the machine's noise).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import conjure  # noqa: E402

PHRASES = ["leopard", "cheetah", "tiger", "house cat", "lion", "zebra", "a red apple", "a banana", "a car",
           "a bicycle", "a guitar", "the moon"]


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class CallCounter:
    def __init__(self, model):
        self.inner, self.calls, self.rows = model.predict_noise, 0, 0

    def __call__(self, x, t, cond):
        self.calls += 1
        self.rows += len(x)
        return self.inner(x, t, cond)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="6,10", help="comma-separated numbers of phrases")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", default="emoji")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = conjure.load_model(args.model)
    sizes = [int(n) for n in args.sizes.split(",")]
    methods = ("similarity_matrix", "score_pairs", "score, one call per pair")
    times = {(n, m): [] for n in sizes for m in methods}
    work = {}  # (n, method) -> (model calls, evaluations)
    conjure.score(model, "warm", "up", steps=2)  # first-call costs (allocations, kernels) out of the timings
    counter = model.predict_noise = CallCounter(model)

    def timed(n, method, fn):
        counter.calls = counter.rows = 0
        start = time.perf_counter()
        out = fn()
        times[n, method].append(time.perf_counter() - start)
        work[n, method] = (counter.calls, counter.rows)
        return out

    for repeat in range(args.repeats):
        for n in sizes:
            phrases = PHRASES[:n]
            pairs = [(a, b) for i, a in enumerate(phrases) for b in phrases[i + 1:]]
            m = timed(n, methods[0], lambda: conjure.similarity_matrix(model, phrases, batch_size=args.batch_size))
            batched = timed(n, methods[1], lambda: conjure.score_pairs(model, pairs, batch_size=args.batch_size))
            single = timed(n, methods[2], lambda: [conjure.score(model, a, b) for a, b in pairs])
            for (a, b), x, y in zip(pairs, batched, single):
                j = m.jeffreys[phrases.index(a), phrases.index(b)]
                assert abs(j - x.jeffreys) <= 1e-4 * abs(x.jeffreys) and abs(j - y.jeffreys) <= 1e-4 * abs(y.jeffreys)
            print(f"repeat {repeat + 1}, {n} phrases: " + ", ".join(
                f"{meth} {times[n, meth][-1]:.1f} s" for meth in methods), file=sys.stderr, flush=True)

    print(f"\n{model.name}, default settings (10 steps, k = 1), batch_size={args.batch_size}; mean of "
          f"{args.repeats} runs (min-max); torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; peak RSS {peak_rss_mb():.0f} MB\n")
    print("| phrases | pairs | method | seconds | s / pair | speed vs `score` per pair | model calls / pair "
          "| evaluations / pair |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for n in sizes:
        pairs = n * (n - 1) // 2
        reference = statistics.mean(times[n, methods[2]])
        for meth in methods:
            t = times[n, meth]
            mean = statistics.mean(t)
            calls, rows = work[n, meth]
            print(f"| {n} | {pairs} | {meth} | {mean:.1f} ({min(t):.1f}-{max(t):.1f}) | {mean / pairs:.2f} | "
                  f"{reference / mean:.2f}x | {calls / pairs:.2f} | {rows / pairs:.0f} |")


if __name__ == "__main__":
    main()
