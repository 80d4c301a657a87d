"""What clients and the disk can throw at kbloop's edges: hostile or broken request bodies, slow
and vanishing clients, links out of the data folder, a world-readable key file, and homes that
kbloop may read but not write. Each is refused in one line, and nothing stays broken after it.

Read-only homes are simulated, since tests may run as root (whom no file mode stops): the
database is opened the way it is in a folder kbloop may not write, and the folder checks are
told the folder is read-only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import time
from pathlib import Path

import httpx
import pytest
from conftest import cli_error, run_cli
from test_server import assert_error, make_home

from kbloop import db as kbloop_db
from kbloop.config import init_home
from kbloop.db import ReadOnlyConnection, connect, connect_read_only
from kbloop.errors import StoreError
from kbloop.evaluate.feedback import SOURCES_MAX_BYTES, FeedbackStore
from kbloop.fsutil import exclusive
from kbloop.ingest.manifest import Manifest
from kbloop.kb import KnowledgeBase
from kbloop.schema import MIGRATIONS
from kbloop.server import app as server_app
from kbloop.server.app import KEEP_ALIVE, MAX_CONCURRENCY, MAX_HEAD, _server, create_app, running
from kbloop.server.protocol import HeadDeadlineProtocol
from kbloop.server.service import Service
from kbloop.vector_store.faiss_store import FaissStore


def nested(depth: int) -> object:
    """A JSON value nested ``depth`` lists deep, built without recursion."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.fixture
def api(home, embedder):
    """A real server over a home with nothing ingested: (client, service, base URL)."""
    service = Service(home, home.load_settings(environ={}), embedder=embedder, ingest_embedder=embedder)
    with running(create_app(service)) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, service, url


def one_line(message: str) -> str:
    assert "\n" not in message and "Traceback" not in message, message
    return message


# -- request bodies ------------------------------------------------------------------------------

def test_feedback_with_deeply_nested_sources_is_refused_and_listing_keeps_working(api):
    client, _, _ = api
    refused = client.post("/api/feedback", json={"rating": "down", "question": "q?", "answer": "a.",
                                                 "sources": [{"n": 1, "deep": nested(900)}]})
    assert "nest" in one_line(assert_error(refused, 400))
    assert client.get("/api/feedback").json() == {"feedback": []}


def test_feedback_with_oversized_sources_is_refused(api):
    client, _, _ = api
    sources = [{"n": n, "text": "x" * 4000} for n in range(SOURCES_MAX_BYTES // 4000 + 5)]
    refused = client.post("/api/feedback", json={"rating": "up", "question": "q?", "answer": "a.", "sources": sources})
    assert "bytes" in one_line(assert_error(refused, 400))


def test_stored_ratings_with_broken_sources_are_listed_without_them(api, caplog):
    client, service, _ = api
    manifest = Manifest(service.home.manifest_path, MIGRATIONS)
    try:
        store = FeedbackStore(manifest.db)
        good = store.add("down", "Where is the port set?", "In harbor.toml.", sources=[{"n": 1, "path": "a.md"}])
        for broken in (json.dumps(nested(900)), "[" * 100_000 + "]" * 100_000, "{not json", '{"n": 1}'):
            manifest.db.execute("INSERT INTO feedback (created_at, rating, question, answer, sources) "
                                "VALUES (?, 'down', 'old?', 'old.', ?)", (time.time(), broken))
        with caplog.at_level(logging.WARNING, logger="kbloop.evaluate.feedback"):
            listed = client.get("/api/feedback")
            candidates = store.eval_candidates()
    finally:
        manifest.close()
    assert listed.status_code == 200, listed.text
    rows = listed.json()["feedback"]
    assert [(r["question"], r["sources"]) for r in rows] == [("old?", [])] * 4 + [
        ("Where is the port set?", [{"n": 1, "path": "a.md"}])]
    assert [c.id for c in candidates][-1] == good and len(candidates) == 5
    warnings = [r for r in caplog.records if "stored sources" in r.getMessage()]
    assert len(warnings) == 8 and not any(r.exc_info for r in warnings)  # 4 rows, listed twice


def test_deeply_nested_bodies_are_400_not_500(api):
    client, _, _ = api
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/api/search", "/api/feedback", "/v1/chat/completions", "/api/ingest"):
        assert "nests too deeply" in one_line(assert_error(client.post(path, content=deep), 400))
    assert client.get("/api/status").status_code == 200


def test_a_path_with_a_null_character_is_400(api):
    client, _, _ = api
    message = assert_error(client.post("/api/ingest", json={"paths": ["a\u0000b"]}), 400)
    assert "null character" in one_line(message)


@pytest.mark.parametrize("path,body,field", [
    ("/api/ingest", {"rebuild": "yes"}, "rebuild"),
    ("/api/ingest", {"rebuild": 1}, "rebuild"),
    ("/api/search", {"query": "port", "k": "5"}, "k"),
    ("/api/search", {"query": "port", "k": 5.0}, "k"),
    ("/api/feedback", {"rating": "up", "question": "q", "answer": "a", "refused": "no"}, "refused"),
    ("/v1/chat/completions", {"model": "kbloop", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
     "stream"),
])
def test_request_fields_are_not_coerced(api, monkeypatch, path, body, field):
    client, service, _ = api
    monkeypatch.setattr(service.ingests, "start", lambda *a: pytest.fail("an ingest started"))
    assert field in one_line(assert_error(client.post(path, json=body), 422))


def test_query_parameters_still_read_numbers(api):
    client, _, _ = api
    assert client.get("/api/search", params={"q": "port", "k": "3"}).status_code == 200


# -- evaluation reports --------------------------------------------------------------------------

def test_eval_listing_skips_run_folders_linked_from_outside(api, tmp_path):
    client, service, _ = api
    evals = service.home.data_dir / "evals"
    inside = evals / "20260101-1200"
    inside.mkdir(parents=True)
    (inside / "report.json").write_text(json.dumps({"decision": "promote"}), encoding="utf-8")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "report.json").write_text(json.dumps({"secret": "s3cret"}), encoding="utf-8")
    os.utime(outside / "report.json", (time.time() + 60, time.time() + 60))  # newest: it would be "latest"
    (evals / "linked-run").symlink_to(outside, target_is_directory=True)
    (inside / "stolen.json").symlink_to(outside / "report.json")

    listed = client.get("/api/evals")
    assert listed.status_code == 200 and "s3cret" not in listed.text
    body = listed.json()
    assert [r["run"] for r in body["runs"]] == ["20260101-1200"]
    assert body["runs"][0]["files"] == ["report.json"] and body["latest"]["report"] == {"decision": "promote"}
    assert client.get("/api/evals/linked-run/report.json").status_code == 404


# -- the key file --------------------------------------------------------------------------------

def test_init_writes_env_for_its_owner_only(tmp_path, monkeypatch):
    chmods = []
    monkeypatch.setattr(os, "chmod", lambda *a, **k: chmods.append(a))
    old_umask = os.umask(0o022)
    try:
        assert run_cli("init", str(tmp_path / "kb")).exit_code == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "kb" / ".env").stat().st_mode) == 0o600
    assert chmods == []  # created with that mode: never readable by others, not even for a moment


