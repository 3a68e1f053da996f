"""The paper's ablation, from one STS run: which weighting, direction and steps carry the signal.

For every pair the cache keeps the unweighted per-step gaps along both trajectories, so each
cell below is a re-weighting of the same run, with no model call: Spearman x100 of -score
against the human judgements, where the score is KL(A||B), KL(B||A) or the Jeffreys divergence
under a weighting, summed over all steps, the early (noisy) half, the late half, or one step alone.
The report also gives, for each weighting, the share of the score that its largest step carries
for the median pair (the readability bar: a score that is one step is not a process).
"""

from __future__ import annotations

import numpy as np

from conjure.jeffreys import WEIGHTINGS, reweight
from conjure.sts.report import correlations

DIRECTIONS = {"KL(A‖B)": "kl_ab", "KL(B‖A)": "kl_ba", "Jeffreys": "jeffreys"}


def step_subsets(steps: int) -> dict[str, list[int]]:
    half = steps // 2
    subsets = {"all": list(range(steps)), "early half": list(range(half)), "late half": list(range(half, steps))}
    subsets.update({f"step {i + 1}": [i] for i in range(steps)})
    return subsets


def ablation(gold: list[float], per_steps: list[dict], eta: float, weightings=WEIGHTINGS) -> dict:
    """{weighting: {direction: {subset: spearman}}} and {weighting: median largest-step share}."""
    steps = len(per_steps[0]["abar"])
    subsets = step_subsets(steps)
    table, share = {}, {}
    for weighting in weightings:
        table[weighting] = {d: {} for d in DIRECTIONS}
        for name, chosen in subsets.items():
            values = [reweight(p, weighting, eta, chosen) for p in per_steps]
            for direction, field in DIRECTIONS.items():
                table[weighting][direction][name] = correlations(gold, [-getattr(v, field) for v in values])["spearman"]
        full = [reweight(p, weighting, eta) for p in per_steps]
        shares = [max(np.add(v.kl_ab_per_step, v.kl_ba_per_step) / 2) / v.jeffreys for v in full if v.jeffreys > 0]
        share[weighting] = float(np.median(shares)) if shares else None
    return {"spearman": table, "largest_step_share": share, "steps": steps, "pairs": len(per_steps)}


def ablation_markdown(title: str, result: dict) -> str:
    subsets = list(step_subsets(result["steps"]))
    lines = [f"### Ablation on {title} ({result['pairs']} pairs, Spearman ×100 of −score)", "",
             "| weighting | score | " + " | ".join(subsets) + " |", "|---|---|" + "---:|" * len(subsets)]
    for weighting, by_direction in result["spearman"].items():
        for direction, row in by_direction.items():
            cells = ["" if row[s] is None else f"{row[s]:.2f}" for s in subsets]
            lines.append(f"| {weighting} | {direction} | " + " | ".join(cells) + " |")
    lines += ["", "Share of the Jeffreys divergence carried by its largest step, median pair: " + ", ".join(
        f"{w} {s:.0%}" for w, s in result["largest_step_share"].items() if s is not None), ""]
    return "\n".join(lines)
