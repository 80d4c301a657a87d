"""The grounded prompt: numbered sources, the question, and the rules for citing and refusing."""

from __future__ import annotations

import re

from kbloop.ingest.manifest import Hit

DONT_KNOW = "I don't know."

SYSTEM = (
    "You answer questions using only the numbered sources you are given. "
    "Reply with a short, direct answer (a value, a name, a command or one sentence) and cite the "
    "source number in brackets, like [1]. "
    f"If the sources do not contain the answer, reply exactly: {DONT_KNOW}"
)

# What small models say when the sources do not hold the answer, in their many phrasings.
REFUSAL = re.compile(
    r"\b(i\s+don'?t\s+know|i\s+do\s+not\s+know|not\s+(?:mentioned|provided|stated|specified|given|"
    r"found|included|available|listed|present)\b|(?:does|do)\s+not\s+(?:contain|mention|say|specify|provide|state)|"
    r"doesn'?t\s+(?:contain|mention|say|specify|provide|state)|no\s+information|cannot\s+(?:be\s+)?"
    r"(?:determined|answered|found|determine|answer|find)|can'?t\s+(?:determine|answer|find|tell)|"
    r"unable\s+to\s+(?:determine|answer|find))",
    re.IGNORECASE,
)
CITATION = re.compile(r"\[(\d{1,2})\]")


def source_heading(n: int, hit: Hit) -> str:
    where = " > ".join(v for v in (hit.metadata.get("title"), hit.metadata.get("section")) if v)
    page = f", page {hit.metadata['page']}" if hit.metadata.get("page") else ""
    return f"[{n}] {hit.path}{page}" + (f" ({where})" if where else "")


def build_messages(question: str, hits: list[Hit], history: list[tuple[str, str]] | None = None) -> list[dict]:
    sources = "\n\n".join(f"{source_heading(n, hit)}\n{hit.text.strip()}" for n, hit in enumerate(hits, start=1))
    messages = [{"role": "system", "content": SYSTEM}]
    for past_question, past_answer in (history or [])[-2:]:
        messages += [{"role": "user", "content": past_question}, {"role": "assistant", "content": past_answer}]
    messages.append({"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}"})
    return messages


def is_refusal(answer: str) -> bool:
    """The model said the sources do not answer the question (judged on its first sentence)."""
    head = re.split(r"(?<=[.!?])\s", answer.strip(), maxsplit=1)[0]
    return not answer.strip() or bool(REFUSAL.search(head))


def cited_numbers(answer: str, n_sources: int) -> list[int]:
    return sorted({int(n) for n in CITATION.findall(answer) if 1 <= int(n) <= n_sources})
