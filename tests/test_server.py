"""The HTTP API, called over real HTTP on loopback: a uvicorn server on a free port, with the
real packaged embedder and the smallest packaged chat model."""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import httpx
import openai
import pytest
from conftest import cli_env

from kbloop.server.app import ChatMessage, conversation, create_app, running
from kbloop.server.service import Service
from kbloop.cli.main import main
from kbloop.config import Home, init_home
from kbloop.errors import KbloopError, NeedsRebuild, StoreError
from kbloop.evaluate.feedback import FeedbackStore
from kbloop.ingest.manifest import Manifest
from kbloop.kb import KnowledgeBase
from kbloop.schema import MIGRATIONS

PORT_QUESTION = "Which port does Harbor listen on by default?"
ERROR_KEYS = {"type", "message", "status"}


def sample_docs(home: Home) -> None:
    for item in resources.files("kbloop.samples").iterdir():
        if item.name.endswith((".md", ".txt", ".html")):
            with resources.as_file(item) as src:
                shutil.copyfile(src, home.root / "docs" / item.name)


def make_home(root: Path, embedder) -> Home:
    """A home holding the bundled samples, ingested."""
    home = init_home(root)
    sample_docs(home)
    with KnowledgeBase(home, home.load_settings(environ={}), embedder=embedder) as kb:
        kb.ingest()
    return home


@contextmanager
def serving(home: Home, embedder, generator, **settings):
    """A real server for ``home`` on a free loopback port; yields (base URL, service)."""
    config = home.load_settings(environ={}).model_copy(
        update={"generator": generator.spec, "verify_answers": False, "value_confidence": 0.0,
                "answer_confidence": 0.0, **settings})
    service = Service(home, config, embedder=embedder, ingest_embedder=embedder, generator=generator)
    with running(create_app(service)) as url:
        yield url, service


