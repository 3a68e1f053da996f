"""A score on a human scale: where a divergence falls among random pairs of everyday phrases.

    python -m conjure calibrate --model emoji          # once per model and settings (a few minutes on a CPU)
    r = conjure.score(model, "snow leopard", "bengal tiger", cosine=True)
    r.percentile          # 56.7: "closer than 56.7% of random pairs of everyday phrases", by the divergence
    r.cosine_percentile   # 97.3: the same by the cosine of the pulls (the embedded model, bfloat16, seed 0)

Nats of a path divergence mean little to a person, and they differ between models (state size,
schedule). A calibration scores a fixed random draw of pairs from EVERYDAY_PHRASES under the
model and settings, and keeps each pair's per-step gaps, so the reference distribution is known
for every weighting. A new divergence d is reported as the percentage of reference pairs whose
divergence is larger than d; a calibration also keeps each pair's pulls, so a cosine c is reported as
the percentage of reference pairs whose cosine is smaller than c.

A calibration belongs to one model's loaded weights and to the settings that change the expected
divergence (steps, guidance, eta, image size); the number of samples k and the seed only change
its noise, so they are not part of the key. Calibrations of the embedded model ship in its folder
(`calibration.json`); others are written to ~/.cache/conjure/calibration/.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from conjure import validation
from conjure.errors import ConjureError
from conjure.jeffreys import reweight, score_batches
from conjure.models.weights import weight_modules, weights_digest
from conjure.settings import Settings

# Everyday concepts a person would type: animals, food, objects, places, weather, people, feelings.
EVERYDAY_PHRASES = [
    "a dog", "a cat", "a horse", "a cow", "a pig", "a chicken", "a duck", "an owl", "a penguin", "a parrot",
    "a fish", "a shark", "a whale", "a dolphin", "an octopus", "a crab", "a snail", "a butterfly", "a bee", "a spider",
    "a snake", "a turtle", "a frog", "a lizard", "a crocodile", "a lion", "a tiger", "a leopard", "an elephant",
    "a giraffe", "a zebra", "a monkey", "a gorilla", "a bear", "a panda", "a koala", "a rabbit", "a mouse", "a fox",
    "a wolf", "a deer", "a camel", "a kangaroo", "a bat", "a unicorn", "a dragon",
    "an apple", "a banana", "a pear", "a lemon", "an orange", "a watermelon", "grapes", "a strawberry", "cherries",
    "a pineapple", "a peach", "a coconut", "an avocado", "a carrot", "a tomato", "a potato", "corn", "broccoli",
    "a mushroom", "bread", "cheese", "an egg", "a pizza", "a hamburger", "french fries", "a hot dog", "a taco",
    "spaghetti", "sushi", "rice", "a cake", "a cookie", "a doughnut", "ice cream", "chocolate", "candy",
    "a cup of coffee", "a cup of tea", "a glass of milk", "a glass of wine", "a bottle of beer",
    "a car", "a bus", "a truck", "a bicycle", "a motorcycle", "a train", "an airplane", "a helicopter", "a rocket",
    "a ship", "a sailboat", "a tractor", "an ambulance", "a police car", "a fire engine", "a taxi",
    "a house", "a castle", "a church", "a school", "a hospital", "a factory", "a tent", "a bridge", "a stadium",
    "a mountain", "a volcano", "an island", "a desert", "a beach", "a forest", "a city at night",
    "the sun", "the moon", "a star", "a cloud", "rain", "snow", "a rainbow", "lightning", "a tornado", "fire",
    "a tree", "a palm tree", "a cactus", "a flower", "a rose", "a tulip", "a sunflower", "a leaf", "a seedling",
    "a clock", "a watch", "a phone", "a laptop", "a computer", "a television", "a camera", "a light bulb",
    "a key", "a lock", "a hammer", "a wrench", "scissors", "a pencil", "a pen", "a book", "a newspaper",
    "an envelope", "a gift", "a balloon", "a candle", "an umbrella", "a bag", "a hat", "a crown", "a ring",
    "glasses", "a shoe", "a boot", "a dress", "a t-shirt", "jeans", "a sock", "a glove",
    "a guitar", "a piano", "a violin", "a drum", "a trumpet", "a microphone", "headphones",
    "a soccer ball", "a basketball", "a tennis racket", "a trophy", "a medal", "a chess piece", "dice",
    "a baby", "a child", "an old man", "an old woman", "a doctor", "a police officer", "a firefighter", "a cook",
    "a farmer", "a teacher", "an astronaut", "a king", "a princess", "a ghost", "a robot", "an alien", "a skull",
    "a smiling face", "a crying face", "an angry face", "a sleeping face", "a laughing face", "a red heart",
    "a broken heart", "a thumbs up", "a waving hand", "a kiss",
]

CALIBRATION_FILE = "calibration.json"
FORMAT = 1


def reference_pairs(count: int, seed: int = 0, phrases: list[str] = EVERYDAY_PHRASES) -> list[tuple[str, str]]:
    """A fixed random draw of `count` distinct unordered pairs of different phrases."""
    rng = random.Random(seed)
    pairs: set[tuple[str, str]] = set()
    limit = len(phrases) * (len(phrases) - 1) // 2
    while len(pairs) < min(count, limit):
        a, b = rng.sample(phrases, 2)
        pairs.add((a, b) if a < b else (b, a))
    return sorted(pairs)


def model_digest(model) -> str | None:
    """The hash of the loaded weights (computed once per model object)."""
    if not hasattr(model, "_conjure_weights_digest"):
        digest = weights_digest(weight_modules(model))
        try:
            model._conjure_weights_digest = digest
        except AttributeError:  # an object that takes no new attributes: hash again next time
            return digest
    return model._conjure_weights_digest


def calibration_key(model, settings: Settings) -> dict:
    """What the reference distribution depends on: the weights and the settings that move the expected value."""
    return {"weights": model_digest(model), "steps": settings.steps, "guidance": float(settings.guidance),
            "eta": float(settings.eta), "size": settings.size or model.default_size}


@dataclass
class Calibration:
    key: dict  # calibration_key of the run
    model: str
    settings: dict  # the settings it was run with (samples and seed included, for the record)
    pairs: list[tuple[str, str]]
    # per pair: timestep, abar, gap_a, gap_b (weighting-free), and pull_a, pull_b for the cosines (absent in
    # calibrations made before conjure computed cosines)
    per_step: list[dict]

    def reference(self, weighting: str) -> np.ndarray:
        """The sorted reference divergences under a weighting."""
        return np.sort([reweight(p, weighting, self.key["eta"]).jeffreys for p in self.per_step])

    def percentile(self, jeffreys: float, weighting: str) -> float:
        """% of reference pairs whose divergence is larger: 'closer than X% of random everyday pairs'."""
        return share_larger(self.reference(weighting), jeffreys)

    def reference_cosines(self, weighting: str) -> np.ndarray | None:
        """The sorted reference cosines under a weighting; None for a calibration made without the pulls."""
        if not all("pull_a" in p for p in self.per_step):
            return None
        cosines = [reweight(p, weighting, self.key["eta"]).cosine for p in self.per_step]
        return np.sort([c for c in cosines if c is not None])

    def cosine_percentile(self, cosine: float, weighting: str) -> float | None:
        """% of reference pairs whose cosine is smaller: 'closer than X% of random everyday pairs'."""
        return share_smaller(self.reference_cosines(weighting), cosine)


def share_larger(reference: np.ndarray, jeffreys: float) -> float:
    """% of a sorted reference of divergences that is larger than `jeffreys`."""
    return float(100.0 * (len(reference) - np.searchsorted(reference, jeffreys, side="right")) / len(reference))


def share_smaller(reference: np.ndarray | None, cosine: float) -> float | None:
    """% of a sorted reference of cosines that is smaller than `cosine`; None without a reference."""
    if reference is None or not len(reference):
        return None
    return float(100.0 * np.searchsorted(reference, cosine, side="left") / len(reference))


def calibrate(model, pairs: int = 300, batch_size: int | None = None, progress: bool = True, **settings) -> Calibration:
    """Score `pairs` random pairs of everyday phrases; the reference distribution for `percentile`."""
    from conjure.models import load_model

    model = load_model(model)
    s = replace(validation.make_settings(settings), cosine=True)  # the pulls: the cosines' reference
    drawn = reference_pairs(pairs)
    run = validation.check_run(model, s, pairs=len(drawn), batch_size=batch_size)
    results = score_batches(model, drawn, run, progress)
    keep = ("timestep", "abar", "gap_a", "gap_b", "pull_a", "pull_b")
    return Calibration(calibration_key(model, s), model.name, asdict(s), drawn,
                       [{k: r.per_step[k] for k in keep} for r in results])


# --- where calibrations live ------------------------------------------------------------


def cache_folder() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "conjure" / "calibration"


def default_path(model) -> Path:
    """The model folder's calibration.json for a conjure pixel model; else a file in the user's cache."""
    folder = getattr(model, "folder", None)
    if folder is not None:
        return Path(folder) / CALIBRATION_FILE
    digest = model_digest(model) or hashlib.sha256(model.name.encode()).hexdigest()
    return cache_folder() / f"{digest}.json"


def read_file(path: Path) -> list[Calibration]:
    """The calibrations in a file (parsed once per version of the file: `score` looks them up on every call)."""
    try:
        stat = path.stat()
    except OSError as err:
        raise ConjureError(f"{path}: cannot read the calibration file ({err.strerror})") from None
    return list(_read_file(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=16)
def _read_file(path: str, mtime_ns: int, size: int) -> tuple[Calibration, ...]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        return tuple(Calibration(e["key"], e["model"], e["settings"], [tuple(p) for p in e["pairs"]], e["per_step"])
                     for e in data["calibrations"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConjureError(f"{path}: not a readable calibration file ({err}); delete it and run "
                           "`python -m conjure calibrate` again") from None


def save(calibration: Calibration, path: Path) -> Path:
    """Add (or replace) a calibration in a file that may hold several (one per key)."""
    entries = [c for c in (read_file(path) if path.exists() else []) if c.key != calibration.key]
    entries.append(calibration)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "calibrations": [asdict(c) for c in entries]}) + "\n")
    os.replace(tmp, path)
    return path


def add_percentiles(model, results: list, settings: Settings) -> None:
    """Set each result's percentile from the model's calibration for these settings, where one exists."""
    set_percentiles(results, find(model, settings), settings.weighting)


def set_percentiles(results: list, found: Calibration | None, weighting: str) -> None:
    """Each result's percentile (and its cosine's, where it has one) against a calibration; None without one.
    The references are reweighted once per call, not once per result (a matrix sets thousands)."""
    if found is None:
        for r in results:
            r.percentile = None
        return
    divergences = found.reference(weighting)
    cosines = found.reference_cosines(weighting) if any(r.cosine is not None for r in results) else None
    for r in results:
        r.percentile = share_larger(divergences, r.jeffreys)
        if r.cosine is not None:
            r.cosine_percentile = share_smaller(cosines, r.cosine)


def find(model, settings: Settings, path: str | Path | None = None) -> Calibration | None:
    """The calibration for this model and these settings, or None if none was made.

    With an explicit `path`, a file that holds no calibration for this model and these settings is
    an error (it would silently mix models); the default places simply may not have one yet.
    """
    explicit = path is not None
    if model_digest(model) is None and not explicit:
        return None  # a model with no torch weights to hash (an analytic test model) is never calibrated
    key = calibration_key(model, settings)
    places = [Path(path)] if explicit else [default_path(model)]
    if not explicit and getattr(model, "folder", None) is not None:
        places.append(cache_folder() / f"{model_digest(model)}.json")  # calibrated read-only folders
    for place in places:
        if not place.exists():
            if explicit:
                raise ConjureError(f"calibration file not found: {place}")
            continue
        entries = read_file(place)
        for c in entries:
            if c.key == key:
                return c
        if explicit:
            have = "; ".join(f"{c.model} {c.key}" for c in entries) or "nothing"
            raise ConjureError(f"{place} holds no calibration for {model.name} with {key} (it has: {have}); "
                               f"run `python -m conjure calibrate` with these settings")
    return None
