"""Many phrases at once (conjure/matrix.py, conjure/figures.py, `python -m conjure matrix` and `rank`)."""

import json

import numpy as np
import pytest
import torch

import conjure
from conjure.cli import main
from conjure.errors import ConjureError
from conjure.matrix import MatrixResult, classical_mds, distinct_phrases
from gaussian_model import GaussianModel, random_means
from tiny_pipelines import tiny_sd

NAMES = ["leopard", "cheetah", "tiger", "house cat", "zebra"]


@pytest.fixture(scope="module")
def gaussian():
    return GaussianModel(random_means(NAMES))


@pytest.fixture(scope="module")
def emoji():
    return conjure.load_model("emoji")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sd-random-weights"
    tiny_sd(1).save_pretrained(folder, safe_serialization=True)
    return str(folder)


# --- the matrix ---------------------------------------------------------------------------------------


def test_matrix_is_symmetric_with_a_zero_diagonal_and_one_model_call_per_step_per_batch(gaussian):
    gaussian.calls = 0
    m = conjure.similarity_matrix(gaussian, NAMES, batch_size=4, steps=5)
    n = len(NAMES)
    assert m.phrases == NAMES and m.pairs == 10
    assert gaussian.calls == 3 * 5  # 10 pairs in batches of 4: 3 batches, one call per sampler step each
    assert m.jeffreys.shape == m.kl.shape == m.text_cosine.shape == (n, n)
    assert np.array_equal(m.jeffreys, m.jeffreys.T) and np.all(np.diag(m.jeffreys) == 0)
    assert np.all(m.jeffreys[~np.eye(n, dtype=bool)] > 0)
    assert np.allclose(m.jeffreys, (m.kl + m.kl.T) / 2, rtol=1e-9)
    assert np.allclose(m.text_cosine, m.text_cosine.T) and np.allclose(np.diag(m.text_cosine), 1)
    assert m.images.shape == (n, 4, 4, 3) and m.images.dtype == np.uint8
    assert m.stderr is None and m.percentile is None and m.duplicates == []
    assert [(r.text_a, r.text_b) for r in m.pair_results] == [(a, b) for i, a in enumerate(NAMES) for b in NAMES[i + 1:]]


def test_batched_matrix_equals_pairwise_score_on_the_embedded_model(emoji):
    phrases, settings = ["leopard", "tiger", "zebra", "house cat"], dict(steps=3, samples=2, seed=1)
    m = conjure.similarity_matrix(emoji, phrases, batch_size=4, **settings)
    for i, a in enumerate(phrases):
        for j, b in enumerate(phrases[i + 1:], i + 1):
            single = conjure.score(emoji, a, b, **settings)
            assert m.jeffreys[i, j] == pytest.approx(single.jeffreys, rel=1e-4)
            assert m.kl[i, j] == pytest.approx(single.kl_ab, rel=1e-4)
            assert m.kl[j, i] == pytest.approx(single.kl_ba, rel=1e-4)
            assert m.stderr[i, j] == pytest.approx(single.stderr, rel=1e-3)
            assert m.text_cosine[i, j] == pytest.approx(conjure.text_similarity(emoji, a, b), abs=1e-5)
    assert not np.allclose(m.kl, m.kl.T)  # the two directions differ on a real network; D_J is symmetric
    # Each phrase's image is the image its own trajectory ends in: what conjure.sample draws from the same noise.
    drawn = conjure.sample(emoji, phrases, **settings)[:, 0]
    assert np.abs(drawn.astype(int) - m.images.astype(int)).max() <= 2


def test_rank_sorts_candidates_by_divergence_from_the_query(gaussian):
    m = conjure.similarity_matrix(gaussian, NAMES, steps=4)
    ranked = conjure.rank(gaussian, "leopard", ["zebra", "cheetah", "", "tiger", "house cat", "zebra "], steps=4)
    assert [r.text_b for r in ranked] == sorted(NAMES[1:], key=lambda p: m.jeffreys[0, NAMES.index(p)])
    assert [r.jeffreys for r in ranked] == sorted(r.jeffreys for r in ranked)
    assert all(r.text_a == "leopard" for r in ranked)
    assert ranked[0].jeffreys == pytest.approx(min(m.jeffreys[0, 1:]), rel=1e-6)
    with pytest.raises(ConjureError, match="no candidates"):
        conjure.rank(gaussian, "leopard", ["", "  "])
    with pytest.raises(ConjureError, match="query is empty"):
        conjure.rank(gaussian, " ", ["tiger"])