def assert_error(response: httpx.Response, status: int) -> str:
    """The one error shape; returns its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    assert body["error"]["status"] == status and isinstance(body["error"]["type"], str)
    assert "Traceback" not in body["error"]["message"]
    return body["error"]["message"]


def wait_for_ingest(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/ingest/{job_id}").json()
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"ingest {job_id} still running after {timeout}s")


@pytest.fixture(scope="module")
def served(tmp_path_factory, embedder, generator):
    home = make_home(tmp_path_factory.mktemp("served") / "kb", embedder)
    with serving(home, embedder, generator) as (url, service):
        yield url, service


@pytest.fixture
def client(served):
    with httpx.Client(base_url=served[0], timeout=120) as http:
        yield http


@pytest.fixture
def fresh(tmp_path, embedder, generator):
    """A server of its own, for tests that change the home."""
    home = make_home(tmp_path / "kb", embedder)
    with serving(home, embedder, generator) as (url, service), httpx.Client(base_url=url, timeout=120) as http:
        yield http, service


# -- OpenAI compatibility ------------------------------------------------------------------------

def test_openai_client_lists_the_model_and_gets_an_answer_with_sources(served):
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["kbloop"]

    reply = client.chat.completions.create(model="kbloop", messages=[{"role": "user", "content": PORT_QUESTION}])
    assert reply.object == "chat.completion" and reply.choices[0].finish_reason == "stop"
    assert "8735" in reply.choices[0].message.content
    extra = reply.model_extra["kbloop"]
    assert not extra["refused"] and extra["answer"] == reply.choices[0].message.content
    cited = [s["path"] for s in extra["sources"] if s["cited"]]
    assert "getting-started.md" in cited and "8735" in extra["sources"][0]["text"]
    assert reply.usage.completion_tokens == extra["timings"]["completion_tokens"] > 0


def test_openai_client_streams_an_answer_that_ends_with_its_sources(served):
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="kbloop", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": PORT_QUESTION}])
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "8735" in "".join(pieces)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert len(final) == 1 and final[0].model_extra["kbloop"]["sources"][0]["path"] == "getting-started.md"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_streaming_endpoint_speaks_server_sent_events(client):
    body = {"model": "kbloop", "stream": True,
            "messages": [{"role": "user", "content": "What is the capital of Peru?"}]}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert len({e["id"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    final = events[-1]["kbloop"]
    assert final["refused"] and "KBLOOP_MIN_SCORE" in final["refusal_reason"]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == final["answer"]


def test_a_streamed_reply_that_is_not_taken_ends_with_the_refusal(tmp_path, embedder):
    from fake_ollama import FakeOllama
    from kbloop import models
    from kbloop.assistant.answer import NOT_IN_KB
    from kbloop.config import Settings

    home = make_home(tmp_path / "kb", embedder)
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: "Harbor listens on port 9000.") as ollama:
        generator = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=ollama.url))
        with serving(home, embedder, generator) as (url, _):
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            chunks = list(client.chat.completions.create(
                model="kbloop", stream=True, messages=[{"role": "user", "content": PORT_QUESTION}]))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == f"Harbor listens on port 9000.\n\n{NOT_IN_KB}"
    final = chunks[-1].model_extra["kbloop"]
    assert final["refused"] and final["refusal_reason"] == "the answer states 9000, which no source contains"


def test_earlier_turns_become_history_and_the_last_must_be_a_question(client):
    messages = [ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="Which port?"),
                ChatMessage(role="assistant", content="8735."),
                ChatMessage(role="user", content=[{"type": "text", "text": "And how do I change it?"}])]
    assert conversation(messages) == ("And how do I change it?", [("Which port?", "8735.")])
    bad = client.post("/v1/chat/completions", json={"model": "kbloop", "messages": [
        {"role": "user", "content": PORT_QUESTION}, {"role": "assistant", "content": "8735"}]})
    assert "last message must be the user's question" in assert_error(bad, 400)


# -- search, status, and searches never waiting for the model ------------------------------------

def test_search_and_status(served, client):
    hits = client.get("/api/search", params={"q": "default port", "k": 2}).json()["hits"]
    assert len(hits) == 2 and hits[0]["path"] == "getting-started.md" and "8735" in hits[0]["text"]
    assert [h["rank"] for h in hits] == [1, 2]
    posted = client.post("/api/search", json={"query": "default port", "k": 2}).json()["hits"]
    assert posted == hits

    status = client.get("/api/status").json()
    manifest = Manifest(served[1].home.manifest_path)
    try:
        counts = manifest.counts()
    finally:
        manifest.close()
    assert {k: status[k] for k in counts} == counts
    assert status["vectors"] == counts["chunks"] and status["generator"] == "local:smollm2-135m"
    assert status["server"]["api_key"] is False


def test_searches_do_not_wait_for_an_answer_being_generated(served, client):
    url, service = served
    answers: list = []

    def ask() -> None:
        with httpx.Client(base_url=url, timeout=120) as own:
            answers.append(own.post("/v1/chat/completions", json={
                "model": "kbloop", "messages": [{"role": "user", "content": PORT_QUESTION}]}))

    with service.model.lock:  # as if a long answer were being generated
        asking = threading.Thread(target=ask)
        asking.start()
        for _ in range(5):
            response = client.get("/api/search", params={"q": "listen_port"}, timeout=10)
            assert response.status_code == 200 and response.json()["hits"]
        assert client.get("/api/status", timeout=10).status_code == 200
        assert not answers  # the answer waits for the model, the searches did not
    asking.join(120)
    assert answers[0].status_code == 200 and "8735" in answers[0].json()["choices"][0]["message"]["content"]


# -- the error shape -----------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,body,status,says", [
    ("GET", "/nowhere", None, 404, "no route"),
    ("DELETE", "/api/status", None, 405, "not allowed"),
    ("POST", "/api/search", b"{not json", 400, "not valid JSON"),
    ("POST", "/api/search", {"k": 3}, 422, "query"),
    ("POST", "/api/search", {"query": "x", "colour": 1}, 422, "colour"),
    ("GET", "/api/search?q=%20%20", None, 400, "empty query"),
    ("GET", "/api/search", None, 422, "q:"),
    ("POST", "/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "unknown model"),
    ("POST", "/v1/chat/completions", {"model": "kbloop", "messages": []}, 422, "messages"),
    ("POST", "/api/feedback", {"rating": "meh", "question": "q", "answer": "a"}, 422, "rating"),
    ("GET", "/api/feedback?limit=many", None, 422, "limit"),
    ("POST", "/api/ingest", {"paths": ["../../etc"]}, 400, "outside the docs folder"),
    ("GET", "/api/ingest/nosuchjob", None, 404, "no ingest"),
    ("GET", "/api/evals/run/..%2F..%2F.env", None, 404, ""),
    ("GET", "/api/evals/run/report.exe", None, 404, "no report file"),
    ("POST", "/api/feedback", b"x" * ((1 << 20) + 1), 413, "larger than"),
])
def test_every_error_has_one_json_shape(client, method, path, body, status, says):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    message = assert_error(client.request(method, path, **kwargs), status)
    assert says in message


@pytest.mark.parametrize("raised,status,says", [
    (KbloopError("empty query: say what to search for"), 400, "empty query"),
    (NeedsRebuild("the index was built with another embedder"), 409, "another embedder"),
    (StoreError("vector_store/index.3.faiss is missing"), 503, "index.3.faiss"),
    (RuntimeError("a bug"), 500, "internal error (RuntimeError)"),
])
def test_domain_errors_keep_their_message_and_bugs_do_not_leak(served, client, monkeypatch, raised, status, says):
    def fail(*args):
        raise raised

    monkeypatch.setattr(served[1], "search", fail)
    message = assert_error(client.get("/api/search", params={"q": "port"}), status)
    assert says in message and (status != 500 or "a bug" not in message)


def test_host_and_origin_of_other_sites_are_refused(client):
    assert "loopback" in assert_error(client.get("/api/status", headers={"Host": "attacker.example"}), 403)
    assert "cross-origin" in assert_error(
        client.post("/api/ingest", headers={"Origin": "http://attacker.example"}), 403)


def test_api_key_is_required_when_set(tmp_path, embedder, generator):
    home = make_home(tmp_path / "kb", embedder)
    with serving(home, embedder, generator, api_key="s3cret") as (url, _):
        with httpx.Client(base_url=url) as http:
            missing = http.get("/api/status")
            assert "API key" in assert_error(missing, 401) and missing.headers["www-authenticate"] == "Bearer"
            assert_error(http.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
            assert http.get("/api/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert http.get("/").status_code == 200  # the page itself asks for the key
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in client.models.list()] == ["kbloop"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()


# -- feedback ------------------------------------------------------------------------------------

def test_feedback_is_stored_and_thumbs_down_are_eval_candidates(served, client):
    up = client.post("/api/feedback", json={"rating": "up", "question": PORT_QUESTION, "answer": "8735"})
    down = client.post("/api/feedback", json={
        "rating": "down", "question": "Where is the data folder?", "answer": "In /tmp.", "comment": "wrong folder",
        "sources": [{"n": 1, "path": "getting-started.md", "cited": True}], "model": "local:smollm2-135m"})
    assert up.status_code == down.status_code == 201
    assert down.json()["eval_candidate"] is True and up.json()["eval_candidate"] is False

    listed = client.get("/api/feedback", params={"rating": "down"}).json()["feedback"]
    assert [f["id"] for f in listed] == [down.json()["id"]]
    manifest = Manifest(served[1].home.manifest_path)
    try:
        candidates = FeedbackStore(manifest.db).eval_candidates()
    finally:
        manifest.close()
    assert [(c.question, c.comment, c.sources[0]["path"]) for c in candidates] == [
        ("Where is the data folder?", "wrong folder", "getting-started.md")]


def test_an_older_manifest_gains_the_feedback_table(tmp_path):
    old = Manifest(tmp_path / "kbloop.sqlite", MIGRATIONS)
    old.db.executescript("DROP TABLE feedback; DELETE FROM migrations WHERE name = '004_feedback';")
    old.close()
    reopened = Manifest(tmp_path / "kbloop.sqlite", MIGRATIONS)
    try:
        feedback_id = FeedbackStore(reopened.db).add("down", "q?", "a.")
        assert [f.id for f in FeedbackStore(reopened.db).eval_candidates()] == [feedback_id]
    finally:
        reopened.close()


# -- adapters and evaluation reports -------------------------------------------------------------

def test_adapters_and_evaluation_reports_are_served_read_only(served, client):
    data = served[1].home.data_dir
    assert client.get("/api/adapters").json() == {"adapters": []}
    assert client.get("/api/evals").json() == {"runs": [], "latest": None}

    (data / "adapters" / "v1").mkdir(parents=True)
    (data / "adapters" / "v1" / "lineage.json").write_text(json.dumps({"parent": None, "dataset": "d1"}))
    run = data / "evals" / "20260101-1200"
    run.mkdir(parents=True)
    (run / "report.json").write_text('{"accuracy": 0.5, "judge": {"mean": NaN}}')
    (run / "accuracy.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (run / "notes.sh").write_text("echo not served")
    (data / "secret.json").write_text("{}")

    adapters = client.get("/api/adapters").json()["adapters"]
    assert [(a["version"], a["lineage"]["dataset"]) for a in adapters] == [("v1", "d1")]
    latest = client.get("/api/evals").json()["latest"]
    assert latest["run"] == run.name and latest["plots"] == ["accuracy.png"]
    assert latest["report"] == {"accuracy": 0.5, "judge": {"mean": None}}
    plot = client.get(f"/api/evals/{run.name}/accuracy.png")
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert plot.content == (run / "accuracy.png").read_bytes()
    for path in [f"/api/evals/{run.name}/notes.sh", f"/api/evals/{run.name}/..%2F..%2Fsecret.json",
                 "/api/evals/..%2F/secret.json", "/api/evals/.hidden/report.json"]:
        assert_error(client.get(path), 404)


# -- ingest: in the background, one at a time, never blocking or tearing a search ----------------

def test_ingest_runs_in_the_background_and_a_second_one_is_refused(fresh):
    http, service = fresh
    (service.home.root / "docs" / "ferry.txt").write_text("The night ferry leaves from pier seventeen at 23:40.\n")
    with open(service.home.data_dir / "write.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another writer (the daemon, say) holds the home
        started = http.post("/api/ingest")
        assert started.status_code == 202 and started.headers["location"] == f"/api/ingest/{started.json()['id']}"
        assert "still running" in assert_error(http.post("/api/ingest"), 409)
        assert http.get("/api/search", params={"q": "night ferry"}, timeout=10).status_code == 200
        assert http.get(f"/api/ingest/{started.json()['id']}").json()["state"] == "running"
    job = wait_for_ingest(http, started.json()["id"])
    assert job["state"] == "ok" and job["counts"]["files_added"] == 1 and job["error"] is None
    assert http.get("/api/ingest").json() == job
    assert http.get("/api/search", params={"q": "night ferry pier", "k": 1}).json()["hits"][0]["path"] == "ferry.txt"
    assert http.get("/api/status").json()["ingest"] == job


def edition(n: int) -> str:
    """A document of several chunks, each of which names the document's edition."""
    return "\n\n".join(f"Edition {n} of the lighthouse log, part {p}. " + "The keeper trims the lamp wick. " * 15
                       for p in range(3))


