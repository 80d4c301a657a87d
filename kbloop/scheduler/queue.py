"""The job queue: one worker thread runs jobs one at a time, retrying failures with backoff.

One at a time because every job writes the same store and manifest. A failing job is logged,
retried ``retries`` times (waiting ``retry_seconds``, then twice that, …) and then given up;
nothing a job raises stops the worker. ``stop`` lets the running job finish and drops the
waiting ones, which the next start's full scan makes good.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal

log = logging.getLogger(__name__)

RECENT = 10


@dataclass(frozen=True)
class Job:
    """A named call; the name is what status shows, and a job is not queued twice while waiting."""

    name: str
    run: Callable[[], object]
    detail: str = ""


@dataclass(frozen=True)
class Outcome:
    name: str
    detail: str
    attempt: int
    status: Literal["ok", "failed", "retrying"]
    started_at: float
    seconds: float
    error: str | None = None


@dataclass(order=True)
class _Entry:
    ready_at: float
    seq: int
    job: Job = field(compare=False)
    attempt: int = field(compare=False, default=1)


def retry_delay(attempt: int, retry_seconds: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): base, 2×base, 4×base, …"""
    return retry_seconds * 2 ** (attempt - 1)


class JobQueue:
    def __init__(self, *, retries: int, retry_seconds: float):
        self.retries = retries
        self.retry_seconds = retry_seconds
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._current: tuple[_Entry, float] | None = None
        self._recent: deque[Outcome] = deque(maxlen=RECENT)
        self._thread = threading.Thread(target=self._work, name="kbloop-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> bool:
        """Queue ``job`` unless one of the same name is already waiting; True if queued."""
        with self._cond:
            if self._stopping or any(e.job.name == job.name for e in self._heap):
                return False
            self._push(job, attempt=1, ready_at=time.monotonic())
            return True

    def is_waiting(self, name: str) -> bool:
        with self._cond:
            return any(e.job.name == name for e in self._heap)

    def stop(self) -> None:
        """Finish the running job, drop the waiting ones, and return when the worker has ended."""
        with self._cond:
            self._stopping = True
            dropped = [e.job.name for e in self._heap]
            self._heap.clear()
            if self._current:
                log.info("stopping: waiting for job %s to finish", self._current[0].job.name)
            self._cond.notify_all()
        if dropped:
            log.info("stopping: dropped waiting jobs %s; the next start's full scan covers them", dropped)
        if self._thread.is_alive():
            self._thread.join()

    def snapshot(self) -> dict:
        """Waiting job names, the running job and recent outcomes, as plain data for daemon.json."""
        with self._cond:
            current = None
            if self._current:
                entry, started_at = self._current
                current = {"name": entry.job.name, "detail": entry.job.detail, "attempt": entry.attempt,
                           "started_at": started_at}
            return {
                "queue": len(self._heap),
                "waiting": [e.job.name for e in sorted(self._heap)],
                "current": current,
                "recent": [asdict(o) for o in reversed(self._recent)],
            }

    # -- the worker -----------------------------------------------------------------------

    def _push(self, job: Job, attempt: int, ready_at: float) -> None:
        heapq.heappush(self._heap, _Entry(ready_at, next(self._seq), job, attempt))
        self._cond.notify_all()

    def _next(self) -> _Entry | None:
        """The next job due, waiting for it; None once stopping."""
        with self._cond:
            while not self._stopping:
                if self._heap and self._heap[0].ready_at <= time.monotonic():
                    entry = heapq.heappop(self._heap)
                    self._current = (entry, time.time())
                    return entry
                self._cond.wait(self._heap[0].ready_at - time.monotonic() if self._heap else None)
            return None

    def _work(self) -> None:
        while (entry := self._next()) is not None:
            self._run(entry)

    def _run(self, entry: _Entry) -> None:
        job, started_at, t0 = entry.job, time.time(), time.perf_counter()
        log.info("job %s started", job.name, extra={"job": job.name, "attempt": entry.attempt, "detail": job.detail})
        error = None
        try:
            result = job.run()
        except Exception as exc:  # a job's failure is logged and retried, never the worker's end
            error = f"{exc.__class__.__name__}: {exc}"
            log.exception("job %s failed", job.name, extra={"job": job.name, "attempt": entry.attempt})
        seconds = round(time.perf_counter() - t0, 3)
        with self._cond:
            retry = error is not None and entry.attempt <= self.retries and not self._stopping
            status = "ok" if error is None else "retrying" if retry else "failed"
            self._recent.append(Outcome(job.name, job.detail, entry.attempt, status, started_at, seconds, error))
            self._current = None
            if retry:
                delay = retry_delay(entry.attempt, self.retry_seconds)
                # Not through submit: a retry keeps its own arguments even if a same-named job waits.
                self._push(job, entry.attempt + 1, time.monotonic() + delay)
        if error is None:
            log.info("job %s ok in %.2fs", job.name, seconds,
                     extra={"job": job.name, "attempt": entry.attempt, "seconds": seconds, "result": result})
        elif retry:
            log.warning("job %s will be retried in %.0fs", job.name, delay,
                        extra={"job": job.name, "attempt": entry.attempt})
        else:
            log.error("job %s given up after %d attempts", job.name, entry.attempt,
                      extra={"job": job.name, "attempt": entry.attempt})
