"""The learning loop under crashes, races and odd input: merged exports never delete a folder
kbloop did not write, a promotion never overwrites one made meanwhile, an interrupted run
resumes from what it saved, and settings mean what their documentation says.

Crashes are simulated by making ``os.replace`` or ``shutil.rmtree`` fail at the worst moment;
no test here trains a model.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest

from kbloop.config import Settings
from kbloop.errors import ConfigError, KbloopError, NotFound, StoreError
from kbloop.finetune import export, train
from kbloop.finetune.config import TrainConfig
from kbloop.finetune.registry import AdapterRegistry, CurrentChanged
from kbloop.kb import KnowledgeBase


@pytest.fixture
def kb(home):
    opened = KnowledgeBase(home)
    yield opened
    opened.close()


def add_adapter(kb, version: str, **lineage) -> Path:
    """A registry version as far as the registry looks: a folder with its lineage.json."""
    folder = kb.home.adapters_dir / version
    folder.mkdir(parents=True)
    data = {"version": version, "generator": kb.settings.generator, "parent": None} | lineage
    (folder / "lineage.json").write_text(json.dumps(data))
    return folder


def fake_kb(kb, base_dir: Path):
    """The knowledge base as the export and the fine-tuning run see it, with a stand-in model
    folder in place of the packaged generator."""
    return types.SimpleNamespace(home=kb.home, manifest=kb.manifest, settings=kb.settings,
                                 generator=types.SimpleNamespace(base_model_dir=lambda: base_dir))


# -- export merged (bug 4) ------------------------------------------------------------------------


class FakeSaved:
    """A model or tokenizer whose save_pretrained writes one file, in place of transformers'."""

    def __init__(self, name: str):
        self.name, self.config, self.hf_quantizer = name, types.SimpleNamespace(), None

    def save_pretrained(self, folder, **_):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / self.name).write_text("weights")

    def merge_and_unload(self):
        return self


@pytest.fixture
def no_weights(monkeypatch):
    """transformers and peft loading and saving nothing but a marker file, so an export is instant."""
    import peft
    import transformers

    monkeypatch.setattr(transformers, "AutoModelForCausalLM",
                        types.SimpleNamespace(from_pretrained=lambda *a, **k: FakeSaved("model.safetensors")))
    monkeypatch.setattr(transformers, "AutoTokenizer",
                        types.SimpleNamespace(from_pretrained=lambda *a, **k: FakeSaved("tokenizer.json")))
    monkeypatch.setattr(peft, "PeftModel", types.SimpleNamespace(from_pretrained=lambda base, _: base))


def test_export_refuses_a_folder_it_did_not_write_and_leaves_it_whole(kb, tmp_path, no_weights):
    add_adapter(kb, "0001")
    models = tmp_path / "my-models"
    (models / "other-model").mkdir(parents=True)
    (models / "notes.txt").write_text("important")
    for out in (models, kb.home.root):  # `-o .` inside the home names the home itself
        with pytest.raises(KbloopError, match="not empty and holds no earlier kbloop export") as caught:
            export.export_merged(fake_kb(kb, tmp_path), "0001", out)
        assert "\n" not in str(caught.value)
    assert (models / "notes.txt").read_text() == "important" and (models / "other-model").is_dir()
    assert (kb.home.env_file).is_file() and kb.home.adapters_dir.is_dir()


def test_export_writes_a_new_folder_and_replaces_only_its_own_earlier_export(kb, tmp_path, no_weights):
    add_adapter(kb, "0001")
    out = tmp_path / "merged"
    assert export.export_merged(fake_kb(kb, tmp_path), "0001", out) == out
    marker = json.loads((out / export.EXPORT_MARKER).read_text())
    assert marker["adapter"] == "0001" and (out / "model.safetensors").is_file()
    (out / "stale.bin").write_text("from the first export")
    export.export_merged(fake_kb(kb, tmp_path), "0001", out)  # an earlier export: replaced
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [export.EXPORT_MARKER, "model.safetensors", "tokenizer.json"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".merged")) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    export.export_merged(fake_kb(kb, tmp_path), "0001", empty)
    assert (empty / export.EXPORT_MARKER).is_file()


def crash_renaming(monkeypatch, module, name: str):
    """Make ``module``'s os.replace fail, as a crash would, when it moves ``name``; returns the real one."""
    real = os.replace

    def crash(src, dst):
        if Path(src).name == name:
            raise OSError(f"killed while moving {name}")
        return real(src, dst)

    monkeypatch.setattr(module.os, "replace", crash)
    return real


