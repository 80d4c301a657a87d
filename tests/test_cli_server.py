"""`kbloop ask`, `search` and `chat` use a running `kbloop serve` or `kbloop daemon` of the same
home instead of loading models, and work on their own when none runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kbloop.server.address import FOLDER, published, running_server
from conftest import cli_env
from test_server import make_home

# Settings no process could load: a command that succeeds with them was answered by the server.
UNLOADABLE = {"KBLOOP_EMBEDDER": "local:no-such-embedder", "KBLOOP_GENERATOR": "local:no-such-model"}


def kbloop(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kbloop.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def start(command: str, home: Path, model_cache: Path) -> subprocess.Popen:
    env = cli_env(home, KBLOOP_GENERATOR="local:smollm2-135m", KBLOOP_MODEL_CACHE=str(model_cache),
                  KBLOOP_SERVE_PORT="0")
    return subprocess.Popen([sys.executable, "-m", "kbloop.cli.main", command], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_address(home: Path, proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + 120
    while (url := running_server(home / "data")) is None:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no address announced"
        time.sleep(0.2)
    return url


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["serve", "daemon"])
def test_commands_use_a_running_server_of_the_home(tmp_path, embedder, model_cache, command):
    home = make_home(tmp_path / "kb", embedder).root
    proc = start(command, home, model_cache)
    try:
        url = wait_for_address(home, proc)
        assert url.startswith("http://127.0.0.1:")
        env = cli_env(home, **UNLOADABLE)
        found = kbloop("search", "default port", "--json", env=env)
        assert found.returncode == 0, found.stderr
        assert "8735" in " ".join(hit["text"] for hit in json.loads(found.stdout))
        asked = kbloop("ask", "Which TCP port does Harbor listen on?", "--json", env=env)
        assert asked.returncode == 0, asked.stderr
        answer = json.loads(asked.stdout)
        assert answer["model"] == "local:smollm2-135m" and answer["sources"]
        printed = kbloop("ask", "Which TCP port does Harbor listen on?", env=env)
        assert printed.returncode == 0 and ("Sources:" in printed.stdout or "(" in printed.stdout)
        # --local insists on this process, whose settings cannot load.
        assert kbloop("search", "default port", "--local", env=env).returncode != 0
    finally:
        stop(proc)
    assert proc.returncode == 0
    assert list((home / "data" / FOLDER).glob("*.json")) == []  # the address left with the server
    alone = kbloop("search", "default port", env=cli_env(home, **UNLOADABLE))
    assert alone.returncode != 0 and alone.stderr.startswith("error:")


def test_without_a_server_commands_load_models_themselves(tmp_path, embedder):
    home = make_home(tmp_path / "kb", embedder).root
    found = kbloop("search", "default port", "--json", env=cli_env(home))
    assert found.returncode == 0 and "8735" in found.stdout


def test_an_address_left_by_a_killed_server_is_ignored_and_removed(tmp_path):
    data = tmp_path / "data"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (data / FOLDER).mkdir(parents=True)
    left = data / FOLDER / f"{dead.pid}.json"
    left.write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": dead.pid}))
    assert running_server(data) is None
    assert not left.exists()


def test_only_a_loopback_address_is_used(tmp_path):
    data = tmp_path / "data"
    with published(data, "http://192.0.2.1:8765", "serve"):
        assert running_server(data) is None
    with published(data, "http://0.0.0.0:8765", "serve") as path:
        assert running_server(data) == "http://127.0.0.1:8765"
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert running_server(data) is None