def test_repeats_and_empty_lines_are_dropped_and_said_so(gaussian):
    m = conjure.similarity_matrix(gaussian, ["tiger", "", " zebra ", "tiger", "zebra", "leopard", "tiger"], steps=3)
    assert m.phrases == ["tiger", "zebra", "leopard"] and m.duplicates == ["tiger", "zebra"] and m.pairs == 3
    assert distinct_phrases(["a", " a", "b", "\t"]) == (["a", "b"], ["a"])


@pytest.mark.parametrize("phrases, message", [
    (["tiger"], r"at least two different phrases \(only 'tiger'\)"),
    (["tiger", "tiger ", ""], "at least two different phrases"),
    ([], "at least two different phrases"),
    ("tiger\nzebra", "a list of strings, not str"),
    (None, "a list of strings, not NoneType"),
    (["tiger", 3], "phrase 2 must be a string"),
    (["tiger", "zebra\udcff"], "phrase 2 is not valid text"),
])
def test_bad_phrases_get_a_clear_message(gaussian, phrases, message):
    with pytest.raises(ConjureError, match=message):
        conjure.similarity_matrix(gaussian, phrases, steps=2)


def test_nearest_neighbours_and_csv(gaussian):
    m = conjure.similarity_matrix(gaussian, NAMES, steps=3)
    nearest = m.nearest()
    for i, (phrase, neighbour, value) in enumerate(nearest):
        j = NAMES.index(neighbour)
        assert phrase == NAMES[i] and j != i and value == m.jeffreys[i, j]
        assert value == min(m.jeffreys[i, k] for k in range(len(NAMES)) if k != i)
    for i, (phrase, neighbour, value) in enumerate(m.nearest("text")):
        assert value == max(m.text_cosine[i, k] for k in range(len(NAMES)) if k != i)
    rows = [line.split(",") for line in m.to_csv().splitlines()]
    assert rows[0] == ["jeffreys", *NAMES] and [r[0] for r in rows[1:]] == NAMES
    assert np.array_equal(np.array([[float(v) for v in r[1:]] for r in rows[1:]]), m.jeffreys)  # full precision
    d = json.loads(json.dumps(m.to_dict()))
    assert d["phrases"] == NAMES and d["nearest"][0]["nearest"] == nearest[0][1] and len(d["mds"]) == len(NAMES)
    with pytest.raises(ConjureError, match="no 'percentile' matrix"):
        m.to_csv("percentile")


def test_percentiles_come_from_the_calibration(gaussian, monkeypatch):
    from conjure import calibration

    reference = np.array([5.0, 10.0, 20.0, 40.0])

    class Found:
        def reference(self, weighting):
            return reference

        def percentile(self, jeffreys, weighting):
            return float(100.0 * (len(reference) - np.searchsorted(reference, jeffreys, side="right")) / len(reference))

    monkeypatch.setattr(calibration, "find", lambda model, settings: Found())
    m = conjure.similarity_matrix(gaussian, NAMES[:3], steps=3)
    for i in range(3):
        for j in range(3):
            assert m.percentile[i, j] == Found().percentile(m.jeffreys[i, j], "girsanov")
    assert np.all(np.diag(m.percentile) == 100.0)
    assert m.pair_results[0].percentile == m.percentile[0, 1]


# --- the map of meanings --------------------------------------------------------------------------------


def test_classical_mds_recovers_euclidean_points():
    points = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [3.0, 4.0], [1.0, 2.0]])
    squared = ((points[:, None] - points[None]) ** 2).sum(-1)
    coords, values = classical_mds(squared)
    assert np.allclose(((coords[:, None] - coords[None]) ** 2).sum(-1), squared)
    assert values[2:] == pytest.approx(0, abs=1e-9)
    again, _ = classical_mds(squared)
    assert np.array_equal(coords, again)  # signs are fixed: the same picture every time


