"""The grounded prompt: numbered sources, the question, and the rules for citing and refusing.

The assistant builds it at question time and the dataset renders every training record with
it, so it lives below both.
"""

from __future__ import annotations

import re

from kbloop.ingest.manifest import Hit

DONT_KNOW = "I don't know."
# What the user is shown when kbloop refuses: the model said DONT_KNOW, or a check found that
# the sources cannot answer.
NOT_IN_KB = "The knowledge base does not contain the answer to this question."

# Measured on ../shared/kbdev with qwen2.5-0.5b: asking small models to cite [n] themselves
# made them answer with a bare "[1]"; kbloop attributes sources itself (grounding.attribute).
ANSWER_RULES = (
    "Answer the question from the sources. Quote the exact values, names and commands from the "
    "sources, in one or two sentences."
)
SYSTEM = f"{ANSWER_RULES} If the sources do not contain the answer, reply exactly: {DONT_KNOW}"
# The second reading of a reply that refused although the sources passed the relevance checks:
# the model may not refuse, and the judge decides whether its answer stands.
READ_AGAIN_SYSTEM = f"{ANSWER_RULES} Answer with what the sources say."

# What small models say when the sources do not hold the answer, in their many phrasings.
_HEDGE = r"(?:explicitly\s+|directly\s+|clearly\s+|specifically\s+)?"  # "not explicitly stated"
REFUSAL = re.compile(
    r"\b(i\s+don'?t\s+know|i\s+do\s+not\s+know|not\s+" + _HEDGE + r"(?:mentioned|provided|stated|specified|given|"
    r"found|included|available|listed|present)\b|(?:(?:does|do)\s+not|doesn'?t)\s+" + _HEDGE +
    r"(?:contain|mention|say|specify|provide|state)|no\s+information|cannot\s+(?:be\s+)?"
    r"(?:determined|answered|found|determine|answer|find)|can'?t\s+(?:determine|answer|find|tell)|"
    r"unable\s+to\s+(?:determine|answer|find))",
    re.IGNORECASE,
)
CITATION = re.compile(r"\[(\d{1,2})\]")


def source_heading(n: int, hit: Hit) -> str:
    where = " > ".join(v for v in (hit.metadata.get("title"), hit.metadata.get("section")) if v)
    page = f", page {hit.metadata['page']}" if hit.metadata.get("page") else ""
    return f"[{n}] {hit.path}{page}" + (f" ({where})" if where else "")


# Asked a second time when the first reply only restated the question. Measured with
# qwen2.5-0.5b on ../shared/kbdev: it then answered two of the four questions it had copied.
ANSWER_NOT_QUESTION = "Do not repeat the question. Reply with the answer from the sources."


def build_messages(question: str, hits: list[Hit], *, again: bool = False, may_refuse: bool = True) -> list[dict]:
    # Best source last, nearest the question: small models weigh what they read last most.
    numbered = list(enumerate(hits, start=1))[::-1]
    sources = "\n\n".join(f"{source_heading(n, hit)}\n{hit.text.strip()}" for n, hit in numbered)
    messages = [{"role": "system", "content": SYSTEM if may_refuse else READ_AGAIN_SYSTEM}]
    ask = f"Sources:\n\n{sources}\n\nQuestion: {question}" + (f"\n\n{ANSWER_NOT_QUESTION}" if again else "")
    messages.append({"role": "user", "content": ask})
    return messages


# Small models sometimes go on to invent the next turn; the answer ends there.
STOP_STRINGS = ["\nQuestion:", "\nSources:"]


def clean_answer(text: str) -> str:
    """The answer without an invented next turn and without lines it already said."""
    for stop in STOP_STRINGS:
        text = text.split(stop)[0]
    seen: set[str] = set()
    lines = []
    for line in text.strip().splitlines():
        key = line.strip()
        if key and key in seen:
            continue
        seen.add(key)
        lines.append(line)
    return "\n".join(lines).strip()


def is_refusal(answer: str, question: str = "") -> bool:
    """The model said the sources do not answer the question (judged on its first sentence).
    Words the answer repeats from the question do not count: "plistlib.dump() writes XML when
    fmt is not given" answers "Which format does it write when fmt is not given?"."""
    head = re.split(r"(?<=[.!?])\s", answer.strip(), maxsplit=1)[0]
    asked = " ".join(question.lower().split())
    return not answer.strip() or any(not copied(head, match, asked) for match in REFUSAL.finditer(head))


def copied(text: str, match: re.Match, asked: str) -> bool:
    """The refusal phrase ``match`` of ``text`` stands in ``asked`` (lower case, single spaces)
    too, with the two words before it: the answer repeats the question there."""
    return " ".join([*text[:match.start()].split()[-2:], *match.group(0).split()]).lower() in asked


def cited_numbers(answer: str, n_sources: int) -> list[int]:
    return sorted({int(n) for n in CITATION.findall(answer) if 1 <= int(n) <= n_sources})