def test_init_leaves_an_existing_env_alone(tmp_path):
    home = init_home(tmp_path / "kb")
    home.env_file.write_text("KBLOOP_SEARCH_K=7\n", encoding="utf-8")
    init_home(tmp_path / "kb")
    assert home.env_file.read_text(encoding="utf-8") == "KBLOOP_SEARCH_K=7\n"


# -- slow, broken and vanishing clients ----------------------------------------------------------

def test_server_bounds_idle_time_head_size_and_connections():
    config = _server(object()).config
    assert config.http is HeadDeadlineProtocol
    assert (config.timeout_keep_alive, config.h11_max_incomplete_event_size, config.limit_concurrency) == (
        KEEP_ALIVE, MAX_HEAD, MAX_CONCURRENCY)


def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; socket.timeout if it never does."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_reply(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body), without waiting for the connection to close."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
            re.search(rb"(?i)content-length: *(\d+)", data.partition(b"\r\n\r\n")[0]).group(1)):
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole reply: {data!r}"
        data += chunk
    return data


def test_a_client_that_never_finishes_its_head_is_cut_off(api, monkeypatch):
    _, _, url = api
    monkeypatch.setattr(HeadDeadlineProtocol, "head_timeout", 0.5)
    started = time.monotonic()
    slow = [raw_connection(url) for _ in range(20)]  # half send nothing, half a head byte by byte
    for _ in range(3):  # only a complete head stops the clock, however steadily the bytes come
        for n, sock in enumerate(slow):
            if n % 2:
                sock.sendall(b"GET /api/status HTTP/1.1\r\nX-Slow: a" if _ == 0 else b"a")
        time.sleep(0.1)
    for sock in slow:
        with sock:
            assert read_until_closed(sock) == b""
    assert time.monotonic() - started < 5
    with raw_connection(url) as sock:  # a prompt client is served as before, and kept alive
        for _ in range(3):
            sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_reply(sock).startswith(b"HTTP/1.1 200")
            time.sleep(0.3)  # each response starts the next head's deadline afresh


def test_an_oversized_head_is_refused(api):
    _, _, url = api
    with raw_connection(url) as sock:  # more than MAX_HEAD bytes, and the head still not ended
        sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (MAX_HEAD + 1024))
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400")


