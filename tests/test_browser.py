"""A real browser on the launched app: type two prompts, Run, watch the plot and the score, download the GIF.

Headless Debian Chromium (`apt-get install chromium chromium-driver`; `.ci/run` installs it)
driven by Playwright for Python; no browser download, so no network is needed.
Set CONJURE_UPDATE_DOCS=1 (with CONJURE_BROWSER_STEPS=20 CONJURE_BROWSER_STAGES=8, the app's defaults) to save the
finished page and the two GIFs to docs/ for the README.
"""

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from app_server import CHROMIUM, CHROMIUM_FLAGS, ROOT, running_app, timed_run

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow]



@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver (.ci/run does)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page per test, as a new visitor sees it: no test depends on what another left open."""
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page.goto(running_app())
    page.locator("#run").wait_for(state="visible")
    yield page
    page.close()


def set_slider(page, elem_id: str, value: int):
    """Type into a slider's number box, then wait until the slider itself shows the value.

    The range input is drawn from the component's value, so once it moves the value is what Run sends; without
    this wait a loaded machine can click Run before the typed value lands (CI once ran 10 steps, not 4), and once
    (just after opening "Advanced") the typed value never reached the slider at all, so it is typed again.
    """
    box, slider = page.locator(f"#{elem_id} input[type=number]"), page.locator(f"#{elem_id} input[type=range]")
    deadline = time.perf_counter() + 30
    while True:  # type again if the first input was lost (the accordion's content can still be mounting)
        box.fill(str(value))
        box.press("Enter")
        box.blur()
        try:
            sync_api.expect(slider).to_have_value(str(value), timeout=3_000)
            return
        except AssertionError:
            if time.perf_counter() > deadline:
                raise


def start_run(page, text_a: str, text_b: str, **sliders: int):
    """Type the two prompts, set the Advanced sliders (elem id: value, in this order) and press Run."""
    page.locator("#prompt-a textarea").fill(text_a)
    page.locator("#prompt-b textarea").fill(text_b)
    page.get_by_text("Advanced").click()
    for elem_id, value in sliders.items():
        set_slider(page, elem_id, value)
    page.locator("#run").click()


def current_step(page) -> int:
    text = page.locator("#status").inner_text()
    return int(text.split("Step ", 1)[1].split("/", 1)[0]) if "Step " in text else 0


def wait_for_step(page, step: int, timeout: float = 120.0):
    """Poll the status line until the run reaches `step` (an exact text match can miss a step)."""
    deadline = time.perf_counter() + timeout
    while current_step(page) < step:
        assert time.perf_counter() < deadline, f"no step {step} within {timeout} s: {page.locator('#status').inner_text()!r}"
        page.wait_for_timeout(100)


def test_stop_cancels_the_run_within_a_step(page):
    steps = 50
    start_run(page, "sun", "crescent moon", steps=steps, samples=8)  # slow steps: Stop lands before the end
    wait_for_step(page, 2)
    started = time.perf_counter()
    wait_for_step(page, 4)
    seconds_per_step = (time.perf_counter() - started) / 2
    page.locator("#stop").click()
    stopped_at = current_step(page)
    page.wait_for_timeout(max(5 * seconds_per_step, 1) * 1000)  # long enough for 5 more steps
    assert current_step(page) - stopped_at <= 2  # the step under way, and one in flight to the browser
    assert current_step(page) < steps and "Done" not in page.locator("#status").inner_text()


ABANDONING_CLIENT = """
import os, sys
from gradio_client import Client

job = Client(sys.argv[1], verbose=False).submit("sun", "crescent moon", api_name="/conjure", steps=50, samples=8)
for i, _ in enumerate(job):
    if i == 2:  # two steps in, the caller vanishes without cancelling, like a closed tab
        os._exit(0)
