"""The Ray ingest engine (KBLOOP_INGEST_ENGINE=ray) on a real Ray cluster of two nodes, each
started with `ray start` as a process session of its own: the index comes out as the local
engine makes it, and a worker node killed mid-ingest loses nothing.

The nodes listen on loopback addresses of their own (127.0.0.2 and 127.0.0.3; Ray would turn
127.0.0.1 into the machine's network address) and are stopped by killing the processes of their
sessions, never with `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import cli_env, run_cli
from docs_factory import write_corpus
from kbloop.config import Settings, init_home
from kbloop.errors import BackendUnavailable, ConfigError
from kbloop.ingest.indexer import Indexer
from kbloop.kb import KnowledgeBase

RAY = Path(sys.executable).parent / "ray"
NODE_STARTUP_SECONDS = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_pids(leader: int) -> list[int]:
    """The processes of the session ``leader`` started: a Ray node, worker processes included
    (each worker is a process group of its own, so killing the group would miss them)."""
    pids = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == leader:
                pids.append(pid)
        except OSError:
            continue
    return pids


@dataclass
class RayCluster:
    address: str
    nodes: dict[str, subprocess.Popen]

    def kill(self, name: str) -> None:
        """kill -9 every process of one node."""
        node = self.nodes[name]
        for pid in session_pids(node.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.wait(timeout=30)

    def kill_all(self) -> None:
        for name in list(self.nodes):
            self.kill(name)

    def actors_on(self, name: str) -> list[str]:
        """The process titles of the embedding actors on one node."""
        titles = []
        for pid in session_pids(self.nodes[name].pid):
            try:
                title = " ".join(psutil.Process(pid).cmdline()).strip()
            except psutil.Error:
                continue
            if "MapWorker" in title:
                titles.append(title)
        return titles


def start_node(temp: Path, ip: str, *args: str) -> subprocess.Popen:
    # Token authentication is off: the cluster listens on loopback addresses only.
    env = {**cli_env(), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")]
    log = (temp / f"{ip}.log").open("w")
    return subprocess.Popen(
        [str(RAY), "start", "--block", f"--node-ip-address={ip}", "--num-cpus=1",
         "--object-store-memory=200000000", "--disable-usage-stats", f"--temp-dir={temp / ip}", *ports, *args],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_nodes(address: str, count: int) -> None:
    """Wait until the cluster at ``address`` has ``count`` live nodes. Each look is a process of
    its own, so this one connects Ray only for the tests' own ingests."""
    deadline = time.monotonic() + NODE_STARTUP_SECONDS
    host, _, port = address.rpartition(":")
    while True:  # Ray keeps trying for minutes to reach a head node that is not listening yet
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, f"the Ray head node at {address} did not start"
            time.sleep(0.5)
    count_alive = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                   "print(sum(node['Alive'] for node in ray.nodes())); ray.shutdown()" % address)
    while True:
        look = subprocess.run([sys.executable, "-c", count_alive], env=cli_env(), capture_output=True, text=True)
        if look.returncode == 0 and look.stdout.split()[-1:] == [str(count)]:
            return
        assert time.monotonic() < deadline, f"the Ray cluster at {address} did not start {count} nodes"
        time.sleep(1)


