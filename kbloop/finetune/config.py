"""How a fine-tuning run trains, as typed data.

``TrainConfig`` is built from the ``KBLOOP_FINETUNE_*`` settings when a run is planned, kept in
the run's plan.json (so ``--resume`` trains the same way) and saved as sorted JSON,
training_config.json, next to the adapter it produced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kbloop.errors import ConfigError


def _help(text: str) -> Any:
    return field(metadata={"help": text})


@dataclass(frozen=True)
class TrainConfig:
    """One run's training settings; every field but ``generator`` is KBLOOP_FINETUNE_<FIELD>."""

    generator: str = _help("The model the adapter is trained for (KBLOOP_GENERATOR); it answers only with that model.")
    lora_r: int = _help("LoRA rank of a new adapter; a continued adapter keeps its parent's.")
    lora_alpha: int = _help("LoRA scale of a new adapter: the update is multiplied by alpha / r.")
    lora_dropout: float = _help("Dropout on the LoRA layers' input while training.")
    target_modules: str = _help("Comma-separated names of the modules a new adapter wraps.")
    lr: float = _help("Peak learning rate of a new adapter.")
    incremental_lr: float = _help("Peak learning rate when continuing an adapter: lower, so it keeps what it knew.")
    epochs: int = _help("Passes over the selected records.")
    batch_size: int = _help("Records per forward pass, grouped by length so little is padding.")
    grad_accum: int = _help("Forward passes per optimizer step.")
    max_seq_len: int = _help("Longest record in tokens; longer ones are skipped, not cut.")
    replay_ratio: float = _help("Older records replayed per new record when continuing an adapter.")
    max_records: int = _help("At most this many new records per run, newest first; 0 takes them all.")
    checkpoint_steps: int = _help("Optimizer steps between the checkpoints `kbloop finetune --resume` continues from.")
    gradient_checkpointing: bool = _help("Recompute activations in the backward pass: slower, much less memory.")
    seed: int = _help("Seed of record order, replay sampling and a new adapter's initial weights.")
    # A plan written before early stopping existed has none of the fields below: such a run
    # resumes as it was planned, without it.
    patience: int = field(default=0, metadata={"help": (
        "Probe-loss measurements in a row without a new best before training stops; 0: no early stopping.")})
    probe_fraction: float = field(default=0.1, metadata={"help": (
        "Share of the records held out as the probe early stopping watches (4 to 16 records).")})
    eval_steps: int = field(default=10, metadata={"help": "Optimizer steps between two probe-loss measurements."})
    # A plan written before corrections were repeated trains each one once, as it was planned.
    correction_repeats: int = field(default=1, metadata={"help": (
        "Times each user's correction is trained per epoch, over its question as asked and its other phrasings, "
        "its sources in another order each time.")})

    def __post_init__(self) -> None:
        rules = [
            ("lora_r", self.lora_r >= 1, "at least 1"),
            ("lora_alpha", self.lora_alpha >= 1, "at least 1"),
            ("lora_dropout", 0.0 <= self.lora_dropout < 1.0, "in [0, 1)"),
            ("target_modules", bool(self.modules), "at least one module name"),
            ("lr", 0.0 < self.lr < 1.0, "in (0, 1)"),
            ("incremental_lr", 0.0 < self.incremental_lr < 1.0, "in (0, 1)"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("grad_accum", self.grad_accum >= 1, "at least 1"),
            ("max_seq_len", self.max_seq_len >= 1, "at least 1"),
            ("replay_ratio", self.replay_ratio >= 0.0, "at least 0"),
            ("max_records", self.max_records >= 0, "at least 0"),
            ("checkpoint_steps", self.checkpoint_steps >= 1, "at least 1"),
            ("seed", 0 <= self.seed <= 2**32 - 1, "in [0, 4294967295]"),
            ("patience", self.patience >= 0, "at least 0"),
            ("probe_fraction", 0.0 < self.probe_fraction <= 0.2, "in (0, 0.2]"),
            ("eval_steps", self.eval_steps >= 1, "at least 1"),
            ("correction_repeats", self.correction_repeats >= 1, "at least 1"),
        ]
        wrong = [f"KBLOOP_FINETUNE_{name.upper()} must be {rule}, not {getattr(self, name)!r}"
                 for name, ok, rule in rules if not ok]
        if wrong:
            raise ConfigError("; ".join(wrong))

    @classmethod
    def from_settings(cls, settings: Any) -> "TrainConfig":
        values = {f.name: getattr(settings, f"finetune_{f.name}") for f in fields(cls) if f.name != "generator"}
        return cls(generator=settings.generator, **values)

    @property
    def modules(self) -> list[str]:
        """``target_modules`` as a list, blanks dropped."""
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]

    def as_dict(self) -> dict:
        return asdict(self)
