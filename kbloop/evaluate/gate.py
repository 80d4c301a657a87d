"""The promotion gate: a candidate answers users only if it is not worse than the baseline,
beyond a tolerance, overall, on old knowledge (forgetting) and on the user's own questions.

The dataset's held-out items are phrased like the training records, so they favour an adapter
that learned the records' shape. Measured on ../shared/kbdev with qwen2.5-0.5b: an adapter
scored 0.387 against the base model's 0.228 on them, while it answered kbdev's own questions
worse (accuracy 0.725 against 0.800). Questions people wrote are the check that catches that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal


@dataclass
class Decision:
    decision: Literal["accept", "reject"]
    reasons: list[str] = field(default_factory=list)
    tolerance: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


PARTS = ("accuracy", "f1", "judge")


def score(metrics: dict, parts: tuple[str, ...] = PARTS) -> float | None:
    """One number per side and slice, on a 0-1 scale: the mean of answer accuracy (refusals
    included), token F1 and, where the judge answered, its normalised scores."""
    values = [metrics.get(k) for k in parts]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# What each check compares: the score, except on the user's own questions, which come with the
# answer the user expects: there the answer stating it (accuracy) is the measure. Token F1 favours
# short answers against short references: the qwen2.5-0.5b adapter above scored 0.499 against
# the base model's 0.407 on kbdev's questions while stating fewer of their answers.
CHECKS = (("all", "overall", PARTS), ("old", "old knowledge", PARTS), ("user", "your questions", ("accuracy",)))


def decide(candidate: dict, baseline: dict, tolerance: float) -> Decision:
    """``candidate`` and ``baseline`` map slice ("all", "old", "user", ...) to metrics dicts."""
    reasons, ok = [], True
    for part, label, parts in CHECKS:
        cand, base = candidate.get(part), baseline.get(part)
        if not cand or not base or not cand.get("n"):
            if part != "user":
                reasons.append(f"{label}: no items, not checked")
            continue
        # Both sides are scored on the same parts: a judge that failed on one side only
        # must not tip the comparison.
        common = tuple(k for k in parts if cand.get(k) is not None and base.get(k) is not None)
        c, b = score(cand, common), score(base, common)
        if c is None or b is None:
            reasons.append(f"{label}: no score")
            continue
        measure = "accuracy" if parts == ("accuracy",) else "score"
        if c < b - tolerance:
            ok = False
            reasons.append(f"{label}: {measure} {c:.3f} is worse than the baseline's {b:.3f} beyond the "
                           f"tolerance {tolerance}")
        else:
            reasons.append(f"{label}: {measure} {c:.3f} against the baseline's {b:.3f} (tolerance {tolerance})")
    return Decision("accept" if ok else "reject", reasons, tolerance)
