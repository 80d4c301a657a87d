"""Users' ratings of answers, from the web page or the API.

A thumbs-down marks a question the assistant got wrong, which is worth asking again:
``eval_candidates`` lists them, and ``kbloop evaluate`` asks them of both sides (see
``kbloop.evaluate.evalset``). The ``feedback`` table is this store's.

The sources come from whoever rates, so what is stored of them is bounded in nesting and size:
JSON nested hundreds deep parses, but breaks whatever later walks it (listing, re-encoding)
with a RecursionError. A row stored before these bounds that breaks them is listed without
its sources, with a warning, so one bad rating cannot take the others down with it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Literal

from kbloop.db import Migration
from kbloop.errors import KbloopError

log = logging.getLogger(__name__)

SOURCES_MAX_DEPTH = 6  # the page sends a list of flat objects: depth 2
SOURCES_MAX_BYTES = 256 * 1024

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
            (time.time(), rating, comment or None, question, answer, _stored_sources(sources or []),
             model, adapter, int(refused)),
        )
        return int(cur.lastrowid)

    def ratings(self, rating: Rating | None = None, limit: int = 100) -> list[Feedback]:
        """Stored ratings, newest first; only one kind when ``rating`` is given."""
        where, args = ("WHERE rating = ?", [rating]) if rating else ("", [])
        rows = self.db.execute(f"SELECT * FROM feedback {where} ORDER BY id DESC LIMIT ?", [*args, limit])
        return [Feedback(**dict(row) | {"sources": _read_sources(row["id"], row["sources"]),
                                        "refused": bool(row["refused"])})
                for row in rows]

    def eval_candidates(self, limit: int = 1000) -> list[Feedback]:
        """Answers users marked wrong, newest first: questions an evaluation asks again."""
        return self.ratings("down", limit)


def json_depth(value: Any) -> int:
    """How deep a parsed JSON value nests (a scalar 0, ``[]`` 1, ``[{}]`` 2), measured without
    recursion, so any value can be measured."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            todo.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _stored_sources(sources: list[dict]) -> str:
    """The sources as stored, or a KbloopError saying which bound they break."""
    if json_depth(sources) > SOURCES_MAX_DEPTH:
        raise KbloopError(f"sources nest deeper than {SOURCES_MAX_DEPTH} levels: send the sources as shown, "
                          "a list of flat objects")
    text = json.dumps(sources, sort_keys=True)
    if len(text.encode()) > SOURCES_MAX_BYTES:
        raise KbloopError(f"sources take more than {SOURCES_MAX_BYTES} bytes as JSON: send fewer, or leave out their text")
    return text


def _read_sources(feedback_id: int, text: str) -> list[dict]:
    """A row's sources; none, with a warning, where the row breaks the bounds ``add`` keeps."""
    try:
        sources = json.loads(text)
        problem = None if json_depth(sources) <= SOURCES_MAX_DEPTH else f"nested deeper than {SOURCES_MAX_DEPTH}"
    except RecursionError:
        problem = "nested too deep to parse"
    except ValueError as exc:
        problem = f"not JSON ({exc})"
    if problem is None and not (isinstance(sources, list) and all(isinstance(s, dict) for s in sources)):
        problem = "not a list of objects"
    if problem is not None:
        log.warning("feedback %d: its stored sources are %s; listed without them", feedback_id, problem)
        return []
    return sources
