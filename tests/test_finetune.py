"""LoRA fine-tuning with the real smallest packaged model: continuation, replay, resume, promotion."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env, cli_error, run_cli
from test_dataset import write_manuals

from kbloop.assistant.answer import Assistant
from kbloop.server.service import Service
from kbloop.config import init_home
from kbloop.dataset.build import build
from kbloop.dataset.store import DatasetStore
from kbloop.finetune.registry import AdapterRegistry
from kbloop.finetune.train import base_model_id, finetune, plan_run
from kbloop.fsutil import sha256_file
from kbloop.kb import KnowledgeBase

# Every test here trains the packaged model or reads what the module's training made.
pytestmark = pytest.mark.slow

SETTINGS = {
    "KBLOOP_GENERATOR": "local:smollm2-135m",
    "KBLOOP_DATASET_EVAL_FRACTION": "0",
    "KBLOOP_DATASET_DISTRACTORS": "1",
    "KBLOOP_FINETUNE_EPOCHS": "1",
    "KBLOOP_FINETUNE_BATCH_SIZE": "4",
    "KBLOOP_FINETUNE_GRAD_ACCUM": "2",
    # A high rate so two steps visibly change the model's answers.
    "KBLOOP_FINETUNE_LR": "0.003",
    "KBLOOP_FINETUNE_MAX_SEQ_LEN": "640",
    "KBLOOP_RETRIEVE_K": "2",
    "KBLOOP_MAX_NEW_TOKENS": "24",
    # Module fixtures open homes before the per-test environment applies: the value check would
    # call the judge, whose calls these tests count (tests/test_verify.py tests it).
    "KBLOOP_VALUE_CONFIDENCE": "0",
}
PIER = "# pier(1)\n\n## OPTIONS\n\n--slow Move slowly along the pier. The default is 3 knots.\n\n" \
       "--fast Move quickly along the pier. Defaults to 12 knots.\n"


def make_home(root: Path, model_cache: Path, manuals=None, **extra: str):
    home = init_home(root)
    values = SETTINGS | {"KBLOOP_MODEL_CACHE": str(model_cache)} | extra
    with open(home.env_file, "a") as fh:
        fh.writelines(f"{k}={v}\n" for k, v in values.items())
    write_manuals(home.root / "docs", manuals)
    return home


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_cache, embedder):
    """A home with one trained adapter (0001, not promoted): one manual, 8 records, one step."""
    home = make_home(tmp_path_factory.mktemp("ft") / "kb", model_cache, ["ferry.md"])
    kb = KnowledgeBase(home, embedder=embedder)
    kb.ingest()
    build(kb)
    result = finetune(kb)
    yield kb, result
    kb.close()


def test_new_adapter_is_a_candidate_with_lineage(trained):
    kb, result = trained
    registry = AdapterRegistry(kb.home, kb.manifest)
    assert registry.versions() == ["0001"] and registry.current() is None
    lineage = registry.lineage("0001")
    assert lineage["parent"] is None and lineage["generator"] == "local:smollm2-135m"
    assert lineage["records"]["new"] == len(DatasetStore(kb.home, kb.manifest).active_records("train"))
    assert lineage["base_model"] == base_model_id(kb.generator.base_model_dir())
    assert lineage["final_probe_loss"] < lineage["base_probe_loss"]  # it learned something
    folder = registry.path("0001")
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "training_config.json").is_file()
    steps = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, result.steps + 1))
    assert all(s["tokens_per_s"] > 0 for s in steps)


def test_replay_is_mixed_in_the_set_ratio(trained):
    kb, _ = trained
    registry = AdapterRegistry(kb.home, kb.manifest)
    parent_seen = set(registry.lineage("0001")["seen_ids"])
    (kb.home.root / "docs" / "pier.md").write_text(PIER)
    kb.ingest()
    build(kb)
    base_id = registry.lineage("0001")["base_model"]
    for ratio in (0.5, 1.0):
        settings = kb.settings.model_copy(update={"finetune_replay_ratio": ratio})
        plan = plan_run(KnowledgeBase(kb.home, settings, embedder=kb.embedder), registry, "0001", False, base_id)
        assert plan.record_ids and not set(plan.record_ids) & parent_seen
        assert len(plan.replay_ids) == round(ratio * len(plan.record_ids))
        assert set(plan.replay_ids) <= parent_seen
        assert plan.lr == settings.finetune_incremental_lr
    (kb.home.root / "docs" / "pier.md").unlink()
    kb.ingest()
    build(kb)


def test_incremental_run_starts_from_the_parents_weights(trained):
    kb, _ = trained
    registry = AdapterRegistry(kb.home, kb.manifest)
    (kb.home.root / "docs" / "pier2.md").write_text(PIER.replace("pier", "quay"))
    kb.ingest()
    build(kb)
    registry.promote("0001", "test")
    child = finetune(kb)
    parent = registry.lineage("0001")
    assert child.parent == "0001" and child.records_new > 0
    # Its first loss on the parent's probe records is the parent's final loss, not the base model's.
    assert child.initial_parent_probe_loss == pytest.approx(parent["final_probe_loss"], abs=1e-4)
    assert abs(child.initial_parent_probe_loss - parent["base_probe_loss"]) > 0.05
    lineage = registry.lineage(child.version)
    assert lineage["parent"] == "0001" and set(parent["seen_ids"]) <= set(lineage["seen_ids"])
    assert registry.current() == "0001"  # a new adapter does not answer until promoted
    registry.promote(None, "test reset")


def test_a_promoted_adapter_changes_what_ask_answers(trained):
    kb, _ = trained
    registry = AdapterRegistry(kb.home, kb.manifest)
    question = "What does the --quiet option do in ferry?"

    def ask():
        with KnowledgeBase(kb.home, embedder=kb.embedder) as fresh:
            return Assistant(fresh).ask(question)

    registry.promote(None, "test: base")
    base = ask()
    assert base.adapter is None
    registry.promote("0001", "test")
    tuned = ask()
    assert tuned.adapter == "0001"
    assert tuned.answer != base.answer
    registry.rollback()
    assert registry.current() is None
    assert ask().answer == base.answer


def test_a_running_server_follows_promote_and_rollback(trained):
    """``serve`` answers with an adapter promoted after it started, and without it after a
    rollback, without a restart: the same answers a freshly started process gives."""
    kb, _ = trained
    registry = AdapterRegistry(kb.home, kb.manifest)
    question = "What does the --quiet option do in ferry?"
    registry.promote(None, "test: base")
    service = Service(kb.home, embedder=kb.embedder)

    def ask():
        *_, answer = service.answer(question, [])
        return answer

    def ask_fresh():
        with KnowledgeBase(kb.home, embedder=kb.embedder) as fresh:
            return Assistant(fresh).ask(question)

    try:
        base = ask()
        assert base.adapter is None
        registry.promote("0001", "test")
        tuned = ask()
        assert tuned.adapter == "0001" and tuned.answer != base.answer
        assert tuned.answer == ask_fresh().answer
        registry.rollback()
        back = ask()
        assert back.adapter is None and back.answer == base.answer
    finally:
        service.close()


def test_resume_after_a_kill_and_no_adapter_is_damaged(tmp_path, model_cache, embedder, trained):
    # Three records, one step each and a checkpoint after every step: killed after the first.
    home = make_home(tmp_path / "kb", model_cache, ["tide.md"], KBLOOP_FINETUNE_CHECKPOINT_STEPS="1",
                     KBLOOP_FINETUNE_BATCH_SIZE="1", KBLOOP_FINETUNE_GRAD_ACCUM="1", KBLOOP_FINETUNE_LR="0.0002",
                     KBLOOP_FINETUNE_MAX_RECORDS="3")
    (home.root / "docs" / "pier.md").write_text(PIER)
    with KnowledgeBase(home, embedder=embedder) as kb:  # the data, made in process: only the run is killed
        kb.ingest()
        build(kb)
    env = cli_env(home.root)
    run = [sys.executable, "-m", "kbloop.cli.main"]
    # An existing adapter, whose files must survive the crash untouched.
    existing = home.root / "data" / "adapters" / "0001"
    shutil.copytree(AdapterRegistry(trained[0].home, trained[0].manifest).path("0001"), existing)
    before = {p.name: sha256_file(p) for p in existing.iterdir()}

    proc = subprocess.Popen(run + ["finetune", "--fresh"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = home.root / "data" / "adapters" / ".runs" / "0002" / "checkpoint" / "state.pt"
    try:
        deadline = time.monotonic() + 600
        while not checkpoint.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert checkpoint.exists(), "no checkpoint was written"
    finally:  # also when the wait failed: a run left behind would train on
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (home.root / "data" / "adapters" / "0002").exists()
    assert {p.name: sha256_file(p) for p in existing.iterdir()} == before

    resumed = subprocess.run(run + ["finetune", "--resume", "--json"], env=env, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = json.loads(resumed.stdout)
    assert result["version"] == "0002" and result["resumed_from_step"] >= 1 and result["records_new"] == 3
    assert result["steps"] > result["resumed_from_step"]
    lineage = json.loads((home.root / "data" / "adapters" / "0002" / "lineage.json").read_text())
    assert lineage["parent"] is None  # --fresh was kept by the resumed run
    steps = [json.loads(line)["step"] for line in
             (home.root / "data" / "adapters" / "0002" / "train_log.jsonl").read_text().splitlines()]
    assert steps[-1] == result["steps"]
    assert not (home.root / "data" / "adapters" / ".runs" / "0002").exists()
    assert {p.name: sha256_file(p) for p in existing.iterdir()} == before


def test_cli_adapters_and_export(trained, tmp_path):
    kb, _ = trained
    env = {"KBLOOP_HOME": str(kb.home.root)}
    listed = json.loads(run_cli("adapters", "list", "--json", env=env).output)
    assert listed[0]["version"] == "0001"
    missing = cli_error(run_cli("adapters", "promote", "9999", env=env), 3)
    assert missing.startswith("error: no adapter version '9999'; versions: 0001")
    result = run_cli("export", "ollama", "0001", "-o", str(tmp_path / "ol"), env=env)
    assert result.exit_code == 0, result.output
    modelfile = (tmp_path / "ol" / "Modelfile").read_text()
    assert "FROM " in modelfile and modelfile.count("ADAPTER ") == 1
    # Training already wrote the GGUF LoRA that llama.cpp applies; the export is a copy of it.
    converted = kb.home.root / "data" / "adapters" / "0001" / "adapter_model.gguf"
    assert converted.is_file()
    assert f"ADAPTER {tmp_path / 'ol' / 'adapter.gguf'}" in modelfile
    assert (tmp_path / "ol" / "adapter.gguf").read_bytes() == converted.read_bytes()
    from gguf import GGUFReader

    fields = GGUFReader(converted).fields
    assert fields["general.type"].contents() == "adapter" and fields["adapter.type"].contents() == "lora"
    assert "ollama create" in result.output
    result = run_cli("export", "merged", "0001", "-o", str(tmp_path / "merged"), env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "merged" / "config.json").is_file()
    assert list((tmp_path / "merged").glob("*.safetensors"))
