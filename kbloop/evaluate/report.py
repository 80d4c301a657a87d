"""Evaluation reports in data/evals/<run>/: report.json, report.md and two PNG plots."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kbloop.evaluate.gate import Decision
from kbloop.evaluate.store import EvaluationRun, EvaluationStore
from kbloop.fsutil import atomic_write_bytes

METRICS = ("score", "accuracy", "f1", "judge", "refusal_correct", "false_refusal")


@dataclass
class EvalReport:
    """One evaluation: what was compared, on which questions, the scores and the decision.

    ``to_dict`` is what report.json holds (and the HTTP API serves) and what ``--json`` prints;
    ``folder`` and ``promoted`` appear only once the report is written and the candidate promoted.
    """

    run: str                 # <start time>-<candidate>, the report folder's name
    created_at: float
    seconds: float
    candidate: str
    baseline: str            # an adapter version, or "base" for the model without one
    generator: str
    judge: str | None        # the judge's spec; None when the run had no judge
    judge_calls: int
    judge_cache_hits: int
    judge_failures: int
    items: int
    slices: dict[str, int]   # questions per slice (new, old, user, feedback)
    metrics: dict[str, dict[str, dict[str, Any]]]  # side -> slice -> metric -> value
    pairwise: dict[str, int] | None  # wins, losses, ties, inconsistent; None without pairwise judging
    decision: Decision
    details: list[dict]      # each question with both sides' answers
    folder: str | None = None
    promoted: bool = False

    def score(self, side: str = "candidate") -> float | None:
        return self.metrics[side]["all"]["score"]

    def to_dict(self) -> dict:
        data = asdict(self)  # the decision too becomes a plain dict
        if self.folder is None:
            del data["folder"]
        if not self.promoted:
            del data["promoted"]
        return data


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(report: EvalReport) -> str:
    cand, base = report.candidate, report.baseline
    lines = [
        f"# Evaluation {report.run}",
        "",
        f"Candidate **{cand}** against baseline **{base}** ({report.generator}); judge "
        f"{report.judge or 'none'}; {report.items} questions "
        f"({', '.join(f'{n} {s}' for s, n in report.slices.items() if n)}).",
        "",
        f"**Decision: {report.decision.decision}**",
        "",
        *[f"- {reason}" for reason in report.decision.reasons],
        "",
        "| slice | side | n | score | accuracy | token F1 | judge | refusal ok | false refusal | hit@k | MRR |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for part in ("all", *report.slices):
        for side, label in (("candidate", cand), ("baseline", base)):
            m = report.metrics[side].get(part)
            if not m:
                continue
            hit = next((v for key, v in m.items() if key.startswith("hit@")), None)
            lines.append(f"| {part} | {label} | {m['n']} | {_fmt(m['score'])} | {_fmt(m['accuracy'])} | "
                         f"{_fmt(m['f1'])} | {_fmt(m['judge'])} | {_fmt(m['refusal_correct'])} | "
                         f"{_fmt(m['false_refusal'])} | {_fmt(hit)} | {_fmt(m['mrr'])} |")
    if report.pairwise:
        p = report.pairwise
        lines += ["", f"Pairwise (both orders, consistent verdicts only): candidate wins {p['wins']}, "
                      f"loses {p['losses']}, ties {p['ties']}; {p['inconsistent']} inconsistent or failed."]
    lines += ["", f"Judge: {report.judge_calls} calls, {report.judge_cache_hits} cached, "
                  f"{report.judge_failures} failures.", "", "![candidate vs baseline](compare.png)",
              "", "![scores over time](history.png)", ""]
    return "\n".join(lines)


def history(runs: list[EvaluationRun], report: EvalReport) -> list[dict]:
    """Every recorded evaluation's candidate score, oldest first, with this run last."""
    points = [{"run": r.run, "at": r.created_at, "version": r.candidate, "score": r.score()}
              for r in runs if r.recorded and r.run != report.run]
    points.append({"run": report.run, "at": report.created_at, "version": report.candidate,
                   "score": report.score()})
    return points


def plots(folder: Path, report: EvalReport, points: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    cand, base = report.metrics["candidate"]["all"], report.metrics["baseline"]["all"]
    shown = [m for m in METRICS if cand.get(m) is not None or base.get(m) is not None]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = range(len(shown))
    ax.bar([x - 0.2 for x in xs], [base.get(m) or 0 for m in shown], 0.4, label=f"baseline {report.baseline}")
    ax.bar([x + 0.2 for x in xs], [cand.get(m) or 0 for m in shown], 0.4, label=f"candidate {report.candidate}")
    ax.set_xticks(list(xs), shown)
    ax.set_ylim(0, 1)
    ax.set_title(f"{report.run}: {report.decision.decision}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "compare.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot([time.strftime("%m-%d %H:%M", time.localtime(p["at"])) for p in points],
            [p["score"] or 0 for p in points], marker="o")
    for p, x in zip(points, range(len(points))):
        ax.annotate(p["version"], (x, p["score"] or 0), textcoords="offset points", xytext=(0, 6), ha="center",
                    fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("candidate score")
    ax.set_title("scores per adapter version over time")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(folder / "history.png", dpi=110)
    plt.close(fig)


def write_report(store: EvaluationStore, report: EvalReport) -> Path:
    """The report's folder with its plots, report.md and report.json; the run is recorded after."""
    folder = store.folder(report.run)
    folder.mkdir(parents=True, exist_ok=True)
    plots(folder, report, history(store.runs(), report))
    atomic_write_bytes(folder / "report.md", markdown(report).encode())
    atomic_write_bytes(folder / "report.json",
                       (json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return folder
