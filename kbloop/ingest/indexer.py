"""Incremental indexing: keep the vector store and the manifest equal to the docs folder.

The algorithm, in ``Indexer.ingest``:

1. check the store against the manifest and repair what is safe (``check``);
2. scan the folder: a file whose size and mtime match the manifest (and were confirmed
   after the mtime, so a same-second edit cannot hide) is unchanged without being read;
   otherwise its sha256 decides;
3. a new path whose bytes equal a vanished path's is a rename: one manifest update;
4. deleted files leave the manifest, then their vectors leave the store;
5. new and changed files are parsed and chunked; a chunk whose text hash the file already
   had keeps its vector, one whose hash exists elsewhere copies that vector, and only the
   rest are embedded;
6. each batch writes vectors first, the manifest second, then drops replaced vectors.

A crash between the writes leaves vectors that no chunk refers to, which ``check`` removes on
the next open; the manifest never refers to a vector the saved store lacks.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from kbloop.config import Home, Settings
from kbloop.errors import ConfigError, KbloopError, LoaderError, NeedsRebuild, StoreError
from kbloop.fsutil import exclusive, sha256_file
from kbloop.ingest.chunking import Chunk, chunk_document, make_splitter
from kbloop.ingest.loaders import load, supported
from kbloop.ingest.manifest import ChunkRecord, FileRecord, Manifest
from kbloop.progress import progress_bar
from kbloop.vector_store import StoreLocation, VectorStore, store_location

log = logging.getLogger(__name__)

# A file modified this close to when it was last hashed may change again within the same
# mtime tick; such a file is hashed again rather than trusted on size and mtime.
RACY_SECONDS = 2.0
# Bump when chunking changes in a way that alters chunk text for the same settings.
CHUNKER_VERSION = 1
FLUSH_CHUNKS = 256
FLUSH_FILES = 64

IGNORED_SUFFIXES = ("~", ".tmp", ".temp", ".swp", ".swo", ".swx", ".part", ".crdownload", ".bak")


def is_ignored_name(name: str) -> bool:
    """Hidden files, editor backups and partial downloads are never documents."""
    return (name.startswith((".", "~$", "#")) or name.endswith(IGNORED_SUFFIXES)
            or name.lower().endswith(IGNORED_SUFFIXES))


@dataclass
class IngestCounts:
    """What one ingest did. ``files_ignored`` counts names skipped as never documents (hidden
    files and folders, editor backups, partial downloads); a hidden folder counts once, unread."""

    files_added: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_renamed: int = 0
    files_deleted: int = 0
    files_failed: int = 0
    files_ignored: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    chunks_removed: int = 0
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckReport:
    ok: bool = True
    repaired: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class FilePlan:
    """What one new or changed file needs: computed before anything is written."""

    path: str
    stat: os.stat_result
    sha256: str
    record: FileRecord | None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    n_chunks: int = 0
    keep: list[tuple[ChunkRecord, Chunk]] = field(default_factory=list)
    add: list[Chunk] = field(default_factory=list)
    remove: list[ChunkRecord] = field(default_factory=list)
    new_ids: list[int] = field(default_factory=list)


class Indexer:
    def __init__(self, home: Home, settings: Settings, manifest: Manifest,
                 embedder_factory: Callable[[], object], *, clock: Callable[[], float] = time.time,
                 progress: bool = False):
        self.home, self.settings, self.manifest = home, settings, manifest
        self.docs_dir = home.docs_dir(settings)
        self.location: StoreLocation = store_location(settings, home)
        self._embedder_factory = embedder_factory
        self._embedder = None
        self.clock = clock
        self.progress = progress
        self.store: VectorStore | None = None
        self._write_depth = 0
        self.splitter = make_splitter(settings.chunk_size, settings.chunk_overlap)

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = self._embedder_factory()
        return self._embedder

    @property
    def chunking_signature(self) -> str:
        return f"v{CHUNKER_VERSION}:{self.settings.chunk_size}:{self.settings.chunk_overlap}"

    # -- consistency ----------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the home's write lock: one process at a time changes the store and manifest.

        Re-entrant within this indexer (an ingest runs the check). Another process that
        writes (an ingest from the command line while the daemon ingests) waits its turn.
        """
        lock = self.home.data_dir / "write.lock"
        with nullcontext() if self._write_depth else exclusive(lock, "index write", wait=True):
            self._write_depth += 1
            try:
                yield
            finally:
                self._write_depth -= 1

    def load_store(self) -> VectorStore | None:
        """The saved store for reading: no repairs, so a reader never races a writer.

        Vectors a writer has saved but not yet recorded are skipped by searches anyway.
        """
        try:
            store = self.location.load()
        except StoreError as exc:
            raise StoreError(f"{exc}: run `kbloop check` (then `kbloop ingest`) to repair") from None
        if store is not None and store.embedder != self.settings.embedder:
            raise self._needs_rebuild(store)
        return store

    def _needs_rebuild(self, store: VectorStore) -> NeedsRebuild:
        return NeedsRebuild(
            f"the index was built with {store.embedder} but KBLOOP_EMBEDDER is {self.settings.embedder}: "
            "run `kbloop ingest --rebuild` to re-embed everything, or set KBLOOP_EMBEDDER back"
        )

    def check(self, rebuild: bool = False) -> CheckReport:
        """Load the store and make it agree with the manifest; repair what is safe."""
        with self.writing():
            return self._check(rebuild)

    def _check(self, rebuild: bool) -> CheckReport:
        report = CheckReport()
        try:
            store = self.location.load()
        except StoreError as exc:
            report.problems.append(f"vector store damaged: {exc}")
            self.location.set_aside("damaged", self.clock())
            store = None
        if rebuild:
            with self.manifest.transaction():
                self.manifest.mark_stale([f.id for f in self.manifest.files().values()])
            self.location.set_aside("replaced", self.clock())
            store = None
            report.repaired.append("rebuild: every file will be parsed and embedded again")
        elif store is not None and store.embedder != self.settings.embedder:
            raise self._needs_rebuild(store)
        manifest_ids = self.manifest.vector_ids()
        store_ids = set(store.ids().tolist()) if store is not None else set()
        orphans, missing = store_ids - manifest_ids, manifest_ids - store_ids
        if store is not None and orphans:
            store.remove(orphans)
            store.save()
            report.repaired.append(f"removed {len(orphans)} vectors no chunk refers to (an interrupted run)")
        if missing:
            file_ids = self.manifest.files_of_vectors(missing)
            with self.manifest.transaction():
                self.manifest.mark_stale(file_ids)
            report.repaired.append(
                f"{len(missing)} chunks had no vector; their {len(file_ids)} files are marked for "
                "re-embedding: run `kbloop ingest`"
            )
        report.ok = not report.problems
        self.store = store
        for line in report.problems + report.repaired:
            log.warning("check: %s", line)
        return report

    # -- the ingest -----------------------------------------------------------------------

    def ingest(self, paths: Iterable[str | Path] | None = None, rebuild: bool = False) -> IngestCounts:
        with self.writing(), self.manifest.recording("ingest") as summary:
            started = time.perf_counter()
            counts = self._ingest(paths, rebuild)
            counts.seconds = round(time.perf_counter() - started, 4)
            summary.update(counts.as_dict())
        return counts

    def _ingest(self, paths: Iterable[str | Path] | None, rebuild: bool) -> IngestCounts:
        counts = IngestCounts()
        self.check(rebuild=rebuild)
        if not self.docs_dir.is_dir():
            raise ConfigError(f"docs folder {self.docs_dir} does not exist: create it or set KBLOOP_DOCS_DIR")
        known = self.manifest.files()
        disk, in_scope, counts.files_ignored = self._scan(paths)
        resplit = self.manifest.get_meta("chunking") not in (None, self.chunking_signature)
        now = self.clock()

        todo: list[tuple[str, os.stat_result, str, FileRecord | None]] = []
        for rel, st in sorted(disk.items()):
            rec = known.get(rel)
            if rec and not resplit and self._unchanged_by_stat(rec, st):
                counts.files_unchanged += 1
                continue
            sha = sha256_file(self.docs_dir / rel)
            last_seen = rec and (rec.sha256 if rec.status == "indexed" else rec.failed_sha256)
            if rec and not resplit and sha == last_seen:
                self.manifest.touch_file(rec.id, st.st_size, st.st_mtime_ns, now)
                counts.files_unchanged += 1
                continue
            todo.append((rel, st, sha, rec))

        deleted = {rel: rec for rel, rec in known.items() if in_scope(rel) and rel not in disk}
        todo = self._apply_renames(todo, deleted, counts, now)
        self._apply_deletes(deleted, counts)

        pending: list[FilePlan] = []
        for rel, st, sha, rec in progress_bar(todo, show=self.progress, desc="parse", unit="file", leave=False):
            plan = self._plan(rel, st, sha, rec)
            pending.append(plan)
            if sum(len(p.add) for p in pending) >= FLUSH_CHUNKS or len(pending) >= FLUSH_FILES:
                self._flush(pending, counts, now)
                pending = []
        self._flush(pending, counts, now)
        if self.store is not None and self.store.dirty:
            self.store.save()
        self.manifest.set_meta("chunking", self.chunking_signature)
        self.manifest.set_meta("last_ingest", str(now))
        return counts

    @staticmethod
    def _unchanged_by_stat(rec: FileRecord, st: os.stat_result) -> bool:
        return (
            (rec.sha256 is not None or rec.failed_sha256 is not None)
            and rec.size == st.st_size
            and rec.mtime_ns == st.st_mtime_ns
            and rec.checked_at - st.st_mtime > RACY_SECONDS
        )

    def _scan(
        self, paths: Iterable[str | Path] | None,
    ) -> tuple[dict[str, os.stat_result], Callable[[str], bool], int]:
        """Files on disk in scope (relative path -> stat), which manifest paths are in scope, and
        how many names were skipped as never documents."""
        docs = self.docs_dir.resolve()
        if paths is None:
            found, ignored = self._walk(docs)
            return found, lambda rel: True, ignored
        disk: dict[str, os.stat_result] = {}
        scopes: list[str] = []
        ignored = 0
        for raw in paths:
            path = Path(raw).expanduser()
            path = (path if path.is_absolute() else Path.cwd() / path).resolve()
            try:
                rel = path.relative_to(docs).as_posix()
            except ValueError:
                raise KbloopError(f"{raw} is outside the docs folder {docs}; copy it in or set KBLOOP_DOCS_DIR") from None
            rel = "" if rel == "." else rel
            scopes.append(rel)
            if path.is_dir():
                found, skipped = self._walk(path, docs)
                disk.update(found)
                ignored += skipped
            elif path.is_file() and is_ignored_name(path.name):
                ignored += 1
            elif path.is_file():
                disk[rel] = path.stat()

        def in_scope(rel: str) -> bool:
            return any(not s or rel == s or rel.startswith(s + "/") for s in scopes)

        return disk, in_scope, ignored

    @staticmethod
    def _walk(top: Path, docs: Path | None = None) -> tuple[dict[str, os.stat_result], int]:
        """Documents under ``top`` (path relative to ``docs`` -> stat), and how many names were
        skipped: hidden folders (not entered, counted once each) and ignored file names."""
        docs = docs or top
        found = {}
        ignored = 0
        for folder, dirs, files in os.walk(top):
            ignored += sum(d.startswith(".") for d in dirs)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                if is_ignored_name(name):
                    ignored += 1
                    continue
                path = Path(folder) / name
                try:
                    st = path.stat()
                except OSError:
                    continue  # vanished between listing and stat
                found[path.relative_to(docs).as_posix()] = st
        return found, ignored

    def _apply_renames(self, todo, deleted: dict[str, FileRecord], counts: IngestCounts, now: float):
        by_sha: dict[str, list[str]] = defaultdict(list)
        for rel, rec in deleted.items():
            if rec.status == "indexed" and rec.sha256:
                by_sha[rec.sha256].append(rel)
        remaining = []
        with self.manifest.transaction():
            for rel, st, sha, rec in todo:
                if rec is None and by_sha.get(sha) and supported(Path(rel)):
                    old = by_sha[sha].pop()
                    self.manifest.rename_file(old, rel, st.st_mtime_ns, now)
                    del deleted[old]
                    counts.files_renamed += 1
                else:
                    remaining.append((rel, st, sha, rec))
        return remaining

    def _apply_deletes(self, deleted: dict[str, FileRecord], counts: IngestCounts) -> None:
        if not deleted:
            return
        removed: list[int] = []
        with self.manifest.transaction():
            for rel in deleted:
                removed += self.manifest.delete_file(rel)
        if self.store is not None:
            self.store.remove(removed)
        counts.files_deleted += len(deleted)
        counts.chunks_removed += len(removed)

    def _plan(self, rel: str, st: os.stat_result, sha: str, rec: FileRecord | None) -> FilePlan:
        plan = FilePlan(rel, st, sha, rec)
        path = self.docs_dir / rel
        try:
            if not supported(path):
                raise LoaderError(f"unsupported file type {path.suffix or '(none)'}")
            loaded = load(path, int(self.settings.max_file_mb * 2**20))
            chunks = chunk_document(loaded, self.splitter)
        except LoaderError as exc:
            plan.error = str(exc)
            return plan
        except Exception as exc:  # one bad file must never stop the run
            log.exception("unexpected error reading %s", rel)
            plan.error = f"unexpected error: {exc.__class__.__name__}: {exc}"
            return plan
        plan.notes, plan.n_chunks = loaded.notes, len(chunks)
        old_by_hash: dict[str, list[ChunkRecord]] = defaultdict(list)
        for old in (self.manifest.chunks_of(rec.id) if rec else []):
            old_by_hash[old.text_hash].append(old)
        for chunk in chunks:
            if old_by_hash.get(chunk.text_hash):
                plan.keep.append((old_by_hash[chunk.text_hash].pop(), chunk))
            else:
                plan.add.append(chunk)
        plan.remove = [old for olds in old_by_hash.values() for old in olds]
        return plan

    def _flush(self, plans: list[FilePlan], counts: IngestCounts, now: float) -> None:
        if not plans:
            return
        # 1. Vectors: copied from an identical chunk already stored, else embedded, once per text.
        vectors: dict[str, np.ndarray] = {}
        to_embed: dict[str, str] = {}
        for plan in plans:
            for chunk in plan.add:
                h = chunk.text_hash
                if h in vectors or h in to_embed:
                    continue
                source = self.manifest.vector_for_hash(h) if self.store is not None else None
                if source is not None:
                    vectors[h] = self.store.reconstruct(source)
                else:
                    to_embed[h] = chunk.embed_text
        vectors.update(zip(to_embed, self._embed(list(to_embed.values()))))
        ids, rows = [], []
        next_id = self._next_vector_id()
        for plan in plans:
            for chunk in plan.add:
                plan.new_ids.append(next_id)
                ids.append(next_id)
                rows.append(vectors[chunk.text_hash])
                next_id += 1
        if ids:
            if self.store is None:
                self.store = self.location.create(self.embedder.dim, self.settings.embedder)
            self.store.add(np.asarray(ids), np.vstack(rows))
            self.store.save()

        # 2. The manifest, in one transaction.
        replaced: list[int] = []
        with self.manifest.transaction():
            for plan in plans:
                self._record(plan, now)
                replaced += [old.vector_id for old in plan.remove]
        # 3. Replaced vectors go last; until saved they are orphans that searches skip.
        if self.store is not None:
            self.store.remove(replaced)

        for plan in plans:
            if plan.error:
                counts.files_failed += 1
                counts.failures.append({"path": plan.path, "reason": plan.error})
                log.warning("skipped %s: %s", plan.path, plan.error)
                continue
            counts.files_changed += plan.record is not None
            counts.files_added += plan.record is None
            counts.chunks_removed += len(plan.remove)
            counts.chunks_reused += len(plan.keep)
        counts.chunks_embedded += len(to_embed)
        counts.chunks_reused += len(ids) - len(to_embed)

    def _record(self, plan: FilePlan, now: float) -> None:
        st, rec = plan.stat, plan.record
        common = dict(size=st.st_size, mtime_ns=st.st_mtime_ns, checked_at=now)
        if plan.error:
            # A file that was indexed before keeps its last good chunks searchable.
            self.manifest.upsert_file(
                plan.path, sha256=rec.sha256 if rec else None, status="failed", error=plan.error,
                failed_sha256=plan.sha256, n_chunks=rec.n_chunks if rec else 0, **common)
            return
        file_id = self.manifest.upsert_file(
            plan.path, sha256=plan.sha256, status="indexed", error="; ".join(plan.notes) or None,
            failed_sha256=None, n_chunks=plan.n_chunks, **common)
        self.manifest.delete_chunks([old.id for old in plan.remove])
        for old, chunk in plan.keep:
            self.manifest.update_chunk(old.id, chunk.ordinal, chunk.text, chunk.metadata)
        for chunk, vector_id in zip(plan.add, plan.new_ids):
            self.manifest.insert_chunk(file_id, chunk.ordinal, chunk.text_hash, chunk.text, chunk.metadata, vector_id)

    def _next_vector_id(self) -> int:
        top = self.manifest.max_vector_id()
        if self.store is not None and len(self.store):
            top = max(top, int(self.store.ids().max()))
        return top + 1

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        step = max(self.settings.embed_batch_size * 4, 64)
        parts = [self.embedder.embed(texts[i:i + step])
                 for i in progress_bar(range(0, len(texts), step), show=self.progress, desc="embed", unit="batch",
                                       leave=False)]
        return np.vstack(parts)
