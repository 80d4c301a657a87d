"""The daemon: the watcher and `schedule` jobs feeding one job queue, a lock, signals.

What it leaves for other processes (its lock holder and state file) is read through
``kbloop.daemon_state``, so `kbloop status` loads neither watchdog nor schedule.
"""
