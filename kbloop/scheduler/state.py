"""data/daemon.json: what the daemon is doing, for `kbloop status` in another process.

The daemon rewrites it atomically whenever something changes (and every few seconds, so
``updated_at`` shows it is alive). Whether a daemon runs at all is decided by the lock, not
by this file: a daemon killed with -9 leaves a file that still says "running".
"""

from __future__ import annotations

import json
from pathlib import Path

from kbloop.fsutil import atomic_write_bytes
from kbloop.scheduler.lock import lock_holder

STATE_NAME = "daemon.json"


def write_state(data_dir: Path, state: dict) -> None:
    """Atomically: a reader sees the old state or the new one, never half."""
    atomic_write_bytes(Path(data_dir) / STATE_NAME, json.dumps(state, indent=2, sort_keys=True).encode())


def read_state(data_dir: Path) -> dict:
    try:
        return json.loads((Path(data_dir) / STATE_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


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
