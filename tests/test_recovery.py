"""Recovering from what goes wrong midway: a rebuild that readers must not see half done, runs and
saves killed outright, a checkpoint that must not run code, an Ollama server that breaks off or
trickles, and a check that says by its exit status what it found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import cli_env, run_cli
from docs_factory import QUERIES, write_corpus
from fake_ollama import FakeOllama

from kbloop import models
from kbloop.config import Settings
from kbloop.errors import BackendUnavailable, KbloopError
from kbloop.ingest.indexer import Indexer
from kbloop.kb import KnowledgeBase
from kbloop.vector_store.faiss_store import HEADER, STAGED, FaissLocation, FaissStore

OTHER_EMBEDDER = "hf:/models/another-embedder"


class Crash(Exception):
    """Stands for a process dying at this point."""


class PausingEmbedder:
    """The shared embedder, calling ``at_first_embed`` when a run first embeds (mid-rebuild)."""

    def __init__(self, inner, at_first_embed):
        self.inner, self.at_first_embed, self.called = inner, at_first_embed, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed(self, texts):
        if not self.called:
            self.called = True
            self.at_first_embed()
        return self.inner.embed(texts)


def unit(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def consistent(kb: KnowledgeBase) -> bool:
    return set(kb.store().ids().tolist()) == kb.manifest.vector_ids()


def store_files(home) -> list[str]:
    return sorted(p.name for p in home.vector_store_dir.iterdir())


# -- a rebuild is a new generation, in use only when complete ------------------------------------

def test_searches_see_the_old_index_while_a_rebuild_runs(open_kb, home, embedder):
    write_corpus(home.root / "docs")
    open_kb().ingest()
    before = open_kb().status()
    old_ids = open_kb().manifest.vector_ids()
    seen = {}

    def search_meanwhile():
        reader = open_kb()
        seen["chunks"] = reader.status()["chunks"]
        seen["found"] = reader.search(QUERIES["guide.md"], 1)[0].path

    settings = home.load_settings().model_copy(update={"embedder": OTHER_EMBEDDER})
    with KnowledgeBase(home, settings, embedder=PausingEmbedder(embedder, search_meanwhile)) as kb:
        counts = kb.ingest(rebuild=True)
    assert seen == {"chunks": before["chunks"], "found": "guide.md"}
    assert counts.files_changed == 5 and counts.chunks_embedded > 0

    after = open_kb(embedder=OTHER_EMBEDDER)
    assert consistent(after) and not after.manifest.vector_ids() & old_ids
    assert after.store().embedder == OTHER_EMBEDDER and after.status()["chunks"] == before["chunks"]
    assert after.search(QUERIES["guide.md"], 1)[0].path == "guide.md"
    assert [name for name in store_files(home) if name != HEADER] == [after.store().info.index_file]


def test_a_rebuild_that_dies_while_embedding_leaves_the_old_index_in_use(open_kb, home, embedder):
    write_corpus(home.root / "docs")
    open_kb().ingest()
    before = open_kb().status()

    def die():
        raise Crash

    with KnowledgeBase(home, home.load_settings(), embedder=PausingEmbedder(embedder, die)) as kb:
        with pytest.raises(Crash):
            kb.ingest(rebuild=True)
    reader = open_kb()
    assert reader.status()["chunks"] == before["chunks"] and consistent(reader)
    assert reader.search(QUERIES["notes.txt"], 1)[0].path == "notes.txt"
    assert reader.status()["last_runs"][0]["status"] == "failed"


def test_a_rebuild_that_dies_before_its_swap_is_removed_by_the_next_check(open_kb, home, monkeypatch):
    write_corpus(home.root / "docs")
    open_kb().ingest()
    in_use = FaissStore.read_header(home.vector_store_dir)

    def die(self, plan, now):
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(Indexer, "_record", die)
        with pytest.raises(Crash):
            open_kb().ingest(rebuild=True)
    staged = FaissStore.read_header(home.vector_store_dir, STAGED)
    assert staged is not None and FaissStore.read_header(home.vector_store_dir) == in_use
    assert open_kb().search(QUERIES["page.html"], 1)[0].path == "page.html"

    report = open_kb().check()
    assert report.ok and "rebuild that did not finish" in report.repaired[0]
    assert store_files(home) == [HEADER, in_use.index_file]
    assert consistent(open_kb())


def test_a_rebuild_that_dies_after_its_swap_is_finished_by_the_next_check(open_kb, home, monkeypatch):
    write_corpus(home.root / "docs")
    open_kb().ingest()
    promote = FaissLocation.promote

    def die(self):
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(FaissLocation, "promote", die)
        with pytest.raises(Crash):
            open_kb().ingest(rebuild=True)
    staged = FaissStore.read_header(home.vector_store_dir, STAGED)
    assert staged is not None and FaissLocation.promote is promote

    report = open_kb().check()
    assert report.ok and "finished a rebuild" in report.repaired[0]
    assert FaissStore.read_header(home.vector_store_dir).sha256 == staged.sha256
    kb = open_kb()
    assert consistent(kb) and kb.search(QUERIES["manual.pdf"], 1)[0].path == "manual.pdf"
    assert store_files(home) == [HEADER, staged.index_file]


def test_a_rebuild_keeps_what_it_does_not_parse_again_searchable(open_kb, home):
    docs = home.root / "docs"
    write_corpus(docs)
    open_kb().ingest()
    (docs / "guide.md").write_text("")  # fails now; its last good version stays searchable
    counts = open_kb().ingest([docs / "guide.md", docs / "notes.txt"], rebuild=True)
    assert (counts.files_changed, counts.files_failed) == (1, 1)
    kb = open_kb()
    assert consistent(kb)
    for name in ("guide.md", "page.html", "report.docx"):  # failed now; not named
        assert kb.search(QUERIES[name], 1)[0].path == name
    failure, = kb.status()["failures"]
    assert failure["path"] == "guide.md" and failure["serving_previous_version"]


def test_a_staged_store_is_invisible_until_promoted(tmp_path):
    location = FaissLocation(tmp_path / "vector_store")
    in_use = location.create(8, "test:emb")
    in_use.add(np.array([1, 2]), unit(2, 8))
    info, revision = in_use.save(), location.revision()

    staged = location.stage(8, "test:other")
    staged.add(np.array([3]), unit(1, 8, seed=1))
    staged.save()
    assert location.info() == info and location.revision() == revision
    assert location.load().ids().tolist() == [1, 2] and location.load_staged().ids().tolist() == [3]

    location.promote()
    assert location.load().ids().tolist() == [3] and location.load_staged() is None
    assert location.info().embedder == "test:other" and location.revision() != revision
    assert sorted(p.name for p in location.directory.iterdir()) == [HEADER, location.info().index_file]
    with pytest.raises(KbloopError, match="no staged store"):
        location.promote()


# -- runs and saves killed outright ---------------------------------------------------------------

RUN_THEN_WAIT = """
import sys, time
from kbloop.ingest.manifest import Manifest
from kbloop.schema import MIGRATIONS
with Manifest(sys.argv[1], MIGRATIONS).recording("ingest"):
    print("running", flush=True)
    time.sleep(120)
