"""Talking to an Ollama server: timeouts, a deadline, and one clear error for each way it can fail."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from kbloop.errors import BackendUnavailable


def client_kwargs(settings: Any) -> dict:
    import httpx

    # langchain-ollama has no default timeout: a server that accepts and never answers
    # would block forever.
    return {"timeout": httpx.Timeout(settings.ollama_timeout, connect=settings.ollama_connect_timeout)}


def sync_client_kwargs(settings: Any) -> dict:
    """For the synchronous client, which is the one kbloop uses: the timeout bounds each wait
    for bytes, so a server that trickles them would hold an answer forever without a deadline."""
    from kbloop.models.deadline import DeadlineTransport

    return {"transport": DeadlineTransport(settings.ollama_deadline)}


@contextmanager
def ollama_errors(url: str, model: str) -> Iterator[None]:
    """Turn every transport and server failure inside the block into one BackendUnavailable: no
    connection, a timeout or the deadline, a reply cut off midway, an error the server reports."""
    import httpx
    from ollama import ResponseError

    from kbloop.models.deadline import DeadlineExceeded

    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, ConnectionError) as exc:
        raise BackendUnavailable(
            f"cannot reach Ollama at {url} ({exc.__class__.__name__}): start it with `ollama serve` "
            "or set KBLOOP_OLLAMA_URL"
        ) from None
    except DeadlineExceeded as exc:
        raise BackendUnavailable(
            f"Ollama at {url} did not finish within {exc.seconds:g} s; raise KBLOOP_OLLAMA_DEADLINE or check the server"
        ) from None
    except httpx.TimeoutException:
        raise BackendUnavailable(
            f"Ollama at {url} did not answer in time; raise KBLOOP_OLLAMA_TIMEOUT or check the server"
        ) from None
    except httpx.TransportError as exc:
        raise BackendUnavailable(
            f"Ollama at {url} broke off the connection ({exc.__class__.__name__}: {exc}); check the server "
            "and try again"
        ) from None
    except ResponseError as exc:
        if exc.status_code == 404:
            raise BackendUnavailable(f"Ollama at {url} has no model {model!r}: run `ollama pull {model}`") from None
        answered = f"answered {exc.status_code}" if exc.status_code >= 400 else "reported an error"
        raise BackendUnavailable(f"Ollama at {url} {answered}: {exc.error}") from None
