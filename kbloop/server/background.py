"""The HTTP API as a part of a longer-running process: the daemon answers questions too."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from kbloop.config import Home, Settings
from kbloop.errors import KbloopError
from kbloop.server.address import published
from kbloop.server.app import bind, create_app, serving
from kbloop.server.service import Service

log = logging.getLogger(__name__)


@contextmanager
def answering(home: Home, settings: Settings, kind: str) -> Iterator[str]:
    """Serve ``home`` on KBLOOP_SERVE_HOST:PORT (or, when that port is taken, for instance by a
    `kbloop serve` of the same home, on a free loopback port) and announce the address to the
    commands, until the block ends."""
    try:
        sock = bind(settings.serve_host, settings.serve_port)
    except KbloopError as exc:
        log.info("%s; answering on a free loopback port instead", exc)
        sock = bind("127.0.0.1", 0)
    with serving(create_app(Service(home, settings)), sock) as url, published(home.data_dir, url, kind):
        log.info("answering questions at %s/ (API at %s/v1)", url, url)
        yield url