def test_the_map_of_a_gaussian_model_is_the_layout_of_its_means():
    # x0 ~ N(m_y, I): D_J is exactly c ||m_a - m_b||^2, so MDS of D_J recovers the means' layout up to scale.
    layout = np.array([[0.0, 0.0], [1.0, 0.2], [0.1, 1.5], [2.0, 2.0], [-1.0, 0.5]])
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn((2, 3, 4, 4), generator=g)
    names = [f"p{i}" for i in range(len(layout))]
    means = {n: float(x) * u + float(y) * v for n, (x, y) in zip(names, layout)}
    m = conjure.similarity_matrix(GaussianModel(means), names, steps=10)
    flat = torch.stack(list(means.values())).flatten(1).double()
    true = torch.cdist(flat, flat).numpy()
    coords = m.mds()
    shown = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    assert shown / shown.max() == pytest.approx(true / true.max(), abs=1e-4)
    assert m.mds_share() == pytest.approx(1.0, abs=1e-6)


def test_with_cosines_the_map_is_the_layout_of_the_means_directions():
    # On the Gaussian model the cosine of the pulls is exactly cos(m_a, m_b), so the map drawn from the cosines
    # (squared distance 2 (1 - cos), the chord between unit vectors) recovers the layout of the unit means.
    layout = np.array([[1.0, 0.1], [0.8, 0.9], [0.1, 1.5], [-1.0, 0.6], [0.3, -1.2]])
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn((2, 3, 4, 4), generator=g)
    names = [f"p{i}" for i in range(len(layout))]
    means = {n: float(x) * u + float(y) * v for n, (x, y) in zip(names, layout)}
    m = conjure.similarity_matrix(GaussianModel(means), names, steps=10, cosine=True)
    assert m.map_measure == "cosine"
    unit = torch.nn.functional.normalize(torch.stack(list(means.values())).flatten(1).double(), dim=1)
    true = torch.cdist(unit, unit).numpy()
    coords = m.mds(by="cosine")
    shown = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    assert shown == pytest.approx(true, abs=1e-4)
    assert not np.allclose(coords, m.mds())  # not the divergences' map: lengths are taken out
    d = m.to_dict()
    assert d["mds_by"] == "cosine" and np.allclose(d["mds"], coords)  # the JSON's map is the one drawn
    with pytest.raises(ConjureError, match="'jeffreys' or 'cosine'"):
        m.mds(by="text")
    without = conjure.similarity_matrix(GaussianModel(means), names, steps=2)
    with pytest.raises(ConjureError, match="no cosines"):
        without.mds(by="cosine")
    assert without.map_measure == "jeffreys"


def test_figures_draw_what_the_neighbours_read(gaussian, monkeypatch):
    """With cosines, the heatmap of the images shows them (beside the text encoder's cosines) and the map is
    drawn from them; a phrase with no cosine (it does not move the model) falls back to the divergence."""
    from conjure import figures

    m = conjure.similarity_matrix(gaussian, NAMES, steps=3, cosine=True)
    drawn = []
    real_heatmap = figures.heatmap
    monkeypatch.setattr(figures, "heatmap", lambda values, *a, **k: drawn.append((values, k)) or
                        real_heatmap(values, *a, **k))
    figures.matrix_figures(m, "test encoder")
    (images, how), (words, _) = drawn
    assert images is m.cosine and how["alike"] == "high" and "cosine" in how["title"] and words is m.text_cosine
    m.cosine = m.cosine.copy()
    m.cosine[0, 1] = m.cosine[1, 0] = np.nan
    assert m.map_measure == "jeffreys" and m.images_measure == "cosine"
    drawn.clear()
    figures.matrix_figures(m, "test encoder")
    assert drawn[0][0] is m.jeffreys and "Jeffreys" in drawn[0][1]["title"]
    with pytest.raises(ConjureError, match="no place on its map"):
        m.mds(by="cosine")


