"""Instruction-knowledge-answer records, RAFT-style, and their export formats.

A record's knowledge is its source chunk plus distractor chunks found by retrieval, shuffled.
With probability 1 - p the source chunk is left out and the answer says the knowledge does not
hold it, which teaches the model to refuse instead of guessing. The prompt a record renders to
is exactly the one the assistant builds at question time (``kbloop.prompt.build_messages``),
so what the model learns is what it is later asked to do.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Literal

from kbloop.ingest.manifest import Hit
from kbloop.prompt import DONT_KNOW, SYSTEM, build_messages

Split = Literal["train", "eval"]
CORRECTION = "correction"  # the generator of records whose answer a user wrote (``kbloop.dataset.corrections``)


def correction_hash(feedback_id: int) -> str:
    """What a correction's records carry as their source's text hash: the rating, not a chunk."""
    return f"{CORRECTION}:{feedback_id}"


@dataclass
class Knowledge:
    path: str
    text: str
    metadata: dict
    oracle: bool

    def as_hit(self) -> Hit:
        return Hit(0, 1.0, self.path, self.text, self.metadata)


@dataclass
class Record:
    id: str
    version: str
    split: Split
    generator: str
    instruction: str
    knowledge: list[Knowledge]
    answer: str
    reference: str  # the pair's answer, also when the record teaches a refusal
    oracle: bool
    source: dict = field(default_factory=dict)  # path, text_hash, location, chunk text
    # Other forms that state the reference: the document's own sentence, the bare value. An
    # evaluation counts an answer that states any of them as correct.
    accept: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Record":
        data = dict(data)
        data["knowledge"] = [Knowledge(**k) for k in data["knowledge"]]
        return cls(**data)

    def messages(self) -> list[dict]:
        """The chat the assistant would hold for this question, ending with the answer to learn."""
        prompt = build_messages(self.instruction, [k.as_hit() for k in self.knowledge])
        return prompt + [{"role": "assistant", "content": self.answer}]

    def alpaca(self) -> dict:
        """LLaMA-Factory's alpaca form: system, instruction, input (the numbered sources), output."""
        messages = self.messages()
        user = messages[-2]["content"]
        sources, _, _ = user.rpartition("\n\nQuestion: ")
        return {"system": SYSTEM, "instruction": self.instruction, "input": sources, "output": self.answer,
                "id": self.id}

    def chat(self) -> dict:
        """LLaMA-Factory's sharegpt/OpenAI messages form."""
        return {"messages": self.messages(), "id": self.id}


def record_id(text_hash: str, question: str) -> str:
    return hashlib.sha256(f"{text_hash}\n{question}".encode()).hexdigest()[:20]


def in_eval_split(text_hash: str, fraction: float) -> bool:
    """Held out by source chunk, decided by the chunk's hash: stable across builds, so a chunk
    never feeds training in one build and evaluation in another."""
    return int(text_hash[:8], 16) / 0xFFFFFFFF < fraction


def assemble(rid: str, version: str, split: Split, generator: str, question: str, answer: str,
             source: Knowledge, distractors: list[Knowledge], oracle_p: float, source_info: dict,
             accept: tuple[str, ...] = ()) -> Record:
    """One record; the record id seeds its coin flip and shuffle, so a build is reproducible."""
    rng = random.Random(rid)
    oracle = split == "eval" or rng.random() < oracle_p
    knowledge = ([source] if oracle else []) + distractors
    rng.shuffle(knowledge)
    return Record(rid, version, split, generator, question, knowledge, answer if oracle else DONT_KNOW, answer,
                  oracle, source_info, list(accept))


def assemble_in_order(rid: str, version: str, split: Split, generator: str, question: str, answer: str,
                      reference: str, context: list[Knowledge], oracle_p: float, source_info: dict,
                      accept: tuple[str, ...] = ()) -> Record:
    """A record whose answer was written from ``context`` as numbered (its [n] points into it),
    so the knowledge keeps that order. The coin is ``assemble``'s: without the source
    (probability 1 - p) the knowledge is the rest of the context and the answer the refusal."""
    oracle = split == "eval" or random.Random(rid).random() < oracle_p
    knowledge = context if oracle else [k for k in context if not k.oracle]
    return Record(rid, version, split, generator, question, knowledge, answer if oracle else DONT_KNOW, reference,
                  oracle, source_info, list(accept))


@dataclass
class SourceChunk:
    text_hash: str
    path: str
    text: str
    metadata: dict
    vector_id: int

    @property
    def knowledge(self) -> Knowledge:
        return Knowledge(self.path, self.text, self.metadata, oracle=True)
