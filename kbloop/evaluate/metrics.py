"""Deterministic answer metrics: normalised match against reference forms, and token F1.

A reference matches when its normalised form appears in the normalised answer. A reference
that is a number must appear as a whole number (``900`` does not match ``9000`` or ``90``).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from kbloop.text import normalise

# The reference an eval item gives when the knowledge base cannot answer it: the assistant must
# refuse (the refusal users see is ``kbloop.prompt.NOT_IN_KB``, a sentence, not this marker).
UNANSWERABLE = "NOT_IN_KB"
# A reference that is a number and nothing else, matched as a whole number.
NUMERIC_REFERENCE = re.compile(r"^-?\d+(?:\.\d+)?$")


def matches(answer: str, references: Iterable[str]) -> bool:
    """True when the answer states any of the reference forms."""
    norm_answer = f" {normalise(answer)} "
    for reference in references:
        ref = normalise(reference)
        if not ref:
            continue
        if NUMERIC_REFERENCE.match(ref):
            if re.search(rf"(?<![\d.]){re.escape(ref)}(?![\d]|\.\d)", norm_answer):
                return True
        elif f" {ref} " in norm_answer or (len(ref) > 3 and ref in norm_answer):
            return True
    return False


def token_f1(answer: str, reference: str) -> float:
    a, r = normalise(answer).split(), normalise(reference).split()
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def reference_forms(item: dict) -> list[str]:
    return [item["answer"], *item.get("accept", [])]
