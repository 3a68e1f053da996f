"""The estimator's settings and the limits of one call: the values every entry point (API, CLI, app) checks once.

    Settings(steps=10, samples=1, guidance=1.0, seed=0, size=None, eta=1.0, weighting="girsanov", cosine=False)
    LIMITS       what one call of the library or the CLI may ask for (phrases, candidates, morph stages, words)

A `Settings` is checked when it is made (types and ranges; numpy numbers become Python ones), so one that exists
is valid; what depends on the model (steps against its schedule, sizes it can sample, memory) is
`conjure.validation.check_run`, run once per call at the entry point.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

from conjure.errors import ConjureError

WEIGHTINGS = ("girsanov", "exact", "girsanov-left", "uniform")
# The seeds torch.Generator.manual_seed takes as distinct (a negative seed s is the same generator as s + 2**64).
SEED_MIN, SEED_MAX = 0, 2**64 - 1


def describe(value, limit: int = 60) -> str:
    """A short, printable description of a value for a message: its repr, and its type unless a string."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text if isinstance(value, str) else f"{text} ({type(value).__name__})"


def is_whole(value) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Settings:
    steps: int = 10  # sampler steps, as in the paper
    samples: int = 1  # k: Monte-Carlo noise samples per pair
    guidance: float = 1.0  # classifier-free guidance scale steering both trajectories; 1 = none
    seed: int = 0  # from 0 to 2**64 - 1
    size: int | None = None  # image side in pixels; None = the model's default
    eta: float = 1.0  # DDIM eta of the stochastic sampler; 1 = DDPM ancestral sampling
    weighting: str = "girsanov"  # how the per-step gaps are weighted: see WEIGHTINGS and conjure.jeffreys
    # also read every state under the null prompt, for the cosine of the two texts' pulls away from it
    # (conjure.jeffreys; free under guidance, else 6 evaluations per pair and step instead of 4)
    cosine: bool = False

    def __post_init__(self):
        check_values(self)
        plain = dict(steps=int(self.steps), samples=int(self.samples), guidance=float(self.guidance),
                     seed=int(self.seed), size=int(self.size) or None if self.size is not None else None,
                     eta=float(self.eta))
        for name, value in plain.items():  # numpy numbers become Python numbers, so results serialise as JSON
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, values: dict) -> "Settings":
        """Settings from keyword arguments; an unknown name is a ConjureError that lists the settings."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConjureError(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                               f"the settings are {', '.join(names)}")
        return cls(**values)


def check_values(s: Settings) -> None:
    """Types and ranges of the settings, which need no model."""
    if not is_whole(s.steps) or s.steps < 1:
        raise ConjureError(f"steps must be a positive integer, got {describe(s.steps)}")
    if not is_whole(s.samples) or s.samples < 1:
        raise ConjureError(f"samples (k) must be a positive integer, got {describe(s.samples)}")
    if not is_number(s.guidance) or s.guidance <= 0:
        raise ConjureError(f"guidance must be a positive number (1 = no classifier-free guidance), "
                           f"got {describe(s.guidance)}")
    if not is_number(s.eta) or not 0 <= s.eta <= 1:
        raise ConjureError(f"eta must be in (0, 1], got {describe(s.eta)}")
    if s.eta == 0:
        raise ConjureError(
            "eta=0 is deterministic DDIM: each reverse process is a point mass, so the path KL between two "
            "prompts is infinite. Use a stochastic sampler, eta in (0, 1] (1 = DDPM ancestral sampling)."
        )
    if not is_whole(s.seed) or not SEED_MIN <= s.seed <= SEED_MAX:
        raise ConjureError(f"seed must be a whole number from 0 to 2**64 - 1 = {SEED_MAX}, got {describe(s.seed)}")
    if s.size is not None and (not is_whole(s.size) or s.size < 0):
        raise ConjureError(f"size must be a positive integer (the image side in pixels), or None or 0 for the "
                           f"model's default, got {describe(s.size)}")
    if not isinstance(s.weighting, str) or s.weighting not in WEIGHTINGS:
        raise ConjureError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {describe(s.weighting)}")
    if not isinstance(s.cosine, bool):
        raise ConjureError(f"cosine must be True or False, got {describe(s.cosine)}")


@dataclass(frozen=True)
class Limits:
    """What one call may ask for, checked before any model work by the same functions on every surface.

    The library and the CLI use `LIMITS`; `None` means no limit but the model's own (its training timesteps, the
    sizes it can sample) and the memory estimate. The app reads a tighter set from CONJURE_MAX_* at each request
    (`conjure.app_handlers.app_limits`), never looser than these. A caller who means to go further passes a
    larger `Limits` (the CLI's --max-phrases).
    """

    max_phrases: int = 100  # phrases in one matrix: N(N-1)/2 pairs are scored (100 phrases: 4,950 pairs)
    max_candidates: int = 1000  # candidates ranked against one query
    max_stages: int = 64  # morph stages (frames of the morph)
    max_words: int | None = 16  # words in one prompt of an explanation (each left out is one more trajectory)
    max_steps: int | None = None
    max_samples: int | None = None
    max_size: int | None = None  # image side in pixels
    max_prompt_chars: int | None = None  # characters in one prompt (the text encoder truncates longer ones anyway)


LIMITS = Limits()
