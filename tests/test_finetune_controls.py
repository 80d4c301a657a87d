"""What a user drives `kbloop finetune` with: options for one run, the plan and progress it
prints, and early stopping on a held-out probe that keeps the best adapter."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from conftest import cli_error, run_cli
from test_dataset import write_manuals

from kbloop.cli.finetune import describe_outline
from kbloop.config import init_home
from kbloop.dataset.build import build
from kbloop.dataset.corrections import correction_record_id
from kbloop.finetune.registry import AdapterRegistry
from kbloop.finetune.stopping import EarlyStopping, probe_size
from kbloop.finetune.train import RunOutline, finetune, pending_records, plan_run
from kbloop.kb import KnowledgeBase
from kbloop.progress import LineProgress

# Eight options with a default each: with the test manuals, 32 training records, enough for a
# run to hold out a probe (20 or more).
WINCH = "# winch(1)\n\n## OPTIONS\n\n" + "\n\n".join(
    f"--{word} Wind the rope {word}. The default is {turns} turns."
    for turns, word in enumerate(["tight", "loose", "slowly", "quickly", "twice", "backwards", "evenly", "gently"],
                                 start=3)) + "\n"
SMALL = "local:smollm2-135m"


def records_home(root: Path, model_cache: Path, embedder, **settings: str):
    """A home with 32 training records built, no adapter yet."""
    home = init_home(root)
    values = {"KBLOOP_DATASET_EVAL_FRACTION": "0", "KBLOOP_DATASET_DISTRACTORS": "1",
              "KBLOOP_DATASET_TEACHER_PAIRS": "0", "KBLOOP_FINETUNE_MAX_SEQ_LEN": "640",
              "KBLOOP_MODEL_CACHE": str(model_cache)} | settings
    with open(home.env_file, "a") as fh:
        fh.writelines(f"{k}={v}\n" for k, v in values.items())
    write_manuals(home.root / "docs")
    (home.root / "docs" / "winch.md").write_text(WINCH)
    with KnowledgeBase(home, embedder=embedder) as kb:
        kb.ingest()
        build(kb)
    return home


# -- the command line ------------------------------------------------------------------------


def test_help_shows_the_options_a_user_reaches_for():
    result = run_cli("finetune", "--help")
    assert result.exit_code == 0
    for option in ("--model SPEC", "--max-records N", "--epochs N", "--lr RATE", "--rank N", "--patience N"):
        assert option in result.output
    assert "local:qwen2.5-0.5b" in result.output


@pytest.mark.parametrize("args, line", [
    (["--epochs", "0"], "error: bad option --epochs=0: input should be greater than or equal to 1"),
    (["--epochs", "two"], "error: bad option --epochs=two: input should be a valid integer, unable to parse "
                          "string as an integer"),
    (["--max-records", "-5"], "error: bad option --max-records=-5: input should be greater than or equal to 0"),
    (["--lr", "3"], "error: bad option --lr=3: input should be less than 1"),
    (["--rank", "0"], "error: bad option --rank=0: input should be greater than or equal to 1"),
    (["--patience", "-1"], "error: bad option --patience=-1: input should be greater than or equal to 0"),
    (["--model", "qwen"], "error: bad option --model=qwen: expected provider:name, e.g. local:qwen2.5-0.5b or "
                          "ollama:qwen3:4b"),
])
def test_bad_values_are_one_line_errors(home, args, line):
    assert cli_error(run_cli("finetune", *args, env={"KBLOOP_HOME": str(home.root)}), 2) == line


def test_options_that_cannot_apply_are_one_line_errors(home):
    env = {"KBLOOP_HOME": str(home.root)}
    assert cli_error(run_cli("finetune", "--resume", "--epochs", "3", "--lr", "0.001", env=env), 1) == (
        "error: --resume continues the interrupted run as it was planned: leave out --epochs, --lr")
    assert cli_error(run_cli("finetune", "--model", "ollama:qwen3:4b", env=env), 1) == (
        "error: the model ollama:qwen3:4b cannot be fine-tuned here: use a local: or hf: model "
        "(an Ollama model can use an exported adapter)")


def test_the_plan_says_what_the_run_will_do_and_labels_its_estimate():
    outline = RunOutline(version="0003", parent="0002", generator="local:qwen2.5-0.5b", records_new=180,
                         records_replay=90, records_probe=16, records_skipped=2, epochs=2, steps=68,
                         records_per_step=8, lr=1e-4, lora_r=8, eval_steps=10, patience=3, resumed_from_step=0,
                         estimated_seconds=754.0)
    assert describe_outline(outline) == [
        "finetune 0003: continuing 0002 for local:qwen2.5-0.5b",
        "  records: 180 new + 90 replayed, 16 held out as the probe, 2 skipped as too long",
        "  training: 2 epochs, 68 steps of 8 records, lr 0.0001, LoRA rank 8",
        "  early stopping: probe loss every 10 steps; stop after 3 in a row without a new best and keep the "
        "best adapter",
        "  time: about 12m34s (an estimate from a timed pass over the probe)",
    ]
    small = RunOutline(version="0001", parent=None, generator=SMALL, records_new=8, records_replay=0,
                       records_probe=0, records_skipped=0, epochs=1, steps=1, records_per_step=8, lr=2e-4, lora_r=8,
                       eval_steps=10, patience=3, resumed_from_step=0, estimated_seconds=None)
    assert describe_outline(small)[3:] == ["  early stopping: off (too few records to hold out a probe)",
                                           "  time: unknown (nothing timed yet)"]


def test_progress_off_a_terminal_is_a_line_now_and_then_with_the_time_left():
    now = [0.0]
    out = io.StringIO()
    bar = LineProgress(total=10, desc="finetune 0001", unit="step", every=30, stream=out, clock=lambda: now[0])
    for second in (10, 20, 31, 40, 50, 62):  # prints at 31 s and at 62 s
        now[0] = second
        bar.set_postfix(loss="1.234")
        bar.update(1)
    now[0] = 70
    bar.update(1)
    bar.close()
    bar.close()  # nothing new: no second final line
    assert out.getvalue().splitlines() == [
        "finetune 0001: 3/10 steps (30%), loss 1.234, 31s elapsed, about 1m12s left",
        "finetune 0001: 6/10 steps (60%), loss 1.234, 1m02s elapsed, about 41s left",
        "finetune 0001: 7/10 steps (70%), loss 1.234, 1m10s elapsed, about 30s left",
    ]


# -- early stopping ------------------------------------------------------------------------------


def test_the_stopping_rule_on_a_fed_loss_sequence():
    rule = EarlyStopping(patience=2)
    # Falls, rises once (one worse), a new best resets the count, then two in a row above it.
    sequence = [(10, 2.0), (20, 1.5), (30, 1.6), (40, 1.4), (50, 1.4), (60, 1.9)]
    stops = []
    for step, loss in sequence:
        rule.record(step, loss)
        stops.append(rule.should_stop)
    assert stops == [False, False, False, False, False, True]  # a tie with the best counts as worse
    assert (rule.best_step, rule.best_loss, rule.losses) == (40, 1.4, [list(s) for s in sequence])
    assert rule.reason(60, 100) == ("early stop at step 60 of 100: 2 probe-loss measurements in a row without a "
                                    "new best; kept the adapter of step 40 (probe loss 1.4000)")
    diverged = EarlyStopping(patience=1)
    assert diverged.record(5, 3.0) and not diverged.record(10, math.nan) and diverged.should_stop
    finished = EarlyStopping(patience=3)
    for step, loss in [(10, 2.0), (20, 1.0), (25, 1.1)]:
        finished.record(step, loss)
    assert finished.reason(25, 25) == "completed all 25 steps; kept the adapter of step 20 (probe loss 1.0000)"


def test_probe_size_has_a_floor_a_ceiling_and_needs_20_records():
    assert [probe_size(n, 0.1) for n in (8, 19, 20, 32, 100, 160, 5000)] == [0, 0, 4, 4, 10, 16, 16]
    assert probe_size(50, 0.2) == 10 and probe_size(20, 0.2) == 4


def test_the_probe_is_held_out_of_training_and_waits_for_the_next_run(tmp_path, model_cache, embedder):
    home = records_home(tmp_path / "kb", model_cache, embedder, KBLOOP_GENERATOR=SMALL)
    with KnowledgeBase(home, embedder=embedder) as kb:
        registry = AdapterRegistry(kb.home, kb.manifest)
        plan = plan_run(kb, registry, None, True, "base")
        assert plan.probe_held_out and len(plan.probe_ids) == 4 and len(plan.record_ids) == 28
        assert not set(plan.probe_ids) & set(plan.record_ids)
        assert not set(plan.probe_ids) & set(plan.seen_ids)  # unseen: the next run learns them
        assert plan_run(kb, registry, None, True, "base").probe_ids == plan.probe_ids  # deterministic
        off = KnowledgeBase(home, kb.settings.model_copy(update={"finetune_patience": 0}), embedder=embedder)
        plan = plan_run(off, registry, None, True, "base")
        assert not plan.probe_held_out and len(plan.record_ids) == 32 and set(plan.probe_ids) <= set(plan.record_ids)


def test_a_run_takes_every_correction_whatever_the_cap_and_never_holds_one_out(tmp_path, model_cache, embedder):
    home = records_home(tmp_path / "kb", model_cache, embedder, KBLOOP_GENERATOR=SMALL)
    with KnowledgeBase(home, embedder=embedder) as kb:
        ids = [correction_record_id(kb.feedback.add("down", q, "?", correction=a)) for q, a in (
            ("How many turns does --tight wind?", "Three turns."), ("How many turns does --gently wind?", "Ten."))]
        assert build(kb).corrections == 2

        def planned(**settings: object):
            opened = KnowledgeBase(home, kb.settings.model_copy(update=settings), embedder=embedder)
            return plan_run(opened, AdapterRegistry(home, kb.manifest), None, True, "base")

        capped = planned(finetune_max_records=3)
        assert set(ids) <= set(capped.record_ids) and len(capped.record_ids) == 3
        assert planned(finetune_max_records=1).record_ids == ids  # more corrections than the cap: all of them
        for fraction in (0.1, 0.2):  # 34 records: a probe is held out
            plan = planned(finetune_probe_fraction=fraction)
            assert plan.probe_held_out and set(ids) <= set(plan.record_ids) and not set(ids) & set(plan.probe_ids)
        unheld = planned(finetune_patience=0)  # a probe only measured: not a correction either
        assert len(unheld.record_ids) == 34 and unheld.probe_ids and not set(ids) & set(unheld.probe_ids)


@pytest.mark.slow
def test_a_diverging_run_stops_early_keeps_the_best_adapter_and_can_be_continued(tmp_path, model_cache, embedder):
    # The home's generator is the default; --model trains for the small one. A learning rate of
    # 0.05 makes the probe loss rise after the first step: at 0.05 it went 2.1, 10.8, 17.5.
    home = records_home(tmp_path / "kb", model_cache, embedder, KBLOOP_FINETUNE_EVAL_STEPS="1",
                        KBLOOP_FINETUNE_BATCH_SIZE="4", KBLOOP_FINETUNE_GRAD_ACCUM="1")
    result = run_cli("finetune", "--model", SMALL, "--max-records", "20", "--epochs", "1", "--lr", "0.05",
                     "--patience", "2", env={"KBLOOP_HOME": str(home.root)})
    assert result.exit_code == 0, result.output
    printed = result.stderr.splitlines()
    plan = printed[printed.index(f"finetune 0001: a new adapter for {SMALL}"):]
    assert plan[:4] == [f"finetune 0001: a new adapter for {SMALL}",
                        "  records: 16 new + 0 replayed, 4 held out as the probe",
                        "  training: 1 epochs, 4 steps of 4 records, lr 0.05, LoRA rank 8",
                        "  early stopping: probe loss every step; stop after 2 in a row without a new best "
                        "and keep the best adapter"]
    assert plan[4].startswith("  time: about ") and "an estimate" in plan[4]
    assert plan[-1].startswith("finetune 0001: 3/4 steps (75%), loss ")  # off a terminal: lines, the last at the end
    assert "stopped: early stop at step 3 of 4: 2 probe-loss measurements in a row without a new best; " \
           "kept the adapter of step 1" in result.stdout

    with KnowledgeBase(home, embedder=embedder) as kb:
        registry = AdapterRegistry(kb.home, kb.manifest)
        lineage = registry.lineage("0001")
        losses = [loss for _, loss in lineage["probe_losses"]]
        assert lineage["generator"] == SMALL and lineage["stopped_early"] and lineage["best_step"] == 1
        assert lineage["final_probe_loss"] == min(losses) == losses[0] < losses[-1]
        assert lineage["probe_held_out"] and lineage["records"]["new"] == 16
        registry.promote("0001", "test")
        # The held-out probe waits for a run with new records; the 12 records not picked are pending.
        assert pending_records(kb) == 12
        settings = kb.settings.model_copy(update={"generator": SMALL, "finetune_patience": 0})
        with KnowledgeBase(home, settings, embedder=embedder) as small:
            unlimited = plan_run(small, registry, None, False, lineage["base_model"])
        assert set(lineage["probe_ids"]) <= set(unlimited.record_ids) and len(unlimited.record_ids) == 16
    # Continue it: the child's first loss on its parent's probe is the parent's kept (best) loss, not
    # its last, so the adapter kept is the best one.
    child_settings = settings.model_copy(update={"finetune_max_records": 4, "finetune_epochs": 1})
    with KnowledgeBase(home, child_settings, embedder=embedder) as kb:
        child = finetune(kb)
        child_lineage = AdapterRegistry(kb.home, kb.manifest).lineage(child.version)
    assert child.parent == "0001" and child.records_new == 4 and child.records_replay == 2
    assert child.initial_parent_probe_loss == pytest.approx(lineage["final_probe_loss"], abs=1e-4)
    assert set(lineage["seen_ids"]) <= set(child_lineage["seen_ids"])
    assert child.stop_reason == "completed all 2 steps; no early stopping (KBLOOP_FINETUNE_PATIENCE=0)"


def test_a_checkpoint_keeps_the_stopping_state_and_the_best_adapter(tmp_path):
    """``--resume`` goes on watching the probe where the run stopped, with the best adapter so far."""
    import torch
    from peft import LoraConfig, get_peft_model

    from kbloop.finetune.train import _save_checkpoint, adapter_copy, load_checkpoint

    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(r=2, target_modules=["0"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before_any = EarlyStopping(patience=3)  # a checkpoint may come before the first evaluation
    _save_checkpoint(model, optimizer, 5, 100, 2.5, tmp_path / "a", stopping=before_any.as_dict())
    state = load_checkpoint(tmp_path / "a" / "state.pt")
    assert EarlyStopping(**state["stopping"]) == before_any and state["best_adapter"] is None
    watched = EarlyStopping(patience=3)
    watched.record(10, 1.5)
    best = adapter_copy(model)
    _save_checkpoint(model, optimizer, 10, 200, 2.5, tmp_path / "b", stopping=watched.as_dict(), best_adapter=best)
    state = load_checkpoint(tmp_path / "b" / "state.pt")
    assert EarlyStopping(**state["stopping"]) == watched
    assert state["best_adapter"].keys() == best.keys()
    assert all(torch.equal(state["best_adapter"][k], best[k]) for k in best)
