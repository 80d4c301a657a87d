"""Teacher-written answers: the teacher answers each of its questions as the assistant will be
asked it, and the verifier checks the answer before it becomes a record (RAFT).

The teacher sees what the student sees at question time: the chunks retrieval ranks highest
for the question, in rank order, with the source chunk among them, rendered by the assistant's
own prompt builder (``kbloop.prompt.build_messages``). Its reply, citing the source as [n], is
the record's answer, and that context is the record's knowledge, so the record teaches
answering from retrieved sources in the assistant's own shape.

A reply is kept only when it answers (no refusal, not the question again, a number when one is
asked for, no number that no source states) and the verifier (``kbloop.assistant.verify``) finds it stated by the source
chunk for exactly what was asked. kbloop writes the citation itself, from that verdict: asked
to cite [n], small models answer with a bare "[1]" (``kbloop.prompt``).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from kbloop.assistant.grounding import reply_problem
from kbloop.assistant.verify import Verifier
from kbloop.dataset.extractive import Pair
from kbloop.dataset.filters import length_problem, supported
from kbloop.dataset.records import Knowledge, Record, SourceChunk, Split, assemble_in_order
from kbloop.ingest.manifest import Hit
from kbloop.prompt import CITATION, STOP_STRINGS, build_messages, clean_answer

if TYPE_CHECKING:
    from kbloop.dataset.counts import BuildCounts
    from kbloop.models.generators import Generator

log = logging.getLogger(__name__)

TEACHER = "teacher:"  # the generator prefix of the teacher's pairs (``kbloop.dataset.teacher``)
Outcome = Literal["kept", "rejected", "unchecked"]


@dataclass(frozen=True)
class Written:
    """The teacher's answer to one question, and what became of it."""

    outcome: Outcome
    answer: str = ""  # the answer citing its source, when kept
    reason: str = ""  # why it was dropped


def answer_checker(kb, teacher: Generator) -> Verifier:
    """What checks the teacher's answers: the judge role's model (``KBLOOP_JUDGE``), as for the
    assistant's answers; the teacher itself when both roles name one model, so it loads once."""
    return Verifier(teacher if kb.settings.judge == teacher.spec else kb.model("judge"))


def uncited(text: str) -> str:
    """``text`` without its [n] marks."""
    return " ".join(CITATION.sub("", text).split()).replace(" .", ".").replace(" ,", ",")


def cite(answer: str, n: int) -> str:
    """``answer`` citing source ``n`` at its end, before the closing full stop: "… is 12 [2]."."""
    body, stop = re.match(r"(.*?)([.!?]?)$", answer.rstrip(), re.DOTALL).groups()
    return f"{body} [{n}]{stop}"


def retrieved_context(kb, pair: Pair, chunk: SourceChunk, by_vector: dict[int, SourceChunk], k: int,
                      seed: str) -> list[Knowledge]:
    """The source chunk among the ``k`` chunks retrieval ranks highest for the question that do
    not state its answer, in rank order: the source at its own rank, or, when retrieval misses
    it, at a place ``seed`` picks (reproducibly)."""
    distractors: list[Knowledge] = []
    rank: int | None = None
    for hit in kb.search(pair.question, k + 6):
        other = by_vector.get(hit.vector_id)
        if other is None:
            continue
        if other.text_hash == chunk.text_hash:
            rank = len(distractors) if rank is None else rank
        elif len(distractors) < k and not supported(pair.support, other.text):
            distractors.append(Knowledge(other.path, other.text, other.metadata, oracle=False))
    if rank is None:
        rank = random.Random(seed).randrange(len(distractors) + 1)
    return distractors[:rank] + [chunk.knowledge] + distractors[rank:]


def write_answer(teacher: Generator, verifier: Verifier, question: str, context: list[Knowledge],
                 max_new_tokens: int) -> Written:
    """The teacher's answer to ``question`` from ``context``, checked, citing the source."""
    hits = [k.as_hit() for k in context]
    source = next(n for n, k in enumerate(context, start=1) if k.oracle)
    reply = clean_answer(teacher.generate(build_messages(question, hits), max_new_tokens=max_new_tokens,
                                          stop=STOP_STRINGS))
    answer = uncited(reply)
    if problem := answer_problem(answer, question, hits):
        return Written("rejected", reason=problem)
    verdict = verifier.check(question, answer, hits)
    if verdict is None:
        return Written("unchecked", reason="the check gave no verdict")
    if not verdict.stands:
        return Written("rejected", reason=verdict.reason)
    if verdict.passage != source:
        return Written("rejected", reason=f"the check found the answer in source [{verdict.passage}], "
                                          f"not in the chunk the question was asked from [{source}]")
    return Written("kept", cite(answer, source))


def answer_problem(answer: str, question: str, hits: list[Hit]) -> str | None:
    """Why a reply cannot be an answer, before anyone checks it, or None."""
    return reply_problem(answer, question, hits) or length_problem(question, answer)


class TeacherAnswers:
    """Records whose answers the teacher wrote, for one build: ``record`` asks, checks and
    counts (``answers_written``, ``answers_rejected``, ``answers_unchecked``)."""

    def __init__(self, kb, teacher: Generator, verifier: Verifier, by_vector: dict[int, SourceChunk],
                 counts: BuildCounts):
        self.kb, self.teacher, self.verifier = kb, teacher, verifier
        self.by_vector, self.counts = by_vector, counts

    @staticmethod
    def answers(pair: Pair) -> bool:
        """Whether the teacher answers this pair's question: it asked it."""
        return pair.generator.startswith(TEACHER)

    def record(self, rid: str, version: str, split: Split, pair: Pair, chunk: SourceChunk,
               source_info: dict) -> Record | None:
        """The pair's record with the teacher's checked answer, or None when the answer was
        dropped (logged and counted). The answer is written whether or not the record's coin
        then leaves the source out, so a question the teacher cannot answer from its own
        chunk gives no record at all."""
        settings = self.kb.settings
        context = retrieved_context(self.kb, pair, chunk, self.by_vector, settings.dataset_distractors, rid)
        written = write_answer(self.teacher, self.verifier, pair.question, context, settings.max_new_tokens)
        self.counts.answers_written += 1
        if written.outcome == "rejected":
            self.counts.answers_rejected += 1
        elif written.outcome == "unchecked":
            self.counts.answers_unchecked += 1
        if written.outcome != "kept":
            log.info("dropped the teacher's answer to %r: %s", pair.question, written.reason)
            return None
        reference = uncited(written.answer)
        accept = tuple(a for a in (pair.answer,) if a != reference)
        return assemble_in_order(rid, version, split, pair.generator, pair.question, written.answer, reference,
                                 context, settings.dataset_oracle_p, source_info, accept)
