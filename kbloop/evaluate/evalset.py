"""The questions an evaluation asks: the dataset's held-out split, sliced into new and old
knowledge, plus any eval JSONL the user adds ({question, answer, source?}) and the questions
users marked wrong with a thumbs-down: with the right answer where they typed one (then asked
as one of the home's own questions), else for the judge alone."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from kbloop.dataset.store import DatasetStore
from kbloop.errors import KbloopError, NothingToEvaluate
from kbloop.evaluate.feedback import Feedback, FeedbackStore
from kbloop.evaluate.metrics import UNANSWERABLE
from kbloop.text import normalise, numbers

Slice = Literal["new", "old", "user", "feedback"]


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str
    reference: str
    slice: Slice
    gold_hash: str | None = None     # the source chunk's text hash (dataset items)
    gold_path: str | None = None     # the source file (dataset items; user items that name one)
    dataset_version: str | None = None
    accept: tuple[str, ...] = ()     # other forms of the reference that also count as correct

    @property
    def answerable(self) -> bool:
        return self.reference != UNANSWERABLE

    @property
    def judge_only(self) -> bool:
        """No reference answer (a question a user marked wrong): only the judge can score it."""
        return not self.reference

    def as_dict(self) -> dict:
        return asdict(self)


def user_items(path: Path) -> list[EvalItem]:
    """A user's eval JSONL: one {question, answer, source?, accept?} per line; answer NOT_IN_KB
    marks a question the knowledge base must refuse; accept lists other correct forms."""
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            question, answer = str(data["question"]).strip(), str(data["answer"]).strip()
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise KbloopError(f"{path}:{n}: expected a JSON object with question and answer ({exc})") from None
        if not question or not answer:
            raise KbloopError(f"{path}:{n}: question and answer must not be empty")
        rid = hashlib.sha256(f"user\n{question}\n{answer}".encode()).hexdigest()[:20]
        accept = tuple(str(a) for a in data.get("accept") or ())
        items.append(EvalItem(rid, question, answer, "user", gold_path=data.get("source"), accept=accept))
    return items


def feedback_items(candidates: list[Feedback]) -> list[EvalItem]:
    """Questions users marked wrong, each asked once. One a user corrected is asked like the
    home's own questions, its newest correction the reference. The others have no reference
    (a withdrawn correction counts as none): the judge grades the new answers against their sources."""
    items: dict[str, EvalItem] = {}
    standing = {fb.id for fb in candidates if fb.correction and fb.withdrawn_at is None}
    for fb in sorted(candidates, key=lambda f: f.id not in standing):  # stable: corrections first
        question = fb.question.strip()
        key = normalise(question)
        if not question or key in items:
            continue
        if fb.id in standing:
            rid = hashlib.sha256(f"correction\n{key}\n{fb.correction}".encode()).hexdigest()[:20]
            accept = correction_value(question, fb.correction)
            items[key] = EvalItem(rid, question, fb.correction, "user", accept=accept)
        else:
            rid = hashlib.sha256(f"feedback\n{key}".encode()).hexdigest()[:20]
            items[key] = EvalItem(rid, question, "", "feedback")
    return list(items.values())


def correction_value(question: str, correction: str) -> tuple[str, ...]:
    """The bare value a correction states, as another correct form: the one number in it that
    the question does not hold. A user writes a sentence ("It exits with status 1 when ..."),
    and an answer that states the value ("1") is right although it does not repeat the
    sentence. With no such number, or several (which one answer would have to state all of),
    only the sentence is the reference."""
    new = numbers(correction) - numbers(question)
    return tuple(new) if len(new) == 1 else ()


def _spread(items: list[EvalItem], n: int) -> list[EvalItem]:
    """A deterministic sample: the n items whose id hashes lowest (stable as the set grows)."""
    return sorted(items, key=lambda i: hashlib.sha256(i.id.encode()).hexdigest())[:n]


def build_evalset(kb, new_versions: set[str], user_files: list[Path], max_items: int,
                  old_share: float, with_feedback: bool = False) -> list[EvalItem]:
    """Held-out dataset items (new = from ``new_versions``, old = from earlier versions) plus
    the user's items, the corrected questions and, ``with_feedback`` (a run with a judge), the
    other thumbs-down questions; capped at ``max_items``, people's questions first, with at
    least ``old_share`` of the rest old when old items exist."""
    user: list[EvalItem] = []
    for path in user_files:
        user += user_items(path)
    asked_by_user = {normalise(i.question) for i in user}
    rated = feedback_items(FeedbackStore(kb.manifest.db).eval_candidates())
    user += [i for i in rated if not i.judge_only and normalise(i.question) not in asked_by_user]
    marked = [i for i in rated if i.judge_only] if with_feedback else []
    records = DatasetStore(kb.home, kb.manifest).active_records("eval")
    dataset = [EvalItem(r.id, r.instruction, r.reference, "new" if r.version in new_versions else "old",
                        r.source["text_hash"], r.source["path"], r.version, accept=tuple(r.accept))
               for r in records]
    new = [i for i in dataset if i.slice == "new"]
    old = [i for i in dataset if i.slice == "old"]
    asked = _spread(user, max_items)
    asked += _spread(marked, max_items - len(asked))
    room = max_items - len(asked)
    n_old = min(len(old), max(round(room * old_share), room - len(new)))
    picked = asked + _spread(new, room - n_old) + _spread(old, n_old)
    if not picked:
        raise NothingToEvaluate("nothing to evaluate: build a dataset (its eval split) or pass --set FILE.jsonl")
    return picked
