"""How close each weighting comes to the continuous-time Jeffreys divergence, on an analytic model.

    python bench/closed_form.py            # the table in docs/method.md#the-closed-form-check

The model (tests/gaussian_model.py) has data x0 ~ N(m_y, I), so its exact epsilon-prediction is
known and the continuous divergence between the reverse processes over [t_0, t_{T-1}] is
1/2 ||m_a - m_b||^2 (abar(t_{T-1}) - abar(t_0)). The table gives each weighting's relative error
against it, for the DDPM linear schedule (Stable Diffusion's) and the cosine one (the embedded model's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import conjure  # noqa: E402
from conjure.jeffreys import WEIGHTINGS  # noqa: E402
from gaussian_model import GaussianModel, random_means  # noqa: E402

STEPS = (5, 10, 20, 50, 200, 1000)


def relative_errors(schedule: str, weighting: str, steps=STEPS, eta: float = 1.0) -> list[float]:
    model = GaussianModel(random_means(["cat", "dog"]), beta_schedule=schedule)
    errors = []
    for T in steps:
        r = conjure.score(model, "cat", "dog", steps=T, weighting=weighting, eta=eta)
        ts = r.per_step["timestep"]
        errors.append(r.jeffreys / model.exact_jeffreys("cat", "dog", ts[0], ts[-1]) - 1)
    return errors


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eta", type=float, default=1.0)
    args = p.parse_args(argv)
    print("| schedule | weighting | " + " | ".join(f"T = {T}" for T in STEPS) + " |")
    print("|---|---|" + "---:|" * len(STEPS))
    for schedule in ("linear", "squaredcos_cap_v2"):
        for weighting in WEIGHTINGS:
            errors = relative_errors(schedule, weighting, eta=args.eta)
            print(f"| {schedule} | {weighting} | " + " | ".join(f"{e:+.2%}" for e in errors) + " |")


if __name__ == "__main__":
    main()
