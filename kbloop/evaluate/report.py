"""Evaluation reports in data/evals/<run>/: report.json, report.md and two PNG plots."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kbloop.fsutil import atomic_write_bytes

METRICS = ("score", "accuracy", "f1", "judge", "refusal_correct", "false_refusal")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(report: dict) -> str:
    cand, base = report["candidate"], report["baseline"]
    lines = [
        f"# Evaluation {report['run']}",
        "",
        f"Candidate **{cand}** against baseline **{base}** ({report['generator']}); judge "
        f"{report['judge'] or 'none'}; {report['items']} questions "
        f"({', '.join(f'{n} {s}' for s, n in report['slices'].items() if n)}).",
        "",
        f"**Decision: {report['decision']['decision']}**",
        "",
        *[f"- {reason}" for reason in report["decision"]["reasons"]],
        "",
        "| slice | side | n | score | accuracy | token F1 | judge | refusal ok | false refusal | hit@k | MRR |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for part in ("all", "new", "old", "user"):
        for side, label in (("candidate", cand), ("baseline", base)):
            m = report["metrics"][side].get(part)
            if not m:
                continue
            hit = next((v for key, v in m.items() if key.startswith("hit@")), None)
            lines.append(f"| {part} | {label} | {m['n']} | {_fmt(m['score'])} | {_fmt(m['accuracy'])} | "
                         f"{_fmt(m['f1'])} | {_fmt(m['judge'])} | {_fmt(m['refusal_correct'])} | "
                         f"{_fmt(m['false_refusal'])} | {_fmt(hit)} | {_fmt(m['mrr'])} |")
    if report.get("pairwise"):
        p = report["pairwise"]
        lines += ["", f"Pairwise (both orders, consistent verdicts only): candidate wins {p['wins']}, "
                      f"loses {p['losses']}, ties {p['ties']}; {p['inconsistent']} inconsistent or failed."]
    lines += ["", f"Judge: {report['judge_calls']} calls, {report['judge_cache_hits']} cached, "
                  f"{report['judge_failures']} failures.", "", "![candidate vs baseline](compare.png)",
              "", "![scores over time](history.png)", ""]
    return "\n".join(lines)


def history(kb, report: dict) -> list[dict]:
    """Every recorded evaluation's candidate score, oldest first, with this run last."""
    rows = kb.manifest.db.execute("SELECT run, created_at, candidate, summary FROM evaluations ORDER BY created_at")
    points = []
    for row in rows:
        if row["run"] == report["run"]:
            continue
        summary = json.loads(row["summary"])
        points.append({"run": row["run"], "at": row["created_at"], "version": row["candidate"],
                       "score": summary["metrics"]["candidate"]["all"]["score"]})
    points.append({"run": report["run"], "at": report["created_at"], "version": report["candidate"],
                   "score": report["metrics"]["candidate"]["all"]["score"]})
    return points


def plots(folder: Path, report: dict, points: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    cand, base = report["metrics"]["candidate"]["all"], report["metrics"]["baseline"]["all"]
    shown = [m for m in METRICS if cand.get(m) is not None or base.get(m) is not None]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = range(len(shown))
    ax.bar([x - 0.2 for x in xs], [base.get(m) or 0 for m in shown], 0.4, label=f"baseline {report['baseline']}")
    ax.bar([x + 0.2 for x in xs], [cand.get(m) or 0 for m in shown], 0.4, label=f"candidate {report['candidate']}")
    ax.set_xticks(list(xs), shown)
    ax.set_ylim(0, 1)
    ax.set_title(f"{report['run']}: {report['decision']['decision']}")
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


def write_report(kb, report: dict) -> Path:
    folder = kb.home.evals_dir / report["run"]
    folder.mkdir(parents=True, exist_ok=True)
    plots(folder, report, history(kb, report))
    atomic_write_bytes(folder / "report.md", markdown(report).encode())
    atomic_write_bytes(folder / "report.json", (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    return folder
