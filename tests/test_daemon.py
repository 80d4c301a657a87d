"""The daemon: real subprocesses on a temporary home with real files and the real embedder,
plus unit tests of its parts (debouncer, event handler, job queue, lock, timetable)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from watchdog.events import (
    DirModifiedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from conftest import cli_env
from kbloop.cli.main import cli
from kbloop.config import Settings
from kbloop.daemon_state import LOCK_NAME, daemon_status, lock_holder
from kbloop.errors import ConfigError, DaemonRunning
from kbloop.ingest.watcher import Debouncer, DocsEventHandler
from kbloop.scheduler.jobs import DailyAt, Every, consistency_check, full_scan, learn, timetable
from kbloop.scheduler.lock import DaemonLock
from kbloop.scheduler.queue import Job, JobQueue, retry_delay

# The machine is slow and shared: bounds are generous, polling is frequent.
BOUND = 60
# Files dropped before SIGTERM (one ingest is running), and in all (the rest still settling).
N_FIRST, N_ALL = 60, 75


# -- helpers ---------------------------------------------------------------------------------

def wait_until(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = BOUND):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := condition()):
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start_daemon(home, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:  # a file, not a pipe: a full pipe would block the daemon
        proc = subprocess.Popen([sys.executable, "-m", "kbloop.cli.main", "daemon"],
                                env=cli_env(home.root, KBLOOP_DEBOUNCE_SECONDS="0.5"),
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_until(lambda: daemon_status(home.data_dir).get("pid") == proc.pid and idle(home), "the daemon to start", proc)
    except BaseException:  # no fixture will stop a daemon that never became one
        proc.kill()
        proc.wait()
        raise
    return proc


def idle(home) -> bool:
    """Running, its start-up scan done, nothing running, queued or waiting to settle."""
    state = daemon_status(home.data_dir)
    return (state.get("state") == "running" and bool(state["recent"]) and state["current"] is None
            and state["queue"] == 0 and state["pending_paths"] == 0)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def daemon(home, tmp_path):
    proc = start_daemon(home, tmp_path / "daemon.stderr")
    yield proc
    stop(proc)


def manifest_query(home, sql: str, *args):
    try:
        with sqlite3.connect(f"file:{home.manifest_path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # not created yet, or busy
        return None


def indexed_sha(home, rel: str) -> str | None:
    rows = manifest_query(home, "SELECT sha256 FROM files WHERE path = ? AND status = 'indexed'", rel)
    return rows[0][0] if rows else None


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_records(docs: Path, numbers) -> None:
    for i in numbers:
        body = "\n\n".join(f"Record {i} paragraph {p}: the survey team counted {i * 7 + p} lichens near "
                           f"cairn {i}-{p}, at altitude {300 + i * 3 + p} metres." for p in range(3))
        (docs / f"record-{i:03d}.md").write_text(f"# Record {i}\n\n{body}\n")


# -- end to end ------------------------------------------------------------------------------

def test_daemon_indexes_new_edited_and_deleted_files(home, daemon, open_kb):
    note = home.root / "docs" / "lighthouse.md"
    note.write_text("# Lighthouse\n\nThe lighthouse keeper's cat is named Barnaby and eats sardines.\n")
    wait_until(lambda: indexed_sha(home, "lighthouse.md") == sha(note) and idle(home), "the new file", daemon)
    hits = open_kb().search("What is the lighthouse keeper's cat called?", 3)
    assert hits[0].path == "lighthouse.md" and "Barnaby" in hits[0].text

    note.write_text("# Lighthouse\n\nThe lighthouse keeper's cat is named Mortimer and eats herring.\n")
    wait_until(lambda: indexed_sha(home, "lighthouse.md") == sha(note) and idle(home), "the edit", daemon)
    hits = open_kb().search("What is the lighthouse keeper's cat called?", 3)
    assert hits[0].path == "lighthouse.md" and "Mortimer" in hits[0].text
    assert not any("Barnaby" in hit.text for hit in hits)

    note.unlink()
    wait_until(lambda: manifest_query(home, "SELECT 1 FROM files WHERE path = 'lighthouse.md'") == [] and idle(home),
               "the deletion", daemon)
    assert open_kb().search("What is the lighthouse keeper's cat called?", 3) == []

    info = open_kb().status()["daemon"]
    assert info["running"] and info["pid"] == daemon.pid and info["queue"] == 0
    # The start-up scan, then one ingest per settled change (a starved event thread may split one).
    assert info["recent"][-1]["name"] == "scan" and {job["name"] for job in info["recent"][:-1]} == {"changes"}
    assert len(info["recent"]) >= 4 and all(job["status"] == "ok" for job in info["recent"])
    assert {run["kind"] for run in open_kb().status()["last_runs"]} == {"ingest"}
    out = CliRunner().invoke(cli, ["--home", str(home.root), "status"])
    assert f"daemon:   running (pid {daemon.pid}), idle, 0 jobs queued\njob:      changes ok\n" in out.output
    logged = [json.loads(line) for line in (home.logs_dir / "daemon.log").read_text().splitlines()]
    assert any(entry.get("job") == "changes" and entry["msg"].startswith("job changes ok") for entry in logged)


def test_a_second_daemon_refuses_and_a_dead_ones_lock_is_taken_over(home, daemon, tmp_path):
    out = subprocess.run([sys.executable, "-m", "kbloop.cli.main", "daemon"], env=cli_env(home.root),
                         capture_output=True, text=True, timeout=BOUND)
    assert out.returncode == 4 and daemon.poll() is None  # a conflict: retry once the other one stops
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert f"already running for {home.root} (pid {daemon.pid}" in out.stderr

    daemon.kill()  # kill -9: no chance to clean up; the kernel drops the flock
    daemon.wait()
    assert daemon_status(home.data_dir)["running"] is False
    successor = start_daemon(home, tmp_path / "successor.stderr")
    try:
        assert daemon_status(home.data_dir)["pid"] == successor.pid
    finally:
        stop(successor)
    assert successor.returncode == 0


@pytest.mark.slow
def test_sigterm_during_an_ingest_finishes_it_and_exits_cleanly(home, daemon, open_kb):
    docs = home.root / "docs"
    last_run = manifest_query(home, "SELECT COALESCE(MAX(id), 0) FROM runs")[0][0]
    write_records(docs, range(N_FIRST))
    wait_until(lambda: manifest_query(home, "SELECT 1 FROM runs WHERE id > ? AND status = 'running'", last_run),
               "an ingest to start", daemon)
    write_records(docs, range(N_FIRST, N_ALL))  # still settling when the signal comes: never ingested
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(BOUND) == 0

    assert manifest_query(home, "SELECT COUNT(*) FROM runs WHERE status != 'ok'") == [(0,)]
    assert daemon_status(home.data_dir) == {"running": False, "pid": None,
                                            "last_seen": json.loads((home.data_dir / "daemon.json").read_text())["updated_at"]}
    assert "daemon:   not running" in CliRunner().invoke(cli, ["--home", str(home.root), "status"]).output
    done = manifest_query(home, "SELECT COUNT(*) FROM files WHERE status = 'indexed'")[0][0]
    assert 0 < done <= N_FIRST
    kb = open_kb()
    report = kb.check()
    assert report.ok and not report.repaired, report
    assert set(kb.store().ids().tolist()) == kb.manifest.vector_ids()

    counts = open_kb().ingest()
    assert (counts.files_added, counts.files_failed) == (N_ALL - done, 0)
    kb = open_kb()
    assert kb.manifest.counts()["files_indexed"] == N_ALL
    assert set(kb.store().ids().tolist()) == kb.manifest.vector_ids()


# -- the watcher -----------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_events_on_one_path_yields_one_trigger_after_it_settles():
    clock = FakeClock()
    debouncer = Debouncer(1.0, clock)
    for _ in range(6):  # a save: created, modified ×4, closed, 0.1 s apart
        debouncer.touch("/kb/docs/a.md")
        clock.now += 0.1
    debouncer.touch("/kb/docs/b.md")
    clock.now += 0.5
    assert debouncer.due() == [] and len(debouncer) == 2  # a.md quiet 0.5 s, b.md 0.5 s
    clock.now += 0.4
    assert debouncer.due() == ["/kb/docs/a.md"]
    clock.now += 0.1
    assert debouncer.due() == ["/kb/docs/b.md"]
    assert debouncer.due() == [] and len(debouncer) == 0


def test_the_handler_ignores_temp_names_and_reads_and_reports_both_ends_of_a_move(tmp_path):
    root = tmp_path / "docs"
    debouncer = Debouncer(0.0, FakeClock())
    handler = DocsEventHandler(root, debouncer)
    for event in [
        FileCreatedEvent(f"{root}/notes.md"), FileModifiedEvent(f"{root}/notes.md"), FileClosedEvent(f"{root}/notes.md"),
        FileMovedEvent(f"{root}/.notes.md.swp", f"{root}/draft.md"),  # editor atomic save
        FileMovedEvent(f"{root}/old/guide.md", f"{root}/new/guide.md"),  # a rename: both ends
        FileMovedEvent(f"{root}/vim.md", f"{root}/vim.md~"),  # vim's backup dance: the source counts
        FileDeletedEvent(f"{root}/gone.pdf"),
        FileCreatedEvent(f"{root}/report.docx.crdownload"), FileCreatedEvent(f"{root}/~$report.docx"),
        FileCreatedEvent(f"{root}/.git/objects/ab"), FileCreatedEvent(f"{root}/#scratch.md#"),
        FileOpenedEvent(f"{root}/read.md"), FileClosedNoWriteEvent(f"{root}/read.md"),
        DirModifiedEvent(str(root)), FileCreatedEvent(str(tmp_path / "elsewhere.md")),
    ]:
        handler.dispatch(event)
    assert debouncer.due() == sorted(f"{root}/{name}" for name in
                                     ["notes.md", "draft.md", "old/guide.md", "new/guide.md", "vim.md", "gone.pdf"])


# -- the job queue ---------------------------------------------------------------------------

def test_retry_delays_double():
    assert [retry_delay(attempt, 30.0) for attempt in (1, 2, 3)] == [30.0, 60.0, 120.0]


def test_a_failing_job_is_retried_with_backoff_and_the_queue_keeps_running():
    queue = JobQueue(retries=2, retry_seconds=0.2)
    calls: dict[str, list[float]] = {"flaky": [], "broken": [], "after": []}
    done = threading.Event()

    def flaky():
        calls["flaky"].append(time.monotonic())
        if len(calls["flaky"]) < 3:
            raise OSError("disk busy")
        return {"ok": True}

    def broken():
        calls["broken"].append(time.monotonic())
        raise RuntimeError("always")

    def after():
        calls["after"].append(time.monotonic())
        done.set()

    queue.start()
    try:
        assert queue.submit(Job("flaky", flaky))
        assert queue.submit(Job("broken", broken))
        assert not queue.submit(Job("broken", broken))  # one of a name waits at a time
        wait_until(lambda: len(calls["broken"]) == 3 and len(calls["flaky"]) == 3, "the retries", timeout=20)
        assert queue.submit(Job("after", after)) and done.wait(10)
    finally:
        queue.stop()

    flaky_gaps = [b - a for a, b in zip(calls["flaky"], calls["flaky"][1:])]
    assert flaky_gaps[0] >= 0.2 and flaky_gaps[1] >= 0.4  # backoff doubles
    outcomes = [(o["name"], o["attempt"], o["status"]) for o in reversed(queue.snapshot()["recent"])]
    assert [o for o in outcomes if o[0] == "flaky"] == [("flaky", 1, "retrying"), ("flaky", 2, "retrying"),
                                                        ("flaky", 3, "ok")]
    assert [o for o in outcomes if o[0] == "broken"] == [("broken", 1, "retrying"), ("broken", 2, "retrying"),
                                                         ("broken", 3, "failed")]
    assert outcomes[-1] == ("after", 1, "ok")
    assert "RuntimeError: always" in queue.snapshot()["recent"][1]["error"]


def test_stop_lets_the_running_job_finish_and_drops_the_waiting_ones():
    queue = JobQueue(retries=0, retry_seconds=1.0)
    started, finished = threading.Event(), threading.Event()
    ran = []

    def slow():
        started.set()
        time.sleep(0.5)
        finished.set()

    queue.start()
    queue.submit(Job("slow", slow))
    queue.submit(Job("next", lambda: ran.append("next")))
    assert started.wait(10)
    queue.stop()
    assert finished.is_set() and ran == [] and not queue.submit(Job("late", lambda: None))


# -- lock, timetable, settings ---------------------------------------------------------------

def test_the_lock_admits_one_holder_and_takes_over_a_dead_ones(tmp_path):
    (tmp_path / LOCK_NAME).write_text('{"pid": 999999, "started_at": 1.0}')  # left by a kill -9
    assert lock_holder(tmp_path) is None
    with DaemonLock(tmp_path):
        holder = lock_holder(tmp_path)
        assert holder["pid"] == os.getpid()
        with pytest.raises(DaemonRunning, match=f"pid {holder['pid']}, since"):
            DaemonLock(tmp_path).acquire()
    assert lock_holder(tmp_path) is None


def test_the_timetable_comes_from_settings():
    rows = {row.name: row for row in timetable(Settings(check_at="04:30", scan_interval_minutes=15))}
    assert rows["check"].when == DailyAt("04:30") and rows["check"].action is consistency_check
    assert rows["scan"].when == Every(15) and rows["scan"].action is full_scan and rows["scan"].records_itself
    assert rows["learn"].when == DailyAt("02:00") and rows["learn"].action is learn
    assert [row.name for row in timetable(Settings(scan_interval_minutes=0, learn_at=""))] == ["check"]


@pytest.mark.parametrize("value", ["3:00", "24:00", "03:60", "noon"])
def test_check_at_must_be_a_clock_time(value):
    with pytest.raises(ConfigError, match="KBLOOP_CHECK_AT"):
        Settings.from_mapping({"KBLOOP_CHECK_AT": value})
