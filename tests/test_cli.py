"""The CLI contract and what bad input gets: a clear message, never a library traceback."""

import json
import subprocess
import sys

import pytest

import conjure
from conjure.cli import main, read_pairs
from gaussian_model import GaussianModel, random_means
from tiny_pipelines import tiny_sd


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sd-random-weights"
    tiny_sd(1).save_pretrained(folder, safe_serialization=True)
    return str(folder)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "conjure", *args], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_score_json_contract(tiny_folder):
    out = run_cli("score", "snow leopard", "bengal tiger", "--model", tiny_folder, "--json", "--steps", "3",
                  "--samples", "2", "--device", "cpu", "--dtype", "float32")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in ("jeffreys", "kl_ab", "kl_ba", "per_step", "stderr", "seconds"):
        assert key in result
    assert result["jeffreys"] == pytest.approx((result["kl_ab"] + result["kl_ba"]) / 2)
    assert len(result["per_step"]["kl_ab"]) == 3 and result["settings"]["samples"] == 2


def test_pairs_file_gives_one_json_line_per_pair(tiny_folder, tmp_path, capsys):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("a cat\ta dog\n\na car\ta bus\n")
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"text_a": "a cat", "text_b": "a dog"}\n{"a": "a car", "b": "a bus"}\n')
    assert read_pairs(str(tsv)) == read_pairs(str(jsonl)) == [("a cat", "a dog"), ("a car", "a bus")]
    assert main(["score", "--pairs", str(tsv), "--model", tiny_folder, "--steps", "2", "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [(r["text_a"], r["text_b"]) for r in lines] == [("a cat", "a dog"), ("a car", "a bus")]
    assert "pair" in captured.err  # the progress bar


@pytest.mark.parametrize("args,message", [
    (["score", "", "tiger"], "prompt A is empty"),
    (["score", "leopard", "   "], "prompt B is empty"),
    (["score", "a", "b", "--steps", "0"], "steps must be a positive integer"),
    (["score", "a", "b", "--samples", "0"], "samples (k) must be a positive integer"),
    (["score", "a", "b", "--eta", "0"], "eta=0 is deterministic DDIM"),
    (["score", "a", "b", "--guidance", "-1"], "guidance must be a positive number"),
    (["score", "a"], "give two texts"),
])
def test_bad_input_gets_a_clear_message(tiny_folder, capsys, args, message):
    assert main([*args, "--model", tiny_folder]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_model_offline(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["score", "a", "b", "--model", "no-such-org/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "could not load model 'no-such-org/no-such-model'" in err and "HF_HUB_OFFLINE" in err
    with pytest.raises(conjure.ModelLoadError, match="not a model folder"):
        conjure.load_model("./no/such/folder")


def test_missing_pairs_file(capsys):
    assert main(["score", "--pairs", "/no/such/file.tsv"]) == 2
    assert "pairs file not found" in capsys.readouterr().err


def test_api_errors_are_conjure_errors():
    model = GaussianModel(random_means(["a", "b"]))
    for kwargs in ({"steps": 0}, {"samples": 0}, {"eta": 0.0}, {"steps": 2000}, {"weighting": "nope"}):
        with pytest.raises(conjure.ConjureError):
            conjure.score(model, "a", "b", **kwargs)
    with pytest.raises(conjure.ConjureError, match="must be a string"):
        conjure.score(model, None, "b")
    assert conjure.score_pairs(model, []) == []


def test_morph_writes_gif_mp4_webm_and_the_trajectories(tiny_folder, tmp_path, capsys):
    iio = pytest.importorskip("imageio.v3")
    from PIL import Image

    gif, mp4, trajectories = tmp_path / "m.gif", tmp_path / "m.mp4", tmp_path / "t.webm"
    assert main(["morph", "snow leopard", "bengal tiger", "--model", tiny_folder, "--steps", "2", "--stages", "3",
                 "--gif", str(gif), "--mp4", str(mp4), "--trajectories", str(trajectories), "--panel", "64"]) == 0
    out = capsys.readouterr().out
    assert "Jeffreys divergence" in out and f"wrote {mp4} (morph, 3 frames, 2.7 s" in out
    with Image.open(gif) as g:
        assert g.n_frames == 3 and g.size == (80, 116)  # a 64 px panel, 8 px margins, 44 px caption
    # 1.2 + 0.3 + 1.2 s at 10 fps; the tiny model's 32 px pictures are pixel art, so the video is enlarged 2x
    assert iio.imread(mp4, plugin="FFMPEG", index=None).shape == (27, 232, 160, 3)
    assert iio.immeta(trajectories, plugin="FFMPEG")["duration"] == pytest.approx(0.4 + 2.0)


@pytest.mark.parametrize("args, message", [
    (["--mp4", "out.gif"], "--mp4 needs a file name ending in .mp4"),
    (["--trajectories", "t.png"], "the file name must end in .gif, .mp4, .webm"),
    ([], "nothing to write"),
    (["--gif", "/no/such/folder/m.gif"], "no folder /no/such/folder"),
    (["--gif", "m.gif", "--stages", "1"], "at least 2 stages"),
    (["--mp4", "m.mp4", "--video-scale", "0"], "--video-scale must be from 1 to 8"),
])
def test_morph_bad_input_gets_a_clear_message(args, message, capsys):
    assert main(["morph", "a", "b", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_morph_without_ffmpeg_says_so_before_any_model_work(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # the plugin fails to load
    monkeypatch.setattr(conjure, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["morph", "a", "b", "--gif", str(tmp_path / "m.gif"), "--mp4", str(tmp_path / "m.mp4")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'm.mp4'}: ffmpeg is not available" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())
