"""Thumbs-down answers come back as evaluation questions that only the judge scores."""

from __future__ import annotations

import pytest

from kbloop.errors import NothingToEvaluate
from kbloop.evaluate.evalset import EvalItem, build_evalset
from kbloop.evaluate.feedback import FeedbackStore
from kbloop.evaluate.judge import NO_REFERENCE, Judge
from kbloop.evaluate.run import side_metrics
from kbloop.evaluate.store import JudgeCache
from kbloop.kb import KnowledgeBase


@pytest.fixture
def kb(home):
    with KnowledgeBase(home) as opened:
        yield opened


def test_thumbs_down_questions_are_judge_only_eval_items(kb):
    ratings = FeedbackStore(kb.manifest.db)
    ratings.add("down", "Where is the data folder?", "In /tmp.", comment="wrong folder")
    ratings.add("down", "where is the data folder", "In /var.")  # the same question again
    ratings.add("up", "What is the default port?", "8735.")

    [item] = build_evalset(kb, set(), [], 10, 0.3, with_feedback=True)  # asked once, as last worded
    assert (item.question, item.slice, item.reference) == ("where is the data folder", "feedback", "")
    assert item.judge_only and item.answerable
    # Without a judge nothing could score them, so a run without one does not ask them.
    with pytest.raises(NothingToEvaluate):
        build_evalset(kb, set(), [], 10, 0.3, with_feedback=False)


def test_judge_only_items_count_in_the_judge_score_and_in_no_metric():
    items = [EvalItem("u", "What is the port?", "8735", "user"), EvalItem("f", "Where is the data folder?", "",
                                                                           "feedback")]
    answers = {"u": {"correct": True, "f1": 1.0, "refused": False, "judge_norm": 0.5, "verdict": {}},
               "f": {"correct": None, "f1": None, "refused": False, "judge_norm": 1.0, "verdict": {}}}
    metrics = side_metrics(items, answers, {}, 5)
    assert metrics["all"]["n"] == 2
    assert (metrics["all"]["accuracy"], metrics["all"]["f1"], metrics["all"]["judge"]) == (1.0, 1.0, 0.75)
    assert metrics["feedback"]["accuracy"] is None and metrics["feedback"]["judge"] == 1.0


class Grader:
    """A judge model that remembers what it was asked."""

    spec = "test:grader"

    def __init__(self):
        self.prompts: list[str] = []

    def complete_json(self, prompt: str, schema: dict, **kwargs) -> dict:
        self.prompts.append(prompt)
        return {"correctness": 3, "groundedness": 5, "completeness": 4, "reason": "fits the sources"}


def test_the_judge_is_told_there_is_no_reference(kb):
    grader = Grader()
    judge = Judge(grader, JudgeCache(kb.manifest.db))
    verdict = judge.score("Where is the data folder?", "In data/.", "", ["The data folder is data/."])
    assert verdict["groundedness"] == 5 and NO_REFERENCE in grader.prompts[0]
    judge.score("Where is the data folder?", "In data/.", "", ["The data folder is data/."])
    assert (judge.calls, judge.cache_hits) == (1, 1)
