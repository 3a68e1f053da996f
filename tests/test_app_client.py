"""The `/conjure` API of a launched app (`python app.py`), driven by gradio_client as scripts would."""

import re

import pytest
from PIL import Image

from app_server import running_app

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow  # launches the app

from conjure.app_handlers import PLOT_AXIS  # noqa: E402  (after the skip: it imports gradio)

OUTPUTS = ("image_a", "image_b", "difference", "plot", "status", "result", "details",
           "morph_gif", "trajectory_gif", "morph_download", "trajectory_download", "morph_mp4", "trajectory_mp4")
OUT = {name: i for i, name in enumerate(OUTPUTS)}


@pytest.fixture(scope="module")
def client():
    return gradio_client.Client(running_app(), verbose=False)


def file_path(value):
    """A file output as gradio_client hands it over: a path, or an update dict holding one."""
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, dict):
        value = value.get("path")
    return value


def plot_data(value):
    """The plot's data, sent as a value or inside a component update (when the axes change)."""
    return value["value"] if "value" in value else value


def plot_rows(plot) -> list[tuple[str, str]]:
    """(step, curve) of each row of the plot's data."""
    step, curve = plot["columns"].index("step"), plot["columns"].index("curve")
    return [(str(row[step]), row[curve]) for row in plot["data"]]


def curve_points(plot) -> list[tuple[str, str]]:
    return [(step, curve) for step, curve in plot_rows(plot) if curve != PLOT_AXIS]


def axis_steps(plot) -> list[str]:
    return [step for step, curve in plot_rows(plot) if curve == PLOT_AXIS]


