"""What ``kbloop dataset build`` is about to do, and about how long it will take, said before
it starts: a build with a local teacher can run for hours, and nobody should wait through
minutes of silence to learn that.

The time is an estimate either way: the seconds per chunk the last build with the same models
and teacher settings measured, or, before there is one, assumed seconds per step that err on
the slow side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kbloop.dataset.store import DatasetStore
from kbloop.progress import format_seconds

if TYPE_CHECKING:
    from kbloop.assistant.verify import Verifier
    from kbloop.models.generators import Generator

# Assumed seconds per step, before any build measured its own rate: about twice what the packaged
# models took on a quiet two-core machine (docs/benchmarks.md: the teacher's questions 10-30 s a
# chunk, an answer from four sources about 5 s, a verdict of the 1.5B judge about 10 s), since
# such a machine is rarely quiet. An Ollama server is usually faster.
ASSUMED_EXTRACTIVE_S = 0.1  # a chunk's extractive pairs and their distractor searches (measured 0.01-0.03 s)
ASSUMED_QUESTIONS_S = 30.0  # the teacher's questions about one chunk
ASSUMED_ANSWER_S = 10.0  # the teacher's answer to one question
ASSUMED_CHECK_S = 15.0  # the check of one answer


@dataclass(frozen=True)
class Plan:
    chunks: int  # new chunks this build reads
    later: int  # new chunks left for a later build by --limit
    unchanged: int  # chunks that already have their records
    teacher: str | None
    checker: str | None  # the model that checks the teacher's answers
    questions: int  # teacher questions per chunk (facts × phrasings)
    seconds_per_chunk: float
    measured_in: str | None  # the dataset version whose rate this is; None: assumed

    @property
    def seconds(self) -> float:
        return self.chunks * self.seconds_per_chunk

    def describe(self) -> str:
        """One line: what the build reads, with which models, and about how long it takes."""
        if not self.chunks:
            return f"plan: no new chunks to read ({self.unchanged} already have their records)"
        later = f" ({self.later} left for a later build)" if self.later else ""
        if self.teacher is None:
            models = "no teacher (extractive pairs only)"
        elif self.checker is None:
            models = f"teacher {self.teacher} ({self.questions} questions per chunk)"
        else:
            models = (f"teacher {self.teacher} ({self.questions} questions per chunk, each answered and "
                      f"checked by {self.checker})")
        basis = (f"{self.seconds_per_chunk:g} s per chunk, measured by dataset {self.measured_in}"
                 if self.measured_in else f"estimate: {self.seconds_per_chunk:g} s per chunk assumed, "
                                          "no earlier build with these models to measure")
        chunks = f"{self.chunks} new chunk" + ("s" if self.chunks > 1 else "")
        return (f"plan: read {chunks}{later} with {models}; "
                f"about {format_seconds(self.seconds)} ({basis})")


def plan(store: DatasetStore, settings, teacher: Generator | None, checker: Verifier | None, chunks: int,
         later: int, unchanged: int) -> Plan:
    """The plan of a build that reads ``chunks`` new chunks with these models."""
    teacher_spec = teacher.spec if teacher is not None and settings.dataset_teacher_pairs else None
    checker_spec = checker.model.spec if checker is not None and teacher_spec else None
    questions = settings.dataset_teacher_pairs * settings.dataset_teacher_phrasings if teacher_spec else 0
    rate, version = measured_rate(store, teacher_spec, checker_spec, settings)
    if rate is None:
        rate = assumed_rate(teacher_spec, checker_spec, questions)
    return Plan(chunks, later, unchanged, teacher_spec, checker_spec, questions, rate, version)


def measured_rate(store: DatasetStore, teacher: str | None, checker: str | None,
                  settings) -> tuple[float | None, str | None]:
    """Seconds per chunk of the latest build with these models and teacher settings, and its
    version; (None, None) when there is none."""
    for info in reversed(store.versions()):
        same = (info.get("teacher"), info.get("checker")) == (teacher, checker) and all(
            info.get("settings", {}).get(k) == getattr(settings, k)
            for k in ("dataset_teacher_pairs", "dataset_teacher_phrasings"))
        if same and info.get("seconds_per_chunk"):
            return info["seconds_per_chunk"], info["version"]
    return None, None


def assumed_rate(teacher: str | None, checker: str | None, questions: int) -> float:
    """Seconds per chunk before any build measured one: the teacher's questions, then, with a
    checker, one answer and one check per question."""
    if teacher is None:
        return ASSUMED_EXTRACTIVE_S
    answers = questions * (ASSUMED_ANSWER_S + ASSUMED_CHECK_S) if checker is not None else 0.0
    return ASSUMED_EXTRACTIVE_S + ASSUMED_QUESTIONS_S + answers
