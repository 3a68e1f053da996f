"""Is one setting's Spearman really higher than another's? A paired bootstrap over STS runs.

    python -m conjure.sts.compare results/dev-bf16-T10.json results/dev-bf16-T5.json [...] --data-dir ../shared/data

Each argument is the `--json` report of a `python -m conjure sts` run. The first is the reference; for
every later report, every dataset both share and every method in it, this prints the difference in
Spearman ×100 with a 95% confidence interval from a paired bootstrap (the same resampled pairs for both
settings, scipy.stats.bootstrap, BCa). The per-pair scores come from the score cache each report names,
so nothing is run again. On a few hundred pairs, differences of a few points can be noise: the interval
says which are not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from conjure.errors import ConjureError
from conjure.sts.data import STSData, load_dataset, prepare_texts, subsample
from conjure.sts.methods import reweighted
from conjure.sts.store import PairScore, ScoreStore


def read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConjureError(f"cannot read {path}: {err}") from err
    if not isinstance(report, dict) or not {"settings", "methods", "datasets"} <= set(report):
        raise ConjureError(f"{path} is not a report of `python -m conjure sts --json`")
    return report


def run_scores(report: dict, dataset: str, method: str, data_dir: str | None) -> tuple[STSData, list[PairScore]]:
    """The items this report's run scored (the dataset's own texts, with their human scores) and the method's
    scores as the run reported them, in dataset order."""
    settings = report["settings"]
    items = subsample(load_dataset(dataset, data_dir), settings.get("limit"))
    data = prepare_texts(items, add_full_stop=bool(settings.get("add_full_stop")), template=settings.get("template"))
    if not Path(settings["cache"]).is_file():  # a relative path is relative to where the run was started
        raise ConjureError(f"the score cache {settings['cache']} that the report names is not here: "
                           "run this from the folder the STS run was started in")
    store = ScoreStore(settings["cache"])
    try:
        stored = store.get(report["methods"][method]["key"])
    finally:
        store.close()
    missing = [p for p in data.pairs if p not in stored]
    if missing:
        raise ConjureError(f"{len(missing)} of the {len(data)} pairs of {dataset} are not in {settings['cache']} for "
                           f"{method}: run the report's command again (it resumes) or point at the right cache")
    rows = {p: stored[p] for p in data.pairs}
    if method in ("conjure", "conjure-cosine"):  # a shared cache row holds the score of the run that made it
        estimator = settings["estimator"]
        rows = reweighted(rows, estimator["weighting"], estimator["eta"], by_cosine=method == "conjure-cosine")
    return items, [rows[p] for p in data.pairs]


def spearman_difference(a, b, gold, axis=-1):
    """Spearman(b, gold) - Spearman(a, gold), x100; over the last axis of 2-D resamples (scipy.stats.bootstrap's
    vectorised call, axis=-1) or of one 1-D sample."""
    from scipy.stats import spearmanr

    def rho(x):
        return np.array([spearmanr(xi, gi).statistic for xi, gi in zip(np.atleast_2d(x), np.atleast_2d(gold))])

    out = 100 * (rho(b) - rho(a))
    return out if np.ndim(a) > 1 else out[0]


def compare(reference: dict, other: dict, data_dir: str | None, resamples: int, seed: int) -> list[dict]:
    from scipy.stats import bootstrap

    rows = []
    for dataset in sorted(set(reference["datasets"]) & set(other["datasets"])):
        for method in sorted(set(reference["methods"]) & set(other["methods"])):
            data, rows_a = run_scores(reference, dataset, method, data_dir)
            data_b, rows_b = run_scores(other, dataset, method, data_dir)
            if data.pairs != data_b.pairs:
                raise ConjureError(f"{dataset}: the two runs scored different pairs (another --limit)")
            measures = {method: lambda row: row.score}
            if method == "conjure-cosine":  # the cosine's run keeps each pair's D_J: compare that too
                measures["conjure-cosine as −D_J"] = lambda row: -row.details["jeffreys"]
            gold = np.array(data.gold)
            for name, value in measures.items():
                a, b = np.array([value(r) for r in rows_a]), np.array([value(r) for r in rows_b])
                ci = bootstrap((a, b, gold), spearman_difference, paired=True, vectorized=True,
                               n_resamples=resamples, batch=200, rng=np.random.default_rng(seed)).confidence_interval
                rows.append({"dataset": dataset, "method": name, "pairs": len(gold),
                             "difference": float(spearman_difference(a, b, gold)), "low": ci.low, "high": ci.high})
    return rows


def setting_label(report: dict) -> str:
    e = report["settings"]["estimator"]
    dtype = report.get("model", {}).get("dtype", "").replace("torch.", "")
    return f"T={e['steps']} k={e['samples']} g={e['guidance']:g} {e['weighting']} {dtype}".strip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m conjure.sts.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", type=Path, help="`python -m conjure sts --json` reports; the first is the reference")
    p.add_argument("--data-dir", default=None, help="where the datasets are, as for `python -m conjure sts`")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if len(args.reports) < 2:
        p.error("give a reference report and at least one more")
    try:
        reports = [read_report(path) for path in args.reports]
        print(f"reference: {args.reports[0]} ({setting_label(reports[0])}); Spearman x100 difference, "
              f"paired bootstrap 95% CI (BCa, {args.resamples} resamples)\n")
        print("| report | setting | dataset | method | pairs | difference | 95% CI |\n|---|---|---|---|---:|---:|---|")
        for path, report in zip(args.reports[1:], reports[1:]):
            for r in compare(reports[0], report, args.data_dir, args.resamples, args.seed):
                print(f"| {path.name} | {setting_label(report)} | {r['dataset']} | {r['method']} | {r['pairs']} | "
                      f"{r['difference']:+.2f} | [{r['low']:+.2f}, {r['high']:+.2f}] |")
    except ConjureError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
