"""The watcher: file-system events in the docs folder become debounced paths to ingest.

One save produces 3–8 events (see DEPENDENCIES.md), so events only mark a path as touched;
a path is handed on once it has been quiet for ``quiet`` seconds. What happened to it does
not matter: ``KnowledgeBase.ingest(paths)`` indexes a path that exists and removes one that
does not, so a move is simply two touched paths, and a rename is recognised by the indexer
when both ends arrive in the same batch.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from kbloop.ingest.scan import is_ignored_name

# Opened, closed-without-write and attribute events come from reads (the indexer's own among
# them), and a directory's "modified" only echoes a change to a child: none is a new version.
# Modified is kept although closed marks the end of a write: during a long copy its events
# keep the path from going quiet, so a half-written file is not ingested.
WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileModifiedEvent, FileMovedEvent,
    DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
]


class Debouncer:
    """Paths touched by events, handed out once each has been quiet for ``quiet`` seconds.

    Thread-safe: the observer thread touches, the daemon loop collects.
    """

    def __init__(self, quiet: float, clock: Callable[[], float] = time.monotonic):
        self.quiet = quiet
        self.clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def touch(self, path: str) -> None:
        with self._lock:
            self._last[path] = self.clock()

    def due(self) -> list[str]:
        """Paths quiet long enough, sorted; they leave the debouncer."""
        now = self.clock()
        with self._lock:
            ready = sorted(p for p, at in self._last.items() if now - at >= self.quiet)
            for path in ready:
                del self._last[path]
        return ready

    def __len__(self) -> int:
        with self._lock:
            return len(self._last)


class DocsEventHandler(FileSystemEventHandler):
    """Touches the debouncer for every event that can mean a new, changed or gone document."""

    def __init__(self, root: Path, debouncer: Debouncer):
        self.root = Path(root)
        self.debouncer = debouncer

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not isinstance(event, tuple(WATCHED_EVENTS)):
            return
        # A move's source is a deletion: both ends go to the indexer.
        for raw in (event.src_path, event.dest_path):
            if raw and self.wanted(path := Path(os.fsdecode(raw)), folder=event.is_directory):
                self.debouncer.touch(str(path))

    def wanted(self, path: Path, *, folder: bool = False) -> bool:
        """Inside the root, and skipped by no rule a full scan applies: no part of it is hidden,
        and a file is not named as a backup or a temp file. A folder named like one (``2023.bak``,
        ``drafts~``) is scanned and its files indexed, so its events count."""
        try:
            parts = path.relative_to(self.root).parts
        except ValueError:
            return False
        if not parts or any(p.startswith(".") for p in parts):
            return False
        return folder or not is_ignored_name(parts[-1])


def start_observer(root: Path, debouncer: Debouncer) -> Observer:
    """A running watchdog observer feeding ``debouncer`` with paths under ``root``."""
    observer = Observer()
    observer.schedule(DocsEventHandler(root, debouncer), str(root), recursive=True, event_filter=WATCHED_EVENTS)
    observer.daemon = True
    observer.start()
    return observer
