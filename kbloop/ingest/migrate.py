"""`kbloop migrate-store`: move a home's vectors to the other engine, by id, without embedding.

The copy fills the other engine's store while the home keeps using its own. Only once the copy
is saved, loaded again and found to hold exactly the manifest's ids (and the same vectors, on a
sample) does the home's .env switch KBLOOP_VECTOR_STORE; only then is the old store set aside.
A crash before the switch leaves the home as it was, and running the command again copies
afresh (the new store replaces the unfinished copy at its first save); after the switch, the
home uses the new store, and the old one is set aside or, if the crash came first, left unused.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kbloop.config import Settings, set_setting
from kbloop.errors import ConfigError, KbloopError, StoreError
from kbloop.ingest.indexer import Indexer
from kbloop.vector_store import StoreLocation, VectorStore, store_location

COPY_BATCH = 1024  # vectors per add
VERIFY_SAMPLE = 32  # vectors compared between the copy and the source


@dataclass(frozen=True)
class Migration:
    """What a migration did: the engines, and how many vectors went from one to the other."""

    source: str
    target: str
    vectors: int


def migrate_store(indexer: Indexer, target: str, *, clock: Callable[[], float] = time.time) -> Migration:
    """Copy the home's vectors into the ``target`` engine's store and switch the home to it.

    Holds the home's write lock throughout, so no ingest changes the store meanwhile. Refuses
    when the target is the engine in use, when the environment would override the switch, and
    when the store in use is damaged or disagrees with the manifest (`kbloop check` first).
    """
    settings, home = indexer.settings, indexer.home
    source = settings.vector_store
    if target == source:
        raise KbloopError(f"this home already keeps its vectors in {target} (KBLOOP_VECTOR_STORE): nothing to migrate")
    name = Settings.env_name("vector_store")
    if name in os.environ:
        raise ConfigError(f"{name} is set in the environment, which wins over {home.env_file}: unset it, "
                          "then run `kbloop migrate-store` again")
    with indexer.writing():
        expected = indexer.manifest.vector_ids()
        try:
            old = indexer.load_store()
        except StoreError as exc:
            raise StoreError(f"the {source} store cannot be copied: {exc}") from None
        held = set(old.ids().tolist()) if old is not None else set()
        if held != expected:
            raise StoreError(f"the {source} store holds {len(held)} vectors where the manifest has {len(expected)}: "
                             "run `kbloop check` and `kbloop ingest`, then migrate")
        if old is not None:
            destination = store_location(settings.model_copy(update={"vector_store": target}), home)
            _copy(old, destination)
            _verify(old, destination, expected, target)
        set_setting(home, "vector_store", target)
        if old is not None:
            indexer.location.set_aside("replaced", clock())
    return Migration(source, target, len(expected))


def _copy(source: VectorStore, destination: StoreLocation) -> None:
    """Every vector of ``source`` into a new store at ``destination``, under the same ids, saved."""
    copy = destination.create(source.dim, source.embedder)
    ids = np.sort(source.ids())
    for start in range(0, len(ids), COPY_BATCH):
        batch = ids[start:start + COPY_BATCH]
        copy.add(batch, np.vstack([source.reconstruct(i) for i in batch]))
    copy.save()


def _verify(source: VectorStore, destination: StoreLocation, expected: set[int], target: str) -> None:
    """Load the saved copy again: it must hold exactly the manifest's ids, and a sample of its
    vectors must equal the source's."""
    copy = destination.load()
    ids = sorted(expected)
    if copy is None or len(copy) != len(ids) or set(copy.ids().tolist()) != expected:
        raise StoreError(f"the copy in {target} does not hold the manifest's {len(ids)} vectors, so the home "
                         "keeps its store: run `kbloop migrate-store` again")
    for vector_id in ids[::max(1, len(ids) // VERIFY_SAMPLE)]:
        if not np.allclose(copy.reconstruct(vector_id), source.reconstruct(vector_id), atol=1e-5):
            raise StoreError(f"vector {vector_id} differs in the copy in {target}, so the home keeps its store: "
                             "run `kbloop migrate-store` again")
