"""Evaluation and the gate with the real smallest packaged model; the judge over Ollama's HTTP API."""

from __future__ import annotations

import json
import random

import pytest
from conftest import cli_error, run_cli
from fake_ollama import FakeOllama
from test_finetune import make_home

from kbloop.dataset.build import build
from kbloop.dataset.store import DatasetStore
from kbloop.evaluate.evalset import build_evalset
from kbloop.evaluate.gate import decide
from kbloop.evaluate.run import evaluate
from kbloop.finetune.registry import AdapterRegistry
from kbloop.finetune.train import finetune
from kbloop.kb import KnowledgeBase


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, model_cache, embedder):
    """0001: trained on the real answers; 0002: trained on the same questions with the answers
    shuffled among them (a deliberately broken candidate). Plus an eval file of those questions."""
    root = tmp_path_factory.mktemp("ev")
    # On 9 questions one flipped answer moves the score about 0.05. Measured here: the broken
    # adapter scores 0.12 below the base model and the sound one 0.02 above it, so a tolerance
    # of 0.05 leaves each decision a margin of more than one flipped answer.
    home = make_home(root / "kb", model_cache, KBLOOP_FINETUNE_EPOCHS="2", KBLOOP_JUDGE="local:smollm2-135m",
                     KBLOOP_GATE_TOLERANCE="0.05")
    kb = KnowledgeBase(home, embedder=embedder)
    kb.ingest()
    build(kb)
    # A sound adapter: the default rate, one pass. (On 16 records a high rate over-fits the
    # small model into refusing; that is what the gate is for, but not what this test shows.)
    sound = kb.settings.model_copy(update={"finetune_lr": 2e-4, "finetune_epochs": 1})
    good = finetune(KnowledgeBase(home, sound, embedder=embedder))
    records_file = DatasetStore(kb.home, kb.manifest).records_file("0001")
    original = records_file.read_text()
    rows = [json.loads(line) for line in original.splitlines()]
    # Shuffled with no record keeping its own answer: one random cycle through all of them.
    answers = [r["answer"] for r in rows]
    order = random.Random(7).sample(range(len(rows)), len(rows))
    for here, there in zip(order, order[1:] + order[:1]):
        rows[here]["answer"] = answers[there]
    records_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    broken = finetune(kb, fresh=True)
    records_file.write_text(original)
    assert (good.version, broken.version) == ("0001", "0002")
    picked = random.Random(3).sample([r for r in rows if r["oracle"]], 8)
    eval_file = root / "questions.jsonl"
    eval_file.write_text("".join(json.dumps({"question": r["instruction"], "answer": r["reference"],
                                             "accept": r["accept"]}) + "\n" for r in picked)
                         + json.dumps({"question": "Which colour is the dock's flag?", "answer": "NOT_IN_KB"}) + "\n")
    yield kb, eval_file
    kb.close()


