"""Incremental indexing: keep the vector store and the manifest equal to the docs folder.

The algorithm, in ``Indexer.ingest``:

1. check the store against the manifest and repair what is safe (``check``);
2. scan the folder (``kbloop.ingest.scan``; done before the check, so an unreadable docs folder
   stops the run before anything changes): a file whose size and mtime match the manifest (and
   were confirmed after the mtime, so a same-second edit cannot hide) is unchanged without being
   read; otherwise its sha256 decides. What cannot be read is reported and kept as it was;
3. a new path whose bytes equal a vanished path's is a rename: one manifest update;
4. deleted files leave the manifest, then their vectors leave the store;
5. new and changed files are parsed and chunked; a chunk whose text hash the file already
   had keeps its vector, one whose hash exists elsewhere copies that vector, and only the
   rest are embedded;
6. each batch writes vectors first, the manifest second, then drops replaced vectors.

A crash between the writes leaves vectors that no chunk refers to, which ``check`` removes on
the next open; the manifest never refers to a vector the saved store lacks.

Steps 5 and 6's parsing and embedding run in this process, or on a Ray cluster
(``KBLOOP_INGEST_ENGINE=ray``, ``kbloop.ingest.ray_engine``); either way this process plans,
assigns vector ids in file order and writes, so the index comes out the same.

``--rebuild`` (``Indexer._rebuild``) fills a new store generation beside the one in use and
swaps it in at the end, so searches never see a half-built index.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
import stat
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from kbloop.config import Home, Settings
from kbloop.errors import ConfigError, KbloopError, NeedsRebuild, StoreError
from kbloop.fsutil import exclusive, sha256_file
from kbloop.ingest.chunking import Chunk, embed_text, make_splitter
from kbloop.ingest.loaders import same_reader, supported
from kbloop.ingest.manifest import ChunkRecord, FileRecord, Manifest
from kbloop.ingest.parse import Parsed, parse_file
from kbloop.ingest.scan import Scan, is_ignored_name, scan_folder, undecodable_name, unreadable_reason
from kbloop.progress import progress_bar
from kbloop.vector_store import StoreLocation, VectorStore, store_location

if TYPE_CHECKING:
    from kbloop.ingest.ray_engine import RayEngine

log = logging.getLogger(__name__)

# A file modified this close to when it was last hashed may change again within the same
# mtime tick; such a file is hashed again rather than trusted on size and mtime.
RACY_SECONDS = 2.0
# Bump when chunking changes in a way that alters chunk text for the same settings.
CHUNKER_VERSION = 1
FLUSH_CHUNKS = 256
FLUSH_FILES = 64


def remembered_sha(rec: FileRecord) -> str | None:
    """The bytes a record vouches for, which are not read again: those indexed, or those whose
    content failed. Older versions also recorded a file they could not read as failed; such a
    record vouches for nothing, so the file is read again."""
    if rec.status == "indexed":
        return rec.sha256
    return None if _failed_to_read(rec.error) else rec.failed_sha256


def _failed_to_read(error: str | None) -> bool:
    """Whether a recorded failure was an OSError (how older versions recorded unreadable files)."""
    match = re.match(r"unexpected error: (\w+):", error or "")
    kind = getattr(builtins, match.group(1), None) if match else None
    return isinstance(kind, type) and issubclass(kind, OSError)


@dataclass
class IngestCounts:
    """What one ingest did. ``files_ignored`` counts names skipped as never documents (hidden
    files and folders, editor backups, partial downloads, links not followed); a hidden folder
    counts once, unread. ``files_failed`` counts files whose content failed and paths that could
    not be read (an unreadable folder counts once); ``failures`` gives each one's reason."""

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
class Carried:
    """A file whose chunks a rebuild keeps as the manifest has them, embedded again: one it does
    not parse again, or whose content fails now."""

    file_id: int
    chunks: list[ChunkRecord]
    new_ids: list[int] = field(default_factory=list)


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
    ready: dict[str, np.ndarray] = field(default_factory=dict)


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
        self._ray: RayEngine | None = None

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
        """Load the store and make it agree with the manifest; repair what is safe. Before a
        ``rebuild``, which replaces the store, one made by another embedder is no error."""
        with self.writing():
            return self._check(rebuild)

    def _check(self, rebuild: bool) -> CheckReport:
        report = CheckReport()
        report.repaired += self._settle_rebuild()
        with self.manifest.transaction():
            interrupted = self.manifest.mark_interrupted_runs()
        if interrupted:
            report.repaired.append(f"{interrupted} runs left 'running' by a process that is gone are "
                                   "recorded as interrupted")
        try:
            store = self.location.load()
        except StoreError as exc:
            report.problems.append(f"vector store damaged: {exc}")
            self.location.set_aside("damaged", self.clock())
            store = None
        if store is not None and store.embedder != self.settings.embedder and not rebuild:
            raise self._needs_rebuild(store)
        manifest_ids = self.manifest.vector_ids()
        store_ids = set(store.ids().tolist()) if store is not None else set()
        orphans, missing = store_ids - manifest_ids, manifest_ids - store_ids
        if store is not None and orphans:
            with self.manifest.transaction():  # a reader may hold a store with these vectors
                self.manifest.retire_vector_ids(max(orphans))
            store.remove(orphans)
            store.save()
            report.repaired.append(f"removed {len(orphans)} vectors no chunk refers to (an interrupted run)")
        if missing and not rebuild:
            store = self._restore_vectors(store, missing)
            report.repaired.append(f"{len(missing)} chunks had no vector: embedded again from their stored text")
        elif missing:
            report.repaired.append(f"{len(missing)} chunks had no vector: the rebuild embeds them again")
        report.ok = not report.problems
        self.store = store
        for line in report.problems + report.repaired:
            log.warning("check: %s", line)
        return report

    def _restore_vectors(self, store: VectorStore | None, missing: set[int]) -> VectorStore:
        """Embed the chunks whose vectors are missing again from the text the manifest holds, under
        the same ids, so the manifest needs no change. Parsing the files again instead would lose
        what cannot be parsed now: the last good version of a file that broke, or a file in a
        folder that is unreadable at the moment."""
        chunks = self.manifest.chunks_of_vectors(missing)
        texts = {c.text_hash: embed_text(c.text, c.metadata) for c in chunks}
        vectors = self._vectors(texts, {})
        if store is None:
            store = self.location.create(self.embedder.dim, self.settings.embedder)
        store.add(np.asarray([c.vector_id for c in chunks]), np.vstack([vectors[c.text_hash] for c in chunks]))
        store.save()
        return store

    def _settle_rebuild(self) -> list[str]:
        """Finish, or remove, what an interrupted rebuild left: its store, staged beside the one
        in use. A rebuild's vector ids are all new, so the manifest holds exactly the staged
        store's ids once the rebuild's swap committed: then the store only has to be put in use.
        Otherwise the rebuild never took effect, and ``clean`` removes its files (with the
        temporary files of saves that were killed)."""
        done = []
        try:
            staged = self.location.load_staged()
        except StoreError:
            staged = None  # never in use, and damaged: clean removes it
        if staged is not None and set(staged.ids().tolist()) == self.manifest.vector_ids():
            self.location.promote()
            done.append("finished a rebuild interrupted after its last commit: its index is now in use")
        return done + self.location.clean()

    # -- rebuild --------------------------------------------------------------------------

    def _rebuild(self, paths: Iterable[str | Path] | None) -> IngestCounts:
        """Parse and embed everything again, into a new store generation that readers do not see
        until it is complete.

        Searches keep using the store in use and the manifest's rows throughout. The new vectors
        fill a staged store under new ids; once it is saved, one manifest transaction swaps in
        every file's new chunk rows, and promoting the staged store puts it in use. A crash
        before the swap leaves the old generation in use and the next check removes the staged
        one; a crash after it is finished by the next check (``_settle_rebuild``).

        Files not parsed again (outside ``paths``, unreadable now) and files whose content fails
        now keep the chunks the manifest has, embedded again from their text: a rebuild loses
        nothing that was searchable.
        """
        counts = IngestCounts()
        if not self.docs_dir.is_dir():
            raise ConfigError(f"docs folder {self.docs_dir} does not exist: create it or set KBLOOP_DOCS_DIR")
        scan = self._scan(paths)
        self.check(rebuild=True)
        counts.files_ignored = scan.ignored
        for rel, reason in scan.unreadable.items():
            self._skip_unreadable(rel, reason, counts)
        known = self.manifest.files()
        now = self.clock()

        plans: list[FilePlan] = []
        files = sorted(scan.files.items())
        parsed_files = zip(files, self._parse_each([(rel, None) for rel, _ in files]), strict=True)
        for (rel, st), result in progress_bar(parsed_files, show=self.progress, desc="parse", unit="file",
                                              leave=False, total=len(files)):
            try:
                sha = sha256_file(self.docs_dir / rel)
            except OSError as exc:
                result = Parsed(unreadable=unreadable_reason(exc))
            if result.unreadable:
                self._skip_unreadable(rel, result.unreadable, counts)
                continue
            plans.append(self._plan(rel, st, sha, known.get(rel), result))
        deleted = [rel for rel in known if scan.accounts_for(rel) and rel not in scan.files]
        parsed = {plan.path for plan in plans if not plan.error} | set(deleted)
        carried = [Carried(rec.id, chunks) for rel, rec in known.items()
                   if rel not in parsed and (chunks := self.manifest.chunks_of(rec.id))]
        for plan in plans:
            if not self._count(plan, counts):
                continue
            # Every chunk gets a new vector, those whose text the file already had too.
            plan.remove = [old for old, _ in plan.keep] + plan.remove
            plan.add = sorted([chunk for _, chunk in plan.keep] + plan.add, key=lambda chunk: chunk.ordinal)
            plan.keep = []

        staged = self.location.stage(self.embedder.dim, self.settings.embedder)
        texts = [(c.text_hash, c.embed_text) for plan in plans for c in plan.add]
        texts += [(c.text_hash, embed_text(c.text, c.metadata)) for kept in carried for c in kept.chunks]
        ready = {h: vector for plan in plans for h, vector in plan.ready.items()}
        new_ids = iter(self._fill(staged, texts, self._next_vector_id(), counts, ready))
        for plan in plans:
            plan.new_ids = [next(new_ids) for _ in plan.add]
        for kept in carried:
            kept.new_ids = [next(new_ids) for _ in kept.chunks]
        staged.save()

        with self.manifest.transaction():
            for rel in deleted:
                counts.chunks_removed += len(self.manifest.delete_file(rel))
            for plan in plans:
                self._record(plan, now)
            for kept in carried:
                self.manifest.delete_chunks([c.id for c in kept.chunks])
                for c, vector_id in zip(kept.chunks, kept.new_ids):
                    self.manifest.insert_chunk(kept.file_id, c.ordinal, c.text_hash, c.text, c.metadata, vector_id)
            self.manifest.set_meta("last_ingest", str(now))
            self.manifest.record_common_words()
        counts.files_deleted = len(deleted)
        self.location.promote()
        self.store = self.location.load()
        return counts

    def _fill(self, store: VectorStore, texts: list[tuple[str, str]], first_id: int,
              counts: IngestCounts, ready: dict[str, np.ndarray]) -> list[int]:
        """Add one vector per (text hash, text) to ``store``, under consecutive ids from
        ``first_id``, a slice at a time; a text met before in the run is copied, not embedded.
        ``ready`` holds the vectors an engine embedded beside the parse."""
        seen: dict[str, int] = {}
        ids = list(range(first_id, first_id + len(texts)))
        step = FLUSH_CHUNKS * 16
        for start in range(0, len(texts), step):
            batch, batch_ids = texts[start:start + step], ids[start:start + step]
            fresh = {h: text for h, text in batch if h not in seen}
            vectors = self._vectors(fresh, ready)
            store.add(np.asarray(batch_ids), np.vstack([
                vectors[h] if h in vectors else store.reconstruct(seen[h]) for h, _ in batch]))
            for (h, _), vector_id in zip(batch, batch_ids):
                seen.setdefault(h, vector_id)
            counts.chunks_embedded += len(fresh)
            counts.chunks_reused += len(batch) - len(fresh)
        return ids

    # -- the ingest -----------------------------------------------------------------------

    def ingest(self, paths: Iterable[str | Path] | None = None, rebuild: bool = False) -> IngestCounts:
        with self.writing(), self.manifest.recording("ingest") as summary, self._engine():
            started = time.perf_counter()
            counts = self._rebuild(paths) if rebuild else self._ingest(paths, rebuild)
            counts.seconds = round(time.perf_counter() - started, 4)
            summary.update(counts.as_dict())
        return counts

    def _ingest(self, paths: Iterable[str | Path] | None, rebuild: bool) -> IngestCounts:
        counts = IngestCounts()
        if not self.docs_dir.is_dir():
            raise ConfigError(f"docs folder {self.docs_dir} does not exist: create it or set KBLOOP_DOCS_DIR")
        # Scan before the check: a docs folder that cannot be read stops even a rebuild unchanged.
        scan = self._scan(paths)
        self.check(rebuild=rebuild)
        known = self.manifest.files()
        counts.files_ignored = scan.ignored
        for rel, reason in scan.unreadable.items():
            self._skip_unreadable(rel, reason, counts)
        now = self.clock()

        todo: list[tuple[str, os.stat_result, str, FileRecord | None]] = []
        for rel, st in sorted(scan.files.items()):
            rec = known.get(rel)
            # Split another way before (another chunk size): split again, embedding only new text.
            resplit = rec is not None and rec.chunking not in (None, self.chunking_signature)
            if rec and not resplit and self._unchanged_by_stat(rec, st):
                counts.files_unchanged += 1
                continue
            try:
                sha = sha256_file(self.docs_dir / rel)
            except OSError as exc:
                self._skip_unreadable(rel, unreadable_reason(exc), counts)
                continue
            if rec and not resplit and sha == remembered_sha(rec):
                self.manifest.touch_file(rec.id, st.st_size, st.st_mtime_ns, now)
                counts.files_unchanged += 1
                continue
            todo.append((rel, st, sha, rec))

        deleted = {rel: rec for rel, rec in known.items() if scan.accounts_for(rel) and rel not in scan.files}
        todo = self._apply_renames(todo, deleted, counts, now)
        self._apply_deletes(deleted, counts)

        pending: list[FilePlan] = []
        parsed_files = zip(todo, self._parse_each([(rel, rec) for rel, _, _, rec in todo]), strict=True)
        for (rel, st, sha, rec), parsed in progress_bar(parsed_files, show=self.progress, desc="parse", unit="file",
                                                        leave=False, total=len(todo)):
            if parsed.unreadable:
                self._skip_unreadable(rel, parsed.unreadable, counts)
                continue
            pending.append(self._plan(rel, st, sha, rec, parsed))
            if sum(len(p.add) for p in pending) >= FLUSH_CHUNKS or len(pending) >= FLUSH_FILES:
                self._flush(pending, counts, now)
                pending = []
        self._flush(pending, counts, now)
        if self.store is not None and self.store.dirty:
            self.store.save()
        self.manifest.set_meta("last_ingest", str(now))
        self.manifest.record_common_words()
        return counts

    @staticmethod
    def _unchanged_by_stat(rec: FileRecord, st: os.stat_result) -> bool:
        return (
            remembered_sha(rec) is not None
            and rec.size == st.st_size
            and rec.mtime_ns == st.st_mtime_ns
            and rec.checked_at - st.st_mtime > RACY_SECONDS
        )

    def _scan(self, paths: Iterable[str | Path] | None) -> Scan:
        """The documents on disk in scope, what could not be read, and which manifest paths the
        scan accounts for (see ``kbloop.ingest.scan``)."""
        docs = self.docs_dir.resolve()
        follow = self.settings.follow_external_links
        scan = Scan()
        if paths is None:
            scan_folder(scan, docs, follow_external=follow)
            return scan
        scan.scopes = []
        for raw in paths:
            rel = self._relative(raw, docs)
            if rel is None or undecodable_name(rel):
                if rel is not None:
                    log.warning("skipped %r: the name is not valid UTF-8; rename it to index it", raw)
                scan.ignored += 1
                continue
            scan.scopes.append(rel)
            path = docs / rel
            try:
                st = path.stat()
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone: the index forgets it
            except OSError as exc:
                scan.unreadable[rel] = unreadable_reason(exc)
                continue
            if stat.S_ISDIR(st.st_mode):
                scan_folder(scan, docs, rel, follow_external=follow)
            elif is_ignored_name(path.name):
                scan.ignored += 1
            elif stat.S_ISREG(st.st_mode):
                scan.files[rel] = st
        return scan

    def _relative(self, raw: str | Path, docs: Path) -> str | None:
        """A named path relative to the docs folder (resolved ``docs``), keyed as a scan keys it:
        through the links in it, not resolved, so a document under a linked folder is the one the
        scan indexed. One that leads outside the docs folder is refused, unless it is a link in the
        docs folder that KBLOOP_FOLLOW_EXTERNAL_LINKS lets the scan follow. None (logged) for a
        path whose links cannot be resolved (a loop): the other named paths still go ahead."""
        path = Path(raw).expanduser()
        path = Path(os.path.normpath(path if path.is_absolute() else Path.cwd() / path))
        try:
            target = path.resolve()
        except (RuntimeError, OSError) as exc:  # RuntimeError: a loop of links, before Python 3.13
            log.warning("skipped %s: its links cannot be followed (%s)", raw, exc)
            return None
        rel = self._lexical_relative(path, docs)
        if rel is None:  # named through a link to the docs folder: only resolving finds it
            try:
                rel = target.relative_to(docs).as_posix()
            except ValueError:
                raise KbloopError(f"{raw} is outside the docs folder {docs}; "
                                  "copy it in or set KBLOOP_DOCS_DIR") from None
        elif not (target == docs or docs in target.parents) and not self.settings.follow_external_links:
            raise KbloopError(f"{raw} is outside the docs folder {docs}: it goes through a link out of "
                              "it (KBLOOP_FOLLOW_EXTERNAL_LINKS=true follows such links)")
        return "" if rel == "." else rel

    def _lexical_relative(self, path: Path, docs: Path) -> str | None:
        """``path`` (normalised, not resolved) relative to the docs folder, as given or resolved;
        None when it does not lie in it."""
        for base in (docs, Path(os.path.abspath(self.docs_dir))):
            if path == base or base in path.parents:
                return path.relative_to(base).as_posix()
        return None

    @staticmethod
    def _skip_unreadable(rel: str, reason: str, counts: IngestCounts) -> None:
        """A path that could not be read is reported, not recorded: its content may be fine, so
        the manifest keeps what it knew of it and the next ingest tries again."""
        counts.files_failed += 1
        counts.failures.append({"path": rel, "reason": reason})
        log.warning("skipped %s: %s", rel, reason)

    def _apply_renames(self, todo, deleted: dict[str, FileRecord], counts: IngestCounts, now: float):
        """Moves: a new path whose bytes are those a vanished record vouches for takes that record
        over with its chunks. A failed record counts too (by the bytes that failed), so a broken
        file that is moved keeps its last good version searchable, as it would have in place."""
        by_sha: dict[str, list[str]] = defaultdict(list)
        for rel, rec in deleted.items():
            if sha := remembered_sha(rec):
                by_sha[sha].append(rel)
        remaining = []
        with self.manifest.transaction():
            for rel, st, sha, rec in todo:
                # Only under a name the same loader reads: notes.md renamed notes.txt is parsed
                # again as text, not kept as the Markdown it was read as.
                sources = [old for old in by_sha.get(sha, []) if same_reader(Path(old), Path(rel))]
                if rec is None and sources and supported(Path(rel)):
                    old = sources[-1]
                    by_sha[sha].remove(old)
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

    @contextmanager
    def _engine(self) -> Iterator[None]:
        """Parse and embed on Ray during this run when KBLOOP_INGEST_ENGINE=ray (connected at the
        first file to parse, let go at the end); otherwise in this process."""
        if self.settings.ingest_engine != "ray":
            yield
            return
        from kbloop.ingest.ray_engine import RayEngine  # imports Ray: only when it is chosen

        self._ray = RayEngine(self.settings, self.docs_dir)
        try:
            yield
        finally:
            self._ray.close()
            self._ray = None

    def _parse_each(self, files: list[tuple[str, FileRecord | None]]) -> Iterator[Parsed]:
        """Each file parsed and split, in the order given, one at a time as it is asked for: in
        this process, or on Ray, which also embeds the chunks whose text the file's record lacks."""
        if self._ray is not None:
            return self._ray.parse_and_embed(
                [(rel, {c.text_hash for c in self.manifest.chunks_of(rec.id)} if rec else set())
                 for rel, rec in files])
        max_bytes = int(self.settings.max_file_mb * 2**20)
        return (parse_file(self.docs_dir, rel, max_bytes, self.splitter) for rel, _ in files)

    @staticmethod
    def _count(plan: FilePlan, counts: IngestCounts) -> bool:
        """Count a planned file as added, changed or failed (logged); False when it failed."""
        if plan.error:
            counts.files_failed += 1
            counts.failures.append({"path": plan.path, "reason": plan.error})
            log.warning("skipped %s: %s", plan.path, plan.error)
            return False
        counts.files_changed += plan.record is not None
        counts.files_added += plan.record is None
        counts.chunks_removed += len(plan.remove)
        return True

    def _plan(self, rel: str, st: os.stat_result, sha: str, rec: FileRecord | None, parsed: Parsed) -> FilePlan:
        plan = FilePlan(rel, st, sha, rec, error=parsed.error, ready=parsed.vectors)
        if parsed.error:
            return plan
        chunks = parsed.chunks
        plan.notes, plan.n_chunks = parsed.notes, len(chunks)
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
        vectors.update(self._vectors(to_embed, {h: v for plan in plans for h, v in plan.ready.items()}))
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
            if not self._count(plan, counts):
                continue
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
                failed_sha256=plan.sha256, n_chunks=rec.n_chunks if rec else 0,
                chunking=rec.chunking if rec else None, **common)
            return
        file_id = self.manifest.upsert_file(
            plan.path, sha256=plan.sha256, status="indexed", error="; ".join(plan.notes) or None,
            failed_sha256=None, n_chunks=plan.n_chunks, chunking=self.chunking_signature, **common)
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

    def _vectors(self, texts: dict[str, str], ready: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A vector for each text (text hash -> text): the one embedded beside the parse, else embedded now."""
        rest = {h: text for h, text in texts.items() if h not in ready}
        embedded = dict(zip(rest, self._embed(list(rest.values()))))
        return {h: ready[h] if h in ready else embedded[h] for h in texts}

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        if self._ray is not None:
            return self._ray.embed(texts)
        step = max(self.settings.embed_batch_size * 4, 64)
        parts = [self.embedder.embed(texts[i:i + step])
                 for i in progress_bar(range(0, len(texts), step), show=self.progress, desc="embed", unit="batch",
                                       leave=False)]
        return np.vstack(parts)
