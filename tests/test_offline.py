"""Ingest, search and status make no network attempt: sockets are blocked in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import cli_env

SCRIPT = textwrap.dedent("""
    import json, socket, sys
    attempts = []

    def refuse(kind):
        def fn(*args, **kwargs):
            attempts.append(f"{kind} {args[1:] if kind == 'connect' else args[:2]}")
            raise OSError(f"network blocked in test: {kind}")
        return fn

    socket.socket.connect = refuse("connect")
    socket.socket.connect_ex = refuse("connect")
    socket.getaddrinfo = refuse("getaddrinfo")
    socket.create_connection = refuse("create_connection")

    sys.path.insert(0, sys.argv[2])
    from docs_factory import write_corpus
    from kbloop.config import init_home
    from kbloop.kb import KnowledgeBase

    home = init_home(sys.argv[1])
    write_corpus(home.root / "docs")
    with KnowledgeBase(home) as kb:
        counts = kb.ingest()
        hits = kb.search("how do migrating songbirds navigate", 1)
        kb.status()
    print(json.dumps({"attempts": attempts, "added": counts.files_added, "failed": counts.failures,
                      "top": hits[0].path}))
""")


def test_ingest_makes_no_network_attempt(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "kb"), str(Path(__file__).parent)],
                         env=cli_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["attempts"] == []
    assert result["added"] == 5 and result["failed"] == []
    assert result["top"] == "report.docx"


def test_kbloop_sets_a_passive_openmp_wait_policy_unless_told_otherwise():
    """Set before torch or llama.cpp start: spinning OpenMP threads starve other processes."""
    probe = [sys.executable, "-c", "import os, kbloop; print(os.environ['OMP_WAIT_POLICY'])"]
    env = {k: v for k, v in cli_env().items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run(probe, env=env, capture_output=True, text=True).stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert subprocess.run(probe, env=env, capture_output=True, text=True).stdout.strip() == "ACTIVE"