def test_figures_draw_the_matrix_and_the_map(gaussian):
    from conjure import figures

    m = conjure.similarity_matrix(gaussian, NAMES, steps=3)
    pictures = figures.matrix_figures(m, "test encoder")
    assert set(pictures) == {"heatmap", "text_heatmap", "map"}
    for picture in pictures.values():
        pixels = np.asarray(picture)
        assert picture.mode == "RGB" and pixels.std() > 10  # something is drawn
    small = figures.heatmap(m.jeffreys[:2, :2], NAMES[:2])
    assert small.width < pictures["heatmap"].width or small.height < pictures["heatmap"].height
    with pytest.raises(ValueError, match="matrix for 3 phrases"):
        figures.heatmap(m.jeffreys, NAMES[:3])
    # The darkest off-diagonal cell of the heatmap is the most alike pair: the colour runs one way only.
    assert figures._shade(1.0, 1.0, 2.0, "low") == figures._shade(2.0, 1.0, 2.0, "high") == tuple(figures.ALIKE_LUT[0])


def test_a_matrix_of_two_phrases_draws_too(gaussian):
    from conjure import figures

    m = conjure.similarity_matrix(gaussian, NAMES[:2], steps=2)
    assert m.mds().shape == (2, 2) and m.mds()[:, 1] == pytest.approx(0)
    assert figures.meaning_map(m).size == (760, 620)


# --- the command line ---------------------------------------------------------------------------------


