"""The promotion gate: a candidate answers users only if it is not worse than the baseline,
beyond a tolerance, overall and on old knowledge (forgetting)."""

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


def decide(candidate: dict, baseline: dict, tolerance: float) -> Decision:
    """``candidate`` and ``baseline`` map slice ("all", "old", ...) to metrics dicts."""
    reasons, ok = [], True
    for part, label in (("all", "overall"), ("old", "old knowledge")):
        cand, base = candidate.get(part), baseline.get(part)
        if not cand or not base or not cand.get("n"):
            reasons.append(f"{label}: no items, not checked")
            continue
        # Both sides are scored on the same parts: a judge that failed on one side only
        # must not tip the comparison.
        common = tuple(k for k in PARTS if cand.get(k) is not None and base.get(k) is not None)
        c, b = score(cand, common), score(base, common)
        if c is None or b is None:
            reasons.append(f"{label}: no score")
            continue
        if c < b - tolerance:
            ok = False
            reasons.append(f"{label}: {c:.3f} is worse than the baseline's {b:.3f} beyond the tolerance {tolerance}")
        else:
            reasons.append(f"{label}: {c:.3f} against the baseline's {b:.3f} (tolerance {tolerance})")
    return Decision("accept" if ok else "reject", reasons, tolerance)
