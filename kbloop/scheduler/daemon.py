"""The daemon loop: watcher and timetable feed one job queue until SIGTERM or SIGINT.

It holds no logic of its own beyond scheduling: every job is a ``KnowledgeBase`` call. The
main thread ticks a few times a second — run due `schedule` jobs, hand quiet paths from the
watcher to an ingest job, publish data/daemon.json — while one worker thread runs the jobs.
On a signal it stops watching, lets the running job finish (an ingest writes in atomic
batches, so even a kill -9 would be safe, just wasteful) and exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from contextlib import nullcontext
from functools import partial
from typing import Callable, ContextManager

import schedule

from kbloop.config import Home, Settings
from kbloop.daemon_state import write_state
from kbloop.errors import ConfigError, KbloopError
from kbloop.ingest.watcher import Debouncer, start_observer
from kbloop.kb import KnowledgeBase
from kbloop.scheduler.jobs import DailyAt, Every, ScheduledJob, full_scan, timetable
from kbloop.scheduler.lock import DaemonLock
from kbloop.scheduler.logs import configure_logging
from kbloop.scheduler.queue import Job, JobQueue

log = logging.getLogger(__name__)

TICK_SECONDS = 0.1
# daemon.json is rewritten on every change, and at least this often so status can see it live.
HEARTBEAT_SECONDS = 5.0
CHANGES = "changes"


class StopFlag:
    """Set by SIGTERM or SIGINT and polled by the loop.

    A plain attribute rather than a ``threading.Event``: the handler runs on the main thread
    between bytecodes, and one that takes a lock the interrupted code holds would deadlock.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None


class Daemon:
    def __init__(self, kb: KnowledgeBase, stop: StopFlag | None = None, *, tick: float = TICK_SECONDS):
        self.kb = kb
        settings = kb.settings
        self.docs = kb.home.docs_dir(settings).resolve()
        self.changes = Debouncer(settings.debounce_seconds)
        self.queue = JobQueue(retries=settings.job_retries, retry_seconds=settings.job_retry_seconds)
        self.scheduler = schedule.Scheduler()  # our own, not the module-global one
        self.timetable: list[tuple[ScheduledJob, schedule.Job]] = []
        self.stop = stop if stop is not None else StopFlag()
        self.tick = tick
        self.started_at = time.time()
        self._published: dict | None = None
        self._published_at = 0.0

    def run(self) -> None:
        """Watch and schedule until the stop flag is set; returns after the running job ends."""
        if not self.docs.is_dir():
            raise ConfigError(f"docs folder {self.docs} does not exist: create it or set KBLOOP_DOCS_DIR")
        try:
            observer = start_observer(self.docs, self.changes)
        except OSError as exc:  # typically the inotify watch limit on a very large tree
            raise KbloopError(f"cannot watch {self.docs}: {exc} (on Linux, raise fs.inotify.max_user_watches)") from None
        self.queue.start()
        for row in timetable(self.kb.settings):
            self.timetable.append((row, self._schedule(row)))
        # What changed while no daemon ran is found by one full scan at start.
        self.queue.submit(Job("scan", partial(full_scan, self.kb), "at start"))
        log.info("daemon %d watching %s; timetable: %s", os.getpid(), self.docs,
                 ", ".join(f"{row.name} {row.when}" for row, _ in self.timetable))
        try:
            while not self.stop:
                self._tick()
                time.sleep(self.tick)
            log.info("received %s: finishing the running job, then exiting", signal.Signals(self.stop.signum).name)
        finally:
            self._publish("stopping")
            observer.stop()
            self.queue.stop()
            observer.join(5)
            self._publish("stopped")
            log.info("daemon %d stopped", os.getpid())

    def _tick(self) -> None:
        try:
            self.scheduler.run_pending()
        except Exception:  # schedule lets a job's exception escape; ours only enqueue, but be sure
            log.exception("scheduler error")
        # At most one changes-ingest waits: paths that go quiet meanwhile stay in the
        # debouncer and are taken together when it starts running.
        if not self.queue.is_waiting(CHANGES) and (paths := self.changes.due()):
            names = ", ".join(os.path.relpath(p, self.docs) for p in paths)
            self.queue.submit(Job(CHANGES, partial(self._ingest_paths, paths), names[:300]))
        self._publish("running")

    def _ingest_paths(self, paths: list[str]) -> dict:
        """New and changed paths are indexed, vanished ones removed: one incremental ingest."""
        return self.kb.ingest(paths).as_dict()

    def _schedule(self, row: ScheduledJob) -> schedule.Job:
        action = partial(row.action, self.kb)
        job = Job(row.name, action if row.records_itself else partial(self._recorded, row.name, action))
        if isinstance(row.when, Every):
            return self.scheduler.every(row.when.minutes).minutes.do(self.queue.submit, job)
        if isinstance(row.when, DailyAt):
            return self.scheduler.every().day.at(row.when.time).do(self.queue.submit, job)
        raise TypeError(f"unknown time rule {row.when!r}")

    def _recorded(self, kind: str, action) -> dict:
        with self.kb.manifest.recording(kind) as summary:
            summary.update(action())
        return summary

    def _publish(self, state: str) -> None:
        """Rewrite data/daemon.json if anything changed, or the heartbeat is due."""
        snapshot = {
            "pid": os.getpid(),
            "home": str(self.kb.home.root),
            "started_at": self.started_at,
            "state": state,
            "pending_paths": len(self.changes),
            "next_runs": {row.name: job.next_run.timestamp() for row, job in self.timetable if job.next_run},
            **self.queue.snapshot(),
        }
        now = time.monotonic()
        if snapshot == self._published and now - self._published_at < HEARTBEAT_SECONDS:
            return
        try:
            write_state(self.kb.home.data_dir, snapshot | {"updated_at": time.time()})
        except OSError as exc:
            log.warning("cannot write daemon state: %s", exc)
            return
        self._published, self._published_at = snapshot, now


def run_daemon(home: Home, settings: Settings | None = None,
               serve: Callable[[Home, Settings], ContextManager[str]] | None = None) -> None:
    """This process becomes ``home``'s daemon until SIGTERM or SIGINT (then returns normally).
    ``serve``, when given, runs beside it for as long (the HTTP API, so the daemon answers too)."""
    stop = StopFlag()
    stop.install()
    settings = settings or home.load_settings()
    with DaemonLock(home.data_dir):
        configure_logging(home.logs_dir)
        with KnowledgeBase(home, settings) as kb, serve(home, settings) if serve else nullcontext():
            Daemon(kb, stop).run()
