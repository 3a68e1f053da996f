"""Correlations with human judgements, and the Markdown table of a run.

Figures are Spearman's rank correlation x100 (the literature's convention; MTEB's
main STS score) between a method's scores and the human scores, computed by
scipy.stats.spearmanr. Pearson x100 is reported as well; unlike Spearman it
depends on the scale of the score (for conjure the score is -D_J itself).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from conjure.jeffreys import computed_in
from conjure.sts.data import STSData
from conjure.sts.store import PairScore


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def correlations(gold: list[float], scores: list[float]) -> dict:
    """{'spearman': rho x100, 'pearson': r x100}; None where undefined (fewer than 2 pairs, constant scores)."""
    if len(gold) != len(scores):
        raise ValueError(f"{len(gold)} gold scores but {len(scores)} method scores")
    if len(gold) < 2:
        return {"spearman": None, "pearson": None}
    from scipy.stats import pearsonr, spearmanr  # here: ~0.5 s to import, and every CLI command imports this module

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns nan, reported as None
        rho = spearmanr(gold, scores).statistic
        r = pearsonr(np.asarray(gold, float), np.asarray(scores, float)).statistic
    return {"spearman": _finite(100 * rho), "pearson": _finite(100 * r)}


def dataset_result(data: STSData, scores: dict[tuple[str, str], PairScore]) -> dict:
    """One method on one dataset: correlations, truncation count, and per-subset correlations."""
    per_pair = [scores[p] for p in data.pairs]
    values = [s.score for s in per_pair]
    result = correlations(data.gold, values)
    result["truncated_prompts"] = sum(int(s.truncated[0]) + int(s.truncated[1]) for s in per_pair)
    result["seconds"] = sum(s.seconds for s in per_pair)  # compute time, whenever it was spent
    if per_pair and all("cosine" in s.details and "jeffreys" in s.details for s in per_pair):
        # the cosine's run sampled the same trajectories as -D_J's and keeps each pair's D_J: both from one run
        result["jeffreys"] = correlations(data.gold, [-s.details["jeffreys"] for s in per_pair])
    if data.subsets and len(set(data.subsets)) > 1:
        result["subsets"] = {}
        for subset in dict.fromkeys(data.subsets):
            rows = [i for i, s in enumerate(data.subsets) if s == subset]
            sub = correlations([data.gold[i] for i in rows], [values[i] for i in rows])
            result["subsets"][subset] = {**sub, "pairs": len(rows)}
    return result


def mean_over_datasets(datasets: dict, method: str) -> dict:
    """Unweighted mean of the per-dataset figures (as papers average STS12-16, STS-B, SICK-R)."""
    out = {}
    for metric in ("spearman", "pearson"):
        values = [d["methods"][method][metric] for d in datasets.values()]
        out[metric] = None if any(v is None for v in values) else sum(values) / len(values)
    return out


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown(report: dict) -> str:
    """Dataset x method tables (Spearman, then Pearson) of a run's JSON report, with its settings."""
    methods = list(report["methods"])
    datasets = report["datasets"]
    head = "| dataset | pairs | " + " | ".join(methods) + " |"
    rule = "|---|---:|" + "---:|" * len(methods)
    out = []
    for metric, title in (("spearman", "Spearman ρ × 100"), ("pearson", "Pearson r × 100")):
        out += [f"**{title}** (human similarity vs. method score)", "", head, rule]
        for d in datasets.values():
            out.append(f"| {d['title']} | {d['pairs']} | "
                       + " | ".join(_cell(d["methods"][m][metric]) for m in methods) + " |")
        if len(datasets) > 1:
            out.append("| **mean** | | " + " | ".join(_cell(report["mean"][m][metric]) for m in methods) + " |")
        out.append("")
    same_run = [(d["title"], d["methods"][m]["jeffreys"]) for d in datasets.values() for m in methods
                if "jeffreys" in d["methods"][m]]
    if same_run:
        out += ["**The cosine's run read as −D_J** (Spearman ρ × 100; each cached cosine keeps its divergence): "
                + ", ".join(f"{title} {_cell(r['spearman'])}" for title, r in same_run) + ".", ""]
    out += ["**Prompts truncated by the text encoder** (of 2 × pairs)", "", "| dataset | " + " | ".join(methods) + " |",
            "|---|" + "---:|" * len(methods)]
    for d in datasets.values():
        out.append(f"| {d['title']} | " + " | ".join(str(d["methods"][m]["truncated_prompts"]) for m in methods) + " |")
    out.append("")
    out.append("Methods: " + "; ".join(f"{m}: {info['description']}" for m, info in report["methods"].items()) + ".")
    if report.get("model"):
        m = report["model"]
        out.append(f"Model: {m['name']} ({computed_in(m['dtype'], m.get('compiled', False))}) on {m['device']}.")
    if {"conjure", "conjure-cosine"} & set(report["methods"]):
        s = report["settings"]["estimator"]
        out.append(f"Estimator: steps={s['steps']}, samples={s['samples']}, guidance={s['guidance']}, seed={s['seed']}, "
                   f"size={s['size']}, eta={s['eta']}, weighting={s['weighting']}, "
                   f"batch size {report['settings']['batch_size']}.")
    data = report["settings"]
    out.append(f"Data: {'; '.join(d['title'] + ' from ' + d['source'] for d in datasets.values())}. "
               f"Full stop appended: {'yes' if data['add_full_stop'] else 'no'}. "
               f"Template: {repr(data['template']) if data.get('template') else 'none'}. "
               f"Limit: {data['limit'] if data['limit'] else 'none (all pairs)'}.")
    for d in datasets.values():
        for note in d.get("notes", []):
            out.append(f"Note ({d['title']}): {note}.")
    hw = report["hardware"]
    out.append(f"Wall time {report['wall_seconds']:.1f} s on {hw['device_name']} "
               f"({hw['processes']} process{'es' if hw['processes'] > 1 else ''}); "
               + ", ".join(f"{m}: {info['computed']} pairs computed, {info['cached']} cached"
                           for m, info in report["methods"].items()) + ".")
    return "\n".join(out) + "\n"
