"""``kbloop dataset build``: records from the chunks that are new since the last build.

The algorithm, in ``build``:

1. read the indexed chunks in one snapshot (an ingest may run meanwhile; the next build sees it);
2. chunk texts turned into records before but no longer indexed retire their records:
   "changed" when their file is still there (the new text's records supersede them), else "deleted";
   the records of corrections users withdrew retire as "withdrawn";
3. each new chunk text gives pairs: extractive ones always, the teacher's when configured;
   a pair is kept only if the chunk supports its answer, its lengths are sane and its
   question is not a near-duplicate;
4. each kept pair becomes a record: its chunk plus retrieved distractors (RAFT), in the
   eval split when the chunk's hash says so; each correction users sent since the last build
   becomes a training record too (``kbloop.dataset.corrections``);
5. the version's files are written, then its rows, in one manifest transaction.

An unchanged knowledge base, with no new corrections, yields no version at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kbloop.dataset.answers import TeacherAnswers
from kbloop.dataset.counts import BuildCounts
from kbloop.dataset.corrections import correction_records
from kbloop.dataset.extractive import Pair, extract_pairs
from kbloop.dataset.filters import Deduplicator, length_problem, supported
from kbloop.dataset.plan import Plan, plan
from kbloop.dataset.records import (Knowledge, Record, SourceChunk, assemble, correction_hash, in_eval_split,
                                    record_id)
from kbloop.dataset.store import DatasetStore
from kbloop.dataset.teacher import teacher_pairs
from kbloop.fsutil import exclusive
from kbloop.ingest.manifest import Manifest
from kbloop.progress import ProgressMode, tracked

if TYPE_CHECKING:
    from kbloop.models.generators import Generator

log = logging.getLogger(__name__)


def indexed_chunks(manifest: Manifest) -> dict[str, SourceChunk]:
    """Every indexed chunk text, by hash (one place per text), read in one snapshot."""
    out: dict[str, SourceChunk] = {}
    for path, c in manifest.indexed_chunks():
        out.setdefault(c.text_hash, SourceChunk(c.text_hash, path, c.text, c.metadata, c.vector_id))
    return out


def build(kb, teacher=None, progress: ProgressMode = "off", limit: int | None = None,
          verifier=None, announce: Callable[[Plan], None] | None = None,
          rephraser: Callable[[], Generator] | None = None) -> BuildCounts:
    """Build the next dataset version from what changed; ``limit`` caps the new chunks read
    (the rest wait for the next build). With a ``verifier`` the teacher also answers its own
    questions from retrieved context, and only checked answers are kept
    (``kbloop.dataset.answers``); without one its questions keep its short answers.
    ``announce`` receives the plan (what will be read, by which models, about how long it
    takes) once the build holds its lock, before it reads anything. ``rephraser`` makes the model
    that writes other phrasings of the questions users corrected (the teacher, when there is one,
    is used for them without it)."""
    with exclusive(kb.home.data_dir / "dataset.lock", "dataset build"):
        with kb.manifest.recording("dataset") as summary:
            counts = _build(kb, teacher, progress, limit, verifier, announce, rephraser)
            summary.update({k: v for k, v in counts.summary().items() if k != "by_generator"})
    return counts


def _build(kb, teacher, progress: ProgressMode, limit: int | None, verifier,
           announce: Callable[[Plan], None] | None, rephraser: Callable[[], Generator] | None) -> BuildCounts:
    started = time.perf_counter()
    settings = kb.settings
    store = DatasetStore(kb.home, kb.manifest)
    counts = BuildCounts()

    current = indexed_chunks(kb.manifest)
    processed = store.processed_hashes()
    live_paths = {c.path for c in current.values()}
    retire = {}
    for text_hash, path in store.active_sources():
        if text_hash not in current:
            retire[text_hash] = "changed" if path in live_paths else "deleted"
            counts.documents_retired[path] = retire[text_hash]
    retire.update({h: "deleted" for h in processed - current.keys() if h not in retire})
    new = [c for h, c in current.items() if h not in processed]
    counts.chunks_unchanged = len(current) - len(new)
    if limit is not None:
        new = new[:limit]
    counts.chunks_new, counts.chunks_retired = len(new), len(retire)
    for rating in kb.feedback.taken_back():  # corrections users withdrew
        if store.count_active([correction_hash(rating.id)]):
            retire[correction_hash(rating.id)] = "withdrawn"
            counts.corrections_withdrawn += 1
    counts.documents_read = sorted({c.path for c in new})
    if announce is not None:
        later = len(current) - counts.chunks_unchanged - len(new)
        announce(plan(store, settings, teacher, verifier, len(new), later, counts.chunks_unchanged))

    version = store.next_version()
    by_vector = {c.vector_id: c for c in current.values()}
    dedupe = Deduplicator(store.active_questions())
    records: list[Record] = []
    done: dict[str, int] = {}
    answering = (TeacherAnswers(kb, teacher, verifier, by_vector, counts)
                 if teacher is not None and verifier is not None else None)
    for chunk in tracked(new, progress, desc="dataset", unit="chunk"):
        pairs = extract_pairs(chunk.text, chunk.metadata, chunk.path)
        if teacher is not None and settings.dataset_teacher_pairs:
            pairs += teacher_pairs(teacher, chunk.text, chunk.metadata, chunk.path, settings.dataset_teacher_pairs,
                                   settings.dataset_teacher_phrasings)
        kept = _keep(pairs, chunk, dedupe, counts)
        split = "eval" if in_eval_split(chunk.text_hash, settings.dataset_eval_fraction) else "train"
        for pair in kept:
            rid = record_id(chunk.text_hash, pair.question)
            source = {"path": chunk.path, "text_hash": chunk.text_hash, "vector_id": chunk.vector_id,
                      "metadata": chunk.metadata}
            if answering is not None and answering.answers(pair):
                record = answering.record(rid, version, split, pair, chunk, source)
                if record is None:
                    continue
            else:
                distractors = _distractors(kb, pair, chunk, by_vector, settings.dataset_distractors)
                record = assemble(rid, version, split, pair.generator, pair.question, pair.answer,
                                  chunk.knowledge, distractors, settings.dataset_oracle_p, source, pair.accept)
            records.append(record)
            counts.by_generator[pair.generator] = counts.by_generator.get(pair.generator, 0) + 1
        done[chunk.text_hash] = len(kept)
    if teacher is not None:
        rephraser = lambda: teacher  # noqa: E731 - the teacher already loaded
    corrected = correction_records(kb, version, store.status_of().keys(), settings.dataset_correction_phrasings,
                                   rephraser)
    records += corrected
    counts.corrections = sum("phrasing_of" not in r.source for r in corrected)
    counts.correction_phrasings = len(corrected) - counts.corrections
    for record in corrected:
        counts.by_generator[record.generator] = counts.by_generator.get(record.generator, 0) + 1

    counts.records_train = sum(r.split == "train" for r in records)
    counts.records_eval = sum(r.split == "eval" for r in records)
    counts.tally(records)
    counts.records_retired = store.count_active(retire.keys())
    if records or retire or done:
        info = {
            "settings": {k: getattr(settings, k) for k in (
                "dataset_teacher_pairs", "dataset_teacher_phrasings", "dataset_correction_phrasings",
                "dataset_distractors", "dataset_oracle_p", "dataset_eval_fraction", "chunk_size", "chunk_overlap",
                "embedder")},
            "teacher": teacher.spec if teacher is not None else None,
            "checker": verifier.model.spec if answering is not None else None,
            # what the next build's plan estimates its time from (kbloop.dataset.plan)
            "seconds_per_chunk": round((time.perf_counter() - started) / len(new), 3) if new else None,
            "counts": {k: v for k, v in counts.as_dict().items() if k not in ("version", "seconds")},
        }
        store.commit(version, store.latest(), info, records, done, retire)
        counts.version = version
    counts.seconds = round(time.perf_counter() - started, 3)
    return counts


def _keep(pairs: list[Pair], chunk: SourceChunk, dedupe: Deduplicator, counts: BuildCounts) -> list[Pair]:
    kept: list[Pair] = []
    siblings: list[frozenset[str]] = []
    for pair in pairs:
        counts.pairs_generated += 1
        if length_problem(pair.question, pair.answer):
            counts.pairs_bad_length += 1
        elif not supported(pair.support, chunk.text):
            counts.pairs_unsupported += 1
        elif not dedupe.admit(pair.question, siblings):
            counts.pairs_duplicate += 1
        else:
            kept.append(pair)
    return kept


def _distractors(kb, pair: Pair, chunk: SourceChunk, by_vector: dict[int, SourceChunk], k: int) -> list[Knowledge]:
    """The chunks retrieval ranks highest for the question that are not its source and do not
    state its answer: plausible, and wrong to answer from."""
    if k == 0:
        return []
    out: list[Knowledge] = []
    for hit in kb.search(pair.question, k + 6):
        other = by_vector.get(hit.vector_id)
        if other is None or other.text_hash == chunk.text_hash or supported(pair.support, other.text):
            continue
        out.append(Knowledge(other.path, other.text, other.metadata, oracle=False))
        if len(out) == k:
            break
    return out
