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
    """Left-padded tensors (input_ids, attention_mask, position_ids, labels): every row's answer
    ends in the last column, so the loss needs logits for the last few positions only."""
    import torch

    width = max(e.n_tokens for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = example.n_tokens
        ids[row, width - n:] = torch.tensor(example.input_ids)
        labels[row, width - n:] = torch.tensor(example.labels)
        mask[row, width - n:] = 1
        positions[row, width - n:] = torch.arange(n)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}


def answer_loss(model, inputs: dict):
    """Cross-entropy summed over the answer tokens, and their count.

    Logits are computed only for the positions that predict answer tokens (``logits_to_keep``):
    the vocabulary projection is a fifth to a quarter of a small model's compute, and its
    output is most of the activation memory, so skipping it over the prompt saves both.
    """
    import torch

    labels = inputs["labels"]
    keep = min(int((labels != IGNORE).sum(dim=1).max()) + 1, labels.shape[1])
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                   position_ids=inputs["position_ids"], logits_to_keep=keep).logits
    # Logits at positions T-keep .. T-2 predict the tokens at T-keep+1 .. T-1.
    targets = labels[:, labels.shape[1] - keep + 1:]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())
