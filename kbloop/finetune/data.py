"""Records to token tensors: the base model's chat template, loss on the answer tokens only,
and batches of similar length so little of each batch is padding."""

from __future__ import annotations

import random
from dataclasses import dataclass

from kbloop.dataset.records import Record

IGNORE = -100  # label value the loss skips


@dataclass
class Example:
    record_id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_answer_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def _ids(encoded) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def encode(record: Record, tokenizer, max_len: int) -> Example | None:
    """The record's chat as token ids; labels are -100 over the prompt. None when too long."""
    messages = record.messages()
    prompt = _ids(tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True))
    full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
    if full[: len(prompt)] != prompt:
        # A template that renders the last turn differently: answer tokens plus end of turn.
        full = prompt + _ids(tokenizer(record.answer, add_special_tokens=False)) + [tokenizer.eos_token_id]
    # A template may add a newline after the end-of-turn token; learning it is harmless.
    if len(full) > max_len or len(full) <= len(prompt):
        return None
    return Example(record.id, full, [IGNORE] * len(prompt) + full[len(prompt):])


def length_batches(examples: list[Example], batch_size: int, seed: int) -> list[list[Example]]:
    """Shuffle, then sort within windows of 16 batches by length and cut into batches; the
    batch order is shuffled again so training does not see short records first."""
    rng = random.Random(seed)
    order = examples[:]
    rng.shuffle(order)
    window = batch_size * 16
    batches: list[list[Example]] = []
    for start in range(0, len(order), window):
        part = sorted(order[start:start + window], key=lambda e: e.n_tokens)
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(batch: list[Example], pad_id: int):
    """Right-padded tensors: input_ids, attention_mask, labels."""
    import torch

    width = max(e.n_tokens for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = example.n_tokens
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
