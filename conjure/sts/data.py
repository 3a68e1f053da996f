"""The STS test sets and MEN: where they are, how each file layout is read, subsampling and the full-stop rule.

Every dataset is read into the same `STSData`: text pairs (sentences, or MEN's single
words), their human similarity or relatedness score and, where the source has one,
the sub-corpus of each pair.
Sources, in the order they are tried:

* local files under a data directory (`--data-dir`, else $CONJURE_STS_DATA, else ./data):
  - STS-B: the original `sts-test.csv` (tab-separated genre, file, year, id, score,
    sentence1, sentence2, and on some lines licence columns, which are ignored);
  - STS12-16: the SentEval layout, a folder `STS12-en-test` ... `STS16-en-test` with
    `STS.input.<subset>.txt` (two tab-separated sentences a line) and `STS.gs.<subset>.txt`
    (a score a line; a blank line marks an unscored pair, which is skipped); the original
    2016 names `STS2016.input.<subset>.txt` are accepted too;
  - SICK-R: `SICK.txt` (all 9,927 pairs, as MTEB uses) or SentEval's `SICK_test_annotated.txt`;
  - any of them as MTEB's own file (`<repo name>/test.jsonl[.gz]`, e.g. `sts12-sts/test.jsonl.gz`);
  - MEN (Bruni, Tran & Baroni 2014): the official split as distributed, `MEN_dataset_lemma_form.dev`
    (2,000 pairs) and `MEN_dataset_lemma_form.test` (1,000), `word1 word2 score` a line, every word
    with a part-of-speech suffix (`berry-n`, `hold-v`, `small-j`) that is stripped before scoring;
    the score is relatedness on 0-50, kept as it is (only its ranks and linear fit are ever used);
* the Hugging Face hub: the MTEB datasets (`mteb/stsbenchmark-sts`, ...), split `test`, at the
  revisions MTEB pins, so figures are comparable with the MTEB leaderboard. MTEB has no MEN:
  it is read from local files only.

MTEB and SimCSE report STS12-16 on all sub-corpora pooled into one test set; so does
this harness (per-subset figures are in the JSON output as well).
"""

from __future__ import annotations

import gzip
import json
import os
import string
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from conjure.errors import ConjureError

# The subsample seed of the authors' earlier STS code (meaning-as-trajectories), so `--limit N`
# draws the same pairs as theirs did from the same test set.
SUBSAMPLE_SEED = 139


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # the name on the command line
    title: str  # the name in tables, as the literature writes it
    hub_id: str | None  # MTEB's copy on the Hugging Face hub; None where MTEB has none (MEN)
    hub_revision: str | None  # the revision MTEB pins
    split: str = "test"  # "dev" for choosing settings; figures are reported on "test"
    senteval_dir: str | None = None  # SentEval folder of STS12-16
    senteval_subsets: tuple[str, ...] = ()
    men_file: str | None = None  # MEN's file of this split
    benchmark: str = "STS"  # `all` means the STS test sets, the paper's Table 1; MEN is named on its own


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("stsb", "STS-B", "mteb/stsbenchmark-sts", "b0fddb56ed78048fa8b90373c8a3cfc37b684831"),
        # The development split: for choosing estimator settings, never for reporting.
        DatasetSpec("stsb-dev", "STS-B dev", "mteb/stsbenchmark-sts", "b0fddb56ed78048fa8b90373c8a3cfc37b684831",
                    "validation"),
        DatasetSpec("sts12", "STS12", "mteb/sts12-sts", "a0d554a64d88156834ff5ae9920b964011b16384", "test", "STS12-en-test",
                    ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews")),
        DatasetSpec("sts13", "STS13", "mteb/sts13-sts", "7e90230a92c190f1bf69ae9002b8cea547a64cca", "test", "STS13-en-test",
                    ("FNWN", "headlines", "OnWN")),
        DatasetSpec("sts14", "STS14", "mteb/sts14-sts", "6031580fec1f6af667f0bd2da0a551cf4f0b2375", "test", "STS14-en-test",
                    ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news")),
        DatasetSpec("sts15", "STS15", "mteb/sts15-sts", "ae752c7c21bf194d8b67fd573edf7ae58183cbe3", "test", "STS15-en-test",
                    ("answers-forums", "answers-students", "belief", "headlines", "images")),
        DatasetSpec("sts16", "STS16", "mteb/sts16-sts", "4d8694f8f0e0100860b497b999b3dbed754a0513", "test", "STS16-en-test",
                    ("answer-answer", "headlines", "plagiarism", "postediting", "question-question")),
        DatasetSpec("sickr", "SICK-R", "mteb/sickr-sts", "20a6d6f312dd54037fe07a32d58e5e168867909d"),
        # Word relatedness over words that label images: the official dev split for choosing settings.
        DatasetSpec("men-dev", "MEN dev", None, None, "dev", men_file="MEN_dataset_lemma_form.dev", benchmark="MEN"),
        DatasetSpec("men", "MEN", None, None, "test", men_file="MEN_dataset_lemma_form.test", benchmark="MEN"),
    ]
}
MEN_HOME = "http://clic.cimec.unitn.it/~elia.bruni/MEN"  # where the MEN licence asks users to say the data lives
ALIASES = {"sts-b": "stsb", "stsbenchmark": "stsb", "sick-r": "sickr", "sick": "sickr", "men-test": "men"}


