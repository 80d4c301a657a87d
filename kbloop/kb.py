"""The knowledge base: one home's settings, manifest, store and embedder, opened together.

Commands and the daemon work through this object; it holds no logic of its own beyond
wiring, search and the status summary.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any

from kbloop import models
from kbloop.config import Home, Settings
from kbloop.errors import KbloopError
from kbloop.ingest.indexer import CheckReport, IngestCounts, Indexer
from kbloop.ingest.manifest import Hit, Manifest
from kbloop.retrieval import Retriever
from kbloop.scheduler import daemon_status
from kbloop.vector_store.faiss_store import FaissStore

log = logging.getLogger(__name__)


class KnowledgeBase:
    def __init__(self, home: Home, settings: Settings | None = None, *, embedder: Any = None,
                 generator: Any = None, progress: bool = False):
        self.home = home
        self.settings = settings or home.load_settings()
        self._embedder = embedder
        self._generator = generator
        self.progress = progress
        self._warned: set[tuple[Path, str]] = set()  # adapter mismatches already logged

    @cached_property
    def manifest(self) -> Manifest:
        return Manifest(self.home.manifest_path)

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            self._embedder = models.create("embedder", self.settings.embedder, self.settings)
        return self._embedder

    @property
    def generator(self) -> Any:
        """The answering model, with the current adapter applied when one is promoted for it."""
        if self._generator is None:
            generator = models.create("generator", self.settings.generator, self.settings)
            adapter = self.current_adapter()
            if adapter is not None and hasattr(generator, "adapter"):
                generator.adapter = adapter
            self._generator = generator
        return self._generator

    def follow_adapter(self, generator: Any) -> None:
        """Switch a long-lived generator (``serve``, ``chat``) to the adapter promoted since it
        was made, or back to the base model after a rollback to none."""
        if hasattr(generator, "use_adapter"):
            generator.use_adapter(self.current_adapter())

    def current_adapter(self) -> Path | None:
        """The promoted adapter's folder, if it was trained for KBLOOP_GENERATOR's model."""
        from kbloop.finetune.registry import AdapterRegistry

        registry = AdapterRegistry(self.home, self.manifest)
        path = registry.current_path()
        if path is None:
            return None
        trained_for = registry.lineage(path.name).get("generator")
        if trained_for != self.settings.generator:
            if (path, self.settings.generator) not in self._warned:  # once, not at every question
                self._warned.add((path, self.settings.generator))
                log.warning("adapter %s was trained for %s, not %s: answering without it",
                            path.name, trained_for, self.settings.generator)
            return None
        return path

    @cached_property
    def indexer(self) -> Indexer:
        return Indexer(self.home, self.settings, self.manifest, lambda: self.embedder, progress=self.progress)

    def close(self) -> None:
        if "manifest" in self.__dict__:
            self.manifest.close()

    def __enter__(self) -> "KnowledgeBase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- operations -----------------------------------------------------------------------

    def check(self) -> CheckReport:
        return self.indexer.check()

    def ingest(self, paths=None, rebuild: bool = False) -> IngestCounts:
        return self.indexer.ingest(paths, rebuild=rebuild)

    def store(self) -> FaissStore | None:
        """The index for reading; ingest and check are what repair it."""
        if self.indexer.store is None:
            self.indexer.store = self.indexer.load_store()
        return self.indexer.store

    @cached_property
    def retriever(self) -> Retriever:
        return Retriever(self.manifest, self.store, lambda: self.embedder, self.settings.search_k)

    def search(self, query: str, k: int | None = None) -> list[Hit]:
        """The k chunks that best answer ``query`` (see ``kbloop.retrieval``)."""
        return self.retriever.search(query, k)

    def _learning_status(self) -> dict:
        """Dataset, adapters and evaluations at a glance."""
        from kbloop.dataset.store import DatasetStore
        from kbloop.finetune.registry import AdapterRegistry

        registry = AdapterRegistry(self.home, self.manifest)
        stats = DatasetStore(self.home, self.manifest).stats()
        last_eval = self.manifest.db.execute(
            "SELECT run, candidate, baseline, decision FROM evaluations ORDER BY created_at DESC LIMIT 1").fetchone()
        return {
            "dataset_version": stats["latest"], "records_active": stats["active_by_split"],
            "adapters": len(registry.versions()), "current_adapter": registry.current(),
            "last_evaluation": dict(last_eval) if last_eval else None,
        }

    def status(self) -> dict:
        header = FaissStore.read_header(self.home.vector_store_dir)
        store = self.store()
        failures = [{"path": f.path, "reason": f.error,
                     "serving_previous_version": f.sha256 is not None and f.n_chunks > 0}
                    for f in self.manifest.failures()]
        notes = [{"path": f.path, "note": f.error} for f in self.manifest.files().values()
                 if f.status == "indexed" and f.error]
        return {
            "home": str(self.home.root),
            "docs_dir": str(self.home.docs_dir(self.settings)),
            "embedder": self.settings.embedder,
            **self.manifest.counts(),
            "vectors": len(store) if store is not None else 0,
            "store_bytes": store.size_bytes() if store is not None else 0,
            "store_embedder": header.embedder if header else None,
            "failures": failures,
            "notes": notes,
            "last_runs": self.manifest.last_runs(5),
            "learning": self._learning_status(),
            "daemon": daemon_status(self.home.data_dir),
        }
