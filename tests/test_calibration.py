"""The human-scale score: percentiles against random everyday pairs, and calibration files that never mix."""

import json
import re

import pytest

import conjure
from conjure import calibration
from conjure.jeffreys import Settings


def test_reference_pairs_are_fixed_distinct_and_unordered():
    pairs = calibration.reference_pairs(50)
    assert pairs == calibration.reference_pairs(50) and len(set(pairs)) == 50
    assert all(a < b for a, b in pairs)
    assert pairs != calibration.reference_pairs(50, seed=1)


@pytest.fixture(scope="module")
def calibrated(tiny_sd1, tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "calibration.json"
    found = calibration.calibrate(tiny_sd1, pairs=12, batch_size=6, progress=False, steps=3)
    calibration.save(found, path)
    return found, path


def test_percentile_counts_the_reference_pairs_farther_apart(calibrated):
    found, _ = calibrated
    ref = found.reference("girsanov")
    assert len(ref) == 12 and list(ref) == sorted(ref)
    assert found.percentile(0.0, "girsanov") == 100.0  # identical prompts: closer than every random pair
    assert found.percentile(ref[-1] * 2, "girsanov") == 0.0
    assert found.percentile(float(ref[5]), "girsanov") == pytest.approx(100 * 6 / 12)
    assert list(found.reference("exact")) != list(ref)  # every weighting from the same kept gaps


def test_cosine_percentile_counts_the_reference_pairs_with_a_smaller_cosine(calibrated):
    found, _ = calibrated
    ref = found.reference_cosines("girsanov")
    assert len(ref) == 12 and list(ref) == sorted(ref)
    assert all({"pull_a", "pull_b"} <= set(p) for p in found.per_step)  # calibrations keep the pulls
    assert found.cosine_percentile(1.0, "girsanov") == 100.0  # identical prompts: closer than every random pair
    assert found.cosine_percentile(float(ref[0]) - 1, "girsanov") == 0.0
    assert found.cosine_percentile(float(ref[5]), "girsanov") == pytest.approx(100 * 5 / 12)
    assert list(found.reference_cosines("exact")) != list(ref)  # every weighting from the same kept gaps
    keep = ("timestep", "abar", "gap_a", "gap_b")  # a calibration made before conjure kept the pulls
    older = calibration.Calibration(found.key, found.model, found.settings, found.pairs,
                                    [{k: p[k] for k in keep} for p in found.per_step])
    assert older.reference_cosines("girsanov") is None and older.cosine_percentile(0.5, "girsanov") is None


def test_scores_carry_the_percentile_when_a_calibration_exists(tiny_sd1, calibrated, monkeypatch, tmp_path):
    found, path = calibrated
    monkeypatch.setattr(calibration, "default_path", lambda model: path)
    r = conjure.score(tiny_sd1, "a cat", "a dog", steps=3)
    assert r.percentile == found.percentile(r.jeffreys, "girsanov") and r.cosine_percentile is None
    r = conjure.score(tiny_sd1, "a cat", "a dog", steps=3, cosine=True)
    assert r.percentile == found.percentile(r.jeffreys, "girsanov")
    assert r.cosine_percentile == found.cosine_percentile(r.cosine, "girsanov") is not None
    assert conjure.score(tiny_sd1, "a cat", "a dog", steps=4).percentile is None  # other settings: none
    assert conjure.score(tiny_sd1, "a cat", "a dog", steps=3, samples=2).percentile is not None  # k is not in the key


def test_a_file_from_other_settings_or_a_damaged_file_is_a_clear_error(tiny_sd1, calibrated, tmp_path):
    _, path = calibrated
    with pytest.raises(conjure.ConjureError, match="holds no calibration.*calibrate"):
        calibration.find(tiny_sd1, Settings(steps=5), path)
    assert calibration.find(tiny_sd1, Settings(steps=3), path) is not None
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps({"format": 1, "calibrations": [{"key": {}}]}))
    with pytest.raises(conjure.ConjureError, match="not a readable calibration file.*delete it"):
        calibration.find(tiny_sd1, Settings(steps=3), damaged)


def test_cli_calibrate_then_score_shows_the_percentile(tmp_path, capsys, monkeypatch):
    from conjure.cli import main
    from tiny_pipelines import tiny_sd

    folder = tmp_path / "tiny-sd"
    tiny_sd(1).save_pretrained(folder, safe_serialization=True)
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--model", str(folder), "--pairs", "10", "--steps", "2", "-o", str(out)]) == 0
    assert "median" in capsys.readouterr().out and out.exists()
    monkeypatch.setattr(calibration, "default_path", lambda model: out)
    assert main(["score", "a cat", "a dog", "--model", str(folder), "--steps", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["percentile"] <= 100 and result["jeffreys_per_dim"] > 0 and result["cosine"] is None
    assert main(["score", "a cat", "a dog", "--model", str(folder), "--steps", "2", "--json", "--cosine"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["cosine_percentile"] <= 100 and -1 <= result["cosine"] <= 1
    assert len(result["pulls"]) == 2 and result["settings"]["cosine"] is True
    assert main(["score", "a cat", "a dog", "--model", str(folder), "--steps", "2", "--cosine"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"cosine +-?\d\.\d{4}, closer than [\d.]+% of random pairs", printed), printed
    assert "pull from no text" in printed
    assert main(["calibrate", "--model", str(folder), "--pairs", "3"]) == 2
    capsys.readouterr()
    assert main(["score", "a cat", "a dog", "--model", str(folder), "--steps", "3", "--calibration", str(out)]) == 2
    assert "holds no calibration" in capsys.readouterr().err  # made with --steps 2: never mixed


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_shipped_calibrations_cover_the_library_and_app_defaults(dtype):
    # A calibration is found by the weights' digest and the settings; a mismatch (new weights, a changed default)
    # would silently drop the percentile, so the embedded model's file must hold both defaults in both the
    # dtypes it loads in (float32, and bfloat16 on CPUs that compute it natively).
    from conjure.app_handlers import DEFAULTS

    model = conjure.load_model("emoji", dtype=dtype)
    app = conjure.Settings(**{k: v for k, v in DEFAULTS.items() if k != "stages"})
    for settings in (conjure.Settings(), app):
        found = calibration.find(model, settings)
        assert found is not None, f"no shipped calibration for {dtype} weights {calibration.model_digest(model)} " \
                                  f"at {settings}; run `python -m conjure calibrate --dtype {dtype}` with them"
        assert found.reference_cosines("girsanov") is not None, f"the calibration at {settings} has no cosines"
    r = conjure.score(model, "a cat", "a dog", cosine=True)
    assert r.percentile is not None and r.cosine_percentile is not None  # what a user sees at the defaults
