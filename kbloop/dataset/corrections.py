"""Users' corrections as training records.

A thumbs-down that carries the right answer (``POST /api/feedback`` with a ``correction``, or
the text box under *Wrong* on the web page) becomes one record at the next build: the question
as the user asked it, the knowledge the assistant retrieves for it at build time (the same
search, in the same order), and the user's words as the answer. So the record renders to the
prompt the assistant builds for that question, ending with what it should have said.

Each correction is built once: its record id derives from the rating's id, and a rating whose
record exists (active or retired) is not built again. The records are all training records
(the evaluation asks the corrected questions from the ratings themselves), and no change of the
documents retires them: they come from a person, not from a chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Any

from kbloop.assistant.answer import Assistant
from kbloop.dataset.records import CORRECTION, Knowledge, Record


def correction_record_id(feedback_id: int) -> str:
    return hashlib.sha256(f"{CORRECTION}\n{feedback_id}".encode()).hexdigest()[:20]


def correction_records(kb, version: str, built: Collection[str]) -> list[Record]:
    """A record for each correction whose record id is not in ``built``, oldest first."""
    assistant = Assistant(kb, verifier=None)  # retrieval only: no model is loaded
    records = []
    for rating in kb.feedback.corrections():
        rid = correction_record_id(rating.id)
        if rid in built:
            continue
        hits = assistant.retrieve(rating.question)
        knowledge = [Knowledge(h.path, h.text, h.metadata, oracle=False) for h in hits]
        source: dict[str, Any] = {
            "path": hits[0].path if hits else "", "text_hash": f"{CORRECTION}:{rating.id}",
            "feedback_id": rating.id, "rated_at": rating.created_at, "answer_given": rating.answer,
        }
        # oracle: the record teaches its answer, never the refusal that leaving a source out teaches
        records.append(Record(rid, version, "train", CORRECTION, rating.question, knowledge, rating.correction,
                              rating.correction, True, source))
    return records
