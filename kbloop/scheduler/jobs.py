"""The daemon's timetable: which plain functions of a knowledge base run, and when.

Each row is a function ``(kb) -> summary dict`` and a time rule from settings. A later step
of the loop (dataset build, finetune, evaluate) joins by adding its function and one row;
the daemon needs no change. A function that records its own row in the manifest's ``runs``
table (ingest does) says so, and the daemon records the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from kbloop.config import Settings
from kbloop.errors import NothingToEvaluate, StoreError
from kbloop.finetune.registry import CurrentChanged
from kbloop.kb import KnowledgeBase


@dataclass(frozen=True)
class Every:
    """Every so many minutes, counted from the daemon's start."""

    minutes: int


@dataclass(frozen=True)
class DailyAt:
    """Once a day at a local time, "HH:MM"."""

    time: str


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    when: Every | DailyAt
    action: Callable[[KnowledgeBase], dict]
    records_itself: bool = False


def full_scan(kb: KnowledgeBase) -> dict:
    """Walk the whole docs folder: catches what the watcher missed or what changed while down."""
    return kb.ingest().as_dict()


def consistency_check(kb: KnowledgeBase) -> dict:
    """Check the store against the manifest and repair what is safe (chunks whose vectors are
    missing are embedded again from their stored text). Problems it cannot repair fail the job."""
    report = kb.check()
    if report.problems:
        raise StoreError("consistency check: " + "; ".join(report.problems))
    return asdict(report)


def learn(kb: KnowledgeBase) -> dict:
    """The learning half of the loop: records from what changed, then, when there are records
    the current adapter has not seen, a continued adapter that answers only if the gate
    accepts it. Each step records its own run; this summary names what each did, and the
    dataset's ``changed`` names the documents whose text was read or whose records retired."""
    from kbloop.dataset.answers import answer_checker
    from kbloop.dataset.build import build
    from kbloop.evaluate.run import evaluate
    from kbloop.finetune.train import finetune, pending_records

    settings = kb.settings
    teacher = kb.model("teacher") if settings.dataset_teacher_pairs else None
    checker = answer_checker(kb, teacher) if teacher is not None else None
    rephraser = lambda: kb.model("teacher")  # noqa: E731 - loaded only for a new correction
    summary: dict = {"dataset": build(kb, teacher, verifier=checker, rephraser=rephraser).summary()}
    if not pending_records(kb):
        summary["finetune"] = "no new training records"
        return summary
    # A night's run is bounded unless the user bounds every run: the rest wait for the next night.
    cap = settings.learn_max_records if not settings.finetune_max_records else None
    trained = finetune(kb, max_records=cap)
    summary["finetune"] = {"version": trained.version, "records_new": trained.records_new, "steps": trained.steps}
    try:
        report = evaluate(kb, trained.version, "current", promote=True)
    except (NothingToEvaluate, CurrentChanged) as exc:  # a user's promotion meanwhile wins: no retry
        summary["evaluate"] = f"{exc}; adapter {trained.version} stays a candidate"
        return summary
    summary["evaluate"] = {"run": report.run, "decision": report.decision.decision, "promoted": report.promoted,
                           "reasons": report.decision.reasons}
    return summary


def timetable(settings: Settings) -> list[ScheduledJob]:
    jobs = [ScheduledJob("check", DailyAt(settings.check_at), consistency_check)]
    if settings.learn_at:
        jobs.append(ScheduledJob("learn", DailyAt(settings.learn_at), learn))
    if settings.scan_interval_minutes:
        jobs.append(ScheduledJob("scan", Every(settings.scan_interval_minutes), full_scan, records_itself=True))
    return jobs
