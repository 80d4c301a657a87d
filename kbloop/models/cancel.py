"""A request's wish to stop, read by every model backend at each token.

A server answers each question on a thread of its own and marks the thread with an event
(``stops_on``) that it sets when the client that asked goes away. Every backend calls ``check``
between tokens, and before each prompt it reads, so the generator, the judge that checks or
reads again, and a JSON verdict all stop within a token instead of running on for a reader
who has gone. Outside a marked thread (the CLI, the daemon's jobs) ``check`` does nothing.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

_thread = threading.local()


class Cancelled(Exception):
    """The request that asked for this reply has gone; the model stopped at its next token."""


@contextmanager
def stops_on(event: threading.Event) -> Iterator[None]:
    """Within this thread, every model raises ``Cancelled`` at its next token once ``event`` is set."""
    outer = getattr(_thread, "event", None)
    _thread.event = event
    try:
        yield
    finally:
        _thread.event = outer


def current() -> threading.Event | None:
    """This thread's stop event, for a backend that decodes on a worker thread of its own."""
    return getattr(_thread, "event", None)


def check(event: threading.Event | None = None) -> None:
    """Raise ``Cancelled`` if this thread's request (or ``event``) has been stopped."""
    event = event or current()
    if event is not None and event.is_set():
        raise Cancelled("the client went away before its answer was done")
