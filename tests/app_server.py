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

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@cache
def running_app(timeout: float = 180.0) -> str:
    """Launch the app the way the README says, on a free port; return its URL once it answers."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="conjure-test-app-")
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": temp, "CONJURE_MODEL": "emoji",
           # On 2 cores shared with Chromium and pytest, two OpenMP threads spin-waiting on each other
           # stalled a run for minutes in CI; one thread keeps the server's speed predictable.
           "OMP_NUM_THREADS": "1"}
    log = open(Path(temp) / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop():
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
                    return url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"app.py did not answer on {url} within {timeout} s")