@dataclass
class STSData:
    name: str
    title: str
    pairs: list[tuple[str, str]]
    gold: list[float]  # human similarity (MEN: relatedness), higher = more similar; each dataset's own scale
    source: str  # the file or hub dataset it came from
    subsets: list[str] | None = None  # sub-corpus of each pair, where the source says
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)


def parse_dataset_names(text: str) -> list[str]:
    """'stsb,sts12' -> ['stsb', 'sts12']; 'all' -> every STS test set; unknown names are an error."""
    names = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name == "all":  # every STS test set, whose mean is the paper's; dev splits and MEN are named on their own
            names += [n for n, spec in DATASETS.items() if spec.split == "test" and spec.benchmark == "STS"]
            continue
        name = ALIASES.get(name, name)
        if name not in DATASETS:
            raise ConjureError(f"unknown dataset {raw.strip()!r}; known: {', '.join(DATASETS)} (or 'all')")
        names.append(name)
    if not names:
        raise ConjureError("no dataset named; use --datasets stsb,sts12,... or all")
    return list(dict.fromkeys(names))  # in order, without repeats


# --- file layouts ------------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ConjureError(f"file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def _score(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConjureError(f"{where}: similarity score {text!r} is not a number") from None


def _nonempty(data: STSData) -> STSData:
    if not data.pairs:
        raise ConjureError(f"{data.title}: no scored pairs in {data.source}")
    return data


def read_stsb_csv(path: Path, spec: DatasetSpec = DATASETS["stsb"]) -> STSData:
    """The original STS-B file: genre, file, year, id, score, sentence1, sentence2[, licence columns].

    Split on tabs only: the file is not quoted and sentences contain quote characters.
    """
    pairs, gold, subsets = [], [], []
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 7:
            raise ConjureError(f"{path}:{n}: expected at least 7 tab-separated columns "
                               f"(genre, file, year, id, score, sentence1, sentence2), found {len(cols)}")
        gold.append(_score(cols[4], f"{path}:{n}"))
        pairs.append((cols[5], cols[6]))
        subsets.append(cols[1])
    return _nonempty(STSData(spec.name, spec.title, pairs, gold, str(path), subsets))


def senteval_files(folder: Path, subset: str) -> tuple[Path, Path]:
    """The input and gold files of one subset: STS.input.X.txt / STS.gs.X.txt, or the 2016 release names."""
    for prefix in ("STS", "STS2016"):
        inputs, gs = folder / f"{prefix}.input.{subset}.txt", folder / f"{prefix}.gs.{subset}.txt"
        if inputs.is_file():
            if not gs.is_file():
                raise ConjureError(f"gold scores file not found: {gs} (next to {inputs.name})")
            return inputs, gs
    raise ConjureError(f"file not found: {folder / f'STS.input.{subset}.txt'}")


