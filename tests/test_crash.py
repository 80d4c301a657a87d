"""A kill -9 in the middle of an ingest leaves a store that opens, checks clean, and finishes."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import cli_env

N_FILES = 150


def write_many(docs):
    docs.mkdir(parents=True, exist_ok=True)
    for i in range(N_FILES):
        paragraphs = [
            f"Record {i} paragraph {p}: the survey team catalogued {i * 7 + p} specimens of moss "
            f"near marker {i}-{p}, noting humidity {p * 3 + i % 11} percent and shade level {p}. " * 3
            for p in range(4)
        ]
        (docs / f"record-{i:03d}.md").write_text(f"# Record {i}\n\n" + "\n\n".join(paragraphs))


def indexed_files(home) -> int:
    if not home.manifest_path.exists():
        return 0
    try:
        with sqlite3.connect(home.manifest_path, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM files WHERE status = 'indexed'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_kill_9_during_ingest_leaves_a_consistent_store(home, open_kb):
    write_many(home.root / "docs")
    proc = subprocess.Popen([sys.executable, "-m", "kbloop.cli.main", "ingest"], env=cli_env(home.root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if 0 < indexed_files(home) < N_FILES:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"ingest ended before it could be killed: {proc.stderr.read()[-2000:]}"
    finally:  # also when the wait failed: an ingest left running would race the checks below
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    done_before = indexed_files(home)
    assert 0 < done_before < N_FILES

    kb = open_kb()
    report = kb.check()
    assert report.ok, report.problems
    assert set(kb.store().ids().tolist()) == kb.manifest.vector_ids()

    counts = open_kb().ingest()
    assert counts.files_failed == 0
    assert counts.files_added == N_FILES - done_before
    kb = open_kb()
    assert kb.manifest.counts()["files_indexed"] == N_FILES
    assert set(kb.store().ids().tolist()) == kb.manifest.vector_ids()
    assert kb.search("moss specimens near marker 149-2", 1)[0].path == "record-149.md"
