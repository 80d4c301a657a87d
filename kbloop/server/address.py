"""Where a running server of a home can be reached, so that commands need not load models.

``kbloop serve`` and ``kbloop daemon`` each leave ``data/servers/<pid>.json`` (their base URL)
while they listen, and remove it when they stop. ``kbloop ask``, ``search`` and ``chat`` read it
and send their request there: answering then costs the question, not a model load. Only a
loopback address of a live process is used; a file left by a killed process is ignored and
removed by the next reader.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from kbloop.fsutil import atomic_write_bytes, process_alive

FOLDER = "servers"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@contextmanager
def published(data_dir: Path, url: str, kind: str) -> Iterator[Path]:
    """Announce ``url`` for as long as the block runs. A server reached from this machine by
    another name (0.0.0.0, a LAN address) is announced by its loopback address."""
    parts = urlsplit(url)
    if parts.hostname in ("0.0.0.0", "::"):
        url = f"{parts.scheme}://{'127.0.0.1' if parts.hostname == '0.0.0.0' else '[::1]'}:{parts.port}"
    path = Path(data_dir) / FOLDER / f"{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps({"url": url, "pid": os.getpid(), "kind": kind,
                                         "started_at": time.time()}).encode())
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def running_server(data_dir: Path) -> str | None:
    """The base URL of a live server of this home on a loopback address, newest first; None."""
    folder = Path(data_dir) / FOLDER
    try:
        entries = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return None
    for path in entries:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            pid, url = int(info["pid"]), str(info["url"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not process_alive(pid):
            path.unlink(missing_ok=True)
            continue
        if urlsplit(url).hostname in LOOPBACK:
            return url
    return None