def read_senteval_sts(folder: Path, spec: DatasetSpec) -> STSData:
    """SentEval's STS12-16 folder: every subset, pooled. Blank gold lines are unscored pairs: skipped."""
    pairs, gold, subsets = [], [], []
    skipped = 0
    for subset in spec.senteval_subsets:
        inputs, gs = senteval_files(folder, subset)
        lines, scores = _read_lines(inputs), _read_lines(gs)
        if len(lines) != len(scores):
            raise ConjureError(f"{inputs} has {len(lines)} lines but {gs} has {len(scores)}; they must match line by line")
        for n, (line, score) in enumerate(zip(lines, scores), 1):
            if not score.strip():
                skipped += 1
                continue
            cols = line.split("\t")
            if len(cols) < 2:
                raise ConjureError(f"{inputs}:{n}: expected two tab-separated sentences")
            pairs.append((cols[0], cols[1]))
            gold.append(_score(score.strip(), f"{gs}:{n}"))
            subsets.append(subset)
    data = STSData(spec.name, spec.title, pairs, gold, str(folder), subsets)
    if skipped:
        data.notes.append(f"{skipped} pairs without a gold score skipped")
    return _nonempty(data)


def read_sick(path: Path, spec: DatasetSpec = DATASETS["sickr"]) -> STSData:
    """SICK with a header row naming sentence_A, sentence_B and relatedness_score (SICK.txt or SentEval's files)."""
    lines = [line for line in _read_lines(path) if line.strip()]
    if not lines:
        raise ConjureError(f"{spec.title}: no scored pairs in {path}")
    header = lines[0].split("\t")
    try:
        ia, ib, iscore = header.index("sentence_A"), header.index("sentence_B"), header.index("relatedness_score")
    except ValueError:
        raise ConjureError(f"{path}: the header must name sentence_A, sentence_B and relatedness_score") from None
    pairs, gold = [], []
    for n, line in enumerate(lines[1:], 2):
        cols = line.split("\t")
        if len(cols) <= max(ia, ib, iscore):
            raise ConjureError(f"{path}:{n}: expected {len(header)} tab-separated columns, found {len(cols)}")
        pairs.append((cols[ia], cols[ib]))
        gold.append(_score(cols[iscore], f"{path}:{n}"))
    return _nonempty(STSData(spec.name, spec.title, pairs, gold, str(path)))


# MEN's lemma-form files tag every word with its part of speech: noun, adjective, verb.
MEN_POS_SUFFIXES = ("-n", "-j", "-v")
MEN_HEADER = ["word1", "word2", "score"]


def strip_pos(word: str, where: str) -> tuple[str, str]:
    """'berry-n' -> ('berry', 'n'): the word as a prompt, and its part-of-speech tag."""
    if len(word) > 2 and word.endswith(MEN_POS_SUFFIXES):
        return word[:-2], word[-1]
    raise ConjureError(f"{where}: {word!r} lacks the part-of-speech suffix of MEN's lemma files "
                       f"({', '.join(MEN_POS_SUFFIXES)})")


def read_men(path: Path, spec: DatasetSpec = DATASETS["men"]) -> STSData:
    """A MEN lemma-form file: `berry-n seed-n 37.000000` a line, after an optional `word1 word2 score` header.

    The words are scored without their part-of-speech suffix; the tags of each pair, in
    the order n, j, v ('n-n', 'n-j', ...), become its subset, so the JSON report has a figure
    per kind of pair.
    """
    pairs, gold, subsets = [], [], []
    for n, line in enumerate(_read_lines(path), 1):
        cols = line.split()
        if not cols or (n == 1 and [c.lower() for c in cols] == MEN_HEADER):
            continue
        if len(cols) != 3:
            raise ConjureError(f"{path}:{n}: expected 3 space-separated columns (word1 word2 score), found {len(cols)}")
        (a, tag_a), (b, tag_b) = strip_pos(cols[0], f"{path}:{n}"), strip_pos(cols[1], f"{path}:{n}")
        pairs.append((a, b))
        gold.append(_score(cols[2], f"{path}:{n}"))
        subsets.append("-".join(sorted((tag_a, tag_b), key="njv".index)))
    data = STSData(spec.name, spec.title, pairs, gold, str(path), subsets)
    data.notes.append("single words, part-of-speech suffixes (-n, -j, -v) stripped; human relatedness on 0-50")
    return _nonempty(data)


def read_mteb_rows(rows, spec: DatasetSpec, source: str) -> STSData:
    """Rows with sentence1, sentence2 and score, as in the MTEB datasets."""
    pairs, gold = [], []
    for n, row in enumerate(rows, 1):
        try:
            pairs.append((row["sentence1"], row["sentence2"]))
            gold.append(float(row["score"]))
        except (KeyError, TypeError, ValueError):
            raise ConjureError(f"{source}: row {n} lacks sentence1, sentence2 or a numeric score") from None
    return _nonempty(STSData(spec.name, spec.title, pairs, gold, source))


