"""Question/answer pairs written by the teacher role (an Ollama model or a packaged one).

The teacher picks facts the chunk states and asks about each in a few phrasings: a fact asked
one way only teaches the model that one way of asking. Its answers here are the chunk's own
words, which the support filter checks; ``kbloop.dataset.answers`` then has the teacher answer
each question again the way the assistant is asked it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kbloop.dataset.extractive import Pair, document_name
from kbloop.models.jsonout import JsonOutputError

if TYPE_CHECKING:
    from kbloop.models.generators import Generator

log = logging.getLogger(__name__)


def schema(phrasings: int) -> dict:
    """The reply's shape: each fact's question and answer, and, when asked for, other phrasings
    of its question (optional, so a reply without them still gives its pairs)."""
    item = {"question": {"type": "string", "minLength": 8}, "answer": {"type": "string", "minLength": 1}}
    if phrasings > 1:
        item["rephrasings"] = {"type": "array", "items": {"type": "string", "minLength": 8}}
    return {
        "type": "object",
        "properties": {"pairs": {"type": "array", "items": {"type": "object", "properties": item,
                                                            "required": ["question", "answer"]}}},
        "required": ["pairs"],
    }


SYSTEM = "You write exam questions about technical documentation. You answer only with JSON."
PROMPT = (
    "Passage from {doc}:\n\"\"\"\n{text}\n\"\"\"\n\n"
    "Pick {n} different facts this passage states on its own, and for each write a question a user of "
    "{doc} could ask to learn it{others}. Each question must name what it is about (the command, option "
    "or setting), so it makes sense without the passage. Each answer must copy the passage's exact words: "
    "a value, a name or one short sentence."
)
OTHERS = ", and in \"rephrasings\" {k} other ways to ask the same question, in different words"


def teacher_pairs(teacher: Generator, text: str, metadata: dict, path: str, n: int,
                  phrasings: int = 1) -> list[Pair]:
    """Up to ``n`` facts, each asked in up to ``phrasings`` ways (one pair per phrasing, all with
    the fact's answer); a teacher that gives no usable JSON costs this chunk its teacher pairs
    (logged), never the build."""
    doc = document_name(metadata, path)
    others = OTHERS.format(k=phrasings - 1) if phrasings > 1 else ""
    prompt = PROMPT.format(doc=doc, text=text.strip(), n=n, others=others)
    try:
        reply = teacher.complete_json(prompt, schema(phrasings), system=SYSTEM,
                                      max_new_tokens=n * (120 + 40 * (phrasings - 1)))
    except JsonOutputError as exc:
        log.warning("teacher skipped a chunk of %s: %s", path, exc)
        return []
    pairs = []
    for fact in reply["pairs"][:n]:
        answer = " ".join(fact["answer"].split())
        questions = [fact["question"], *fact.get("rephrasings", [])][:phrasings]
        pairs += [Pair(" ".join(q.split()), answer, f"teacher:{teacher.spec}") for q in questions]
    return pairs
