"""The CLI contract and what bad input gets: a clear message, never a library traceback."""

import json
import subprocess
import sys

import pytest
import torch

import conjure
from conjure import jeffreys
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


# --- bad input: one line, a non-zero exit, before any model work where it can be (issue 13) ---------------

@pytest.fixture
def emoji_once(monkeypatch):
    """conjure.load_model returns the embedded model loaded once, checking its arguments as the real one does."""
    model = conjure.load_model("emoji")
    real = conjure.load_model
    monkeypatch.setattr(conjure, "load_model", lambda name=None, **kw: model if kw.get("device") is None and
                        kw.get("dtype") in (None, "auto") and not kw.get("compile") and name in (None, "emoji", model)
                        else real(name, **kw))
    return model


def error_line(capsys) -> str:
    """The CLI's stderr must end in one `error: ...` line and hold no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    return last


@pytest.fixture
def pairs_file(tmp_path):
    def make(lines, name="pairs.tsv"):
        path = tmp_path / name
        path.write_bytes(lines if isinstance(lines, bytes) else "".join(f"{a}\t{b}\n" for a, b in lines).encode())
        return str(path)

    return make


PAIRS = [("a cat", "a dog"), ("a car", "a bus"), ("the sun", "the moon"), ("a tree", "a house"),
         ("an apple", "a pear"), ("a fish", "a bird")]


@pytest.mark.parametrize("args, env, message", [
    (["score", "a", "b", "--seed", "18446744073709551616"], {}, "seed must be a whole number from 0 to 2**64 - 1"),
    (["score", "a", "b", "--size", "100000"], {}, "this run would need about"),  # tried to allocate 120 GB
    (["score", "a", "b", "--samples", "1000"], {"CONJURE_MAX_MEMORY_GB": "4"},  # 27 GB in float32, 14 in bfloat16
     "more than the 4 GB allowed (CONJURE_MAX_MEMORY_GB); lower --samples or --size"),
    (["score", "a", "b", "--device", "quantum"], {}, "unknown device 'quantum'; use auto, cpu, cuda, cuda:N or mps"),
    (["score", "\x00", "b"], {}, "prompt A is empty: it holds only control or invisible characters (U+0000)"),
    (["score", "a", "𓀀"], {}, "prompt B is empty to the model: MiniLM (all-MiniLM-L6-v2) reads nothing of '𓀀'"),
    (["score", "a", "b", "--batch-size", "0"], {}, "--batch-size must be a positive integer"),
    (["score", "a", "b", "--batch-size", "-3"], {}, "--batch-size must be a positive integer"),
])
def test_bad_input_gets_one_line_and_exit_2(emoji_once, capsys, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(args) == 2
    assert message in error_line(capsys)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_only_torch_gets_one_line(capsys):
    assert main(["score", "a", "b", "--device", "cuda"]) == 2
    assert "device 'cuda' is not available: this torch was built without CUDA" in error_line(capsys)


def test_a_batch_too_large_for_memory_is_refused_before_scoring(emoji_once, capsys, monkeypatch, pairs_file):
    monkeypatch.setenv("CONJURE_MAX_MEMORY_GB", "4")
    monkeypatch.setattr(jeffreys, "score_batch", lambda *a, **k: pytest.fail("scored"))
    pairs = pairs_file([(f"a cat {i}", f"a dog {i}") for i in range(2000)])
    assert main(["score", "--pairs", pairs, "--batch-size", "2000"]) == 2
    line = error_line(capsys)
    assert "2000 pairs x k = 1 sample x 4 model evaluations at 32 px" in line
    assert "more than the 4 GB allowed (CONJURE_MAX_MEMORY_GB); lower --samples, --batch-size or --size" in line


def test_out_of_memory_during_a_run_says_what_to_lower(emoji_once, capsys, monkeypatch):
    import torch

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(type(emoji_once), "predict_noise", out_of_memory)
    assert main(["score", "a", "b"]) == 2
    assert "out of memory during the run: lower samples (k), the batch size or the image size" in error_line(capsys)


def test_an_unexpected_error_is_one_line_too(emoji_once, capsys, monkeypatch):
    monkeypatch.setattr(jeffreys, "stream", lambda *a, **k: (_ for _ in ()).throw(ValueError("boom\nmore")))
    assert main(["score", "a", "b"]) == 1
    assert error_line(capsys) == "error: ValueError: boom (unexpected; CONJURE_DEBUG=1 shows the traceback)"


@pytest.mark.parametrize("content, message", [
    (bytes(range(256)) * 4, "pairs.tsv:2: not UTF-8 text (byte 0x80)"),  # was a UnicodeDecodeError
    (b"a cat\ta dog\n\xff\xfe\tx\n", "pairs.tsv:2: not UTF-8 text (byte 0xff)"),
    (b'a cat\ta dog\n{"text_a": 5, "text_b": "x"}\n', "pairs.tsv:2: prompt A must be a string, got int"),
    (b"a cat\t\x00\n", "pairs.tsv:1: prompt B is empty: it holds only control or invisible characters"),
    (b"a cat\t\xf0\x93\x80\x80\n", "prompt B on line 1 of"),  # an Egyptian hieroglyph: [UNK] only
])
def test_a_bad_pairs_file_gets_one_line(emoji_once, capsys, pairs_file, content, message):
    assert main(["score", "--pairs", pairs_file(content)]) == 2
    assert message in error_line(capsys)


@pytest.mark.parametrize("output, message", [
    ("{tmp}/no/such/folder/out.jsonl", "cannot write {tmp}/no/such/folder/out.jsonl: no folder {tmp}/no/such/folder"),
    ("{tmp}", "cannot write {tmp}: it is a folder"),
    ("{tmp}/garbage.bin", "garbage.bin exists and is not a JSONL file of conjure results"),
    ("{tmp}/other.jsonl", "other.jsonl exists and is not a JSONL file of conjure results, so it cannot be resumed"),
])
def test_the_output_is_checked_before_any_model_work(capsys, monkeypatch, tmp_path, pairs_file, output, message):
    (tmp_path / "garbage.bin").write_bytes(bytes(range(256)))
    (tmp_path / "other.jsonl").write_text('{"name": "not a result"}\n')
    monkeypatch.setattr(conjure, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["score", "--pairs", pairs_file(PAIRS), "-o", output.format(tmp=tmp_path)]) == 2
    assert message.format(tmp=tmp_path) in error_line(capsys)


def test_a_single_score_into_a_missing_folder_fails_before_scoring(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(conjure, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["score", "a", "b", "--json", "-o", str(tmp_path / "missing" / "r.json")]) == 2
    assert "no folder" in error_line(capsys)


def test_bad_input_never_shows_a_traceback_from_the_command_line(tmp_path):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 100)
    for args in (["score", "a", "b", "--seed", "18446744073709551616"], ["score", "a", "b", "--device", "quantum"],
                 ["score", "--pairs", str(garbage)]):
        out = run_cli(*args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith("error: ")


def test_emoji_only_prompts_score_by_their_meaning(emoji_once, capsys):
    assert main(["score", "🐯🐆🔥", "🦁", "--steps", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["jeffreys"] > 0 and result["rewritten"] == ["tiger face leopard fire", "lion"]
    assert main(["score", "🐯🐆🔥", "🦁", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "prompt B read as     'lion' (emoji as words)" in out
    assert "2 steps, k=1, guidance 1, girsanov weighting" in out  # the settings that move the score, named


def test_a_score_on_the_embedded_model_prints_its_result_and_nothing_else():
    out = run_cli("score", "cat", "dog", "--steps", "2")
    assert out.returncode == 0 and "Jeffreys divergence" in out.stdout
    assert out.stderr == ""  # no loading bars or warnings around a one-line answer


# --- score --pairs -o: every batch written as it finishes, and a rerun resumes -------------------------------

def score_file(pairs, output, *extra):
    return main(["score", "--pairs", pairs, "-o", str(output), "--steps", "2", "--batch-size", "2", *extra])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pairs_stream_to_the_output_and_a_rerun_resumes(emoji_once, capsys, monkeypatch, tmp_path, pairs_file):
    pairs = pairs_file(PAIRS)
    whole = tmp_path / "whole.jsonl"
    assert score_file(pairs, whole) == 0
    assert [(r["text_a"], r["text_b"]) for r in read_jsonl(whole)] == PAIRS

    real, calls = jeffreys.score_batch, []

    def killed_at_the_third_batch(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill: nothing after this point runs
        return real(*args, **kwargs)

    monkeypatch.setattr(jeffreys, "score_batch", killed_at_the_third_batch)
    out = tmp_path / "resumed.jsonl"
    assert score_file(pairs, out) == 130
    assert len(read_jsonl(out)) == 4  # the two finished batches were on disk before the kill
    monkeypatch.setattr(jeffreys, "score_batch", real)
    capsys.readouterr()
    assert score_file(pairs, out) == 0
    assert "4 of 6 pairs already scored there, skipped; scoring the other 2" in capsys.readouterr().err
    resumed, expected = read_jsonl(out), read_jsonl(whole)
    assert [(r["text_a"], r["text_b"], r["jeffreys"]) for r in resumed] == \
           [(r["text_a"], r["text_b"], r["jeffreys"]) for r in expected]

    assert score_file(pairs, out) == 0  # nothing left to do
    assert "6 of 6 pairs already scored there, skipped; scoring the other 0" in capsys.readouterr().err
    assert len(read_jsonl(out)) == 6

    assert score_file(pairs, out, "--steps", "3") == 0  # other settings: scored again, the earlier results kept
    assert "0 of 6 pairs already scored there" in capsys.readouterr().err
    assert [r["settings"]["steps"] for r in read_jsonl(out)] == [2] * 6 + [3] * 6


def test_results_in_another_dtype_are_not_taken_for_this_ones(emoji_once, capsys, tmp_path, pairs_file):
    pairs, out = pairs_file(PAIRS[:2]), tmp_path / "out.jsonl"
    assert score_file(pairs, out) == 0
    other = "float32" if emoji_once.dtype == torch.bfloat16 else "bfloat16"
    capsys.readouterr()
    assert score_file(pairs, out, "--dtype", other) == 0  # its scores differ in the last digits: scored again
    assert "0 of 2 pairs already scored there" in capsys.readouterr().err
    assert [r["dtype"] for r in read_jsonl(out)] == [str(emoji_once.dtype).removeprefix("torch.")] * 2 + [other] * 2


def test_a_line_torn_by_a_kill_is_scored_again(emoji_once, capsys, tmp_path, pairs_file):
    pairs = pairs_file(PAIRS[:3])
    out = tmp_path / "out.jsonl"
    assert score_file(pairs, out) == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed in the middle of writing the second line
    assert score_file(pairs, out) == 0
    assert "1 of 3 pairs already scored there, skipped; scoring the other 2" in capsys.readouterr().err
    assert [(r["text_a"], r["text_b"]) for r in read_jsonl(out)] == PAIRS[:3]


def test_calibrate_checks_its_output_before_scoring(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(conjure, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["calibrate", "-o", str(tmp_path / "missing" / "calibration.json")]) == 2
    assert f"no folder {tmp_path / 'missing'}" in error_line(capsys)


# --- one set of limits, checked before any model work, on every surface (issue 25) -----------------------------

@pytest.fixture
def phrase_files(tmp_path):
    (tmp_path / "many.txt").write_text("".join(f"phrase {i}\n" for i in range(1001)))
    (tmp_path / "folder").mkdir()
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["morph", "a", "b", "--gif", "{tmp}/m.gif", "--stages", "1000"], "1000 morph stages; the limit is 64"),
    (["score", "a", "b", "--seed", "-1"], "seed must be a whole number from 0 to 2**64 - 1"),
    (["matrix", "--file", "{tmp}/many.txt"], "1001 different phrases; the limit is 100 (--max-phrases)"),
    (["rank", "query", "--file", "{tmp}/many.txt"], "1001 different candidates; the limit is 1000 (--max-phrases)"),
    (["matrix", "a", "b", "--map", "/proc/x.png"], "cannot write /proc/x.png: "),
    (["matrix", "a", "b", "--csv", "/proc/x.csv"], "cannot write /proc/x.csv: "),
    (["score", "--pairs", "{tmp}/pairs.tsv", "-o", "/proc/x.jsonl"], "cannot write /proc/x.jsonl: "),
    (["morph", "a", "b", "--gif", "/proc/x.gif"], "cannot write /proc/x.gif: "),
    (["matrix", "a", "--file", "{tmp}/folder"], "phrases file {tmp}/folder is a folder; give a file"),
    (["score", "--pairs", "{tmp}/folder"], "pairs file {tmp}/folder is a folder; give a file"),
    (["matrix", "a", "b", "--max-phrases", "0"], "--max-phrases must be a positive integer"),
])
def test_limits_and_outputs_are_refused_in_one_line_before_any_model_work(args, message, capsys, monkeypatch,
                                                                         phrase_files):
    (phrase_files / "pairs.tsv").write_text("a\tb\n")
    monkeypatch.setattr(conjure, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert main([a.format(tmp=phrase_files) for a in args]) == 2
    assert message.format(tmp=phrase_files) in error_line(capsys)
    assert not (phrase_files / "m.gif").exists()


def test_the_library_refuses_what_the_cli_refuses():
    model = GaussianModel(random_means(["a", "b", "c"]))
    with pytest.raises(conjure.ConjureError, match=r"200 different phrases; the limit is 100 \(every pair is scored"):
        conjure.similarity_matrix(model, [f"phrase {i}" for i in range(200)], steps=2)  # was 19,900 pairs
    assert conjure.similarity_matrix(model, ["a", "b", "c"], steps=2,
                                     limits=conjure.Limits(max_phrases=3)).jeffreys.shape == (3, 3)
    with pytest.raises(conjure.ConjureError, match="1001 different candidates; the limit is 1000"):
        conjure.rank(model, "a", [f"c {i}" for i in range(1001)], steps=2)
    with pytest.raises(conjure.ConjureError, match="the query must be a string, got int"):  # was "the query is empty"
        conjure.rank(model, 5, ["a", "b"])
    with pytest.raises(conjure.ConjureError, match="the query is empty"):
        conjure.rank(model, " ", ["a", "b"])
    with pytest.raises(conjure.ConjureError, match=r"phrase 2 is empty: it holds only control or invisible"):
        conjure.similarity_matrix(model, ["a", "\x00"], steps=2)  # was "prompt A is empty" in the app
    with pytest.raises(conjure.ConjureError, match="seed must be a whole number from 0"):
        conjure.score(model, "a", "b", seed=-1)