def test_a_body_that_never_arrives_times_out(api, monkeypatch):
    _, _, url = api
    monkeypatch.setattr(server_app, "BODY_TIMEOUT", 0.5)
    with raw_connection(url) as sock:
        sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"query\":")
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive" in reply


def test_a_client_that_disconnects_mid_body_is_one_quiet_line(api, caplog):
    _, _, url = api
    uvicorn_log = logging.getLogger("uvicorn")  # uvicorn's loggers do not propagate to the root
    uvicorn_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(5):
                with raw_connection(url) as sock:
                    sock.sendall(b"POST /api/feedback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 1000\r\n\r\n{\"rating\": \"up\"")
                    time.sleep(0.05)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and sum("went away" in r.getMessage() for r in caplog.records) < 5:
                time.sleep(0.05)
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 5 and all(r.levelno in (logging.INFO, logging.WARNING) for r in gone)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


# -- homes kbloop may read but not write ---------------------------------------------------------

def test_a_database_kbloop_may_not_write_opens_read_only(tmp_path):
    path = tmp_path / "data" / "kbloop.sqlite"
    writer = connect(path, MIGRATIONS)  # open: its -wal file exists, so the reader must not assume immutable
    try:
        reader = connect_read_only(path, MIGRATIONS)
        writer.execute("INSERT INTO meta VALUES ('seen', 'yes')")
        assert reader.execute("SELECT value FROM meta WHERE key = 'seen'").fetchone()["value"] == "yes"
        with pytest.raises(StoreError) as refused:
            reader.execute("INSERT INTO meta VALUES ('k', 'v')")
        assert str(path.parent) in one_line(str(refused.value)) and "not writable" in str(refused.value)
        reader.close()
    finally:
        writer.close()
    assert not path.with_name("kbloop.sqlite-wal").exists()
    reader = connect_read_only(path, MIGRATIONS)  # no -wal now: opened immutable, needing no -shm file
    assert isinstance(reader, ReadOnlyConnection)
    assert reader.execute("SELECT value FROM meta WHERE key = 'seen'").fetchone()["value"] == "yes"
    with pytest.raises(StoreError):
        FeedbackStore(reader).add("up", "q?", "a.")
    reader.close()


def test_an_older_database_kbloop_may_not_write_is_one_line(tmp_path):
    path = tmp_path / "kbloop.sqlite"
    connect(path, MIGRATIONS[:2]).close()
    with pytest.raises(StoreError, match="needs upgrading"):
        connect_read_only(path, MIGRATIONS)
    with pytest.raises(StoreError, match="holds no database"):
        connect_read_only(tmp_path / "none.sqlite", MIGRATIONS)


@pytest.fixture
def ingested(tmp_path, embedder):
    return make_home(tmp_path / "kb", embedder)


def test_read_only_data_folder_reads_work_and_writes_fail_in_one_line(ingested, embedder, monkeypatch):
    monkeypatch.setattr(kbloop_db, "_writable", lambda path: False)
    with KnowledgeBase(ingested, ingested.load_settings(environ={}), embedder=embedder) as kb:
        assert isinstance(kb.manifest.db, ReadOnlyConnection)
        assert kb.search("Which port does Harbor listen on?", 3)
        assert kb.status()["files_indexed"] == len(list((ingested.root / "docs").iterdir()))
        (ingested.root / "docs" / "new.md").write_text("# New\nHarbor keeps logs for 30 days.\n", encoding="utf-8")
        with pytest.raises(StoreError, match="not writable"):
            kb.ingest()
    env = {"KBLOOP_HOME": str(ingested.root)}
    assert run_cli("status", env=env).exit_code == 0
    assert run_cli("search", "port", env=env).exit_code == 0
    assert "not writable" in cli_error(run_cli("ingest", env=env), 1)


def test_read_only_vector_store_searches_and_ingest_fails_in_one_line(ingested, embedder, monkeypatch):
    store_dir = ingested.vector_store_dir
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        False if mode & os.W_OK and Path(path) == store_dir else real_access(path, mode, **kw)))
    env = {"KBLOOP_HOME": str(ingested.root)}
    assert run_cli("search", "port", env=env).exit_code == 0
    (ingested.root / "docs" / "new.md").write_text("# New\nHarbor keeps logs for 30 days.\n", encoding="utf-8")
    saved = FaissStore.read_header(store_dir)
    line = cli_error(run_cli("ingest", env=env), 1)
    assert str(store_dir) in line and "not writable" in line
    assert FaissStore.read_header(store_dir) == saved  # the saved index is untouched


def test_a_lock_in_a_folder_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "data").write_text("a file where the folder should be", encoding="utf-8")
    with pytest.raises(StoreError) as refused:
        with exclusive(tmp_path / "data" / "write.lock", "index write"):
            pass
    assert "index write" in one_line(str(refused.value))
