"""A total deadline for an HTTP request, its body included, beside httpx's per-read timeout.

httpx's read timeout bounds each wait for the next bytes, so a server that sends a byte now and
then holds a request forever. ``DeadlineTransport`` looks at the clock at each piece of the body
as it arrives and ends the request once its deadline has passed. A single wait is still bounded
by the read timeout, so no request outlives its deadline by more than that.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx


class DeadlineExceeded(httpx.TimeoutException):
    """A request that was still unfinished when its deadline passed."""

    def __init__(self, seconds: float, request: httpx.Request):
        super().__init__(f"no complete response within {seconds:g} s", request=request)
        self.seconds = seconds


class DeadlineStream(httpx.SyncByteStream):
    """A response body that raises DeadlineExceeded at the first piece arriving too late."""

    def __init__(self, body: httpx.SyncByteStream, deadline: float, seconds: float, request: httpx.Request):
        self.body, self.deadline, self.seconds, self.request = body, deadline, seconds, request

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.body:
            if time.monotonic() > self.deadline:
                raise DeadlineExceeded(self.seconds, self.request)
            yield piece

    def close(self) -> None:
        self.body.close()


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's own transport, with every request's response due ``seconds`` after it starts."""

    def __init__(self, seconds: float, **kwargs):
        super().__init__(**kwargs)
        self.seconds = seconds

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self.seconds
        response = super().handle_request(request)
        response.stream = DeadlineStream(response.stream, deadline, self.seconds, request)
        return response