"""


def test_a_run_whose_process_was_killed_shows_as_interrupted(open_kb, home):
    open_kb().manifest  # the database, made
    proc = subprocess.Popen([sys.executable, "-c", RUN_THEN_WAIT, str(home.manifest_path)],
                            env=cli_env(home.root), stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"running\n"
        assert open_kb().status()["last_runs"][0]["status"] == "running"
    finally:
        proc.kill()
        proc.wait(30)
    run = open_kb().status()["last_runs"][0]
    assert (run["kind"], run["status"]) == ("ingest", "interrupted") and "ended before it finished" in run["error"]

    report = open_kb().check()
    assert "1 runs left 'running'" in report.repaired[0]
    status = open_kb().manifest.db.execute("SELECT status FROM runs").fetchone()[0]
    assert status == "interrupted" and not list((home.data_dir / "runs").iterdir())


def dead_pid() -> int:
    """The pid of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_temporary_files_of_killed_saves_are_removed_at_the_next_check_or_save(open_kb, home):
    write_corpus(home.root / "docs")
    open_kb().ingest()
    folder = home.vector_store_dir
    killed = folder / f".index.7.faiss.{dead_pid()}.tmp"
    killed.write_bytes(b"\0" * 4096)
    running = folder / f".index.8.faiss.{os.getpid()}.tmp"  # a save still under way
    running.write_bytes(b"\0")

    report = open_kb().check()
    assert not killed.exists() and running.exists()
    assert any("temporary files of index saves that were killed" in line for line in report.repaired)

    killed.write_bytes(b"\0")
    FaissStore.load(folder).save()
    assert not killed.exists() and running.exists()


# -- the fine-tuning checkpoint holds tensors and numbers only -----------------------------------

