"""The LLM judge: scores an answer against its reference and sources, and compares two answers.

The judge is the judge role (``KBLOOP_JUDGE``: an Ollama model, or a packaged one), asked for
JSON with a schema at temperature 0. Verdicts are cached (``JudgeCache``) by (question,
answers, reference, judge, prompt version), so a re-run costs nothing. A judge that gives no
valid JSON, even after its retry, yields a recorded failure, never a crash.

A question with no reference answer (one a user marked wrong) is graded against the sources
alone: the prompt says there is no reference, and correctness then means agreeing with them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

from kbloop.errors import BackendUnavailable
from kbloop.evaluate.store import JudgeCache
from kbloop.models.jsonout import JsonOutputError

log = logging.getLogger(__name__)

PROMPT_VERSION = "judge-v1"
SCORE = {"type": "integer", "minimum": 1, "maximum": 5}
# Bounded, so that a grammar-constrained reply always closes within the token limit.
REASON = {"type": "string", "maxLength": 240}
SCORES_SCHEMA = {
    "type": "object",
    "properties": {"correctness": SCORE, "groundedness": SCORE, "completeness": SCORE,
                   "reason": REASON},
    "required": ["correctness", "groundedness", "completeness", "reason"],
}
PAIR_SCHEMA = {
    "type": "object",
    "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}, "reason": REASON},
    "required": ["winner", "reason"],
}
SYSTEM = "You are a strict grader of answers about documentation. You reply only with JSON."
SCORE_PROMPT = """Question: {question}

Reference answer: {reference}

Sources the assistant was given:
{sources}

Assistant's answer: {answer}

Grade the assistant's answer from 1 (worst) to 5 (best):
- correctness: does it agree with the reference answer?
- groundedness: is everything it states supported by the sources?
- completeness: does it give all of what the reference answer gives?
Give a one-sentence reason."""
PAIR_PROMPT = """Question: {question}

Reference answer: {reference}

Answer A: {a}

Answer B: {b}

Which answer is more correct and complete with respect to the reference? Reply winner A, B or tie, with a one-sentence reason."""
SOURCE_CHARS = 1500
NO_REFERENCE = "(none: no reference answer is known; judge by the sources alone)"


class Judge:
    def __init__(self, model, cache: JudgeCache):
        self.model, self.cache = model, cache
        self.spec = model.spec
        self.calls = self.cache_hits = self.failures = 0

    def _key(self, kind: str, *parts: str) -> str:
        text = "\n\x1f".join((PROMPT_VERSION, self.spec, kind, *parts))
        return hashlib.sha256(text.encode()).hexdigest()

    def _cached(self, key: str, ask: Callable[[], dict]) -> dict:
        cached = self.cache.get(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        self.calls += 1
        try:
            verdict = ask()
        except (JsonOutputError, BackendUnavailable) as exc:
            # Not cached: a later run asks again (the judge may be back, or a bigger one set).
            self.failures += 1
            log.warning("judge failed: %s", exc)
            return {"error": str(exc)}
        self.cache.put(key, verdict)
        return verdict

    def score(self, question: str, answer: str, reference: str, sources: list[str]) -> dict:
        """{correctness, groundedness, completeness, reason}, or {error} when the judge failed."""
        shown = "\n---\n".join(s.strip() for s in sources)[:SOURCE_CHARS] or "(none)"
        prompt = SCORE_PROMPT.format(question=question, reference=reference or NO_REFERENCE, sources=shown,
                                     answer=answer)
        return self._cached(self._key("score", question, answer, reference, shown),
                            lambda: self.model.complete_json(prompt, SCORES_SCHEMA, system=SYSTEM, max_new_tokens=160))

    def prefer(self, question: str, reference: str, first: str, second: str) -> str | None:
        """Which of two answers is better, asked in both orders: "first", "second" or "tie" when
        the two verdicts agree, None when they contradict each other or the judge failed."""
        if first.strip() == second.strip():
            return "tie"
        verdicts = []
        for a, b in ((first, second), (second, first)):
            prompt = PAIR_PROMPT.format(question=question, reference=reference or NO_REFERENCE, a=a, b=b)
            verdict = self._cached(self._key("pair", question, reference, a, b),
                                   lambda p=prompt: self.model.complete_json(p, PAIR_SCHEMA, system=SYSTEM,
                                                                             max_new_tokens=120))
            if "error" in verdict:
                return None
            verdicts.append(verdict["winner"])
        as_first = {"A": "first", "B": "second", "tie": "tie"}[verdicts[0]]
        as_second = {"A": "second", "B": "first", "tie": "tie"}[verdicts[1]]
        return as_first if as_first == as_second else None


def judge_norm(verdict: dict) -> float | None:
    """A verdict's mean score on a 0-1 scale, None for a failure."""
    if "error" in verdict:
        return None
    return (verdict["correctness"] + verdict["groundedness"] + verdict["completeness"] - 3) / 12
