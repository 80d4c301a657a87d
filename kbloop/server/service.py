"""What the HTTP API calls: one home served to concurrent requests without corrupting anything.

Each request borrows a reader with its own SQLite connection and reads the manifest inside one
read transaction (a WAL snapshot), against an in-memory vector store snapshot that no writer
touches. A new snapshot is loaded when the store's revision (for FAISS, its atomically replaced
header) changes. An ingest runs on a background thread under the home's write lock with its own
connection, store and embedder, so searches neither wait for it nor see it half done. One model
answers at a time (a lock); searches never take that lock.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kbloop import __version__, models
from kbloop.assistant.answer import Answer, Assistant
from kbloop.assistant.verify import Verifier
from kbloop.config import Home, Settings
from kbloop.errors import Conflict, KbloopError, StoreError
from kbloop.evaluate.feedback import FeedbackStore, Rating
from kbloop.evaluate.store import EvaluationStore
from kbloop.ingest.manifest import Hit
from kbloop.kb import KnowledgeBase
from kbloop.server.reports import evals
from kbloop.text import passage
from kbloop.vector_store import StoreLocation, VectorStore, store_location

log = logging.getLogger(__name__)


class IngestRunning(Conflict):
    """This server already runs an ingest; a second would only wait for the first."""


class StoreSnapshots:
    """The vector store as last committed, shared read-only by every request.

    The location's revision changes with every save and is cheap to read (FAISS: one stat), so
    each search checks it to know whether to load the next commit.
    """

    def __init__(self, location: StoreLocation):
        self.location = location
        self._lock = threading.Lock()
        self._key: object = object()
        self._store: VectorStore | None = None

    def current(self, load: Callable[[], VectorStore | None]) -> VectorStore | None:
        key = self.location.revision()
        if key == self._key:
            return self._store
        with self._lock:
            if key != self._key:
                self._store, self._key = self._reload(load), key
            return self._store

    def _reload(self, load: Callable[[], VectorStore | None]) -> VectorStore | None:
        for _ in range(5):
            before = self.location.revision()
            saved = self.location.info()
            if saved is None:
                return None
            if self._store is not None and self._store.info == saved:
                return self._store
            try:
                return load()
            except StoreError:
                if self.location.revision() == before:  # damaged, not merely replaced while we read it
                    raise
        raise StoreError("the index changed five times while loading it; try again")


class ReaderKB(KnowledgeBase):
    """A knowledge base that only reads: each search or status sees one committed state."""

    def __init__(self, home: Home, settings: Settings, *, embedder: Any, snapshots: StoreSnapshots):
        super().__init__(home, settings, embedder=embedder)
        self._snapshots = snapshots

    def store(self) -> VectorStore | None:
        return self._snapshots.current(self.indexer.load_store)

    def search(self, query: str, k: int | None = None) -> list[Hit]:
        with self.manifest.snapshot():
            return super().search(query, k)

    def status(self) -> dict:
        with self.manifest.snapshot():
            return super().status()


class Readers:
    """A pool of readers, one per concurrent request; a SQLite connection is never shared."""

    def __init__(self, make: Callable[[], ReaderKB]):
        self._make = make
        self._idle: queue.SimpleQueue[ReaderKB] = queue.SimpleQueue()
        self._all: list[ReaderKB] = []
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self) -> Iterator[ReaderKB]:
        try:
            kb = self._idle.get_nowait()
        except queue.Empty:
            kb = self._make()
            with self._lock:
                self._all.append(kb)
        try:
            yield kb
        finally:
            self._idle.put(kb)

    def close(self) -> None:
        with self._lock:
            for kb in self._all:
                kb.close()
            self._all.clear()


class OneAtATime:
    """The generator, created on first use, behind a lock: one CPU model answers one question
    at a time. Retrieval, and refusals that need no model, do not wait for it."""

    def __init__(self, create: Callable[[], Any]):
        self._create = create
        self._generator: Any = None
        self._created = threading.Lock()
        self.lock = threading.Lock()

    @property
    def generator(self) -> Any:
        with self._created:
            if self._generator is None:
                self._generator = self._create()
            return self._generator

    @property
    def loaded(self) -> bool:
        return self._generator is not None

    @property
    def spec(self) -> str:
        return self.generator.spec

    @property
    def supports_adapters(self) -> bool:
        return self.generator.supports_adapters

    @property
    def adapter(self) -> Any:
        return self.generator.adapter

    def use_adapter(self, adapter: Any) -> None:
        generator = self.generator
        # Only a change waits for the lock (never swapped in the middle of an answer): a question
        # refused without the model must not queue behind another one's answer.
        if generator.adapter != adapter:
            with self.lock:
                generator.use_adapter(adapter)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        with self.lock:
            yield from self.generator.stream(*args, **kwargs)


@dataclass
class IngestJob:
    id: str
    paths: list[str] | None
    rebuild: bool
    state: Literal["running", "ok", "failed"] = "running"
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    counts: dict | None = None
    error: str | None = None


class IngestRunner:
    """One ingest at a time per server, on a background thread, under the home's write lock
    (so it also waits for, rather than interleaves with, the daemon or a CLI ingest)."""

    KEEP = 50

    def __init__(self, open_kb: Callable[[], KnowledgeBase]):
        self._open_kb = open_kb
        self._lock = threading.Lock()
        self.jobs: dict[str, IngestJob] = {}
        self.running: IngestJob | None = None

    def start(self, paths: list[str] | None, rebuild: bool) -> IngestJob:
        with self._lock:
            if self.running is not None:
                raise IngestRunning(f"ingest {self.running.id} is still running: GET /api/ingest/{self.running.id} "
                                    "says when it ends")
            job = self.running = IngestJob(uuid.uuid4().hex[:12], paths, rebuild)
            self.jobs[job.id] = job
            for old in list(self.jobs)[:-self.KEEP]:
                del self.jobs[old]
        threading.Thread(target=self._run, args=(job,), name=f"kbloop-ingest-{job.id}", daemon=True).start()
        return job

    def _run(self, job: IngestJob) -> None:
        counts, error = None, None
        try:
            with self._open_kb() as kb:
                counts = kb.ingest(job.paths, rebuild=job.rebuild).as_dict()
        except KbloopError as exc:
            error = str(exc)
        except Exception as exc:  # a background job records its failure instead of vanishing
            log.exception("ingest %s failed", job.id)
            error = f"internal error ({exc.__class__.__name__}); the server log has the details"
        with self._lock:  # the job ends and the runner frees in one step: no 409 for the next one
            job.counts, job.error, job.finished_at = counts, error, time.time()
            job.state = "failed" if error else "ok"
            self.running = None

    def latest(self) -> IngestJob | None:
        with self._lock:
            return next(reversed(self.jobs.values()), None)


class Service:
    """One home served: pooled readers, the generator and the ingest runner, all created lazily.

    ``embedder`` answers queries; ``ingest_embedder`` is a second instance for ingest, so a search
    never queues behind an ingest's embedding batch. Tests pass their shared models here.
    """

    def __init__(self, home: Home, settings: Settings | None = None, *, embedder: Any = None,
                 ingest_embedder: Any = None, generator: Any = None):
        self.home = home
        self.settings = settings or home.load_settings()
        self._embedders = {"query": embedder, "ingest": ingest_embedder}
        self._lock = threading.Lock()
        self.started_at = int(time.time())
        self.snapshots = StoreSnapshots(store_location(self.settings, home))
        self.readers = Readers(lambda: ReaderKB(home, self.settings, embedder=self.embedder("query"),
                                                snapshots=self.snapshots))
        self.model = OneAtATime(lambda: generator or self._create_generator())
        # One checking model for every request (it loads on first use), also for second readings.
        checker = Verifier(models.configured("judge", self.settings))
        self.verifier = checker if self.settings.verify_answers else None
        self.second_checker = checker if self.settings.read_again else None
        self.ingests = IngestRunner(
            lambda: KnowledgeBase(home, self.settings, embedder=self.embedder("ingest")))

    def embedder(self, role: Literal["query", "ingest"]) -> Any:
        with self._lock:
            if self._embedders[role] is None:
                self._embedders[role] = models.configured("embedder", self.settings)
            return self._embedders[role]

    def _create_generator(self) -> Any:
        """The knowledge base's own choice of model (and of adapter, once one is promoted)."""
        with self.readers.borrow() as kb:
            return kb.generator

    def close(self) -> None:
        self.readers.close()

    def search(self, query: str, k: int | None) -> list[dict]:
        with self.readers.borrow() as kb:
            hits = kb.search(query, k)
        return [{"rank": i, "score": round(h.score, 4), "path": h.path, "location": h.location,
                 "page": h.metadata.get("page"), "section": h.metadata.get("section"),
                 "preview": passage(h.text, query), "text": h.text}
                for i, h in enumerate(hits, start=1)]

    def answer(self, question: str, history: list[tuple[str, str]]) -> Iterator[str | Answer]:
        with self.readers.borrow() as kb:
            kb.follow_adapter(self.model)
            yield from Assistant(kb, self.model, self.verifier, self.second_checker).stream(question, history)

    def status(self) -> dict:
        with self.readers.borrow() as kb:
            info = kb.status()
        latest = self.ingests.latest()
        return info | {
            "generator": self.settings.generator,
            "server": {"version": __version__, "started_at": self.started_at, "api_key": bool(self.settings.api_key)},
            "ingest": asdict(latest) if latest else None,
        }

    def ingest_paths(self, paths: list[str] | None) -> list[str] | None:
        """Paths relative to docs/ (or absolute inside it), checked before the job starts."""
        if paths is None:
            return None
        docs = self.home.docs_dir(self.settings).resolve()
        checked = []
        for raw in paths:
            if "\0" in raw:  # no file name holds one; the OS refuses it with a ValueError
                raise KbloopError(f"{raw!r} is not a path: it holds a null character")
            # Normalised, not resolved: a link inside docs/ is indexed under its own name (and a
            # followed external link is the indexer's to judge), so the job must name it as such.
            path = Path(os.path.normpath(docs / raw))
            if path != docs and docs not in path.parents:
                raise KbloopError(f"{raw} is outside the docs folder {docs}")
            checked.append(str(path))
        return checked

    def add_feedback(self, rating: Rating, question: str, answer: str, **details: Any) -> int:
        with self.readers.borrow() as kb:
            return FeedbackStore(kb.manifest.db).add(rating, question, answer, **details)

    def feedback(self, rating: Rating | None, limit: int) -> list[dict]:
        with self.readers.borrow() as kb:
            return [asdict(f) for f in FeedbackStore(kb.manifest.db).ratings(rating, limit)]

    def withdraw_correction(self, feedback_id: int) -> dict:
        """Take a user's correction back (``FeedbackStore.withdraw``); NotFound when there is none."""
        with self.readers.borrow() as kb:
            return asdict(FeedbackStore(kb.manifest.db).withdraw(feedback_id))

    def evals(self) -> dict:
        """The evaluation runs with a report, for the web page."""
        with self.readers.borrow() as kb:
            return evals(kb.home.data_dir, EvaluationStore(kb.home, kb.manifest.db).runs())
