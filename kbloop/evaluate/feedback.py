"""Users' ratings of answers, from the web page or the API.

A thumbs-down marks a question the assistant got wrong, which is worth asking again:
``eval_candidates`` lists them, and ``kbloop evaluate`` asks them of both sides (see
``kbloop.evaluate.evalset``). The ``feedback`` table is this store's.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Literal

from kbloop.db import Migration

MIGRATIONS: list[Migration] = [
    (
        "004_feedback",
        # Thumbs up or down on an answer, from the web page or the API. Thumbs-down answers are
        # candidates for the eval set: a question the assistant got wrong is worth re-asking.
        """
        CREATE TABLE feedback (
            id INTEGER PRIMARY KEY,
            created_at REAL NOT NULL,
            rating TEXT NOT NULL CHECK (rating IN ('up', 'down')),
            comment TEXT,
            question TEXT NOT NULL,
            answer TEXT NOT NULL,
            sources TEXT NOT NULL,              -- JSON: the sources shown with the answer
            model TEXT,
            adapter TEXT,
            refused INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX feedback_rating ON feedback(rating, id);
        """,
    ),
]

Rating = Literal["up", "down"]


@dataclass(frozen=True)
class Feedback:
    """A user's rating of one answer, with what they were shown."""

    id: int
    created_at: float
    rating: str
    comment: str | None
    question: str
    answer: str
    sources: list[dict]
    model: str | None
    adapter: str | None
    refused: bool


class FeedbackStore:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def add(self, rating: Rating, question: str, answer: str, *, comment: str | None = None,
            sources: list[dict] | None = None, model: str | None = None, adapter: str | None = None,
            refused: bool = False) -> int:
        """Store one rating of an answer; returns its id."""
        cur = self.db.execute(
            """INSERT INTO feedback (created_at, rating, comment, question, answer, sources, model, adapter, refused)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (time.time(), rating, comment or None, question, answer, json.dumps(sources or [], sort_keys=True),
             model, adapter, int(refused)),
        )
        return int(cur.lastrowid)

    def ratings(self, rating: Rating | None = None, limit: int = 100) -> list[Feedback]:
        """Stored ratings, newest first; only one kind when ``rating`` is given."""
        where, args = ("WHERE rating = ?", [rating]) if rating else ("", [])
        rows = self.db.execute(f"SELECT * FROM feedback {where} ORDER BY id DESC LIMIT ?", [*args, limit])
        return [Feedback(**dict(row) | {"sources": json.loads(row["sources"]), "refused": bool(row["refused"])})
                for row in rows]

    def eval_candidates(self, limit: int = 1000) -> list[Feedback]:
        """Answers users marked wrong, newest first: questions an evaluation asks again."""
        return self.ratings("down", limit)