def read_mteb_file(path: Path, spec: DatasetSpec, source: str | None = None) -> STSData:
    """An MTEB data file: JSON lines (optionally gzipped) or parquet (needs pyarrow)."""
    source = source or str(path)
    if path.name.endswith(".parquet"):
        try:
            import pandas as pd

            rows = pd.read_parquet(path).to_dict("records")
        except ImportError as err:
            raise ConjureError(f"reading {source} needs pyarrow: pip install pyarrow ({err})") from None
        return read_mteb_rows(rows, spec, source)
    rows = []
    for n, line in enumerate(_read_lines(path), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ConjureError(f"{path}:{n}: invalid JSON: {err}") from None
    return read_mteb_rows(rows, spec, source)


# --- finding a dataset ---------------------------------------------------------------------


def _first(found) -> Path | None:
    """The shallowest match of an rglob (ties by name), or None."""
    found = sorted(found, key=lambda p: (len(p.parts), str(p)))
    return found[0] if found else None


def find_local(spec: DatasetSpec, data_dir: Path) -> STSData | None:
    """The dataset from files under data_dir, or None if none of its layouts is there."""
    if spec.men_file:
        path = _first(data_dir.rglob(spec.men_file))
        return read_men(path, spec) if path else None
    mteb_dir = spec.hub_id.split("/")[1]  # e.g. sts12-sts
    for pattern in (f"{spec.split}.jsonl", f"{spec.split}.jsonl.gz"):
        path = _first(p for p in data_dir.rglob(pattern) if p.parent.name == mteb_dir)
        if path:
            return read_mteb_file(path, spec)
    if spec.name in ("stsb", "stsb-dev"):
        path = _first(data_dir.rglob(expected_files(spec)))
        return read_stsb_csv(path, spec) if path else None
    if spec.name == "sickr":
        path = _first(data_dir.rglob("SICK.txt")) or _first(data_dir.rglob("SICK_test_annotated.txt"))
        if not path:
            return None
        data = read_sick(path, spec)
        if path.name != "SICK.txt":
            data.notes.append("SentEval's SICK test split (4,927 pairs); MTEB's SICK-R uses all 9,927 pairs of SICK.txt")
        return data
    folder = data_dir if data_dir.name == spec.senteval_dir else _first(
        p for p in data_dir.rglob(spec.senteval_dir) if p.is_dir())
    return read_senteval_sts(folder, spec) if folder else None


def expected_files(spec: DatasetSpec) -> str:
    if spec.name == "stsb":
        return "sts-test.csv"
    if spec.name == "stsb-dev":
        return "sts-dev.csv"
    if spec.name == "sickr":
        return "SICK.txt or SICK_test_annotated.txt"
    if spec.men_file:
        return spec.men_file
    return f"{spec.senteval_dir}/STS.input.<subset>.txt with STS.gs.<subset>.txt"


def hub_file(files: list[str], split: str = "test") -> str | None:
    """A split among a hub dataset's files: test.jsonl[.gz] or a test parquet shard (or the named split's)."""
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl"):
        if name in files:
            return name
    parquet = sorted(f for f in files if f.endswith(".parquet") and Path(f).name.startswith(split))
    if len(parquet) == 1:
        return parquet[0]
    return None


def load_from_hub(spec: DatasetSpec) -> STSData:
    """MTEB's copy on the Hugging Face hub, at the revision MTEB pins (from the local hub cache if it is there)."""
    from huggingface_hub import HfApi, hf_hub_download

    def source(name: str) -> str:
        return f"hf://datasets/{spec.hub_id}@{spec.hub_revision[:8]}/{name}"

    for name in (f"{spec.split}.jsonl.gz", f"data/{spec.split}-00000-of-00001.parquet"):
        try:
            path = hf_hub_download(spec.hub_id, name, repo_type="dataset", revision=spec.hub_revision,
                                   local_files_only=True)
        except Exception:  # not in the local cache: ask the hub below
            continue
        return read_mteb_file(Path(path), spec, source=source(name))
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ConjureError(f"{spec.title}: no local copy found, and HF_HUB_OFFLINE is set so {spec.hub_id} "
                           "is not fetched from the hub; pass --data-dir with the files")
    try:
        files = HfApi().list_repo_files(spec.hub_id, repo_type="dataset", revision=spec.hub_revision)
        name = hub_file(files, spec.split)
        if name is None:
            raise ConjureError(f"{spec.hub_id}@{spec.hub_revision[:8]}: no test split file among {files}")
        path = hf_hub_download(spec.hub_id, name, repo_type="dataset", revision=spec.hub_revision)
    except ConjureError:
        raise
    except Exception as err:  # network, authentication and missing-repository errors alike
        raise ConjureError(f"{spec.title}: no local copy found, and {spec.hub_id} could not be fetched from the "
                           f"hub ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                           "pass --data-dir with the files") from None
    return read_mteb_file(Path(path), spec, source=source(name))


def default_data_dir() -> tuple[Path | None, bool]:
    """(folder, explicit): $CONJURE_STS_DATA (explicit), else ./data if present, else None (the hub)."""
    env = os.environ.get("CONJURE_STS_DATA")
    if env:
        return Path(env).expanduser(), True
    if Path("data").is_dir():
        return Path("data"), False
    return None, False


def load_dataset(name: str, data_dir: str | Path | None = None) -> STSData:
    """A dataset by name from --data-dir (an error if it is not there), else the default places, else the hub."""
    spec = DATASETS[parse_dataset_names(name)[0]]
    explicit = data_dir is not None
    folder = Path(data_dir).expanduser() if explicit else None
    if folder is None:
        folder, explicit = default_data_dir()
    if folder is not None:
        if explicit and not folder.is_dir():
            raise ConjureError(f"data directory not found: {folder}")
        data = find_local(spec, folder) if folder.is_dir() else None
        if data is not None:
            return data
        if explicit:
            mteb_file = f", or {spec.hub_id.split('/')[1]}/test.jsonl.gz" if spec.hub_id else ""
            raise ConjureError(f"{spec.title}: file not found under {folder} (looked for {expected_files(spec)}"
                               f"{mteb_file})")
    if spec.hub_id is None:
        where = f"under {folder}" if folder is not None else "with no --data-dir, $CONJURE_STS_DATA or ./data"
        raise ConjureError(f"{spec.title}: no local copy found (looked for {expected_files(spec)} {where}), and MTEB "
                           f"has none on the hub; get MEN from {MEN_HOME} and pass --data-dir with its folder")
    return load_from_hub(spec)


# --- preparing the pairs ---------------------------------------------------------------------


def subsample(data: STSData, limit: int | None, seed: int = SUBSAMPLE_SEED) -> STSData:
    """A fixed-seed random subset of `limit` pairs (in the dataset's order); all pairs if limit is None or larger."""
    if limit is None or limit >= len(data):
        return data
    if limit < 1:
        raise ConjureError(f"--limit must be at least 1, got {limit}")
    order = list(range(len(data)))
    np.random.default_rng(seed).shuffle(order)  # the same draw as the authors' earlier code
    keep = sorted(order[:limit])
    return replace(
        data,
        pairs=[data.pairs[i] for i in keep],
        gold=[data.gold[i] for i in keep],
        subsets=[data.subsets[i] for i in keep] if data.subsets else None,
        notes=data.notes + [f"random subsample of {limit} of {len(data)} pairs (seed {seed})"],
    )


def with_full_stop(text: str) -> str:
    """Append '.' unless the sentence already ends in punctuation (the rule of the authors' earlier STS code)."""
    stripped = text.rstrip()
    return text if stripped and stripped[-1] in string.punctuation else stripped + "."


def check_template(template: str | None) -> str | None:
    """A prompt template: text with one "{}" where each phrase goes, e.g. "an emoji of a {}"; None for none."""
    if template is None:
        return None
    rest = template.replace("{}", "", 1) if isinstance(template, str) else "{"
    if "{" in rest or "}" in rest or rest == template:
        raise ConjureError(f'the template must hold "{{}}" exactly once, where each phrase goes (and no other '
                           f'braces), e.g. "an emoji of a {{}}"; got {template!r}')
    return template


def prepare_texts(data: STSData, *, add_full_stop: bool = False, template: str | None = None) -> STSData:
    """The texts as every method sees them: a full stop appended (`add_full_stop`), then each put in `template`."""
    def prepared(text: str) -> str:
        text = with_full_stop(text) if add_full_stop else text
        return template.replace("{}", text) if template else text

    if not add_full_stop and not template:
        return data
    return replace(data, pairs=[(prepared(a), prepared(b)) for a, b in data.pairs])