def test_a_crash_while_replacing_an_export_keeps_the_earlier_one(kb, tmp_path, no_weights, monkeypatch):
    add_adapter(kb, "0001")
    out = tmp_path / "merged"
    export.export_merged(fake_kb(kb, tmp_path), "0001", out)
    crash_renaming(monkeypatch, export, ".merged.tmp")
    with pytest.raises(OSError):
        export.export_merged(fake_kb(kb, tmp_path), "0001", out)
    # The earlier export was moved aside, not deleted, and put back when the new one failed.
    assert (out / export.EXPORT_MARKER).is_file() and (out / "model.safetensors").is_file()


# -- promotion races (bug 6) ------------------------------------------------------------------------


def test_promote_refuses_when_current_changed_since_the_caller_looked(kb):
    for version in ("0001", "0002"):
        add_adapter(kb, version)
    registry = AdapterRegistry(kb.home, kb.manifest)
    registry.promote("0001", "test")
    registry.promote(None, "someone else rolls back to the base model")
    with pytest.raises(CurrentChanged, match="changed from 0001 to base") as caught:
        registry.promote("0002", "evaluation", expected_current="0001")
    assert caught.value.exit_code == 4
    assert registry.current() is None and len(registry.history()) == 2
    registry.promote("0002", "evaluation", expected_current=None)
    assert registry.current() == "0002"
    assert registry.rollback() is None and registry.current() is None


def test_evaluate_does_not_overwrite_a_promotion_made_while_it_ran(kb, monkeypatch):
    from kbloop.evaluate import run
    from kbloop.evaluate.evalset import EvalItem

    for version in ("0001", "0002"):
        add_adapter(kb, version)
    registry = AdapterRegistry(kb.home, kb.manifest)
    registry.promote("0001", "test")
    items = [EvalItem(id="q1", question="How many retries by default?", reference="4", slice="user")]
    monkeypatch.setattr(run, "build_evalset", lambda *a, **k: items)
    monkeypatch.setattr(run, "retrieval_ranks", lambda *a, **k: {})
    calls = []

    def answer_all(kb_, adapter, items_, progress, label):
        calls.append(label)
        if len(calls) == 1:  # meanwhile, another process goes back to the base model
            AdapterRegistry(kb.home, kb.manifest).promote(None, "by hand")
        return {i.id: {"answer": i.reference, "refused": False, "correct": True, "f1": 1.0, "sources": [],
                       "source_paths": []} for i in items_}

    monkeypatch.setattr(run, "answer_all", answer_all)
    with pytest.raises(CurrentChanged, match="evaluate it again against base"):
        run.evaluate(kb, "0002", "current", use_judge=False, promote=True)
    assert registry.current() is None
    assert registry.lineage("0002")["gate"]["decision"] == "accept"  # the report is kept


# -- checkpoints and the training log (bugs 5, 9, 10) ------------------------------------------------


def save_checkpoint(folder: Path, step: int, monkeypatch) -> None:
    """``_save_checkpoint`` with a stand-in adapter: the state file holds a tensor and the step."""
    import peft
    import torch

    monkeypatch.setattr(peft, "get_peft_model_state_dict", lambda model: {"w": torch.zeros(2)})
    optimizer = types.SimpleNamespace(state_dict=lambda: {})
    train._save_checkpoint(None, optimizer, step, step * 10, None, folder)


