"""Users' ratings of answers, from the web page or the API.

A thumbs-down marks a question the assistant got wrong, which is worth asking again:
``eval_candidates`` lists them, and ``kbloop evaluate`` asks them of both sides (see
``kbloop.evaluate.evalset``). A thumbs-down may carry the user's correction, the right answer:
``corrections`` lists those, which ``kbloop dataset build`` turns into training records and an
evaluation asks with the correction as the expected answer. The ``feedback`` table is this store's.

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

from kbloop.db import Migration, transaction
from kbloop.errors import KbloopError, NotFound
from kbloop.text import loads_finite

log = logging.getLogger(__name__)

SOURCES_MAX_DEPTH = 6  # the page sends a list of flat objects: depth 2
SOURCES_MAX_BYTES = 256 * 1024
CORRECTION_MAX_CHARS = 2000  # an answer, not a document: a training record's answer is this or shorter

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
    (
        "006_feedback_corrections",
        # The right answer a user typed with a thumbs-down; NULL for ratings without one.
        """
        ALTER TABLE feedback ADD COLUMN correction TEXT;
        """,
    ),
    (
        "007_feedback_withdrawn",
        # When the user took the correction back; NULL while it stands. The text is kept.
        """
        ALTER TABLE feedback ADD COLUMN withdrawn_at REAL;
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
    correction: str | None = None  # the right answer, as the user wrote it (thumbs-down only)
    withdrawn_at: float | None = None  # when the correction was taken back; it then counts nowhere


class FeedbackStore:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def add(self, rating: Rating, question: str, answer: str, *, comment: str | None = None,
            sources: list[dict] | None = None, model: str | None = None, adapter: str | None = None,
            refused: bool = False, correction: str | None = None) -> int:
        """Store one rating of an answer, with the user's correction when they gave one; returns its id."""
        row = {"created_at": time.time(), "rating": rating, "comment": comment or None, "question": question,
               "answer": answer, "sources": _stored_sources(sources or []), "model": model, "adapter": adapter,
               "refused": int(refused)}
        if correction is not None:  # the column only when given: other ratings are written as before 006
            row["correction"] = _checked_correction(rating, question, correction)
        cur = self.db.execute(f"INSERT INTO feedback ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                              list(row.values()))
        return int(cur.lastrowid)

    def ratings(self, rating: Rating | None = None, limit: int = 100) -> list[Feedback]:
        """Stored ratings, newest first; only one kind when ``rating`` is given."""
        where, args = ("WHERE rating = ?", [rating]) if rating else ("", [])
        return self._listed(f"SELECT * FROM feedback {where} ORDER BY id DESC LIMIT ?", [*args, limit])

    def eval_candidates(self, limit: int = 1000) -> list[Feedback]:
        """Answers users marked wrong, newest first: questions an evaluation asks again."""
        return self.ratings("down", limit)

    def corrections(self) -> list[Feedback]:
        """Answers users marked wrong and corrected, oldest first: what a dataset build learns,
        what evaluations ask and what answers read. Withdrawn ones are left out."""
        return self._listed("SELECT * FROM feedback WHERE rating = 'down' AND correction IS NOT NULL "
                            "AND withdrawn_at IS NULL ORDER BY id")

    def taken_back(self) -> list[Feedback]:
        """The corrections users withdrew, oldest first."""
        return self._listed("SELECT * FROM feedback WHERE withdrawn_at IS NOT NULL ORDER BY id")

    def withdraw(self, feedback_id: int) -> Feedback:
        """Take a correction back: no answer reads it and no evaluation asks it from now on, and
        the next dataset build retires its training records. Its text stays stored, so a
        withdrawal loses nothing. A NotFound names what is wrong with the id."""
        with transaction(self.db) as db:
            row = db.execute("SELECT correction, withdrawn_at FROM feedback WHERE id = ?", (feedback_id,)).fetchone()
            if row is None or row["correction"] is None:
                raise NotFound(f"rating {feedback_id} has no correction to withdraw" if row is not None
                               else f"no rating {feedback_id}")
            if row["withdrawn_at"] is None:
                db.execute("UPDATE feedback SET withdrawn_at = ? WHERE id = ?", (time.time(), feedback_id))
        [rating] = self._listed("SELECT * FROM feedback WHERE id = ?", [feedback_id])
        return rating

    def _listed(self, query: str, args: list | None = None) -> list[Feedback]:
        return [Feedback(**dict(row) | {"sources": _read_sources(row["id"], row["sources"]),
                                        "refused": bool(row["refused"])})
                for row in self.db.execute(query, args or [])]


def _checked_correction(rating: str, question: str, correction: str) -> str:
    """The correction as stored (trimmed), or a KbloopError saying what to send instead. It
    becomes a training record and an evaluation question, so it needs a question to answer."""
    if rating != "down":
        raise KbloopError("correction: only a thumbs-down takes a correction; send rating down with it")
    if not question.strip():
        raise KbloopError("correction: the question is blank; send the question the correction answers")
    text = correction.strip()
    if not text:
        raise KbloopError("correction: it is empty; type the right answer, or leave correction out")
    if len(text) > CORRECTION_MAX_CHARS:
        raise KbloopError(f"correction: it is {len(text)} characters long; send the right answer in at most "
                          f"{CORRECTION_MAX_CHARS}")
    return text


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
    try:
        text = json.dumps(sources, sort_keys=True, allow_nan=False)
    except ValueError:
        raise KbloopError("sources hold a number that is not finite (NaN or infinity): send the scores as shown") from None
    if len(text.encode()) > SOURCES_MAX_BYTES:
        raise KbloopError(f"sources take more than {SOURCES_MAX_BYTES} bytes as JSON: send fewer, or leave out their text")
    return text


def _read_sources(feedback_id: int, text: str) -> list[dict]:
    """A row's sources; none, with a warning, where the row breaks the bounds ``add`` keeps."""
    try:
        sources = loads_finite(text)
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
