"""The daemon: the watcher and `schedule` jobs feeding one job queue, a lock, signals, status.

Only the lock and status reader are imported here, so `kbloop status` loads neither
watchdog nor schedule; the daemon itself lives in ``kbloop.scheduler.daemon``.
"""

from kbloop.scheduler.state import daemon_status

__all__ = ["daemon_status"]
