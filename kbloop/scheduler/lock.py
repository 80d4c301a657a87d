"""One daemon per home: an exclusive ``flock`` on data/daemon.lock.

The kernel drops the lock when its holder dies, however it dies, so a lock left by a dead
process is simply taken by the next daemon; no pid guessing is needed. The file also holds
the holder's pid and start time, for the error message and for `kbloop status`
(``kbloop.daemon_state`` reads it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from kbloop.daemon_state import LOCK_NAME, read_holder
from kbloop.errors import DaemonRunning
from kbloop.fsutil import try_lock

# A `kbloop status` probing the lock holds it for microseconds; try again before refusing.
ACQUIRE_TRIES, ACQUIRE_PAUSE = 5, 0.05


class DaemonLock:
    """Held while a daemon runs; ``acquire`` raises ``DaemonRunning`` naming the holder."""

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / LOCK_NAME
        self._fh = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # never truncate what another holder wrote
        for attempt in range(ACQUIRE_TRIES):
            if try_lock(fh):
                break
            if attempt == ACQUIRE_TRIES - 1:
                fh.close()
                raise DaemonRunning(_refusal(self.path))
            time.sleep(ACQUIRE_PAUSE)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "started_at": time.time()}))
        fh.flush()
        os.fsync(fh.fileno())
        self._fh = fh

    def release(self) -> None:
        if self._fh is None:
            return
        self._fh.truncate(0)  # while still held: a reader never sees a finished daemon's pid
        self._fh.close()  # closing the file drops the flock
        self._fh = None

    def __enter__(self) -> "DaemonLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _refusal(path: Path) -> str:
    holder = read_holder(path)
    pid = holder["pid"]
    since = (f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['started_at']))}"
             if holder["started_at"] else "")
    stop = f"kill {pid}" if pid is not None else f"its pid is being written to {path}"
    return (f"a kbloop daemon is already running for {path.parent.parent} (pid {pid or 'unknown'}{since}); "
            f"stop it first ({stop}) or use another home")
