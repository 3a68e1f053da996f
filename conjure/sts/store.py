"""The on-disk score cache that makes long runs resumable: one SQLite file.

A score is stored under (method key, sentence 1, sentence 2). The method key is a
hash of everything the score depends on (method, model weights, estimator
settings), so a finished pair is never recomputed and a changed model or setting
never reads stale scores. Each batch is committed in one transaction: a killed
run loses at most the batch in flight, never a finished one. Several processes
(`accelerate launch`) may write the same file; SQLite serialises their commits.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS methods (
    key TEXT PRIMARY KEY,
    identity TEXT NOT NULL              -- JSON: what the key is a hash of
);
CREATE TABLE IF NOT EXISTS scores (
    key TEXT NOT NULL,
    text_a TEXT NOT NULL,
    text_b TEXT NOT NULL,
    score REAL NOT NULL,                -- higher = more similar
    truncated_a INTEGER NOT NULL,
    truncated_b INTEGER NOT NULL,
    details TEXT NOT NULL,              -- JSON, e.g. jeffreys, kl_ab, kl_ba
    seconds REAL NOT NULL,              -- compute time of the pair
    created REAL NOT NULL,              -- unix time it was stored
    PRIMARY KEY (key, text_a, text_b)
);
"""


@dataclass
class PairScore:
    score: float  # higher = more similar
    truncated: tuple[bool, bool] = (False, False)
    details: dict = field(default_factory=dict)
    seconds: float = 0.0
    created: float = 0.0


def default_cache_path() -> Path:
    """$CONJURE_STS_CACHE, else $XDG_CACHE_HOME/conjure/sts-scores.sqlite3 (~/.cache by default)."""
    if os.environ.get("CONJURE_STS_CACHE"):
        return Path(os.environ["CONJURE_STS_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "conjure" / "sts-scores.sqlite3"


def identity_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


class ScoreStore:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a long timeout: other processes of the same run may be committing their batches
        self.db = sqlite3.connect(self.path, timeout=120)
        self.db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def register(self, key: str, identity: dict) -> None:
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO methods VALUES (?, ?)", (key, json.dumps(identity, sort_keys=True, default=str)))

    def done(self, key: str) -> set[tuple[str, str]]:
        return {(a, b) for a, b in self.db.execute("SELECT text_a, text_b FROM scores WHERE key = ?", (key,))}

    def missing(self, key: str, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The pairs with no stored score, in the given order."""
        done = self.done(key)
        return [p for p in pairs if p not in done]

    def put(self, key: str, pairs: list[tuple[str, str]], scores: list[PairScore]) -> None:
        """Store one batch, atomically. A pair already stored keeps its first score."""
        now = time.time()
        rows = [(key, a, b, s.score, int(s.truncated[0]), int(s.truncated[1]), json.dumps(s.details), s.seconds, now)
                for (a, b), s in zip(pairs, scores, strict=True)]
        with self.db:  # one transaction: all of the batch or none of it
            self.db.executemany("INSERT OR IGNORE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def get(self, key: str) -> dict[tuple[str, str], PairScore]:
        rows = self.db.execute(
            "SELECT text_a, text_b, score, truncated_a, truncated_b, details, seconds, created FROM scores WHERE key = ?",
            (key,))
        return {(a, b): PairScore(score, (bool(ta), bool(tb)), json.loads(details), seconds, created)
                for a, b, score, ta, tb, details, seconds, created in rows}
