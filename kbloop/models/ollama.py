"""Talking to an Ollama server: timeouts and one clear error for each way it can fail."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from kbloop.errors import BackendUnavailable


def client_kwargs(settings: Any) -> dict:
    import httpx

    # langchain-ollama has no default timeout: a server that accepts and never answers
    # would block forever.
    return {"timeout": httpx.Timeout(settings.ollama_timeout, connect=settings.ollama_connect_timeout)}


@contextmanager
def ollama_errors(url: str, model: str) -> Iterator[None]:
    """Turn transport and server failures inside the block into one BackendUnavailable."""
    import httpx

    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, ConnectionError) as exc:
        raise BackendUnavailable(
            f"cannot reach Ollama at {url} ({exc.__class__.__name__}): start it with `ollama serve` "
            "or set KBLOOP_OLLAMA_URL"
        ) from None
    except httpx.TimeoutException:
        raise BackendUnavailable(
            f"Ollama at {url} did not answer in time; raise KBLOOP_OLLAMA_TIMEOUT or check the server"
        ) from None
    except Exception as exc:  # the ollama client's ResponseError carries the server's status
        status = getattr(exc, "status_code", None)
        if status == 404:
            raise BackendUnavailable(f"Ollama at {url} has no model {model!r}: run `ollama pull {model}`") from None
        if isinstance(status, int) and status >= 400:
            raise BackendUnavailable(f"Ollama at {url} answered {status}: {exc}") from None
        raise
