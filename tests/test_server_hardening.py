"""The HTTP API against hostile or unlucky clients, over real HTTP on loopback: ids no store
holds, numbers JSON cannot carry back, a connection reused after a bug's 500, a client that
leaves before its answer, links named in an ingest request."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import httpx
import pytest
from test_server import PORT_QUESTION, assert_error, client, make_home, served, serving  # noqa: F401 - fixtures

from kbloop import models
from kbloop.config import Settings
from kbloop.models.cancel import Cancelled, stops_on
from kbloop.models.generators import YES_NO
from kbloop.server.app import ChatMessage


@pytest.mark.parametrize("raw,status,says", [
    ("9223372036854775808", 404, "no rating"),      # past SQLite's largest integer
    ("%C2%B2", 422, "whole number"),                # "²" is a digit to str.isdigit
    ("%E2%91%A0", 422, "whole number"),             # "①" too
])
def test_a_correction_id_no_rating_can_have_is_refused_in_one_line(client, raw, status, says):
    assert says in assert_error(client.delete(f"/api/feedback/{raw}/correction"), status)


def test_a_bug_answered_with_a_500_leaves_the_connection_usable(served, client, monkeypatch):
    def fail(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(served[1], "search", fail)
    address = urlsplit(served[0])
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        head = f"GET /api/search?q=port HTTP/1.1\r\nHost: {address.hostname}\r\n\r\n".encode()
        sock.sendall(head)
        first = read_response(sock)
        assert first.startswith(b"HTTP/1.1 500")
        sock.sendall(f"GET /api/status HTTP/1.1\r\nHost: {address.hostname}\r\n\r\n".encode())
        assert read_response(sock).startswith(b"HTTP/1.1 200")  # the same connection answers again


def read_response(sock: socket.socket) -> bytes:
    """One HTTP response with a Content-Length body; empty when the server closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            return data
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("body", [
    b'{"rating": "down", "question": "q", "answer": "a", "sources": [{"score": 1e999}]}',
    b'{"rating": "down", "question": "q", "answer": "a", "sources": [{"score": NaN}]}',
    b'{"query": "port", "k": Infinity}',
])
def test_numbers_json_cannot_carry_back_are_refused(client, body):
    path = "/api/search" if b"query" in body else "/api/feedback"
    assert "not a finite number" in assert_error(client.post(path, content=body), 400)
    assert client.get("/api/feedback").status_code == 200


def test_a_rating_stored_with_an_infinite_score_is_listed_without_its_sources(served, client):
    with served[1].readers.borrow() as kb:  # stored by an older kbloop, which let it through
        kb.manifest.db.execute("UPDATE feedback SET sources = ? WHERE id = ?",
                               ('[{"score": Infinity}]', served[1].add_feedback("down", "q?", "a")))
        kb.manifest.db.commit()
    listed = client.get("/api/feedback")
    assert listed.status_code == 200
    assert listed.json()["feedback"][0]["sources"] == []


