"""What kbloop needs from a vector store, whatever engine holds the vectors.

Two small interfaces. A ``VectorStore`` is an open store: vectors under the manifest's integer
vector ids, searched by cosine similarity. A ``StoreLocation`` is where one home keeps its
store: it opens, creates, describes and sets aside a store without the caller knowing the
engine's files or collections. ``kbloop.vector_store.store_location`` picks the engine.

The SQLite manifest is the source of truth: it says which ids should exist, and the indexer's
check makes the store agree with it. So a store only has to keep ids and vectors, write its
changes atomically (``save``), and say what it last committed (``info``).

A rebuild fills a second store beside the one in use (``stage``), invisible to readers until
``promote`` puts it in use in one atomic step; ``clean`` removes what a crash left half done.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

# Why a store is set aside: its files fail their checks, or a fresh one replaces it.
SetAsideReason = Literal["damaged", "replaced"]


@dataclass(frozen=True)
class StoreInfo:
    """What a committed store says about itself, readable without loading its vectors.

    Engines extend it with what they need to find and verify their data (FAISS: the index file
    and its checksum). Two infos compare equal only when they describe the same commit, so a
    reader that holds a store can tell whether a newer one was saved since.
    """

    embedder: str
    dim: int
    count: int
    saved_at: float


@runtime_checkable
class VectorStore(Protocol):
    """Vectors keyed by int64 ids (the manifest's vector ids), searched by cosine similarity.

    Vectors are L2-normalised by the embedder, so inner product is cosine. A store may keep
    changes in memory until ``save``; one that persists each write makes ``save`` a flush
    and keeps ``dirty`` false.
    """

    embedder: str
    """The embedder spec the vectors came from; another embedder's queries would not match them."""

    @property
    def dim(self) -> int:
        """The length of every vector in the store."""

    @property
    def dirty(self) -> bool:
        """True while changes are not yet saved."""

    @property
    def info(self) -> StoreInfo | None:
        """What the last ``save`` (or the load) committed; None for a store never saved."""

    def __len__(self) -> int:
        """How many vectors the store holds, saved or not."""

    def ids(self) -> np.ndarray:
        """Every id in the store, as int64, in no particular order."""

    def vector(self, vector_id: int) -> np.ndarray | None:
        """The stored vector, or None when the id is not in the store."""

    def reconstruct(self, vector_id: int) -> np.ndarray:
        """The stored vector of an id the manifest knows; raises StoreError when it is absent."""

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to ``k`` (id, cosine similarity) pairs, best first; empty for an empty store."""

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Store ``vectors[i]`` under ``ids[i]``. The ids must be new: to replace a vector,
        ``remove`` its id first. Raises StoreError when the vectors are not ``dim`` long."""

    def remove(self, ids: Iterable[int]) -> int:
        """Drop the given ids; ids not in the store are skipped. Returns how many went."""

    def save(self) -> StoreInfo:
        """Commit every change atomically: a crash leaves the previous commit or this one."""

    def size_bytes(self) -> int:
        """What the committed store takes on disk (0 when nothing is saved or it is remote)."""


@runtime_checkable
class StoreLocation(Protocol):
    """Where one home's store lives, and what can be done there before a store is open."""

    def load(self) -> VectorStore | None:
        """The committed store, or None when nothing was ever saved. Raises StoreError if damaged."""

    def create(self, dim: int, embedder: str) -> VectorStore:
        """A new, empty store; it replaces the committed one (if any) at its first ``save``."""

    def info(self) -> StoreInfo | None:
        """What the committed store says about itself, without loading it; None if there is none."""

    def revision(self) -> Hashable | None:
        """A cheap token that changes with every commit (None when there is none): a reader
        checks it on each search to know when to load the newer store."""

    def stage(self, dim: int, embedder: str) -> VectorStore:
        """A new, empty store whose saves ``load``, ``info`` and ``revision`` do not see until
        ``promote``: readers keep the committed store while it fills."""

    def load_staged(self) -> VectorStore | None:
        """The saved staged store, or None when there is none. Raises StoreError if damaged."""

    def promote(self) -> None:
        """Put the saved staged store in use in place of the committed one, atomically."""

    def clean(self) -> list[str]:
        """Remove what a crash left behind: a staged store never promoted, temporary files of
        writers that were killed. One line per kind of thing removed, for the check's report."""

    def set_aside(self, reason: SetAsideReason, at: float) -> None:
        """Keep the committed store out of the way (for a person to inspect) so that ``load``
        finds none and the next ``save`` starts afresh; ``at`` is the time, for its name."""
