"""Grounding checks that need no model: does the knowledge base talk about what was asked,
and which sources does an answer come from.

A question that names an exact technical term (an option, a config key, an environment
variable) that none of the retrieved sources mentions is about something the knowledge base
does not cover, however close the embeddings look; small models would otherwise invent a value.
"""

from __future__ import annotations

import re

from kbloop.evaluate.metrics import normalise
from kbloop.ingest.manifest import Hit

TERM = re.compile(
    r"(?<![\w-])--?[a-z][\w-]+"              # --option, -x
    r"|\b[a-z][\w-]*(?:\.[a-z][\w-]*)+\b"    # config.keys and file.names
    r"|\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b"        # ENV_VARS
    r"|\$[A-Za-z_]\w*",                       # $VARIABLES
    re.IGNORECASE,
)
STOPWORDS = frozenset(
    "a an and are as at be by can default do does for from how in is it its of on or that the this to "
    "was what when where which who why will with you your by default git".split()
)


def technical_terms(question: str) -> list[str]:
    return sorted({t.lower().rstrip(".") for t in TERM.findall(question)})


def unmentioned_terms(question: str, hits: list[Hit]) -> list[str]:
    """Technical terms of the question that no retrieved source contains."""
    text = " ".join(h.text for h in hits).lower()
    return [t for t in technical_terms(question) if t not in text]


def attribute(answer: str, question: str, hits: list[Hit]) -> list[int]:
    """Numbers (1-based) of the sources that contain what the answer adds to the question."""
    asked = set(normalise(question).split())
    content = [w for w in normalise(answer).split() if w not in asked and w not in STOPWORDS]
    if not content:
        return [1] if hits else []
    overlaps = [sum(1 for w in content if w in set(normalise(h.text).split())) for h in hits]
    best = max(overlaps, default=0)
    return [n for n, o in enumerate(overlaps, start=1) if best and o == best]