def test_api_needs_only_the_two_prompts(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/conjure"]
    params = api["parameters"]
    assert [p["parameter_name"] for p in params[:2]] == ["text_a", "text_b"]
    assert not any(p["parameter_has_default"] for p in params[:2])
    assert all(p["parameter_has_default"] for p in params[2:])
    assert len(api["returns"]) == len(OUTPUTS)


def test_api_streams_steps_in_order_and_ends_with_animated_gifs(client):
    steps, stages = 4, 3
    job = client.submit("snow leopard", "bengal tiger", api_name="/conjure", steps=steps, stages=stages)
    final = job.result(timeout=300)
    outputs = job.outputs()

    # Every step arrives, in order, each with both images and the plot so far.
    step_outputs = [o for o in outputs if isinstance(o[OUT["status"]], str) and o[OUT["status"]].startswith("**Step")]
    step_numbers = [int(re.match(r"\*\*Step (\d+)/", o[OUT["status"]]).group(1)) for o in step_outputs]
    assert step_numbers == list(range(1, steps + 1))
    plots = [plot_data(o[OUT["plot"]]) for o in step_outputs]
    # 2 curves, one point per step so far; and the transparent axis series holds every step from the first frame
    assert [len(curve_points(p)) for p in plots] == [2 * i for i in range(1, steps + 1)]
    assert all(sorted(axis_steps(p), key=int) == [str(i) for i in range(1, steps + 1)] for p in plots)
    for o in step_outputs:
        with Image.open(file_path(o[OUT["image_a"]])) as a, Image.open(file_path(o[OUT["image_b"]])) as b:
            assert a.size == b.size == (32, 32)

    # The final result is complete on its own: the score, the baseline, the plot and the files.
    assert final[OUT["details"]]["jeffreys"] > 0 and -1 <= final[OUT["details"]]["text_similarity"] <= 1
    assert len(curve_points(plot_data(final[OUT["plot"]]))) == 2 * steps

    # The score comes before the GIFs, and the GIFs come last.
    assert any(isinstance(o[OUT["result"]], str) and "Jeffreys divergence" in o[OUT["result"]] for o in outputs)
    for name, frames in (("morph_download", stages), ("trajectory_download", steps),
                         ("morph_gif", stages), ("trajectory_gif", steps)):
        with Image.open(file_path(final[OUT[name]])) as gif:
            assert gif.format == "GIF" and gif.is_animated and gif.n_frames == frames, name
            assert gif.info.get("loop") == 0
    import imageio.v3 as iio  # and the same animations as MP4: 10 fps, the GIFs' timing

    for name, seconds in (("morph_mp4", 1.2 * 2 + 0.3 * (stages - 2)), ("trajectory_mp4", 0.4 * (steps - 1) + 2.0)):
        path = file_path(final[OUT[name]])
        assert path.endswith(".mp4"), name
        assert iio.imread(path, plugin="FFMPEG", index=None).shape[0] == round(10 * seconds), name


def test_api_refuses_bad_input_and_keeps_serving(client):
    with pytest.raises(gradio_client.exceptions.AppError, match="prompt A is empty"):
        client.predict("", "tiger", api_name="/conjure", steps=2)
    with pytest.raises(gradio_client.exceptions.AppError, match="[Ss]teps|maximum|100"):
        client.predict("sun", "moon", api_name="/conjure", steps=100)
    with pytest.raises(gradio_client.exceptions.AppError):
        client.predict("sun", "moon", api_name="/conjure", model="/etc", steps=2)
    final = client.predict("sun", "moon", api_name="/conjure", steps=2, stages=2)
    with Image.open(file_path(final[OUT["morph_gif"]])) as gif:
        assert gif.n_frames == 2


# --- "Compare many": the `/matrix` API ---------------------------------------------------------------

MATRIX_OUTPUTS = ("matrix_status", "matrix_heatmap", "matrix_text_heatmap", "matrix_map", "matrix_neighbours",
                  "matrix_details", "matrix_csv", "matrix_heatmap_png", "matrix_map_png")
MOUT = {name: i for i, name in enumerate(MATRIX_OUTPUTS)}


def test_matrix_api_needs_only_the_phrases(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/matrix"]
    params = api["parameters"]
    assert params[0]["parameter_name"] == "phrases" and not params[0]["parameter_has_default"]
    assert all(p["parameter_has_default"] for p in params[1:])
    assert len(api["returns"]) == len(MATRIX_OUTPUTS)


def test_matrix_api_streams_progress_and_ends_with_the_matrix_and_the_files(client):
    job = client.submit("leopard\ncheetah\nleopard\n\nzebra", api_name="/matrix", steps=2)
    final = job.result(timeout=300)
    outputs = job.outputs()

    statuses = [o[MOUT["matrix_status"]] for o in outputs if isinstance(o[MOUT["matrix_status"]], str)]
    assert any(s.startswith("**Scoring pairs") for s in statuses)  # the progress line while pairs are scored
    assert final[MOUT["matrix_status"]].startswith("**Done: 3 phrases, 3 pairs")

    details = final[MOUT["matrix_details"]]
    assert details["phrases"] == ["leopard", "cheetah", "zebra"] and details["duplicates"] == ["leopard"]
    j = details["jeffreys"]
    assert all(j[i][i] == 0 for i in range(3))
    assert all(j[i][k] == j[k][i] > 0 for i in range(3) for k in range(3) if i != k)
    assert "| leopard |" in final[MOUT["matrix_neighbours"]]
    with open(file_path(final[MOUT["matrix_csv"]]), encoding="utf-8") as csv:
        assert csv.readline().strip() == "jeffreys,leopard,cheetah,zebra"
    for name in ("matrix_heatmap", "matrix_text_heatmap", "matrix_map", "matrix_heatmap_png", "matrix_map_png"):
        with Image.open(file_path(final[MOUT[name]])) as image:
            assert image.width > 300, name


def test_matrix_api_refuses_bad_input_and_keeps_serving(client):
    with pytest.raises(gradio_client.exceptions.AppError, match="at least two different phrases"):
        client.predict("tiger\n\ntiger", api_name="/matrix", steps=2)
    with pytest.raises(gradio_client.exceptions.AppError, match="the limit is"):
        client.predict("\n".join(f"phrase {i}" for i in range(11)), api_name="/matrix", steps=2)
    with pytest.raises(gradio_client.exceptions.AppError):
        client.predict("sun\nmoon", api_name="/matrix", model="/etc", steps=2)
    final = client.predict("sun\nmoon", api_name="/matrix", steps=1)
    assert final[MOUT["matrix_details"]]["phrases"] == ["sun", "moon"]
