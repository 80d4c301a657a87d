"""Question/answer pairs written by the teacher role (an Ollama model or a packaged one)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kbloop.dataset.extractive import Pair, document_name
from kbloop.models.jsonout import JsonOutputError

if TYPE_CHECKING:
    from kbloop.models.generators import Generator

log = logging.getLogger(__name__)

SCHEMA = {
    "type": "object",
    "properties": {
        "pairs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"question": {"type": "string", "minLength": 8},
                               "answer": {"type": "string", "minLength": 1}},
                "required": ["question", "answer"],
            },
        }
    },
    "required": ["pairs"],
}
SYSTEM = "You write exam questions about technical documentation. You answer only with JSON."
PROMPT = (
    "Passage from {doc}:\n\"\"\"\n{text}\n\"\"\"\n\n"
    "Write {n} different questions a user of {doc} could ask that this passage answers on its own. "
    "Each question must name what it is about (the command, option or setting), so it makes sense "
    "without the passage. Each answer must copy the passage's exact words: a value, a name or one "
    "short sentence."
)


def teacher_pairs(teacher: Generator, text: str, metadata: dict, path: str, n: int) -> list[Pair]:
    """Up to ``n`` pairs; a teacher that gives no usable JSON costs this chunk its teacher pairs
    (logged), never the build."""
    doc = document_name(metadata, path)
    try:
        reply = teacher.complete_json(PROMPT.format(doc=doc, text=text.strip(), n=n), SCHEMA, system=SYSTEM,
                                      max_new_tokens=120 * n)
    except JsonOutputError as exc:
        log.warning("teacher skipped a chunk of %s: %s", path, exc)
        return []
    return [Pair(" ".join(p["question"].split()), " ".join(p["answer"].split()), f"teacher:{teacher.spec}")
            for p in reply["pairs"][:n]]
