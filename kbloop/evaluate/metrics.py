"""Deterministic answer metrics: normalised match against reference forms, and token F1.

A reference matches when its normalised form appears in the normalised answer. A reference
that is a number must appear as a whole number (``900`` does not match ``9000`` or ``90``).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Iterable

NOT_IN_KB = "NOT_IN_KB"
_CITATION = re.compile(r"\[\d{1,2}\]")  # a source mark like [1] is not the number 1
_PUNCT = re.compile(r"[`*_\\\"'“”‘’()\[\]{},;:!?]")
_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


def normalise(text: str) -> str:
    text = _CITATION.sub(" ", unicodedata.normalize("NFKC", text).lower())
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 6,700 -> 6700
    text = _PUNCT.sub(" ", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # sentence dots, not decimal points
    return _SPACE.sub(" ", text).strip()


def matches(answer: str, references: Iterable[str]) -> bool:
    """True when the answer states any of the reference forms."""
    norm_answer = f" {normalise(answer)} "
    for reference in references:
        ref = normalise(reference)
        if not ref:
            continue
        if _NUMBER.match(ref):
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
