"""A second model checks each answer against its sources before anyone sees it.

The answering model is small and answers from whatever is closest: asked for a setting the
sources do not describe, it gives the value of a neighbouring one, and every word of that
answer is in a source, so no check of the text alone can catch it. The verifier (the judge
role, ``KBLOOP_JUDGE``) reads the question, the numbered sources and the answer, and says
which source states the answer and whether it states it for the thing asked about. On a
llama.cpp judge the reply is constrained to the schema, so it is always readable.

An answer stands only on the verdict "stated"; the source the verifier names is cited.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from kbloop.errors import BackendUnavailable
from kbloop.ingest.manifest import Hit
from kbloop.models.jsonout import JsonOutputError
from kbloop.text import SENTENCE_BREAK, values

log = logging.getLogger(__name__)

VERDICTS = ("stated", "other_subject", "not_stated")
SYSTEM = "You check answers against documentation passages. You reply only with JSON."
PROMPT = """Sentences of the documentation:

{sentences}

Question: {question}

Proposed answer: {answer}

Check the proposed answer against the sentences:
- "sentence": the number of the sentence that gives the proposed answer, or 0 when none does;
- "verdict": "stated" when that sentence gives this answer for exactly what the question asks about;
  "other_subject" when it gives it for something else (a similar but different setting, option,
  command, function or case); "not_stated" when no sentence gives it."""
SOURCE_CHARS = 900
SUPPORT_SYSTEM = "You check answers against documentation. You reply only Yes or No."
SUPPORT_PROMPT = """Documentation:
{sentences}

Question: {question}
Proposed answer: {answer}

Does the documentation above give this answer to exactly this question, and not to a similar question \
about a different setting, option, function or case? Reply Yes or No."""
READ_SYSTEM = "You answer questions from documentation."
READ_PROMPT = """Documentation:
{sentences}

Question: {question}"""
SUPPORT_SENTENCES = 4
WORD = re.compile(r"[a-z0-9_.]+")


@dataclass(frozen=True)
class Verdict:
    verdict: str
    passage: int | None
    """The number of the source that states the answer, as the verifier named it."""

    @property
    def stands(self) -> bool:
        return self.verdict == "stated"

    @property
    def reason(self) -> str:
        return {"other_subject": "the check found the answer stated for something other than what was asked",
                "not_stated": "the check found no source that states the answer"}.get(self.verdict, "")


def schema(sentences: int) -> dict:
    return {
        "type": "object",
        "properties": {"sentence": {"type": "integer", "minimum": 0, "maximum": sentences},
                       "verdict": {"type": "string", "enum": list(VERDICTS)}},
        "required": ["sentence", "verdict"],
    }


def numbered_sentences(hits: list[Hit]) -> list[tuple[int, str]]:
    """(source number, sentence) for every sentence of the sources, in order: the verifier
    points at one by its number, which a small model does more reliably than quoting it."""
    return [(n, sentence) for n, hit in enumerate(hits, start=1)
            for sentence in (" ".join(s.split()) for s in SENTENCE_BREAK.split(hit.text.strip()[:SOURCE_CHARS]))
            if sentence]


class Verifier:
    def __init__(self, model):
        self.model = model

    def check(self, question: str, answer: str, hits: list[Hit]) -> Verdict | None:
        """The verdict on ``answer``; None when the verifier could not give one (the answer is
        then shown unchecked, and the failure logged: a missing judge must not silence kbloop)."""
        sentences = numbered_sentences(hits)
        listed = "\n".join(f"{i}. {text}" for i, (_, text) in enumerate(sentences, start=1))
        prompt = PROMPT.format(sentences=listed, question=question, answer=answer)
        try:
            reply = self.model.complete_json(prompt, schema(len(sentences)), system=SYSTEM, max_new_tokens=32)
        except (JsonOutputError, BackendUnavailable) as exc:
            log.warning("answer not verified: %s", exc)
            return None
        log.debug("verifier: %s", reply)
        index = reply["sentence"] - 1
        if not 0 <= index < len(sentences):
            return Verdict("not_stated" if reply["verdict"] == "stated" else reply["verdict"], None)
        source = sentences[index][0]
        # The model's word alone does not count: the sentence it names (or, since small models
        # are often one off, a neighbour in the same source) must hold the answer's values.
        nearby = " ".join(text for n, text in sentences[max(index - 1, 0):index + 2] if n == source)
        if reply["verdict"] == "stated" and not carries_values(answer, nearby, question):
            return Verdict("not_stated", source)
        return Verdict(reply["verdict"], source)

    def support(self, question: str, answer: str, hits: list[Hit], value: tuple[str, str]) -> float | None:
        """How likely the sources state ``answer``'s ``value`` (the reply up to the value, and the
        value as written) for exactly what was asked; None when the judge gave nothing (logged).

        The judge reads the sentences where it would be stated and the question, and this is the
        probability it gives to writing that value itself after the same words: a value taken
        from a neighbouring setting's sentence gets almost none. A judge that reads no
        probabilities (Ollama) answers Yes or No instead."""
        listed = "\n".join(f"- {text}" for text in support_sentences(question, answer, hits))
        try:
            reading = [{"role": "system", "content": READ_SYSTEM},
                       {"role": "user", "content": READ_PROMPT.format(sentences=listed, question=question)}]
            probability = self.model.continuation_probability(reading, *value)
            if probability is not None:
                return probability
            messages = [{"role": "system", "content": SUPPORT_SYSTEM},
                        {"role": "user", "content": SUPPORT_PROMPT.format(sentences=listed, question=question,
                                                                          answer=answer)}]
            return self.model.yes_probability(messages)
        except (JsonOutputError, BackendUnavailable) as exc:
            log.warning("answer's value not checked: %s", exc)
            return None


def words(text: str) -> set[str]:
    return {w.strip(".") for w in WORD.findall(text.lower())} - {""}


def support_sentences(question: str, answer: str, hits: list[Hit], count: int = SUPPORT_SENTENCES) -> list[str]:
    """The ``count`` sentences of the sources that hold most of what the answer adds to the
    question, then most of the question's words: where the answer would be stated. Each comes
    after the sentence before it in its source, which often names what it is about ("gc.auto
    When there are ... The default value is 6700.")."""
    sentences = numbered_sentences(hits)
    added, asked = words(answer) - words(question), words(question)
    ranked = sorted(range(len(sentences)), key=lambda i: (-len(added & words(sentences[i][1])),
                                                          -len(asked & words(sentences[i][1]))))
    return [" ".join(text for source, text in sentences[max(i - 1, 0):i + 1] if source == sentences[i][0])
            for i in ranked[:count]]


def carries_values(answer: str, quote: str, question: str) -> bool:
    """The numbers the answer states beyond the question's are in the quote (when it states any),
    in any form: "5.0 seconds" is carried by "Default five seconds."."""
    stated = values(answer) - values(question)
    return not stated or bool(stated & values(quote, spelled=True))
