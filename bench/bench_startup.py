"""Wall time of short command-line runs against a reference checkout, measured in the same run.

    python bench/bench_startup.py [--reference /tmp/conjure-ref] [--repeats 7] [--commands score,help,import]

The reference is another checkout of conjure, made once with `git worktree add /tmp/conjure-ref 27d73fb`
(the code before the start-up work). Both trees run under this interpreter (the same venv): each command
is a fresh process whose working directory and PYTHONPATH are the tree's root, so it imports its own tree's
`conjure` (checked, and printed once). The commands:

- score:  python -m conjure score leopard tiger    (import, load the embedded model, score one pair)
- help:   python -m conjure --help
- import: python -c "import conjure"

Each tree first runs each command once, untimed (the "first run" columns): that run writes the tree's
bytecode caches (`__pycache__`) where there were none, a cost a later run does not pay, nor an installed
wheel. PYTHONDONTWRITEBYTECODE is cleared for the runs so that the caches are written. Then the repeats
interleave the trees (reference, working tree, reference, ...) so that a slower moment of a shared machine
falls on both. Checks that each tree prints the same score on every run (its timing line aside), and that
both trees' divergences agree to 1e-4 (relative: a change of the estimator may move the last digits). Prints
a Markdown table: min and median wall seconds over the repeats, and the working tree's median over the
reference's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
COMMANDS = {
    "score": ["-m", "conjure", "score", "leopard", "tiger"],
    "help": ["-m", "conjure", "--help"],
    "import": ["-c", "import conjure"],
}


def environment(tree: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run(tree: Path, args: list[str]) -> tuple[float, str]:
    """Wall seconds of one run of `python ARGS` in `tree`, and what it printed on stdout."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, *args], cwd=tree, env=environment(tree), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{tree}: python {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return seconds, out.stdout


def result_lines(stdout: str) -> list[str]:
    """A score's printed result without its timing line."""
    return [line for line in stdout.splitlines() if not line.strip().startswith("time ")]


def divergences(stdout: str) -> dict[str, float]:
    """The Jeffreys divergence and both KLs of a printed score."""
    found = {}
    for line in stdout.splitlines():
        for name in ("Jeffreys divergence", "KL(A||B)", "KL(B||A)"):
            if line.strip().startswith(name):
                found[name] = float(line.strip()[len(name):].split()[0])
    return found


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", default="/tmp/conjure-ref", help="the reference checkout (default /tmp/conjure-ref)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--commands", default=",".join(COMMANDS), help=f"comma-separated, of {', '.join(COMMANDS)}")
    args = p.parse_args()
    reference = Path(args.reference).resolve()
    if not (reference / "conjure" / "__init__.py").is_file():
        raise SystemExit(f"no conjure checkout at {reference}; make one with `git worktree add {reference} 27d73fb`")
    names = [n for n in args.commands.split(",") if n]
    if unknown := [n for n in names if n not in COMMANDS]:
        raise SystemExit(f"unknown command(s) {unknown}; choose from {list(COMMANDS)}")
    trees = {"reference": reference, "now": HERE}
    for label, tree in trees.items():
        _, where = run(tree, ["-c", "import conjure; print(conjure.__file__)"])
        if not Path(where.strip()).resolve().is_relative_to(tree):
            raise SystemExit(f"the {label} run imported {where.strip()}, not the conjure of {tree}")
        print(f"{label}: {where.strip()}", file=sys.stderr)

    first, times, printed = {}, {(t, n): [] for t in trees for n in names}, {}
    for label, tree in trees.items():
        for name in names:
            first[label, name], printed[label, name] = run(tree, COMMANDS[name])
            print(f"first run, {label}, {name}: {first[label, name]:.2f} s", file=sys.stderr, flush=True)
    for repeat in range(args.repeats):
        for name in names:
            for label, tree in trees.items():
                seconds, stdout = run(tree, COMMANDS[name])
                times[label, name].append(seconds)
                if name == "score" and result_lines(stdout) != result_lines(printed[label, name]):
                    raise SystemExit(f"{label}: the score changed between runs:\n{stdout}")
            print(f"repeat {repeat + 1}, {name}: " + ", ".join(f"{t} {times[t, name][-1]:.2f} s" for t in trees),
                  file=sys.stderr, flush=True)
    if "score" in names:
        ref, now = divergences(printed["reference", "score"]), divergences(printed["now", "score"])
        assert len(ref) == 3 and ref.keys() == now.keys() and all(
            abs(now[k] - ref[k]) <= 1e-4 * abs(ref[k]) for k in ref
        ), f"the trees print different scores:\n{printed['reference', 'score']}\n{printed['now', 'score']}"

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"\nwall seconds over {args.repeats} runs after one untimed first run per tree; reference {reference}, "
          f"now {HERE}; Python {platform.python_version()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS {threads}\n")
    print("| command | reference first run | reference min | reference median | now first run | now min "
          "| now median | now / reference (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        ref, now = times["reference", name], times["now", name]
        command = "python " + " ".join(COMMANDS[name]).replace("-c import conjure", '-c "import conjure"')
        print(f"| `{command}` | {first['reference', name]:.2f} | {min(ref):.2f} | {statistics.median(ref):.2f} | "
              f"{first['now', name]:.2f} | {min(now):.2f} | {statistics.median(now):.2f} | "
              f"{statistics.median(now) / statistics.median(ref):.2f} |")


if __name__ == "__main__":
    main()
