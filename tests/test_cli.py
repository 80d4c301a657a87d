"""The command line, run as a user runs it: a subprocess per command on a temporary home."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import cli_env
from docs_factory import QUERIES, write_corpus


def kbloop(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "kbloop.cli.main", *args], env=env or cli_env(),
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_init_ingest_search_status(tmp_path):
    home = tmp_path / "kb"
    out = kbloop("init", str(home))
    assert out.returncode == 0 and (home / ".env").is_file()
    write_corpus(home / "docs")
    (home / "docs" / "bad.pdf").write_bytes(b"not a pdf at all")
    env = cli_env(home)

    out = kbloop("ingest", "--json", env=env)
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout)
    assert counts["files_added"] == 5 and counts["files_failed"] == 1
    assert counts["failures"] == [{"path": "bad.pdf", "reason": "not a PDF (no %PDF header)"}]

    out = kbloop("--home", str(home), "search", QUERIES["manual.pdf"], "-k", "2", "--json", env=cli_env())
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert len(hits) == 2 and hits[0]["path"] == "manual.pdf" and hits[0]["page"] == 2
    assert 0 < hits[0]["score"] <= 1

    out = kbloop("search", QUERIES["guide.md"], cwd=home, env=cli_env())
    assert out.returncode == 0 and "[1]" in out.stdout and "guide.md, § The lens" in out.stdout

    out = kbloop("status", "--json", env=env)
    info = json.loads(out.stdout)
    assert info["files_indexed"] == 5 and info["vectors"] == info["chunks"] > 0
    assert info["failures"][0]["path"] == "bad.pdf"
    assert info["last_runs"][0]["status"] == "ok"

    out = kbloop("status", env=env)
    assert "bad.pdf: not a PDF" in out.stdout


def test_user_mistakes_are_one_line_errors(tmp_path):
    out = kbloop("--home", str(tmp_path / "nowhere"), "status")
    assert out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
    assert "kbloop init" in out.stderr

    home = tmp_path / "kb"
    kbloop("init", str(home))
    out = kbloop("status", env=cli_env(home, KBLOOP_CHUNK_SIZE="lots"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "KBLOOP_CHUNK_SIZE='lots'" in out.stderr and "Traceback" not in out.stderr

    out = kbloop("ingest", str(tmp_path), env=cli_env(home))
    assert out.returncode == 1 and "outside the docs folder" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_quickstart_runs_offline_on_bundled_samples(tmp_path, model_cache):
    out = kbloop("quickstart", str(tmp_path / "qs"),
                 env=cli_env(KBLOOP_GENERATOR="local:smollm2-135m", KBLOOP_MODEL_CACHE=str(model_cache)))
    assert out.returncode == 0, out.stderr
    assert "3 added" in out.stdout and "0 failed" in out.stdout
    assert "getting-started.md" in out.stdout.split("search:")[1].splitlines()[1]
    answer = out.stdout.split("ask (local:smollm2-135m):")[1]
    assert "8735" in answer and "Sources:" in answer