"""


def test_a_browser_run_starts_after_the_server_served_the_api(page):
    """A browser Run after API use once never reached the server (the suite then ran browser tests first to hide
    it; the cause was never pinned down). Here the same server first serves a script's run, a script that vanishes
    mid-run and a cancelled run; the page's Run must still start and finish."""
    import subprocess
    import sys

    gradio_client = pytest.importorskip("gradio_client")
    url = running_app()
    subprocess.run([sys.executable, "-c", ABANDONING_CLIENT, url], check=True, timeout=300)
    client = gradio_client.Client(url, verbose=False)
    cancelled = client.submit("rose", "tulip", api_name="/conjure", steps=50, samples=8)
    for i, _ in enumerate(cancelled):
        if i == 2:
            cancelled.cancel()
            break
    assert client.predict("sun", "moon", api_name="/conjure", steps=2, stages=2)[6]["jeffreys"] > 0

    start_run(page, "red apple", "green apple", steps=2, stages=2)
    page.get_by_text("Done: Jeffreys divergence").first.wait_for(timeout=120_000)


def test_type_run_watch_and_download(page, tmp_path):
    steps = int(os.environ.get("CONJURE_BROWSER_STEPS", "4"))
    stages = int(os.environ.get("CONJURE_BROWSER_STAGES", "4"))
    start_run(page, "snow leopard", "bengal tiger", steps=steps, samples=1, stages=stages)

    # The live plot is drawn (Vega renders into the #plot block) and the run finishes with a score.
    page.locator("#plot canvas, #plot svg.marks").first.wait_for(timeout=120_000)
    page.get_by_text("Done: Jeffreys divergence").first.wait_for(timeout=240_000)
    download_button = page.locator("#trajectory-download")
    download_button.wait_for(state="visible", timeout=240_000)
    assert f"Step {steps}/{steps}" not in page.locator("#status").inner_text()  # replaced by the final status
    result = page.locator("#result").inner_text()
    assert "Jeffreys divergence" in result and "cosine similarity" in result
    assert re.search(r"cosine -?\d\.\d{3}", result) and "pull from no text" in result  # the images' cosine
    assert page.locator("#image-a img").first.get_attribute("src")
    assert page.locator("#morph-gif img").first.get_attribute("src")

    saved = {}
    for button, frames in (("#trajectory-download", steps), ("#morph-download", stages)):
        with page.expect_download() as info:
            page.locator(button).click()
        path = saved[button] = tmp_path / info.value.suggested_filename
        info.value.save_as(path)
        assert path.name.startswith("snow-leopard-vs-bengal-tiger")
        with Image.open(path) as gif:
            assert gif.format == "GIF" and gif.is_animated and gif.n_frames == frames

    page.locator("#morph-mp4-download").wait_for(state="visible", timeout=60_000)
    with page.expect_download() as info:  # the morph as a video too
        page.locator("#morph-mp4-download").click()
    video = tmp_path / info.value.suggested_filename
    info.value.save_as(video)
    import imageio.v3 as iio

    assert video.name.endswith("-morph.mp4") and iio.improps(video, plugin="FFMPEG").shape[1:] == (616, 544, 3)

    page.wait_for_timeout(500)  # let the plot and images settle before the picture
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("CONJURE_UPDATE_DOCS"):
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(shot, ROOT / "docs" / "app-screenshot.png")
        for path in saved.values():
            shutil.copy(path, ROOT / "docs" / path.name.replace("snow-leopard-vs-bengal-tiger", "example"))


def test_a_run_at_the_defaults_shows_its_first_frame_then_the_result(page):
    """What a visitor waits for at the app's default settings, printed for the log; the benchmark, with repeats
    and a reference measured in the same run, is bench/bench_app.py. Asserts the order, not the times."""
    first_frame, complete = timed_run(page, "snow leopard", "bengal tiger")
    print(f"\nat the app's defaults (this server: one thread): first frame {first_frame:.2f} s after Run, "
          f"complete result (score, GIFs, MP4s) {complete:.2f} s")
    assert 0 < first_frame < complete
    assert "Jeffreys divergence" in page.locator("#result").inner_text()
    assert "Step " not in page.locator("#status").inner_text()  # the final status replaced the progress line
    # The y axis grew with the curves: no point of them is drawn above the plot's top (y < 0 in Vega's plot
    # group). At 20 steps the page once kept the axis of step 3 and the curves ran off the top.
    paths = page.locator("#plot svg .mark-line path").evaluate_all("ps => ps.map(p => p.getAttribute('d'))")
    heights = [float(y) for d in paths for y in re.findall(r"[ML][-\d.e]+,([-\d.e]+)", d)]
    assert heights and min(heights) >= 0, paths