def test_a_training_checkpoint_loads_without_unpickling_objects(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    from kbloop.finetune.train import _save_checkpoint, load_checkpoint

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.proj(x)

    model = get_peft_model(Tiny(), LoraConfig(r=2, target_modules=["proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    _save_checkpoint(model, optimizer, 3, 120, 2.5, tmp_path / "checkpoint")
    state = load_checkpoint(tmp_path / "checkpoint" / "state.pt")
    assert (state["step"], state["tokens"], state["initial_parent_probe_loss"]) == (3, 120, 2.5)
    optimizer.load_state_dict(state["optimizer"])
    assert state["adapter"].keys() == get_peft_model_state_dict(model).keys()


class Planted:
    """What someone able to write into data/ could put in a checkpoint: loading it runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    import torch

    from kbloop.finetune.train import load_checkpoint

    path, marker = tmp_path / "state.pt", tmp_path / "code-ran"
    torch.save({"step": 1, "adapter": {}, "extra": Planted(marker)}, path)
    with pytest.raises(KbloopError, match="not loaded \\(it could run code\\)") as refused:
        load_checkpoint(path)
    assert "\n" not in str(refused.value) and not marker.exists()


# -- Ollama breaking off, trickling, or reporting an error ---------------------------------------

CUT_REPLY = "Harbor listens on TCP port 8735 by default, and the port can be changed in harbor.toml."
SCHEMA = {"type": "object", "required": ["score"], "properties": {"score": {"type": "integer"}}}


def test_an_ollama_reply_cut_off_midway_is_one_clear_error():
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: CUT_REPLY, fault="cut") as server:
        settings = Settings(ollama_url=server.url)
        generator = models.create("generator", "ollama:qwen3:4b", settings)
        with pytest.raises(BackendUnavailable, match="broke off the connection \\(RemoteProtocolError"):
            list(generator.stream([{"role": "user", "content": "Which port?"}]))
        judge = models.create("judge", "ollama:qwen3:4b", settings)
        with pytest.raises(BackendUnavailable, match="broke off the connection"):
            judge.complete_json("Grade this.", SCHEMA)


def test_kbloop_ask_and_the_api_report_a_cut_off_reply_in_one_line(sample_home, open_kb, embedder):
    from test_server import PORT_QUESTION, assert_error, serving

    open_kb(sample_home).ingest()
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: CUT_REPLY, fault="cut") as server:
        env = {"KBLOOP_HOME": str(sample_home.root), "KBLOOP_GENERATOR": "ollama:qwen3:4b",
               "KBLOOP_OLLAMA_URL": server.url}
        result = run_cli("ask", "--local", PORT_QUESTION, env=env)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith(f"error: Ollama at {server.url} broke off the connection")
        assert result.stderr.count("\n") == 1

        generator = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        with serving(sample_home, embedder, generator) as (url, _):
            response = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                "model": "kbloop", "messages": [{"role": "user", "content": PORT_QUESTION}]})
    assert "broke off the connection" in assert_error(response, 503)


def test_a_trickling_ollama_is_stopped_at_the_deadline():
    # About 10 s to send the whole reply, each byte well within the read timeout.
    with FakeOllama(models=("qwen3:4b",), fault="trickle", trickle_seconds=0.02) as server:
        settings = Settings(ollama_url=server.url, ollama_timeout=5, ollama_deadline=1)
        generator = models.create("generator", "ollama:qwen3:4b", settings)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="did not finish within 1 s; raise KBLOOP_OLLAMA_DEADLINE"):
            generator.generate([{"role": "user", "content": "Which port?"}])
        assert time.monotonic() - started < 5


def test_an_error_ollama_reports_midway_is_one_clear_error():
    from ollama import ResponseError

    from kbloop.models.ollama import ollama_errors

    with pytest.raises(BackendUnavailable, match="reported an error: model runner has unexpectedly stopped"):
        with ollama_errors("http://127.0.0.1:11434", "qwen3:4b"):
            raise ResponseError("model runner has unexpectedly stopped")


# -- kbloop check: its exit status and --json -----------------------------------------------------

def test_check_says_by_its_exit_status_and_json_what_it_found(open_kb, home):
    write_corpus(home.root / "docs")
    open_kb().ingest()
    env = {"KBLOOP_HOME": str(home.root)}

    result = run_cli("check", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"outcome": "consistent", "problems": [], "repaired": []}

    store = FaissStore.load(home.vector_store_dir)
    store.add(np.array([999_999]), unit(1, store.dim))  # as if a run died before its manifest commit
    store.save()
    result = run_cli("check", "--json", env=env)
    assert result.exit_code == 5, result.output
    report = json.loads(result.stdout)
    assert report["outcome"] == "repaired" and "removed 1 vectors" in report["repaired"][0]

    header = FaissStore.read_header(home.vector_store_dir)
    (home.vector_store_dir / header.index_file).write_bytes(b"garbage")
    result = run_cli("check", env=env)
    assert result.exit_code == 6, result.output
    assert result.stdout.startswith("problem:  vector store damaged")

    # the damaged store was set aside and its vectors embedded again from the manifest's text
    assert set(FaissStore.load(home.vector_store_dir).ids().tolist()) == open_kb().manifest.vector_ids()
    result = run_cli("check", "--json", env=env | {"KBLOOP_EMBEDDER": OTHER_EMBEDDER})
    assert result.exit_code == 6 and "kbloop ingest --rebuild" in json.loads(result.stdout)["problems"][0]
