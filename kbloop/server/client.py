"""The HTTP API of a running server, spoken by the command line.

``RemoteAssistant`` and ``RemoteSearch`` offer what the in-process ``Assistant`` and
``KnowledgeBase.search`` offer (a stream of text pieces ending with an ``Answer``; a list of
``Hit``), so a command prints the same thing whichever answered it.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import httpx

from kbloop.assistant.answer import Answer, Progress, Source
from kbloop.errors import KbloopError
from kbloop.ingest.manifest import Hit

MODEL_ID = "kbloop"


class ServerUnreachable(KbloopError):
    """The announced server did not take the connection (it stopped meanwhile)."""


class ServerError(KbloopError):
    """The server answered with an error; its message is the one line shown."""


class RemoteClient:
    def __init__(self, url: str, api_key: str = "", timeout: float = 600.0):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Loopback only, so no proxy from the environment applies.
        self.http = httpx.Client(base_url=self.url, headers=headers, trust_env=False,
                                 timeout=httpx.Timeout(timeout, connect=2.0))

    def close(self) -> None:
        self.http.close()

    def _check(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            response.read()
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise ServerError(f"{message} (server at {self.url})")

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ServerUnreachable(f"no server at {self.url}: {exc}") from None
        except httpx.TransportError as exc:
            raise ServerError(f"the server at {self.url} failed: {exc}") from None
        self._check(response)
        return response.json()


class RemoteSearch(RemoteClient):
    def search(self, query: str, k: int | None = None) -> list[Hit]:
        params = {"q": query} | ({"k": str(k)} if k else {})
        body = self._request("GET", "/api/search", params=params)
        return [Hit(-1, h["score"], h["path"], h["text"],
                    {key: h[key] for key in ("page", "section") if h.get(key) is not None})
                for h in body["hits"]]


class RemoteAssistant(RemoteClient):
    def stream(self, question: str, history: list[tuple[str, str]] | None = None
               ) -> Iterator[str | Progress | Answer]:
        messages = []
        for asked, answered in history or []:
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
        messages.append({"role": "user", "content": question})
        request = {"model": MODEL_ID, "messages": messages, "stream": True}
        try:
            with self.http.stream("POST", "/v1/chat/completions", json=request) as response:
                self._check(response)
                yield from _events(response.iter_lines())
        except httpx.ConnectError as exc:
            raise ServerUnreachable(f"no server at {self.url}: {exc}") from None
        except httpx.TransportError as exc:
            raise ServerError(f"the server at {self.url} failed mid-answer: {exc}") from None

    def ask(self, question: str, history: list[tuple[str, str]] | None = None) -> Answer:
        for item in self.stream(question, history):
            if isinstance(item, Answer):
                return item
        raise ServerError(f"the server at {self.url} ended the answer without its sources")


def _events(lines: Iterator[str]) -> Iterator[str | Progress | Answer]:
    """Server-sent chat chunks as text pieces, then the Answer the last chunk carries. A
    refusal that replaced streamed text arrives as one more piece; the Answer says so too."""
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            raise ServerError(f"{event['error'].get('message')} (from the server)")
        if "kbloop" in event:
            yield answer_from_dict(event["kbloop"])
            continue
        if event.get("kbloop_retraction"):  # the Answer that follows says it, as in-process
            continue
        if "kbloop_progress" in event:
            yield Progress(event["kbloop_progress"])
            continue
        for choice in event.get("choices", []):
            piece = choice.get("delta", {}).get("content")
            if piece:
                yield piece


def answer_from_dict(data: dict) -> Answer:
    fields = {k: v for k, v in data.items() if k != "sources"}
    sources = [Source(**{"text": ""} | s) for s in data.get("sources", [])]
    return Answer(**fields, sources=sources)