@pytest.fixture
def ray_cluster(monkeypatch):
    """A head node and a worker node of one CPU each, on loopback addresses."""
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # Ray's sockets live under the temp dir, and a Unix socket path is at most 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="kbray", dir="/tmp"))
    try:
        # A second try on fresh ports: a port free_port() handed out can be taken by another
        # process before Ray binds it, and the head node then never listens.
        for attempt in (1, 2):
            cluster = start_cluster(temp / f"try{attempt}")
            try:
                wait_for_nodes(cluster.address, 2)
                break
            except AssertionError:
                cluster.kill_all()
                if attempt == 2:
                    raise
        try:
            yield cluster
        finally:
            cluster.kill_all()
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def start_cluster(temp: Path) -> RayCluster:
    """A head node on 127.0.0.2 and a worker node on 127.0.0.3, started, not yet waited for."""
    temp.mkdir(parents=True)
    port = free_port()
    address = f"127.0.0.2:{port}"
    nodes = {"head": start_node(temp, "127.0.0.2", "--head", f"--port={port}", "--include-dashboard=false",
                                f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}")}
    cluster = RayCluster(address, nodes)
    nodes["worker"] = start_node(temp, "127.0.0.3", f"--address={address}")
    return cluster


def open_kb(home, embedder, **settings) -> KnowledgeBase:
    return KnowledgeBase(home, home.load_settings().model_copy(update=settings), embedder=embedder)


def index_state(kb: KnowledgeBase) -> tuple[list, list, dict[int, np.ndarray]]:
    """Every file record (less times), every chunk with its vector id, and every vector."""
    files = sorted(kb.manifest.files().values(), key=lambda rec: rec.path)
    records = [(f.path, f.status, f.error, f.sha256, f.failed_sha256, f.n_chunks) for f in files]
    chunks = [(f.path, c.ordinal, c.text_hash, c.text, c.metadata, c.vector_id)
              for f in files for c in kb.manifest.chunks_of(f.id)]
    store = kb.indexer.load_store()
    assert sorted(store.ids().tolist()) == sorted(c[-1] for c in chunks)
    return records, chunks, {c[-1]: store.reconstruct(c[-1]) for c in chunks}


def assert_same_index(ray_kb: KnowledgeBase, local_kb: KnowledgeBase) -> None:
    ray_records, ray_chunks, ray_vectors = index_state(ray_kb)
    local_records, local_chunks, local_vectors = index_state(local_kb)
    assert ray_records == local_records
    assert ray_chunks == local_chunks
    assert max(float(np.abs(ray_vectors[i] - local_vectors[i]).max()) for i in local_vectors) < 1e-5


def counts_of(kb: KnowledgeBase) -> dict:
    counts = kb.ingest().as_dict()
    del counts["seconds"]
    return counts


# -- settings ------------------------------------------------------------------------------------


def test_engine_settings_are_checked_with_one_line_each():
    settings = Settings.from_mapping({"KBLOOP_INGEST_ENGINE": "ray", "KBLOOP_RAY_ADDRESS": "10.0.0.5:6379",
                                      "KBLOOP_RAY_WORKERS": "3"})
    assert (settings.ingest_engine, settings.ray_address, settings.ray_workers) == ("ray", "10.0.0.5:6379", 3)
    assert Settings().ingest_engine == "local" and Settings().ray_address == "" and Settings().ray_workers == 2
    assert Settings.from_mapping({"KBLOOP_RAY_ADDRESS": "auto"}).ray_address == "auto"
    for name, value in [("KBLOOP_INGEST_ENGINE", "spark"), ("KBLOOP_RAY_ADDRESS", "ray://head"),
                        ("KBLOOP_RAY_ADDRESS", "head node:6379"), ("KBLOOP_RAY_WORKERS", "0")]:
        with pytest.raises(ConfigError) as err:
            Settings.from_mapping({name: value})
        message = err.value.one_line()
        assert f"{name}={value!r}" in message and "\n" not in str(err.value), message


def test_kbloop_turns_off_rays_usage_reports_before_ray_loads():
    env = {k: v for k, v in cli_env().items() if k != "RAY_USAGE_STATS_ENABLED"}
    code = "import os, kbloop; print(os.environ['RAY_USAGE_STATS_ENABLED'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_an_unreachable_cluster_stops_the_ingest_with_one_line_and_changes_nothing(home):
    write_corpus(home.root / "docs")
    env = cli_env(home.root, KBLOOP_INGEST_ENGINE="ray", KBLOOP_RAY_ADDRESS=f"127.0.0.2:{free_port()}")
    started = time.monotonic()
    result = run_cli("ingest", env=env)
    assert time.monotonic() - started < 30
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert result.stderr.startswith("error: cannot reach the Ray cluster at 127.0.0.2:")
    assert result.stderr.count("\n") == 1, result.stderr
    kb = KnowledgeBase(home)
    assert kb.manifest.files() == {}
    kb.close()


# -- on a cluster --------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_ray_engine_indexes_exactly_as_the_local_engine(tmp_path, ray_cluster, embedder, monkeypatch):
    """Two ingests of the same changes, with each engine: the same counts, skips with the same
    reasons, and the same files, chunks, hashes, vector ids and vectors."""
    homes = {engine: init_home(tmp_path / engine) for engine in ("local", "ray")}
    # One corpus copied to both homes: a .docx written twice holds two zip timestamps, so two hashes.
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    (corpus / "empty.md").write_text("")
    (corpus / "data.bin").write_bytes(b"\x00\x01")
    (corpus / "gone.md").write_text("# Gone\n\nA file that cannot be read when it is parsed again.\n")
    for home in homes.values():
        shutil.copytree(corpus, home.root / "docs", dirs_exist_ok=True)
    settings = {"local": {}, "ray": {"ingest_engine": "ray", "ray_address": ray_cluster.address}}
    kbs = {engine: open_kb(home, embedder, **settings[engine]) for engine, home in homes.items()}

    first = {engine: counts_of(kb) for engine, kb in kbs.items()}
    assert first["ray"] == first["local"]
    assert first["ray"]["files_failed"] == 2 and first["ray"]["files_added"] == 6

    for home in homes.values():
        docs = home.root / "docs"
        guide = docs / "guide.md"
        guide.write_text(guide.read_text().replace("## Weather", "## Weather\n\nStorms close the harbour."))
        shutil.copyfile(docs / "notes.txt", docs / "notes-copy.txt")
        (docs / "page.html").unlink()
        (docs / "gone.md").write_text("# Gone\n\nChanged, then unreadable.\n")
    parse_each = Indexer._parse_each

    def vanishing(self, files):
        # The file disappears between the scan and the parse (on a Ray worker, for the Ray engine).
        (self.docs_dir / "gone.md").unlink(missing_ok=True)
        return parse_each(self, files)

    monkeypatch.setattr(Indexer, "_parse_each", vanishing)
    second = {engine: counts_of(kb) for engine, kb in kbs.items()}
    assert second["ray"] == second["local"]
    assert {"path": "gone.md", "reason": "cannot read: No such file or directory (tried again next ingest)"} in \
        second["ray"]["failures"]
    assert second["ray"]["chunks_reused"] > 0 and second["ray"]["files_deleted"] == 1
    assert "gone.md" in kbs["ray"].manifest.files()  # not read, so not forgotten
    assert_same_index(kbs["ray"], kbs["local"])

    # A rebuild of one file parses and embeds it again, and embeds the other files' chunks
    # again from the manifest's text (on the embedding actors, for the Ray engine).
    rebuilt = {engine: kb.ingest([home.root / "docs" / "guide.md"], rebuild=True).as_dict()
               for (engine, kb), home in zip(kbs.items(), homes.values())}
    for counts in rebuilt.values():
        del counts["seconds"]
    assert rebuilt["ray"] == rebuilt["local"] and rebuilt["ray"]["chunks_embedded"] > 0
    assert_same_index(kbs["ray"], kbs["local"])
    for kb in kbs.values():
        kb.close()


def write_many(docs: Path, n_files: int) -> None:
    """Documents of several chunks each, every paragraph different."""
    rng = random.Random(7)
    words = ("lantern harbour valve copper meadow signal orbit ledger cobalt willow ember quartz "
             "granite beacon ferry tide anchor compass").split()
    docs.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        parts = ["\n\n".join(" ".join(rng.choice(words) for _ in range(50)) + "." for _ in range(3)) for _ in range(3)]
        (docs / f"doc{i:03d}.md").write_text(f"# Document {i}\n\n" + "\n\n## Part\n\n".join(parts))


@pytest.mark.slow
def test_a_worker_node_killed_mid_ingest_loses_nothing(tmp_path, ray_cluster, embedder):
    """kill -9 of a worker node while its actor embeds: the ingest finishes on the head node, or
    stops with one line; either way the next ingest and `kbloop check` end consistent, with the
    index the local engine makes."""
    ray_home, local_home = init_home(tmp_path / "ray"), init_home(tmp_path / "local")
    for home in (ray_home, local_home):
        write_many(home.root / "docs", 40)
    killed = threading.Event()
    done = threading.Event()

    def kill_the_worker_node_once_it_embeds():
        while not done.is_set():
            # The title is Ray's: `...MapBatches(_Embedder)).__init__` while the model loads.
            if any(not title.endswith("__init__") for title in ray_cluster.actors_on("worker")):
                time.sleep(1)  # within its first batches
                ray_cluster.kill("worker")
                killed.set()
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_the_worker_node_once_it_embeds, daemon=True)
    killer.start()
    kb = open_kb(ray_home, embedder, ingest_engine="ray", ray_address=ray_cluster.address)
    try:
        first = kb.ingest()
    except BackendUnavailable as exc:
        assert "run `kbloop ingest` again" in str(exc)
        first = None
    done.set()
    killer.join()
    assert killed.is_set(), "no embedding actor ran on the worker node"
    assert first is None or first.files_added == 40

    env = cli_env(ray_home.root)
    assert run_cli("check", env=env).exit_code in (0, 5)  # consistent, or repaired what the kill left
    again = kb.ingest()
    assert again.files_failed == 0 and again.files_added + (first.files_added if first else 0) == 40
    result = run_cli("check", env=env)
    assert result.exit_code == 0 and "ok: index and manifest agree" in result.output, result.output

    local_kb = open_kb(local_home, embedder)
    local_kb.ingest()
    assert_same_index(kb, local_kb)
    for opened in (kb, local_kb):
        opened.close()
