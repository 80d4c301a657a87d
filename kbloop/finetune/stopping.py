"""Early stopping on a held-out probe: how many records to hold out, and when to stop.

The probe is a few of the run's own records that it does not train on. Its loss falls while
the adapter learns what generalises and rises once it starts memorising the training records
(or diverges), so the run stops there and keeps the adapter from the evaluation with the
lowest probe loss, not the last one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

PROBE_MIN = 4    # fewer records give a loss too noisy to stop on
PROBE_MAX = 16   # more make each evaluation slower: 16 cost under a tenth of the training time at the defaults
PROBE_MAX_SHARE = 0.2  # a probe never takes more than this share of a run's records


def probe_size(records: int, fraction: float) -> int:
    """How many of ``records`` to hold out: ``fraction`` of them (TrainConfig keeps it at most
    PROBE_MAX_SHARE) within PROBE_MIN..PROBE_MAX, or 0 when even PROBE_MIN would take more than
    PROBE_MAX_SHARE of them: a run of fewer than 20 records trains on all of them, without
    early stopping."""
    size = min(max(int(fraction * records), PROBE_MIN), PROBE_MAX)
    return size if size <= PROBE_MAX_SHARE * records else 0


@dataclass
class EarlyStopping:
    """The probe losses measured so far, the best of them, and how many since were worse.

    ``patience`` evaluations in a row without a new best stop the run; an evaluation that ties the
    best counts as worse, since it shows no more progress than a rise, and so does a loss that
    is not a number (a diverged run). Plain numbers and lists only, so that it is saved in a
    checkpoint as it is.
    """

    patience: int
    losses: list[list[float]] = field(default_factory=list)  # [step, loss] per evaluation
    best_step: int | None = None
    best_loss: float = math.inf
    worse: int = 0

    def record(self, step: int, loss: float) -> bool:
        """Note the probe loss at ``step``; True when it is the best so far."""
        self.losses.append([step, loss])
        if loss < self.best_loss:
            self.best_step, self.best_loss, self.worse = step, loss, 0
            return True
        self.worse += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.worse >= self.patience

    def reason(self, step: int, total_steps: int) -> str:
        """Why the run ended at ``step``, in the words its report gives."""
        kept = f"kept the adapter of step {self.best_step} (probe loss {self.best_loss:.4f})"
        if self.should_stop and step < total_steps:
            return (f"early stop at step {step} of {total_steps}: {self.worse} probe-loss measurements in a row "
                    f"without a new best; {kept}")
        return f"completed all {total_steps} steps; {kept}"

    def as_dict(self) -> dict:
        return asdict(self)
