"""Users' corrections as training records.

A thumbs-down that carries the right answer (``POST /api/feedback`` with a ``correction``, or
the text box under *Wrong* on the web page) becomes one record at the next build: the question
as the user asked it, the knowledge the assistant retrieves for it at build time (the same
search, in the same order), and the user's words as the answer. So the record renders to the
prompt the assistant builds for that question, ending with what it should have said.

A question asked one way teaches its answer for that one way of asking, so the teacher model
also writes ``KBLOOP_DATASET_CORRECTION_PHRASINGS`` other ways to ask it. Each becomes a record
of its own, over the knowledge retrieved for that phrasing, with the user's words as the answer.
A phrasing is kept only when what retrieval finds for it holds the question's own best source,
so it still asks about the same thing and its prompt still holds what the answer came from; a
teacher that fails (no usable JSON, a server that is down) costs the phrasings, never the
correction.

Each correction is built once: its record id derives from the rating's id, and a rating whose
record exists (active or retired) is not built again. The records are all training records
(the evaluation asks the corrected questions from the ratings themselves), and no change of the
documents retires them: they come from a person, not from a chunk.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from kbloop.assistant.answer import Assistant
from kbloop.dataset.records import CORRECTION, Knowledge, Record, correction_hash
from kbloop.errors import BackendUnavailable
from kbloop.models.jsonout import JsonOutputError
from kbloop.text import normalise

if TYPE_CHECKING:
    from kbloop.evaluate.feedback import Feedback
    from kbloop.models.generators import Generator

log = logging.getLogger(__name__)

SYSTEM = "You rewrite questions about technical documentation. You answer only with JSON."
PROMPT = (
    "A user asked:\n\"{question}\"\n\nWrite {k} other ways to ask exactly this question, each in different "
    "words. Keep the names of commands, options, settings and files as they are. Do not answer it."
)


def correction_record_id(feedback_id: int, phrasing: str | None = None) -> str:
    """The record id of a correction's question as asked, or of one of its other phrasings."""
    key = f"{CORRECTION}\n{feedback_id}" + (f"\n{phrasing}" if phrasing is not None else "")
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def correction_records(kb, version: str, built: Collection[str], phrasings: int = 0,
                       rephraser: Callable[[], Generator] | None = None) -> list[Record]:
    """Records for each correction whose record id is not in ``built``, oldest first: the
    question as asked, then up to ``phrasings`` other phrasings of it written by the model that
    ``rephraser`` makes (made once, when first needed)."""
    assistant = Assistant(kb, verifier=None)  # retrieval only: no model is loaded
    records: list[Record] = []
    teacher: Generator | None = None
    for rating in kb.feedback.corrections():
        rid = correction_record_id(rating.id)
        if rid in built:
            continue
        asked = _record(assistant, rating, rid, rating.question, version)
        records.append(asked)
        if phrasings and rephraser is not None and asked.knowledge:
            teacher = teacher or rephraser()
            for phrasing in rephrase(teacher, rating.question, phrasings):
                other = _record(assistant, rating, correction_record_id(rating.id, phrasing), phrasing, version)
                if asked.knowledge[0].text in {k.text for k in other.knowledge}:
                    records.append(other)
                else:
                    log.info("a phrasing of correction %d was left out: retrieval does not find the question's "
                             "best source for it (%s)", rating.id, phrasing)
    return records


def rephrase(teacher: Generator, question: str, k: int) -> list[str]:
    """Up to ``k`` other phrasings of ``question``: whole questions (ending in "?"), each
    different from it and from the others (compared without case and punctuation); none when
    the teacher gives no usable JSON."""
    schema = {"type": "object", "required": ["questions"], "properties": {
        "questions": {"type": "array", "items": {"type": "string"}}}}
    try:
        reply = teacher.complete_json(PROMPT.format(question=question, k=k), schema, system=SYSTEM,
                                      max_new_tokens=60 * k)
    except (JsonOutputError, BackendUnavailable) as exc:  # a reply without JSON, or a server that is down
        log.warning("the teacher wrote no other phrasings of a corrected question: %s", exc)
        return []
    seen = {normalise(question)}
    out = []
    for text in reply["questions"]:
        text = " ".join(text.split())
        if len(text) >= 8 and text.endswith("?") and normalise(text) not in seen:
            seen.add(normalise(text))
            out.append(text)
    return out[:k]


def _record(assistant: Assistant, rating: Feedback, rid: str, question: str, version: str) -> Record:
    hits = assistant.retrieve(question)
    knowledge = [Knowledge(h.path, h.text, h.metadata, oracle=False) for h in hits]
    source: dict[str, Any] = {
        "path": hits[0].path if hits else "", "text_hash": correction_hash(rating.id),
        "feedback_id": rating.id, "rated_at": rating.created_at, "answer_given": rating.answer,
    }
    if question != rating.question:
        source["phrasing_of"] = rating.question
    # oracle: the record teaches its answer, never the refusal that leaving a source out teaches
    return Record(rid, version, "train", CORRECTION, question, knowledge, rating.correction,
                  rating.correction, True, source)
