"""`python app.py` in a subprocess, started once per test session and shared by the client and browser tests."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import cache
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CONJURE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_app(env: dict[str, str] | None = None, timeout: float = 180.0) -> tuple[str, Callable[[], None]]:
    """Launch the app the way the README says, on a free port, with `env` over this process's environment.

    Returns its URL once it answers, and the function that stops it (also registered to run at exit).
    """
    port = free_port()
    temp = tempfile.mkdtemp(prefix="conjure-app-")
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": temp, **(env or {})}
    log = open(Path(temp) / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)

    atexit.register(stop)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{(Path(temp) / 'app.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return url, stop
        except OSError:
            time.sleep(0.5)
    stop()
    raise RuntimeError(f"app.py did not answer on {url} within {timeout} s")


@cache
def running_app(timeout: float = 180.0) -> str:
    """The test session's app, on the embedded model; its URL."""
    # On 2 cores shared with Chromium and pytest, two OpenMP threads spin-waiting on each other
    # stalled a run for minutes in CI; one thread keeps the server's speed predictable.
    url, _ = launch_app({"CONJURE_MODEL": "emoji", "OMP_NUM_THREADS": "1"}, timeout)
    return url


# Timestamps taken in the page, when the DOM changes (a MutationObserver), so that Playwright's polling does not
# add to the times: the click on Run, the first frame, and the complete result.
TIMING_SCRIPT = """() => {
  const shown = id => { const el = document.querySelector(id); return el !== null && el.offsetParent !== null; };
  const timing = window.__conjureTiming = {};
  document.querySelector('#run').addEventListener('click', () => { timing.click = performance.now(); },
                                                  {capture: true, once: true});
  const observer = new MutationObserver(() => {
    if (timing.click === undefined) return;
    if (timing.firstFrame === undefined && shown('#image-a img[src]') && shown('#image-b img[src]'))
      timing.firstFrame = performance.now();
    if (timing.firstFrame !== undefined && ['#morph-gif img[src]', '#trajectory-gif img[src]', '#morph-download',
        '#trajectory-download', '#morph-mp4-download', '#trajectory-mp4-download'].every(shown)) {
      timing.complete = performance.now();
      observer.disconnect();
    }
  });
  observer.observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}"""


def timed_run(page, text_a: str, text_b: str, timeout: float = 240.0) -> tuple[float, float]:
    """Type two prompts into a freshly opened page of the app, press Run and time it at the settings it shows.

    Returns the seconds from the click to the first frame (both trajectories' first images shown) and to the
    complete result (both GIFs shown, and both GIFs and both MP4s offered for download).
    """
    page.locator("#prompt-a textarea").fill(text_a)
    page.locator("#prompt-b textarea").fill(text_b)
    page.evaluate(TIMING_SCRIPT)
    page.locator("#run").click()
    page.wait_for_function("() => window.__conjureTiming.complete !== undefined", timeout=timeout * 1000)
    timing = page.evaluate("() => window.__conjureTiming")
    return (timing["firstFrame"] - timing["click"]) / 1000, (timing["complete"] - timing["click"]) / 1000
