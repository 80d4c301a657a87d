"""The database: every table has one owning store, migrations keep their names and text, an
older home's database opens and gains what it lacks, and reads see one committed state."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest

from kbloop.config import Home
from kbloop.dataset.store import DatasetStore
from kbloop.evaluate.feedback import FeedbackStore
from kbloop.evaluate.gate import Decision
from kbloop.evaluate.report import EvalReport
from kbloop.evaluate.store import EvaluationStore, JudgeCache
from kbloop.ingest.manifest import Manifest
from kbloop.schema import MIGRATIONS as SCHEMA

REPO = Path(__file__).resolve().parent.parent
# The only modules that may run SQL: the database itself and the store that owns each table.
SQL_OWNERS = {
    "kbloop/db.py",                 # opening, migrations, transactions
    "kbloop/ingest/manifest.py",    # files, chunks, chunks_fts, runs, meta
    "kbloop/dataset/store.py",      # dataset_versions, dataset_records, dataset_chunks
    "kbloop/evaluate/feedback.py",  # feedback
    "kbloop/evaluate/store.py",     # evaluations, judge_cache
}
# A migration that has run in someone's home never changes: its name and its text are fixed.
MIGRATIONS = [
    ("001_files_chunks_runs", "1ad99079f1db16c5"),
    ("002_chunks_fts", "3f19266d65df4529"),
    ("003_datasets", "8dcea6598bd5a35c"),
    ("004_feedback", "308a73aaa238fcab"),
    ("005_evaluations", "876e808cdb28a1b8"),
    ("006_feedback_corrections", "de9fa0adb1ddf0aa"),
    ("007_feedback_withdrawn", "12eb285d897ce02c"),
    ("008_vector_ids_never_reused", "a0d7b3b4ecd5c74b"),
    ("009_files_chunking", "d78d08e0c3ef87b4"),
]


def test_only_the_owning_stores_run_sql():
    runs_sql = re.compile(r"\.execute(many|script)?\(|sqlite3\.connect\(")
    found = {p.relative_to(REPO).as_posix() for p in (REPO / "kbloop").rglob("*.py")
             if runs_sql.search(p.read_text(encoding="utf-8"))}
    assert found == SQL_OWNERS
    opens = {p.relative_to(REPO).as_posix() for p in (REPO / "kbloop").rglob("*.py")
             if "sqlite3.connect(" in p.read_text(encoding="utf-8")}
    assert opens == {"kbloop/db.py"}


def test_migrations_keep_their_names_text_and_order():
    assert [(name, hashlib.sha256(sql.encode()).hexdigest()[:16]) for name, sql in SCHEMA] == MIGRATIONS


def test_an_older_database_opens_and_gains_the_later_migrations(tmp_path):
    path = tmp_path / "kbloop.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    for name, sql in SCHEMA[:3]:
        old.executescript(sql)
        old.execute("INSERT INTO migrations VALUES (?, 0)", (name,))
    old.execute("INSERT INTO files VALUES (1, 'a.md', 'x', 1, 1, 0, 'indexed', NULL, NULL, 1, 0)")
    old.execute("INSERT INTO chunks VALUES (1, 1, 0, 'h', 'the walrus sings at dawn', '{}', 7)")
    old.execute("INSERT INTO dataset_versions VALUES ('0001', 0, NULL, '{}')")
    old.commit()
    old.close()

    manifest = Manifest(path, SCHEMA)
    try:
        applied = [r[0] for r in manifest.db.execute("SELECT name FROM migrations ORDER BY rowid")]
        assert applied == [name for name, _ in MIGRATIONS]
        # What the old database held is all still there.
        assert manifest.keyword_search("walrus", 5) == [7]
        assert manifest.max_vector_id() == 7 and manifest.files()["a.md"].chunking is None
        assert [v["version"] for v in DatasetStore(Home(tmp_path), manifest).versions()] == ["0001"]
        # The tables it lacked work.
        feedback_id = FeedbackStore(manifest.db).add("down", "Where is the walrus?", "In the sea.")
        assert [f.id for f in FeedbackStore(manifest.db).eval_candidates()] == [feedback_id]
        JudgeCache(manifest.db).put("k", {"correctness": 5})
        assert JudgeCache(manifest.db).get("k") == {"correctness": 5}
        assert EvaluationStore(Home(tmp_path), manifest.db).runs() == []
    finally:
        manifest.close()
    # Opening it again applies nothing twice.
    again = Manifest(path, SCHEMA)
    try:
        assert again.db.execute("SELECT COUNT(*) FROM migrations").fetchone()[0] == len(MIGRATIONS)
    finally:
        again.close()


def test_a_snapshot_sees_one_committed_state_and_a_failed_transaction_leaves_nothing(tmp_path):
    reader, writer = Manifest(tmp_path / "kbloop.sqlite"), Manifest(tmp_path / "kbloop.sqlite")
    try:
        writer.set_meta("k", "before")
        with reader.snapshot():
            assert reader.get_meta("k") == "before"
            writer.set_meta("k", "after")  # committed while the reader reads
            assert reader.get_meta("k") == "before"
        assert reader.get_meta("k") == "after"

        with pytest.raises(RuntimeError), writer.transaction():
            writer.set_meta("k", "half done")
            raise RuntimeError("stopped halfway")
        assert reader.get_meta("k") == "after" and not writer.db.in_transaction
    finally:
        reader.close()
        writer.close()


def report(run: str, created_at: float, score: float) -> EvalReport:
    metrics = {"all": {"n": 1, "score": score}}
    return EvalReport(run=run, created_at=created_at, seconds=1.0, candidate="0001", baseline="base",
                      generator="local:smollm2-135m", judge=None, judge_calls=0, judge_cache_hits=0,
                      judge_failures=0, items=1, slices={"new": 1, "old": 0, "user": 0, "feedback": 0},
                      metrics={"candidate": metrics, "baseline": metrics}, pairwise=None,
                      decision=Decision("accept", ["overall: fine"], 0.02), details=[])


def test_a_report_is_the_same_json_as_before():
    r = report("20260101-120000-0001", 1.0, 0.5)
    keys = ["run", "created_at", "seconds", "candidate", "baseline", "generator", "judge", "judge_calls",
            "judge_cache_hits", "judge_failures", "items", "slices", "metrics", "pairwise", "decision", "details"]
    assert list(r.to_dict()) == keys
    assert r.to_dict()["decision"] == {"decision": "accept", "reasons": ["overall: fine"], "tolerance": 0.02}
    r.folder, r.promoted = "/somewhere", True
    assert list(r.to_dict()) == keys + ["folder", "promoted"]
    assert json.loads(json.dumps(r.to_dict())) == r.to_dict()


def test_evaluation_runs_are_listed_once_recorded_runs_and_report_folders_alike(tmp_path):
    home = Home(tmp_path)
    manifest = Manifest(home.manifest_path, SCHEMA)
    try:
        store = EvaluationStore(home, manifest.db)
        store.record(report("20260101-120000-0001", 100.0, 0.5))
        store.folder("20260101-120000-0001").mkdir(parents=True)
        store.folder("copied-in").mkdir()  # a report folder nobody recorded
        runs = store.runs()
    finally:
        manifest.close()
    assert [r.run for r in runs] == ["20260101-120000-0001", "copied-in"]
    recorded, copied = runs
    assert recorded.recorded and recorded.score() == 0.5 and recorded.decision == "accept"
    assert recorded.as_record()["summary"] == {"metrics": {"candidate": {"all": {"n": 1, "score": 0.5}},
                                                            "baseline": {"all": {"n": 1, "score": 0.5}}},
                                               "pairwise": None}
    assert not copied.recorded and copied.score() is None and copied.folder == home.evals_dir / "copied-in"
