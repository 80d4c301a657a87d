"""The knowledge base: one home's settings, manifest, store and embedder, opened together.

Commands and the daemon work through this object; it holds no logic of its own beyond
wiring, search and the status summary.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kbloop import models
from kbloop.config import Home, Settings
from kbloop.daemon_state import daemon_status
from kbloop.ingest.indexer import CheckReport, IngestCounts, Indexer
from kbloop.ingest.manifest import Hit, Manifest
from kbloop.retrieval import Retriever
from kbloop.schema import MIGRATIONS
from kbloop.vector_store import VectorStore

if TYPE_CHECKING:
    from kbloop.assistant.corrections import CorrectionIndex
    from kbloop.assistant.verify import Verifier
    from kbloop.evaluate.feedback import FeedbackStore
    from kbloop.models.generators import Generator

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
        return Manifest(self.home.manifest_path, MIGRATIONS)

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            self._embedder = models.configured("embedder", self.settings)
        return self._embedder

    @property
    def generator(self) -> Generator:
        """The answering model, with the current adapter applied when one is promoted for it."""
        if self._generator is None:
            generator = self.model("generator")
            self.follow_adapter(generator)
            self._generator = generator
        return self._generator

    @cached_property
    def verifier(self) -> Verifier | None:
        """What checks each answer before it is shown (the judge role's model, kept with the
        knowledge base like the answering one); None with KBLOOP_VERIFY_ANSWERS=false."""
        from kbloop.assistant.verify import Verifier

        return Verifier(self.model("judge")) if self.settings.verify_answers else None

    def model(self, role: Literal["generator", "teacher", "judge"]) -> Generator:
        """A new backend for ``role`` as the settings choose it, without any adapter. Nothing
        loads until first use, and none is kept here: a run drops its teacher or judge (and
        their weights) when it ends, and the daemon keeps only the answering model."""
        return models.configured(role, self.settings)

    def follow_adapter(self, generator: Generator) -> None:
        """Switch a long-lived generator (``serve``, ``chat``) to the adapter promoted since it
        was made, or back to the base model after a rollback to none. A backend that takes no
        adapters has none to follow."""
        if generator.supports_adapters:
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

    @cached_property
    def feedback(self) -> FeedbackStore:
        """Users' ratings of answers, with their corrections, which a dataset build learns."""
        from kbloop.evaluate.feedback import FeedbackStore

        return FeedbackStore(self.manifest.db)

    @cached_property
    def corrections(self) -> CorrectionIndex:
        """Users' corrections, matched to the questions that ask what they corrected."""
        from kbloop.assistant.corrections import CorrectionIndex
        from kbloop.dataset.store import DatasetStore

        return CorrectionIndex(self, phrasings=DatasetStore(self.home, self.manifest).correction_phrasings)

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

    def store(self) -> VectorStore | None:
        """The index for reading; ingest and check are what repair it."""
        if self.indexer.store is None:
            self.indexer.store = self.indexer.load_store()
        return self.indexer.store

    @cached_property
    def retriever(self) -> Retriever:
        return Retriever(self.manifest, self.store, lambda: self.embedder, self.settings.search_k,
                         self.settings.keyword_weight)

    def search(self, query: str, k: int | None = None) -> list[Hit]:
        """The k chunks that best answer ``query`` (see ``kbloop.retrieval``)."""
        return self.retriever.search(query, k)

    def _learning_status(self) -> dict:
        """Dataset, adapters and evaluations at a glance."""
        from kbloop.dataset.store import DatasetStore
        from kbloop.evaluate.store import EvaluationStore
        from kbloop.finetune.registry import AdapterRegistry

        registry = AdapterRegistry(self.home, self.manifest)
        stats = DatasetStore(self.home, self.manifest).stats()
        recorded = [r for r in EvaluationStore(self.home, self.manifest.db).runs() if r.recorded]
        return {
            "dataset_version": stats["latest"], "records_active": stats["active_by_split"],
            "adapters": len(registry.versions()), "current_adapter": registry.current(),
            "last_evaluation": {key: getattr(recorded[-1], key) for key in ("run", "candidate", "baseline", "decision")}
            if recorded else None,
        }

    def status(self) -> dict:
        from kbloop.models.local import engine_status

        saved = self.indexer.location.info()
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
            "models": {role: engine_status(getattr(self.settings, role), self.settings)
                       for role in ("generator", "judge")},
            **self.manifest.counts(),
            "vectors": len(store) if store is not None else 0,
            "store_bytes": store.size_bytes() if store is not None else 0,
            "store_embedder": saved.embedder if saved else None,
            "failures": failures,
            "notes": notes,
            "last_runs": self.manifest.last_runs(5),
            "learning": self._learning_status(),
            "daemon": daemon_status(self.home.data_dir),
        }