def test_a_crash_between_the_checkpoint_renames_resumes_from_the_newest(tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint"
    save_checkpoint(checkpoint, 1, monkeypatch)
    real = crash_renaming(monkeypatch, train, ".checkpoint.tmp")
    with pytest.raises(OSError):
        save_checkpoint(checkpoint, 2, monkeypatch)
    monkeypatch.setattr(train.os, "replace", real)
    assert not checkpoint.exists()
    train.recover_checkpoint(checkpoint)
    assert train.load_checkpoint(checkpoint / "state.pt")["step"] == 2


def test_a_torn_newer_checkpoint_falls_back_to_the_older_one(tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint"
    save_checkpoint(checkpoint, 1, monkeypatch)
    os.replace(checkpoint, tmp_path / ".checkpoint.old")
    (tmp_path / ".checkpoint.tmp").mkdir()
    (tmp_path / ".checkpoint.tmp" / "state.pt").write_bytes(b"PK\x03\x04 cut short")
    train.recover_checkpoint(checkpoint)
    assert train.load_checkpoint(checkpoint / "state.pt")["step"] == 1


def test_a_torn_log_line_does_not_stop_a_resume_and_the_log_is_cut_to_the_checkpoint(tmp_path):
    log = tmp_path / "train_log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s, "tokens_per_s": 100.0 + s}) for s in (1, 2, 3)]
    log.write_text("\n".join(lines) + '\n{"step": 4, "loss": 0.2')  # a full disk cut the last line
    assert train.logged_rate(log) == 103.0
    train.cut_log(log, 2)
    assert [e["step"] for e in train.read_log(log)] == [1, 2]
    assert log.read_text().endswith("\n") and train.logged_rate(log) == 102.0
    train.cut_log(log, 0)
    assert log.read_text() == ""


# -- publishing and leftovers (bugs 7, 8) ----------------------------------------------------------------


def plan_for(kb, version: str, **config) -> train.Plan:
    cfg = TrainConfig.from_settings(kb.settings)
    cfg = TrainConfig(**cfg.as_dict() | config)
    return train.Plan(version=version, parent=None, base_model="folder-sha256:x", lr=cfg.lr, record_ids=["a"],
                      replay_ids=[], probe_ids=[], parent_probe_ids=[], dataset_versions=["0001"], config=cfg)


def test_resume_removes_a_run_that_was_already_published(kb, tmp_path):
    add_adapter(kb, "0001")
    run_dir = kb.home.adapters_dir / ".runs" / "0001"
    run_dir.mkdir(parents=True)
    (run_dir / "plan.json").write_text(json.dumps(plan_for(kb, "0001").as_dict()))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NotFound, match="already published as adapter 0001"):
        train.finetune(fake_kb(kb, tmp_path), resume=True)
    assert not run_dir.exists()
    assert AdapterRegistry(kb.home, kb.manifest).next_version() == "0002"


def test_resume_refuses_a_run_that_began_on_another_base_model(kb, tmp_path):
    run_dir = kb.home.adapters_dir / ".runs" / "0001"
    run_dir.mkdir(parents=True)
    (run_dir / "plan.json").write_text(json.dumps(plan_for(kb, "0001").as_dict()))  # folder-sha256:x
    (tmp_path / "config.json").write_text("{}")  # the generator set now: another model
    with pytest.raises(KbloopError, match="trains another base model") as caught:
        train.finetune(fake_kb(kb, tmp_path), resume=True)
    assert str(run_dir) in str(caught.value) and (run_dir / "plan.json").is_file()  # nothing deleted


class FakeModel:
    def save_pretrained(self, folder, **_):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "adapter_model.safetensors").write_bytes(b"trained")


def test_publish_never_replaces_an_existing_version_and_keeps_what_it_trained(kb, monkeypatch):
    registry = AdapterRegistry(kb.home, kb.manifest)
    run_dir = registry.dir / ".runs" / "0001"
    run_dir.mkdir(parents=True)
    (run_dir / "train_log.jsonl").write_text("")
    add_adapter(kb, "0001")
    with pytest.raises(KbloopError, match="cannot publish adapter 0001") as caught:
        train._publish(FakeModel(), registry, plan_for(kb, "0001"), run_dir, {}, 0, 0)
    assert "\n" not in str(caught.value) and "--resume" in str(caught.value)
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == b"trained"


def test_publish_writes_the_lineage_atomically(kb, monkeypatch):
    registry = AdapterRegistry(kb.home, kb.manifest)
    run_dir = registry.dir / ".runs" / "0001"
    run_dir.mkdir(parents=True)
    (run_dir / "train_log.jsonl").write_text("")
    written = []
    real = train.atomic_write_bytes
    monkeypatch.setattr(train, "atomic_write_bytes", lambda path, data: (written.append(path.name), real(path, data)))
    train._publish(FakeModel(), registry, plan_for(kb, "0001"), run_dir, {}, 0, 0)
    assert "lineage.json" in written and registry.lineage("0001")["version"] == "0001"
    assert not run_dir.exists()


def test_a_damaged_lineage_is_one_line_naming_the_file(kb):
    folder = add_adapter(kb, "0001")
    (folder / "lineage.json").write_text('{"version": "0001", "par')
    registry = AdapterRegistry(kb.home, kb.manifest)
    for call in (lambda: registry.lineage("0001"), registry.listing):
        with pytest.raises(StoreError, match="lineage.json is damaged") as caught:
            call()
        assert str(folder / "lineage.json") in str(caught.value)


