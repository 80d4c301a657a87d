"""What one ``kbloop dataset build`` did: its counts and the yield of each generator."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from kbloop.dataset.records import CORRECTION, Record


@dataclass
class BuildCounts:
    version: str | None = None
    chunks_new: int = 0
    chunks_unchanged: int = 0
    chunks_retired: int = 0
    pairs_generated: int = 0
    pairs_unsupported: int = 0
    pairs_bad_length: int = 0
    pairs_duplicate: int = 0
    records_train: int = 0
    records_eval: int = 0
    records_retired: int = 0
    corrections: int = 0  # users' corrections built (each a record of the question as asked)
    correction_phrasings: int = 0  # records of other phrasings of those questions, by the teacher
    corrections_withdrawn: int = 0  # corrections users took back, whose records this build retired
    answers_written: int = 0  # the teacher's answers to its questions (kbloop.dataset.answers)
    answers_rejected: int = 0  # dropped: no answer, or the check found the source does not state it
    answers_unchecked: int = 0  # dropped: the check gave no verdict
    by_generator: dict = field(default_factory=dict)
    by_family: dict = field(default_factory=dict)  # records by generator family: extractive, teacher, correction
    records_per_100_chunks: float = 0.0  # records from the chunks read (corrections aside), per 100 of them
    seconds: float = 0.0
    documents_read: list = field(default_factory=list)  # the documents whose new or changed text was read
    documents_retired: dict = field(default_factory=dict)  # document -> why its old records retired: changed, deleted

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """The counts as a run's summary records them: the documents by name only in ``changed``."""
        data = {k: v for k, v in self.as_dict().items() if k not in ("documents_read", "documents_retired")}
        return data | {"changed": self.changes()}

    def changes(self, limit: int = 20) -> dict:
        """What changed in the documents, by name: what was read, what was retired and why;
        at most ``limit`` names each, and how many there were in all."""
        return {"read": self.documents_read[:limit], "read_total": len(self.documents_read),
                "retired": dict(sorted(self.documents_retired.items())[:limit]),
                "retired_total": len(self.documents_retired)}

    def tally(self, records: list[Record]) -> None:
        """What the build got out of the text, and from which generators: the yield to compare
        across corpora and settings."""
        self.by_family = dict(sorted(Counter(r.generator.split(":")[0] for r in records).items()))
        from_chunks = sum(n for family, n in self.by_family.items() if family != CORRECTION)
        self.records_per_100_chunks = round(100 * from_chunks / self.chunks_new, 1) if self.chunks_new else 0.0
