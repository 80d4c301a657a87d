"""What a daemon leaves in its home for other processes to read: its lock and its state file.

data/daemon.lock is held with an exclusive ``flock`` while a daemon runs and names its pid
and start time; whether a daemon runs is decided by that lock alone. data/daemon.json says
what it is doing: the daemon rewrites it atomically whenever something changes (and every
few seconds, so ``updated_at`` shows it is alive); a daemon killed with -9 leaves a file that
still says "running". `kbloop status` reads both without loading the scheduler, so this
module sits below the knowledge base, which reports it.
"""

from __future__ import annotations

import json
from pathlib import Path

from kbloop.fsutil import atomic_write_bytes, try_lock

LOCK_NAME = "daemon.lock"
STATE_NAME = "daemon.json"


def write_state(data_dir: Path, state: dict) -> None:
    """Atomically: a reader sees the old state or the new one, never half."""
    atomic_write_bytes(Path(data_dir) / STATE_NAME, json.dumps(state, indent=2, sort_keys=True).encode())


def read_state(data_dir: Path) -> dict:
    try:
        return json.loads((Path(data_dir) / STATE_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


def lock_holder(data_dir: Path) -> dict | None:
    """The running daemon's {"pid", "started_at"} (values None if not yet written), or None if none runs."""
    path = Path(data_dir) / LOCK_NAME
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return None
    with fh:
        # Shared: taken only when no daemon holds the lock exclusively.
        if not try_lock(fh, shared=True):
            return read_holder(path)
        return None  # closing the file drops the shared lock


def read_holder(path: Path) -> dict:
    """The pid and start time a lock's holder wrote into it (None each while it writes them)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # the holder is between truncating and writing it
        info = {}
    return {"pid": info.get("pid"), "started_at": info.get("started_at")}


def daemon_status(data_dir: Path) -> dict:
    """{"running": bool, "pid": …} plus, while it runs, the daemon's own report: state, queue,
    current job, recent job outcomes, next scheduled runs."""
    holder = lock_holder(data_dir)
    state = read_state(data_dir)
    if holder is None:
        return {"running": False, "pid": None, "last_seen": state.get("updated_at")}
    if state.get("pid") != holder["pid"]:  # still starting: the file is a previous daemon's
        return {"running": True, "pid": holder["pid"], "started_at": holder["started_at"], "state": "starting"}
    return state | {"running": True}