@pytest.mark.parametrize("text", [None, False, {"a": 1}, ["port"]])
def test_a_text_part_that_is_no_string_is_refused_not_asked_as_its_repr(client, text):
    body = {"model": "kbloop", "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
    assert "must be a string" in assert_error(client.post("/v1/chat/completions", json=body), 422)
    assert ChatMessage(role="user", content=[{"type": "text", "text": "port?"}]).text() == "port?"


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_before_its_answer_frees_the_model(served, stream):
    """A question whose client goes away stops within a few tokens, even while its text is held
    back and nothing has been sent, instead of holding the one model until the answer nobody
    reads is done."""
    url, service = served
    generator = service.model.generator
    pieces: list[float] = []
    generator.stream = slowed(generator.stream, pieces)
    try:
        left = ask_then_leave(url, pieces, stream=stream)
        deadline = time.monotonic() + 120
        while service.model.lock.locked() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pieces, "the model wrote nothing"
        assert sum(t > left for t in pieces) <= 3  # it stopped within a few pieces of the client leaving
    finally:
        del generator.stream


def slowed(stream, pieces: list[float]):
    """``stream`` as on a CPU a few times slower than this one, where it matters; the time of
    each piece it writes goes to ``pieces``."""
    def slow(*args, **kwargs):
        for piece in stream(*args, **kwargs):
            pieces.append(time.monotonic())
            time.sleep(0.05)
            yield piece
    return slow


def ask_then_leave(url: str, pieces: list[float], stream: bool = False) -> float:
    """Ask for a long answer over a raw connection and close it once the model has written its
    first piece; returns when the client left."""
    address = urlsplit(url)
    body = json.dumps({"model": "kbloop", "stream": stream, "messages": [
        {"role": "user", "content": PORT_QUESTION + " Explain every setting of it at length."}]}).encode()
    with socket.create_connection((address.hostname, address.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + 120
        while not pieces and time.monotonic() < deadline:
            time.sleep(0.01)
    return time.monotonic()


def test_a_client_that_leaves_while_the_judge_reads_again_frees_the_judge(tmp_path, embedder, generator):
    """The judge model reading the sources again (after the generator found no answer) stops
    within a few tokens of the client leaving, as the generator does."""
    home = make_home(tmp_path / "kb", embedder)
    with serving(home, embedder, generator, read_again=True, read_again_with="judge") as (url, service):
        pieces: list[float] = []

        def refuses(*args, **kwargs):
            yield "I don't know."

        judge = SimpleNamespace(spec="judge", stream=slowed(generator.stream, pieces))  # the same small model
        service.model.generator.stream = refuses
        service.second_checker.model = judge
        try:
            left = ask_then_leave(url, pieces)
            time.sleep(1.0)  # 20 pieces' time at the judge's pace
            assert pieces, "the judge never read again"
            assert sum(t > left for t in pieces) <= 3
        finally:
            del service.model.generator.stream


@pytest.mark.parametrize("kind", ["llamacpp", pytest.param("transformers", marks=pytest.mark.slow)])
def test_every_model_call_stops_once_its_request_is_cancelled(generator, model_cache, kind):
    """Streaming, a JSON verdict and a probability all stop in a thread whose request was
    cancelled, on either engine, and the mark ends with its block."""
    if kind == "transformers":
        generator = models.create("generator", "local:smollm2-135m",
                                  Settings(model_cache=str(model_cache), engine="transformers"))
    messages = [{"role": "user", "content": "Count from one to one hundred in words."}]
    stop, written = threading.Event(), []
    with stops_on(stop), pytest.raises(Cancelled):
        for piece in generator.stream(messages, max_new_tokens=120):
            written.append(piece)
            if len(written) == 3:
                stop.set()
    assert len(written) == 3
    with stops_on(stop):
        with pytest.raises(Cancelled):
            generator.complete_json("Is the sky blue?", YES_NO, max_new_tokens=16)
        with pytest.raises(Cancelled):
            generator.continuation_probability(messages, "One, two,", " three")
    assert generator.generate(messages, max_new_tokens=4)  # outside the block nothing is stopped
    assert "," not in generator.generate(messages, max_new_tokens=24, stop=[","])  # stop strings still stop


def test_an_ingest_request_names_links_as_the_index_does(tmp_path, embedder, generator):
    """A link inside docs/ is indexed under its own name, and a followed external link is the
    indexer's to judge: the job names both as asked, not as their targets."""
    home = make_home(tmp_path / "kb", embedder)
    docs = home.root / "docs"
    (docs / "manual").mkdir()
    (docs / "manual" / "guide.md").write_text("# Guide\n\nThe widget colour is blue.\n")
    os.symlink(docs / "manual" / "guide.md", docs / "guide.md")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "vault.md").write_text("# Vault\n\nThe vault keeps archives for ninety days.\n")
    os.symlink(outside, docs / "ext")
    with serving(home, embedder, generator, follow_external_links=True) as (url, service):
        assert service.ingest_paths(["guide.md", "ext"]) == [str(docs.resolve() / "guide.md"), str(docs.resolve() / "ext")]
        with pytest.raises(Exception, match="outside the docs folder"):
            service.ingest_paths(["ext/../../outside"])
