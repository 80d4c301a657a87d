"""Evaluation runs and judge verdicts: the ``evaluations`` and ``judge_cache`` tables, and the
report folders under ``data/evals/<run>/``.

A run writes its report folder first and its record second, so every recorded run has a
folder. ``EvaluationStore.runs`` is the one listing of runs; the CLI, the status summary, the
report's history plot and the HTTP API all read it and keep what they show.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kbloop.config import Home
from kbloop.db import Migration
from kbloop.evaluate.gate import Decision


class Recorded(Protocol):
    """What the store keeps of an evaluation report (``kbloop.evaluate.report.EvalReport``)."""

    run: str
    created_at: float
    candidate: str
    baseline: str
    metrics: dict[str, Any]
    pairwise: dict[str, int] | None
    decision: Decision


MIGRATIONS: list[Migration] = [
    (
        "005_evaluations",
        # Judge verdicts by (question, answer, reference, judge, prompt version): a re-run of an
        # evaluation asks the judge nothing it has answered before.
        """
        CREATE TABLE judge_cache (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,                -- JSON verdict
            created_at REAL NOT NULL
        );
        CREATE TABLE evaluations (
            run TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            candidate TEXT,
            baseline TEXT,
            decision TEXT NOT NULL,             -- accept | reject
            summary TEXT NOT NULL               -- JSON scores
        );
        """,
    ),
]


@dataclass(frozen=True)
class EvaluationRun:
    """One evaluation as recorded, with its report folder. A folder with no record (a run that
    stopped between its report and its record, or a report copied in by hand) is a run too,
    known only by its name, its folder's time and the files in it."""

    run: str
    created_at: float
    candidate: str | None
    baseline: str | None
    decision: str | None
    summary: dict | None  # {"metrics", "pairwise"} as the report had them; None when not recorded
    folder: Path

    @property
    def recorded(self) -> bool:
        return self.summary is not None

    def score(self, side: str = "candidate") -> float | None:
        """A recorded run's overall score for ``side`` (candidate or baseline)."""
        return self.summary["metrics"][side]["all"]["score"] if self.summary else None

    def as_record(self) -> dict:
        """The run as its ``evaluations`` row holds it (``kbloop evaluate history --json``)."""
        return {"run": self.run, "created_at": self.created_at, "candidate": self.candidate,
                "baseline": self.baseline, "decision": self.decision, "summary": self.summary}


class EvaluationStore:
    def __init__(self, home: Home, db: sqlite3.Connection):
        self.dir, self.db = home.evals_dir, db

    def folder(self, run: str) -> Path:
        return self.dir / run

    def record(self, report: Recorded) -> None:
        summary = {"metrics": report.metrics, "pairwise": report.pairwise}
        self.db.execute("INSERT OR REPLACE INTO evaluations VALUES (?, ?, ?, ?, ?, ?)",
                        (report.run, report.created_at, report.candidate, report.baseline,
                         report.decision.decision, json.dumps(summary, sort_keys=True)))

    def runs(self) -> list[EvaluationRun]:
        """Every evaluation, oldest first: the recorded runs, then any report folder without a
        record, placed by its folder's time."""
        found = [EvaluationRun(row["run"], row["created_at"], row["candidate"], row["baseline"], row["decision"],
                               json.loads(row["summary"]), self.folder(row["run"]))
                 for row in self.db.execute("SELECT * FROM evaluations ORDER BY created_at")]
        recorded = {r.run for r in found}
        if self.dir.is_dir():
            found += [EvaluationRun(folder.name, folder.stat().st_mtime, None, None, None, None, folder)
                      for folder in self.dir.iterdir() if folder.is_dir() and folder.name not in recorded]
        return sorted(found, key=lambda r: r.created_at)


class JudgeCache:
    """Judge verdicts by key (the question, answers, reference, judge and prompt version
    hashed): a re-run of an evaluation asks the judge nothing it has answered before."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT value FROM judge_cache WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else None

    def put(self, key: str, verdict: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO judge_cache VALUES (?, ?, ?)",
                        (key, json.dumps(verdict, sort_keys=True), time.time()))
