"""Error kinds reach both edges unchanged: the HTTP status and JSON shape of the API, and the
one line and exit code of the CLI, come from the kind of error the library raised."""

from __future__ import annotations

import fcntl

import httpx
import pytest

from kbloop.cli.main import main
from kbloop.errors import (
    BackendUnavailable,
    ConfigError,
    Conflict,
    DaemonRunning,
    KbloopError,
    NotFound,
    StoreError,
)
from kbloop.fsutil import exclusive
from kbloop.server.app import create_app, running
from kbloop.server.service import IngestRunning, Service
from test_server import wait_for_ingest

ERROR_KEYS = {"type", "message", "status"}


def assert_error(response: httpx.Response, status: int, error_type: str) -> str:
    """The one error shape of the API; returns its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    assert (body["error"]["type"], body["error"]["status"]) == (error_type, status)
    return body["error"]["message"]


@pytest.fixture
def api(home, embedder):
    """A real server over an empty home (nothing ingested): (client, service)."""
    service = Service(home, home.load_settings(environ={}), embedder=embedder, ingest_embedder=embedder)
    with running(create_app(service)) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, service


# -- the kinds ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,http_status,exit_code", [
    (KbloopError, 400, 1), (ConfigError, 500, 2), (NotFound, 404, 3), (Conflict, 409, 4),
    (DaemonRunning, 409, 4), (IngestRunning, 409, 4), (BackendUnavailable, 503, 1), (StoreError, 503, 1),
])
def test_each_kind_carries_its_status_and_exit_code(kind, http_status, exit_code):
    assert (kind.http_status, kind.exit_code) == (http_status, exit_code)


def test_a_wrapped_message_is_one_line():
    assert KbloopError("the index is damaged:\n  run `kbloop check`").one_line() == \
        "the index is damaged: run `kbloop check`"


def test_a_held_exclusive_lock_is_a_conflict(tmp_path):
    with exclusive(tmp_path / "dataset.lock", "dataset build"):
        with pytest.raises(Conflict, match="another dataset build is running"):
            with exclusive(tmp_path / "dataset.lock", "dataset build"):
                pass


# -- the HTTP API ------------------------------------------------------------------------------

def test_a_missing_eval_run_or_report_file_is_404(api, home):
    client, _ = api
    run = home.data_dir / "evals" / "20260101-1200"
    run.mkdir(parents=True)
    (run / "report.json").write_text("{}")
    assert client.get(f"/api/evals/{run.name}/report.json").status_code == 200
    says = assert_error(client.get(f"/api/evals/{run.name}/report.md"), 404, "not_found")
    assert says == f"no report file {run.name}/report.md"
    assert_error(client.get("/api/evals/19990101-0000/report.json"), 404, "not_found")
    assert "no ingest nosuchjob" in assert_error(client.get("/api/ingest/nosuchjob"), 404, "not_found")


def test_a_second_ingest_while_one_runs_is_409(api, home):
    client, _ = api
    with open(home.data_dir / "write.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the first ingest waits for this writer
        first = client.post("/api/ingest")
        assert first.status_code == 202, first.text
        assert "still running" in assert_error(client.post("/api/ingest"), 409, "conflict")
    assert wait_for_ingest(client, first.json()["id"], timeout=60)["state"] == "ok"


@pytest.mark.parametrize("raised,status,error_type", [
    (NotFound("no adapter version 'v9'"), 404, "not_found"),
    (Conflict("another dataset build is running in this home"), 409, "conflict"),
    (BackendUnavailable("Ollama at http://127.0.0.1:11434 is not running"), 503, "unavailable"),
    (ConfigError("KBLOOP_TOP_K='many' is not a whole number"), 500, "internal_error"),
])
def test_the_api_answers_with_the_status_of_the_kind(api, monkeypatch, raised, status, error_type):
    client, service = api

    def fail(*args):
        raise raised

    monkeypatch.setattr(service, "search", fail)
    assert assert_error(client.get("/api/search", params={"q": "port"}), status, error_type) == str(raised)


# -- the CLI -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args,says", [
    (["evaluate", "show"], "error: no evaluations yet: run `kbloop evaluate`"),
    (["adapters", "show", "v9"], "error: no adapter version 'v9'; versions: none yet (run `kbloop finetune`)"),
    (["dataset", "show"], "error: no dataset yet: run `kbloop dataset build`"),
])
def test_the_cli_prints_one_line_and_exits_3_for_what_is_not_found(home, capsys, args, says):
    assert main(["--home", str(home.root), *args]) == 3
    captured = capsys.readouterr()
    assert captured.err == says + "\n" and captured.out == ""


def test_the_cli_exits_4_while_another_run_holds_the_lock(home, capsys):
    with exclusive(home.data_dir / "dataset.lock", "dataset build"):
        assert main(["--home", str(home.root), "dataset", "build", "--no-teacher"]) == 4
    err = capsys.readouterr().err
    assert err.startswith("error: another dataset build is running in this home") and err.count("\n") == 1
