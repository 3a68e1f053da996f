"""Time to result in the app, in a real browser, against the same handler called without server or browser.

    python bench/bench_app.py [--repeats 5] [--pair "snow leopard" "bengal tiger"] > results/bench-app.txt

Launches `python app.py` as the README does (this process's environment, so its threads), opens it in headless
Chromium (Playwright; `apt-get install chromium`), and for each repeat opens a fresh page, types the pair and
presses Run at the app's default settings, timing from the click to:

- the first frame: both trajectories' first images shown;
- the complete result: the score, both GIFs and both MP4s offered for download.

The reference is the same work without the server and the browser: the Run button's handler
(`conjure.app_handlers.run_conjure`, which streams, morphs and writes the GIFs and MP4s) called in this process at
the same settings; its first frame is its first yield with a step's images. One untimed run of each comes first
(the app loads its model on the first request). The repeats interleave browser and handler so that a slower moment
of the shared machine falls on both; the app server idles while the handler runs, and the other way round.
Prints a Markdown table: median and range over the repeats, and the browser's median over the handler's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from app_server import CHROMIUM, CHROMIUM_FLAGS, launch_app, timed_run  # noqa: E402

from conjure import app_handlers  # noqa: E402


def handler_run(text_a: str, text_b: str) -> tuple[float, float]:
    """Seconds to the Run handler's first yield with images, and to its last yield (files written)."""
    image_a = app_handlers.OUTPUTS.index("image_a")
    started, first_frame = time.perf_counter(), None
    for outputs in app_handlers.run_conjure(text_a, text_b):
        if first_frame is None and isinstance(outputs[image_a], np.ndarray):  # not gr.skip(): a step's image
            first_frame = time.perf_counter() - started
    return first_frame, time.perf_counter() - started


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pair", nargs=2, default=["snow leopard", "bengal tiger"], metavar=("A", "B"))
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    url, stop = launch_app()
    times = {"browser": [], "handler": []}
    result = ""
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            for repeat in range(args.repeats + 1):  # repeat 0 is the untimed warm-up of both
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url)
                page.locator("#run").wait_for(state="visible")
                browser_times = timed_run(page, *args.pair)
                result = page.locator("#result").inner_text()
                page.close()
                handler_times = handler_run(*args.pair)
                if repeat:
                    times["browser"].append(browser_times)
                    times["handler"].append(handler_times)
                print(f"repeat {repeat}: browser {browser_times[0]:.2f} / {browser_times[1]:.2f} s, "
                      f"handler {handler_times[0]:.2f} / {handler_times[1]:.2f} s"
                      + (" (warm-up, not counted)" if not repeat else ""), file=sys.stderr)
            browser.close()
    finally:
        stop()

    print(f"{args.pair[0]!r} vs {args.pair[1]!r} at the app's defaults {app_handlers.DEFAULTS} on the model "
          f"{app_handlers.default_model()!r}; {args.repeats} repeats after one warm-up each; Python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print()
    print("| seconds from Run to | handler, no server or browser (reference): median (range) | browser: median (range) "
          "| browser / handler (median) |")
    print("|---|---:|---:|---:|")
    for i, what in enumerate(("the first frame", "the complete result (score, GIFs, MP4s)")):
        ref, now = [t[i] for t in times["handler"]], [t[i] for t in times["browser"]]
        print(f"| {what} | {spread(ref)} | {spread(now)} | {statistics.median(now) / statistics.median(ref):.2f} |")
    print()
    print("The browser's last result:", " ".join(result.split()))


if __name__ == "__main__":
    main()
