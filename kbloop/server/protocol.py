"""uvicorn's HTTP/1.1 protocol with a deadline on each request's head.

uvicorn times a connection out only while it idles between requests. A client that opens a
connection and then sends nothing, or its request line and headers a byte at a time
(slowloris), would hold the connection, and a slot of the concurrency limit, for as long as it
likes. Here each request's head must be complete within ``head_timeout`` seconds of the
connection opening or of the previous response; otherwise the connection is closed. The body
has its own deadline, in the app, which is where it is read.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class HeadDeadlineProtocol(H11Protocol):
    """``H11Protocol`` that closes a connection whose next request head is overdue."""

    head_timeout: float = 10.0
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_overdue)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_overdue(self) -> None:
        self._head_deadline = None
        # IDLE: no complete request head since the deadline was set. A request being read or
        # answered has left IDLE, and its response sets the next deadline.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            client = "%s:%d" % self.client if self.client else "a client"
            log.info("closed the connection from %s: no complete request head within %g s", client, self.head_timeout)
            self.transport.close()