# -- settings (bugs 1, 2, 3) ----------------------------------------------------------------------------


def test_an_empty_value_turns_off_what_its_documentation_says(home):
    home.env_file.write_text("KBLOOP_LEARN_AT=\n")
    assert home.load_settings({}).learn_at == ""
    home.env_file.write_text("KBLOOP_LEARN_AT=02:00\nKBLOOP_API_KEY=secret\n")
    settings = home.load_settings({"KBLOOP_LEARN_AT": "", "KBLOOP_API_KEY": ""})
    assert (settings.learn_at, settings.api_key) == ("", "")
    # Where empty means nothing of its own, it still means the default.
    assert Settings.from_mapping({"KBLOOP_RETRIEVE_K": "", "KBLOOP_CHECK_AT": ""}).check_at == "03:00"


@pytest.mark.parametrize("line", ["KBLOOP_Retrieve_K=abc", "KBLOOP_retrieve_k=7"])
def test_a_wrongly_cased_setting_is_an_error_with_the_right_spelling(home, line):
    home.env_file.write_text(line + "\n")
    with pytest.raises(ConfigError, match="did you mean KBLOOP_RETRIEVE_K"):
        home.load_settings({})


def test_a_seed_torch_cannot_take_is_refused_up_front(kb, tmp_path):
    with pytest.raises(ConfigError, match="KBLOOP_FINETUNE_SEED"):
        Settings.from_mapping({"KBLOOP_FINETUNE_SEED": str(2**32)})
    assert Settings.from_mapping({"KBLOOP_FINETUNE_SEED": str(2**32 - 1)}).finetune_seed == 2**32 - 1
    with pytest.raises(ConfigError, match="KBLOOP_FINETUNE_SEED must be in"):
        plan_for(kb, "0001", seed=10**22)
    # A plan written before the check is reported with the folder to delete, not a traceback.
    run_dir = tmp_path / "0001"
    run_dir.mkdir()
    data = plan_for(kb, "0001").as_dict()
    data["config"]["seed"] = 10**22
    (run_dir / "plan.json").write_text(json.dumps(data))
    with pytest.raises(KbloopError, match=f"delete {run_dir}"):
        train.load_plan(run_dir)


def test_the_nightly_learn_job_leaves_a_users_promotion_in_place(monkeypatch):
    """A promotion made while the learn job evaluated refuses the job's own (above); the job
    reports its adapter as a candidate instead of failing, so the daemon does not retry it and
    train yet another adapter."""
    from kbloop.dataset import build as dataset_build
    from kbloop.evaluate import run as evaluate_run
    from kbloop.scheduler import jobs

    def refused(*args, **kwargs):
        raise CurrentChanged("adapter base is current now, not 0001: adapter 0002 was not promoted")

    monkeypatch.setattr(dataset_build, "build", lambda *a, **k: types.SimpleNamespace(summary=lambda: {"records": 3}))
    monkeypatch.setattr(train, "pending_records", lambda kb: 3)
    monkeypatch.setattr(train, "finetune", lambda kb, **k: types.SimpleNamespace(version="0002", records_new=3, steps=1))
    monkeypatch.setattr(evaluate_run, "evaluate", refused)
    kb = types.SimpleNamespace(settings=Settings(dataset_teacher_pairs=0), model=lambda role: None)
    summary = jobs.learn(kb)
    assert summary["finetune"]["version"] == "0002"
    assert "was not promoted" in summary["evaluate"] and "0002 stays a candidate" in summary["evaluate"]


def test_rollbacks_undo_promotions_in_turn(kb):
    for version in ("0001", "0002", "0003"):
        add_adapter(kb, version)
    registry = AdapterRegistry(kb.home, kb.manifest)
    for version in ("0001", "0002", "0003"):
        registry.promote(version, "test")
    assert registry.rollback() == "0002"
    assert registry.rollback() == "0001"  # not forward again to 0003
    registry.promote("0003", "test")
    assert registry.rollback() == "0001"
    assert registry.rollback() is None and registry.current() is None
    with pytest.raises(NotFound, match="nothing to roll back"):
        registry.rollback()
    assert registry.current() is None


def test_the_settings_whose_empty_value_counts_are_those_whose_help_says_what_empty_does():
    from kbloop.config import EMPTY_IS_A_VALUE

    says = {name for name, info in Settings.model_fields.items() if "empty" in (info.description or "")}
    assert EMPTY_IS_A_VALUE == says