@pytest.mark.slow
def test_gate_rejects_a_broken_candidate_and_accepts_a_good_one(adapters):
    kb, eval_file = adapters
    registry = AdapterRegistry(kb.home, kb.manifest)
    broken = evaluate(kb, "0002", "base", [eval_file], use_judge=False, promote=True)
    assert broken.decision.decision == "reject", broken.metrics
    assert broken.metrics["candidate"]["all"]["score"] < broken.metrics["baseline"]["all"]["score"]
    assert registry.current() is None  # a rejected candidate is not promoted
    assert registry.lineage("0002")["gate"]["decision"] == "reject"

    good = evaluate(kb, "0001", "base", [eval_file], use_judge=False, promote=True)
    assert good.decision.decision == "accept", good.decision
    assert registry.current() == "0001"
    lineage = registry.lineage("0001")
    assert lineage["gate"]["decision"] == "accept" and lineage["evaluations"][-1]["run"] == good.run
    folder = kb.home.evals_dir / good.run
    assert {"report.json", "report.md", "compare.png", "history.png"} <= {p.name for p in folder.iterdir()}
    assert (folder / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Decision: accept" in (folder / "report.md").read_text()
    registry.promote(None, "test reset")


def test_gate_checks_old_knowledge_apart():
    good = {"n": 10, "accuracy": 0.8, "f1": 0.7, "judge": None}
    worse = {"n": 10, "accuracy": 0.5, "f1": 0.4, "judge": None}
    assert decide({"all": good, "old": good}, {"all": good, "old": good}, 0.02).decision == "accept"
    forgot = decide({"all": good, "old": worse}, {"all": good, "old": good}, 0.02)
    assert forgot.decision == "reject" and any("old knowledge" in r and "worse" in r for r in forgot.reasons)
    # A judge score on one side only does not tip the comparison.
    assert decide({"all": good | {"judge": 0.0}}, {"all": good}, 0.0).decision == "accept"
    # Better on the held-out records, worse on the questions people wrote: rejected.
    fits = decide({"all": good, "user": worse}, {"all": worse, "user": good}, 0.02)
    assert fits.decision == "reject" and any("your questions" in r and "worse" in r for r in fits.reasons)


def test_eval_set_keeps_a_share_of_old_knowledge(home, open_kb):
    from test_dataset import write_manuals

    write_manuals(home.root / "docs", ["ferry.md", "dock.md"])
    kb = open_kb(dataset_eval_fraction=0.9, chunk_size=200, chunk_overlap=20)
    kb.ingest()
    build(kb)
    write_manuals(home.root / "docs")
    kb.ingest()
    build(kb)
    old = [i for i in build_evalset(kb, {"0002"}, [], 1000, 0.0) if i.slice == "old"]
    new = [i for i in build_evalset(kb, {"0002"}, [], 1000, 0.0) if i.slice == "new"]
    assert old and new and all(i.dataset_version == "0001" for i in old)
    small = build_evalset(kb, {"0002"}, [], 4, 0.5)
    assert len(small) == 4 and sum(i.slice == "old" for i in small) == 2
    assert build_evalset(kb, {"0002"}, [], 4, 0.5) == small  # the same questions every run


def judge_reply(text_for):
    """A fake Ollama judge: answers /api/chat with text_for(request body)."""
    return FakeOllama(models=["judge"], reply=text_for)


@pytest.mark.slow
def test_judge_output_that_is_not_json_is_retried_then_recorded_as_a_failure(adapters):
    kb, eval_file = adapters
    with judge_reply(lambda body: "I think the answer is fine, five stars.") as fake:
        settings = kb.settings.model_copy(update={"judge": "ollama:judge", "ollama_url": fake.url})
        with KnowledgeBase(kb.home, settings, embedder=kb.embedder) as run_kb:
            report = evaluate(run_kb, "0001", "base", [eval_file], max_items=2)
        chats = [body for path, body in fake.requests if path == "/api/chat"]
    answerable = sum(1 for d in report.details if d["reference"] != "NOT_IN_KB")
    # Each score and each pairwise question is asked, retried once, then recorded as failed.
    assert report.judge_failures == report.judge_calls > 0
    assert len(chats) == 2 * report.judge_calls
    assert report.metrics["candidate"]["all"]["judge_failures"] == answerable
    assert report.metrics["candidate"]["all"]["judge"] is None
    assert report.decision.decision in ("accept", "reject")


@pytest.mark.slow
def test_a_rerun_hits_the_judge_cache(adapters):
    kb, eval_file = adapters

    def verdict(body):
        schema = body.get("format") or {}
        if "winner" in schema.get("properties", {}):
            return json.dumps({"winner": "tie", "reason": "both say the same"})
        return json.dumps({"correctness": 4, "groundedness": 5, "completeness": 3, "reason": "close"})

    with judge_reply(verdict) as fake:
        settings = kb.settings.model_copy(update={"judge": "ollama:judge", "ollama_url": fake.url})
        with KnowledgeBase(kb.home, settings, embedder=kb.embedder) as run_kb:
            first = evaluate(run_kb, "0001", "base", [eval_file], max_items=2)
            asked = len(fake.requests)
            second = evaluate(run_kb, "0001", "base", [eval_file], max_items=2)
    assert first.judge_calls > 0 and first.judge_failures == 0
    assert first.metrics["candidate"]["all"]["judge"] == pytest.approx((4 + 5 + 3 - 3) / 12)
    # (Two answers that are the same text share one verdict, already within the first run.)
    assert second.judge_calls == 0
    assert second.judge_cache_hits == first.judge_calls + first.judge_cache_hits
    assert len(fake.requests) == asked  # the second run sent the judge nothing
    assert first.pairwise["ties"] + first.pairwise["inconsistent"] + first.pairwise["wins"] + \
        first.pairwise["losses"] == sum(1 for d in first.details if d["reference"] != "NOT_IN_KB")


@pytest.mark.slow
def test_cli_evaluate_show_and_history(adapters):
    kb, eval_file = adapters
    env = {"KBLOOP_HOME": str(kb.home.root)}
    result = run_cli("evaluate", "--candidate", "0001", "--baseline", "base", "--set", str(eval_file),
                     "--no-judge", "--max-items", "2", env=env)
    assert result.exit_code == 0, result.output
    assert "Decision:" in result.output
    shown = run_cli("evaluate", "show", env=env)
    assert shown.exit_code == 0 and "# Evaluation" in shown.output
    history = json.loads(run_cli("evaluate", "history", "--json", env=env).output)
    assert len(history) >= 1 and history[-1]["candidate"] == "0001"
    same = run_cli("evaluate", "--candidate", "0001", "--baseline", "0001", env=env)
    assert cli_error(same, 1) == \
        "error: the candidate and the baseline are both 0001: name another --baseline (e.g. base)"


@pytest.mark.slow
def test_the_homes_own_questions_are_asked_at_every_gate_run(adapters):
    kb, eval_file = adapters
    own = kb.home.root / kb.settings.eval_questions
    assert kb.home.eval_questions(kb.settings) is None
    own.write_text("".join(eval_file.read_text().splitlines(keepends=True)[:4]))  # four questions
    try:
        report = evaluate(kb, "0001", "base", use_judge=False, max_items=3)
        again = evaluate(kb, "0001", "base", [own], use_judge=False, max_items=50)
    finally:
        own.unlink()
    assert report.slices["user"] == 3 and "user" in report.metrics["candidate"]
    assert any(r.startswith("your questions:") for r in report.decision.reasons)
    assert again.slices["user"] == 4  # the same file named with --set is asked once


@pytest.mark.slow
def test_the_daemons_learn_job_runs_the_loop(adapters):
    from test_finetune import PIER

    from kbloop.scheduler.jobs import learn

    kb, _ = adapters
    registry = AdapterRegistry(kb.home, kb.manifest)
    registry.promote("0001", "test")
    # Two of the new records are enough to show the loop trains a child of the current adapter:
    # the night's own cap holds when every run's is off.
    settings = kb.settings.model_copy(update={"dataset_teacher_pairs": 0, "finetune_max_records": 0,
                                              "learn_max_records": 2})
    with KnowledgeBase(kb.home, settings, embedder=kb.embedder) as run_kb:
        idle = learn(run_kb)
        assert idle["dataset"]["version"] is None and idle["finetune"] == "no new training records"
        assert idle["dataset"]["changed"]["read"] == [] and "documents_read" not in idle["dataset"]
        (kb.home.root / "docs" / "pier.md").write_text(PIER)
        run_kb.ingest()
        summary = learn(run_kb)
    assert summary["dataset"]["records_train"] > 2 and summary["dataset"]["changed"]["read"] == ["pier.md"]
    assert 0 < summary["finetune"]["records_new"] <= 2
    version = summary["finetune"]["version"]
    assert registry.lineage(version)["parent"] == "0001"
    # This home holds no eval questions, so the gate cannot judge: the candidate waits.
    assert "nothing to evaluate" in summary["evaluate"] and registry.current() == "0001"
    registry.promote(None, "test reset")