def editions(hits: list[dict]) -> set[str]:
    return {e for h in hits if h["path"] == "lighthouse.txt" for e in re.findall(r"Edition (\d+)", h["text"])}


def test_searches_during_an_ingest_see_one_consistent_index(fresh):
    http, service = fresh
    docs = service.home.root / "docs"
    (docs / "lighthouse.txt").write_text(edition(1))
    first = wait_for_ingest(http, http.post("/api/ingest").json()["id"])
    assert first["counts"]["chunks_embedded"] >= 3
    words = [f"codeword{i:03d}" for i in range(200)]
    for i, word in enumerate(words):  # more files than one ingest batch holds: several commits
        (docs / f"note-{i:03d}.txt").write_text(f"Crate {word} is stored on shelf {i} of the north depot.\n")
    (docs / "lighthouse.txt").write_text(edition(2))
    (docs / "troubleshooting.txt").unlink()

    job = http.post("/api/ingest").json()
    started = job["started_at"]
    results: list[tuple[str, httpx.Response, float]] = []
    done = threading.Event()

    def ask(offset: int) -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=60) as own:
            i = offset
            while not done.is_set():
                query = ["lighthouse log edition", words[i % len(words)], "troubleshooting"][i % 3]
                results.append((query, own.get("/api/search", params={"q": query, "k": 6}), time.time()))
                i += 1

    clients = [threading.Thread(target=ask, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    finished = wait_for_ingest(http, job["id"])
    done.set()
    for thread in clients:
        thread.join(60)

    assert finished["state"] == "ok" and finished["counts"]["files_added"] == len(words)
    assert all(r.status_code == 200 for _, r, _ in results), [r.text for _, r, _ in results if r.is_error]
    # Searches wait for the shared embedder between batches: on an idle machine about 16 of them
    # land during this ingest; a few show that searching and committing did overlap.
    assert sum(started < answered_at < finished["finished_at"] for _, _, answered_at in results) >= 4
    for _, response, _ in results:
        hits = response.json()["hits"]
        assert len(editions(hits)) <= 1, f"one result mixed two versions of a file: {editions(hits)}"
        for hit in hits:
            if hit["path"].startswith("note-"):  # a chunk is always shown with its own file
                assert f"codeword{hit['path'][5:8]}" in hit["text"]
    # Afterwards every reader sees the new state.
    status = http.get("/api/status").json()
    assert status["vectors"] == status["chunks"] and status["files_indexed"] == 3 - 1 + 1 + len(words)
    late = http.get("/api/search", params={"q": words[-1], "k": 1}).json()["hits"][0]
    assert late["path"] == f"note-{len(words) - 1:03d}.txt"
    lighthouse = http.get("/api/search", params={"q": "lighthouse log edition", "k": 6}).json()["hits"]
    assert editions(lighthouse) == {"2"}
    assert all(h["path"] != "troubleshooting.txt" for h in http.get(
        "/api/search", params={"q": "troubleshooting", "k": 10}).json()["hits"])


def test_one_search_reads_one_committed_state_while_an_ingest_commits(fresh):
    http, service = fresh
    docs = service.home.root / "docs"
    (docs / "lighthouse.txt").write_text(edition(1))
    wait_for_ingest(http, http.post("/api/ingest").json()["id"])
    query = "lighthouse log edition"
    before = [(h["path"], h["text"]) for h in service.search(query, 6)]
    assert editions([{"path": p, "text": t} for p, t in before]) == {"1"}
    (docs / "lighthouse.txt").write_text(edition(2))

    with service.readers.borrow() as kb:
        keyword_search = kb.manifest.keyword_search

        def keyword_search_then_a_whole_ingest(*args):
            found = keyword_search(*args)
            job = service.ingests.start(None, False)  # commits between this search's two manifest reads
            while job.state == "running":
                time.sleep(0.02)
            assert job.state == "ok" and job.counts["files_changed"] == 1
            return found

        kb.manifest.keyword_search = keyword_search_then_a_whole_ingest
        try:
            during = [(h.path, h.text) for h in kb.search(query, 6)]
        finally:
            del kb.manifest.keyword_search
    assert during == before  # the state it began with, whole, not a mix of before and after
    assert editions(service.search(query, 6)) == {"2"}


# -- the command ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_kbloop_serve_prints_its_address_and_stops_cleanly(tmp_path, embedder, stop):
    home = make_home(tmp_path / "kb", embedder)
    proc = subprocess.Popen([sys.executable, "-m", "kbloop.cli.main", "serve", "--port", "0"],
                            env=cli_env(home.root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        status = httpx.get(f"{url}/api/status", timeout=60).json()
        assert status["files_indexed"] == 3 and status["home"] == str(home.root)
        proc.send_signal(stop)
        assert proc.wait(30) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kbloop_serve_on_a_busy_port_is_one_line_error(home, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["--home", str(home.root), "serve", "--port", port]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}") and len(err.strip().splitlines()) == 1
