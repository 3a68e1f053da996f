"""bench/gpu_check.py, the prepared GPU check, runs end to end on a CPU (tiny SD 1.x only, --quick), and builds
every model it lists."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cpu_quick_run_prints_the_table_and_writes_the_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--models", "tiny-sd1", "--pairs", "4",
         "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    header = "| model | dtype | batch | pairs/s | vs fp32 batch 1 | peak MiB | rel. diff median | rel. diff max | Spearman |"
    assert header in lines
    rows = [line for line in lines if line.startswith("| tiny SD 1.x")]
    assert len(rows) == 4  # fp32 and bf16 (the CPU's half), batch 1 and 4
    assert "skipped" not in run.stdout

    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["half"] == "bf16" and report["batch_sizes"] == [1, 4]
    assert report["skipped"] == [] and len(report["pairs"]) == 4
    assert [(r["dtype"], r["batch"]) for r in report["rows"]] == [("fp32", 1), ("fp32", 4), ("bf16", 1), ("bf16", 4)]
    fields = {"model", "label", "dtype", "batch", "pairs_timed", "seconds", "pairs_per_s", "ratio_vs_fp32_b1",
              "peak_mib", "rel_diff_median", "rel_diff_max", "spearman", "scores"}
    for r in report["rows"]:
        assert fields <= set(r)
        assert r["pairs_per_s"] > 0 and len(r["scores"]) == 4 and r["peak_mib"] is None  # no CUDA peak on a CPU
        assert 0 <= r["rel_diff_median"] <= r["rel_diff_max"] and -1 <= r["spearman"] <= 1
    reference, batched = report["rows"][0], report["rows"][1]
    assert reference["ratio_vs_fp32_b1"] == 1.0 and reference["rel_diff_max"] == 0.0
    assert batched["rel_diff_max"] < 1e-4  # batching pairs changes nothing but float rounding


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda_is_one_line_not_a_traceback(capsys):
    assert load_script().main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpu_check: device 'cuda' is not available") and "\n" not in err
    assert "--device cpu" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux-dev", "tiny-flux-schnell"])
def test_the_check_covers_the_flow_models_in_both_dtypes(name):
    """SD3 and Flux (flow matching) are measured on the first GPU run too: each builds in fp32 and bf16, from the
    same weights, and scores through the estimator."""
    import conjure

    script = load_script()
    assert name in script.MODELS and name in script.parse_args([]).models
    fp32, bf16 = (script.build(name, torch.device("cpu"), dtype) for dtype in (torch.float32, torch.bfloat16))
    assert type(fp32).__module__ == "conjure.models.flow"
    assert (fp32.dtype, bf16.dtype) == (torch.float32, torch.bfloat16)
    assert torch.equal(fp32.transformer.proj_out.weight.bfloat16(), bf16.transformer.proj_out.weight)
    scores = [conjure.score(m, "a cat", "a dog", steps=2).jeffreys for m in (fp32, bf16)]
    assert scores[0] > 0 and scores[1] == pytest.approx(scores[0], rel=0.2)
