"""Scoring throughput of the estimator, now against a reference checkout, measured in the same run.

    git worktree add /tmp/conjure-ref 27d73fb        # the code before the speed work (issue 15)
    python bench/bench_estimator.py --reference /tmp/conjure-ref --model $PWD/assets/emoji-32 [--pairs 16] [--repeats 3]
        [--compiled] [--sweep 1,4,8] [--sweep-dtypes float32,default] [--skip-comparison]

Every setting runs in its own process (so each imports its own tree's `conjure` and has its own peak
RSS), on the same 16 pairs, T = 10, k = 1, guidance 1 unless given: one pair at a time
(`conjure.score`) and batched (`conjure.score_pairs`). Each process scores one warm-up pair, then the
pairs `--repeats` times; the table gives the median pairs/s and the spread (min-max) of the repeats,
with ratios against the reference's median in the same mode. The rows:

- reference: the reference tree, float32 (what the code did before);
- now, float32: this tree with float32 weights;
- now, default: this tree as it loads the model by default (the embedded model: bfloat16 on a CPU that computes
  it natively, else float32; bench/bench_precision.py measures what bfloat16 changes);
- now, default, compiled: the same with `compile=True`. Its warm-up is one untimed pass over all the pairs, so
  that every batch shape is compiled before the timed repeats, with inductor's cache in a fresh folder: the
  "warm-up s" column is what a first run pays, cold (eager rows warm up on one pair);
- now, batch sweep: pairs/s at batch sizes 1-32 in each of `--sweep-dtypes` (float32 and the default), to
  choose the automatic batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PAIRS = [("snow leopard", "bengal tiger"), ("a red apple", "a green pear"), ("a bicycle", "a motorbike"),
         ("a cup of tea", "a cup of coffee"), ("a dog", "a cat"), ("the sun", "the moon"), ("a house", "a castle"),
         ("a bag of chips", "a bag of fries"), ("rain", "snow"), ("a guitar", "a violin"), ("a car", "a bus"),
         ("a rose", "a tulip"), ("a whale", "a dolphin"), ("pizza", "a hamburger"), ("a clock", "a watch"),
         ("a tree", "a cactus")]

# Runs inside the measured process: argv = model, dtype ("default" = load_model's choice), batch size
# (0 = one pair at a time with conjure.score), pairs, repeats, settings JSON, compile ("1" or "0").
WORKER = r"""
import json, os, resource, sys, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import conjure
model_name, dtype, batch, n, repeats, settings = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), json.loads(sys.argv[6])
compiled = sys.argv[7] == "1"
pairs = json.loads(sys.stdin.read())[:n]
options = ({} if dtype == "default" else {"dtype": dtype}) | ({"compile": True} if compiled else {})
model = conjure.load_model(model_name, **options)  # the reference's load_model has no compile argument
def run(pairs):
    if batch == 0:
        return [conjure.score(model, a, b, **settings).jeffreys for a, b in pairs]
    return [r.jeffreys for r in conjure.score_pairs(model, pairs, batch_size=batch, **settings)]
start = time.perf_counter()
run(pairs if compiled else pairs[:1])  # warm-up: first-call allocations, oneDNN kernel selection, compiling
warmup = time.perf_counter() - start
rates, scores = [], None
for _ in range(repeats):
    start = time.perf_counter()
    scores = run(pairs)
    rates.append(len(pairs) / (time.perf_counter() - start))
print(json.dumps({"rates": rates, "scores": scores, "dtype": str(model.dtype), "file": conjure.__file__,
                  "warmup": warmup,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(tree: Path, model: str, dtype: str, batch: int, pairs: int, repeats: int, settings: dict,
            compiled: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryDirectory() as cache:  # compiled rows start from an empty inductor cache
        if compiled:
            env["TORCHINDUCTOR_CACHE_DIR"] = cache
        out = subprocess.run([sys.executable, "-c", WORKER, model, dtype, str(batch), str(pairs), str(repeats),
                              json.dumps(settings), "1" if compiled else "0"], input=json.dumps(PAIRS * 4), cwd=tree,
                             env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{tree} {dtype} batch {batch} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().is_relative_to(tree.resolve()), result["file"]  # its own tree's conjure
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, required=True, help="a checkout of the code to compare against")
    p.add_argument("--model", default="emoji", help="a folder path to give both trees the same weights")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8, help="the batched rows' batch size")
    p.add_argument("--sweep", default="1,2,4,8,16,32", help="batch sizes of the sweep ('' to skip)")
    p.add_argument("--sweep-dtypes", default="float32,default", help="dtypes of the sweep ('default': as loaded)")
    p.add_argument("--compiled", action="store_true", help="also the default dtype with compile=True")
    p.add_argument("--skip-comparison", action="store_true", help="only the sweep (its ratios still need the "
                   "reference one pair at a time, which is measured)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--guidance", type=float, default=1.0)
    args = p.parse_args(argv)
    settings = {"steps": args.steps, "samples": args.samples, "guidance": args.guidance}

    def run(tree, dtype, batch, compiled=False):
        return measure(tree, args.model, dtype, batch, args.pairs, args.repeats, settings, compiled)

    rows = []
    modes = [("one pair at a time", 0)]
    if not args.skip_comparison:
        modes.append((f"batch {args.batch_size}", args.batch_size))
    for mode, batch in modes:
        ref = run(args.reference, "float32", batch)
        rows.append(("reference, float32", mode, ref, ref))
        if not args.skip_comparison:
            rows.append(("now, float32", mode, run(ROOT, "float32", batch), ref))
            rows.append(("now, default", mode, run(ROOT, "default", batch), ref))
            if args.compiled:
                rows.append(("now, default, compiled", mode, run(ROOT, "default", batch, compiled=True), ref))
    sweep = [int(b) for b in args.sweep.split(",") if b]
    for dtype in args.sweep_dtypes.split(","):
        for batch in sweep:
            rows.append((f"now, {dtype}", f"batch {batch} (sweep)", run(ROOT, dtype, batch), rows[0][2]))

    print(f"\n{args.model}, {args.pairs} pairs, T={args.steps}, k={args.samples}, guidance {args.guidance:g}, "
          f"{os.cpu_count()} CPUs, {args.repeats} repeats; ratios against the reference's median in the same "
          f"mode (the sweep against the reference one pair at a time)\n")
    print("| code | mode | dtype | pairs/s median (min-max) | ratio | peak RSS MB | max rel. diff vs reference "
          "| warm-up s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for code, mode, r, ref in rows:
        med, ref_med = statistics.median(r["rates"]), statistics.median(ref["rates"])
        diff = max(abs(a - b) / abs(b) for a, b in zip(r["scores"], ref["scores"]))
        print(f"| {code} | {mode} | {r['dtype'].removeprefix('torch.')} | {med:.2f} ({min(r['rates']):.2f}-"
              f"{max(r['rates']):.2f}) | {med / ref_med:.2f}x | {r['peak_rss_mb']:.0f} | {diff:.1e} | "
              f"{r['warmup']:.1f} |")


if __name__ == "__main__":
    main()