def test_compare_many_tab(page, tmp_path):
    steps = int(os.environ.get("CONJURE_BROWSER_STEPS", "4"))
    page.get_by_role("tab", name="Compare many").click()
    page.locator("#matrix-phrases textarea").fill("leopard\ncheetah\ntiger\nzebra")
    page.locator("#matrix-settings").get_by_text("Settings", exact=True).first.click()
    set_slider(page, "matrix-steps", steps)
    page.locator("#matrix-run").click()

    # The heatmap and the map are drawn, the neighbours listed, and the status says it is done.
    page.locator("#matrix-status").get_by_text("Done: 4 phrases, 6 pairs").wait_for(timeout=240_000)
    for elem_id in ("matrix-heatmap", "matrix-text-heatmap", "matrix-map"):
        page.locator(f"#{elem_id} img").first.wait_for(timeout=60_000)
        assert page.locator(f"#{elem_id} img").first.get_attribute("src"), elem_id
    assert "nearest by the words" in page.locator("#matrix-neighbours").inner_text()

    download_button = page.locator("#matrix-csv")
    download_button.wait_for(state="visible", timeout=60_000)
    with page.expect_download() as info:
        download_button.click()
    csv = tmp_path / info.value.suggested_filename
    info.value.save_as(csv)
    lines = csv.read_text(encoding="utf-8").splitlines()
    assert csv.name == "conjure-4-phrases-jeffreys.csv" and len(lines) == 5
    assert lines[0] == "jeffreys,leopard,cheetah,tiger,zebra"

    if os.environ.get("CONJURE_UPDATE_DOCS"):
        page.wait_for_timeout(500)
        page.screenshot(path=str(ROOT / "docs" / "app-matrix-screenshot.png"), full_page=True)


def test_the_why_panel_explains_a_run(page, tmp_path):
    """After a run, Explain highlights each prompt's words by contribution and draws each word's map; the per-step
    plot's x axis shows whole steps only. CONJURE_UPDATE_DOCS=1 saves the panel to docs/app-explain-screenshot.png."""
    steps = int(os.environ.get("CONJURE_BROWSER_STEPS", "4"))
    start_run(page, "a tiger on fire", "a lion in the snow", steps=steps, stages=2)
    page.get_by_text("Done: Jeffreys divergence").first.wait_for(timeout=240_000)

    # Vega draws the plot as SVG: the x axis's tick labels are whole steps, every step of the run.
    labels = page.locator("#plot svg g[aria-label^='X-axis'] .role-axis-label text").evaluate_all(
        "texts => texts.map(t => t.textContent)")
    assert labels == [str(i) for i in range(1, steps + 1)], labels

    page.locator("#why-run").click()
    page.locator("#why-status").get_by_text("Why they differ").wait_for(timeout=240_000)
    for elem_id, words in (("why-a", ["tiger", "on", "fire"]), ("why-b", ["lion", "in", "the", "snow"])):
        shown = page.locator(f"#{elem_id}").inner_text()
        assert all(word in shown for word in words), shown
    page.locator("#why-maps img").first.wait_for(timeout=60_000)
    assert page.locator("#why-maps img").count() == 9 and page.locator("#why-without img").count() == 9
    assert "the prompt without it" in page.locator("#why-table").inner_text()

    page.wait_for_timeout(500)  # let the galleries settle before the picture
    shot = tmp_path / "why.png"
    page.locator("#why").first.screenshot(path=str(shot))  # (Gradio gives a Group its id twice)
    assert shot.stat().st_size > 5_000
    if os.environ.get("CONJURE_UPDATE_DOCS"):
        shutil.copy(shot, ROOT / "docs" / "app-explain-screenshot.png")