def test_cli_matrix_prints_the_table_and_writes_csv_png_and_map(tiny_folder, tmp_path, capsys):
    from PIL import Image

    phrases = tmp_path / "phrases.txt"
    phrases.write_text("tiger\n\nzebra\nleopard\n", encoding="utf-8")
    csv, png, map_png = tmp_path / "m.csv", tmp_path / "heat.png", tmp_path / "map.png"
    assert main(["matrix", "house cat", "tiger", "--file", str(phrases), "--model", tiny_folder, "--steps", "2",
                 "--batch-size", "4", "--csv", str(csv), "--png", str(png), "--map", str(map_png)]) == 0
    out = capsys.readouterr()
    assert "4 phrases, 6 pairs" in out.out and "repeated, scored once: 'tiger'" in out.out
    assert "Nearest neighbour" in out.out and "/6 [" in out.err  # the table, and the progress bar of 6 pairs
    assert "0pair [" not in out.err  # no empty bar before the number of pairs is known
    assert csv.read_text().splitlines()[0] == "jeffreys,house cat,tiger,zebra,leopard"
    for path in (png, map_png):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300

    assert main(["matrix", "a cat", "a dog", "--model", tiny_folder, "--steps", "2"]) == 0
    assert "2 phrases, 1 pair (" in capsys.readouterr().out

    assert main(["matrix", "a cat", "a dog", "a car", "--model", tiny_folder, "--steps", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["phrases"] == ["a cat", "a dog", "a car"] and len(result["jeffreys"]) == 3
    assert result["jeffreys"][0][1] == result["jeffreys"][1][0] and result["jeffreys"][2][2] == 0


def test_cli_rank(tiny_folder, capsys):
    assert main(["rank", "a cat", "a dog", "a car", "a cat!", "--model", tiny_folder, "--steps", "2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["text_b"] for r in lines) == ["a car", "a cat!", "a dog"]
    assert [r["jeffreys"] for r in lines] == sorted(r["jeffreys"] for r in lines)
    assert main(["rank", "a cat", "a dog", "a car", "--model", tiny_folder, "--steps", "2"]) == 0
    assert "most alike first" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["matrix", "tiger"], "at least two different phrases"),
    (["matrix", "tiger", "tiger", " "], "at least two different phrases"),
    (["matrix", "a", "b", "c", "--max-phrases", "2"], "3 different phrases; the limit is 2 (--max-phrases)"),
    (["matrix", "a", "b", "--png", "heat.jpg"], "ending in .png"),
    (["matrix", "a", "b", "--file", "no-such-file.txt"], "phrases file not found"),
    (["rank", "tiger"], "no candidates to rank"),
    (["rank", " ", "tiger"], "the query is empty"),
])
def test_cli_bad_input_gets_a_clear_message_before_any_model_work(args, message, capsys, monkeypatch):
    monkeypatch.setattr(conjure, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_huge_or_non_utf8_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(conjure, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"a phrase\n" * 600_000)  # 5.4 MB
    assert main(["matrix", "--file", str(huge)]) == 2
    assert "5.4 MB; a phrases file (one phrase per line) may be at most 1 MB" in capsys.readouterr().err
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("tiger\ncaf\u00e9\n".encode("latin-1"))
    assert main(["rank", "tiger", "--file", str(latin)]) == 2
    assert "latin1.txt:2: not UTF-8 text (byte 0xe9)" in capsys.readouterr().err


def test_matrix_result_is_importable_from_the_package():
    assert conjure.MatrixResult is MatrixResult and {"similarity_matrix", "rank", "MatrixResult"} <= set(conjure.__all__)


def test_unknown_settings_and_a_bad_batch_size_are_refused(gaussian):
    with pytest.raises(ConjureError, match="stepz"):
        conjure.similarity_matrix(gaussian, NAMES, stepz=3)
    with pytest.raises(ConjureError, match="batch_size"):
        conjure.similarity_matrix(gaussian, NAMES, batch_size=0)
    with pytest.raises(ConjureError, match="phrase 2 is empty"):  # only invisible characters
        conjure.similarity_matrix(gaussian, ["tiger", "\u200b"], steps=2)


def test_matrix_and_rank_with_the_cosine(gaussian):
    """On the Gaussian model the cosine of the pulls is the cosine of the class means (tests/test_estimator.py), so
    the matrix's cosines, its nearest neighbours by them and a ranking by them follow the means."""
    m = conjure.similarity_matrix(gaussian, NAMES, cosine=True, steps=20)
    means = torch.stack([gaussian.means[n].flatten() for n in NAMES]).double()
    means = means / means.norm(dim=1, keepdim=True)
    assert np.allclose(m.cosine, (means @ means.T).numpy(), rtol=1e-4, atol=1e-6)
    assert m.cosine_percentile is None  # no calibration for an analytic model
    expected = [(p, NAMES[int(np.argmax(np.where(np.eye(len(NAMES))[i] > 0, -2, m.cosine[i])))])
                for i, p in enumerate(NAMES)]
    assert [(p, q) for p, q, _ in m.nearest("cosine")] == expected
    assert json.loads(json.dumps(m.to_dict()))["nearest_by_cosine"][0]["nearest"] == expected[0][1]
    assert m.to_csv("cosine").splitlines()[1].startswith("leopard,1.0")
    ranked = conjure.rank(gaussian, "leopard", NAMES[1:], cosine=True, steps=20)
    assert [r.cosine for r in ranked] == sorted((r.cosine for r in ranked), reverse=True)
    assert [r.text_b for r in ranked] == [NAMES[j] for j in np.argsort(-m.cosine[0, 1:]) + 1]
    plain = conjure.similarity_matrix(gaussian, NAMES[:3], steps=20)
    assert plain.cosine is None and "cosine" not in plain.to_dict()
    with pytest.raises(ConjureError, match="make it with cosine=True"):
        plain.nearest("cosine")


def test_cli_matrix_and_rank_with_the_cosine(tiny_folder, capsys):
    assert main(["matrix", "a cat", "a dog", "a car", "--model", str(tiny_folder), "--steps", "2", "--cosine"]) == 0
    out = capsys.readouterr().out
    assert "Cosine of the pulls (larger = more alike):" in out and "by the images (cosine)" in out
    assert main(["rank", "a cat", "a dog", "a car", "--model", str(tiny_folder), "--steps", "2", "--cosine"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()[:2] in ("1.", "2.")]
    cosines = [float(line.split("cosine")[1].split()[0]) for line in lines]
    assert len(cosines) == 2 and cosines == sorted(cosines, reverse=True)
