"""What every vector store engine promises (``kbloop.vector_store.base``), checked on each one.

Each test runs once per engine in ``ENGINES``; an engine is a function from an empty folder to
the ``StoreLocation`` of a store kept there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kbloop.errors import StoreError
from kbloop.vector_store import StoreInfo, StoreLocation, VectorStore, store_location
from kbloop.vector_store.faiss_store import FaissLocation
from kbloop.vector_store.qdrant_store import Endpoint, QdrantLocation

DIM = 8
EMBEDDER = "test:emb"

ENGINES: dict[str, Callable[[Path], StoreLocation]] = {
    "faiss": lambda folder: FaissLocation(folder),
    "qdrant": lambda folder: QdrantLocation(folder, Endpoint(path=folder / "qdrant")),
}


@pytest.fixture(params=sorted(ENGINES))
def location(request, tmp_path) -> StoreLocation:
    return ENGINES[request.param](tmp_path / "vector_store")


def unit(rows: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def filled(location: StoreLocation, ids: list[int], seed: int = 0) -> tuple[VectorStore, np.ndarray]:
    store = location.create(DIM, EMBEDDER)
    vectors = unit(len(ids), seed)
    store.add(np.array(ids), vectors)
    return store, vectors


def test_an_empty_location_has_no_store(location):
    assert isinstance(location, StoreLocation)
    assert location.load() is None and location.info() is None and location.revision() is None


def test_a_new_store_is_empty_and_says_what_it_holds(location):
    store = location.create(DIM, EMBEDDER)
    assert isinstance(store, VectorStore)
    assert (len(store), store.ids().tolist(), store.dim, store.embedder) == (0, [], DIM, EMBEDDER)
    assert store.info is None and store.search(unit(1)[0], 3) == []


def test_add_then_len_ids_and_vectors(location):
    store, vectors = filled(location, [10, 11, 12])
    assert len(store) == 3 and sorted(store.ids().tolist()) == [10, 11, 12]
    assert store.ids().dtype == np.int64
    assert np.allclose(store.vector(11), vectors[1]) and np.allclose(store.reconstruct(12), vectors[2])
    assert store.vector(99) is None
    with pytest.raises(StoreError, match="kbloop check"):
        store.reconstruct(99)


def test_vectors_of_the_wrong_length_are_refused(location):
    store = location.create(DIM, EMBEDDER)
    with pytest.raises(StoreError):
        store.add(np.array([1]), np.ones((1, DIM + 1), dtype=np.float32))
    assert len(store) == 0


def test_search_returns_cosine_scores_best_first(location):
    store, vectors = filled(location, [1, 2, 3, 4, 5])
    hits = store.search(vectors[3], 3)
    assert len(hits) == 3 and hits[0][0] == 4 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    expected = {i: float(vectors[i - 1] @ vectors[3]) for i, _ in hits}
    assert all(score == pytest.approx(expected[i], abs=1e-5) for i, score in hits)
    assert len(store.search(vectors[0], 50)) == 5


def test_replace_is_remove_then_add_under_the_same_id(location):
    store, _ = filled(location, [1, 2])
    new = unit(1, seed=7)
    assert store.remove([2]) == 1
    store.add(np.array([2]), new)
    assert len(store) == 2 and np.allclose(store.vector(2), new[0])
    assert store.search(new[0], 1)[0][0] == 2


def test_remove_skips_unknown_ids_and_counts_the_rest(location):
    store, vectors = filled(location, [1, 2, 3])
    assert store.remove([2, 3, 3, 404]) == 2 and store.remove([]) == 0
    assert store.ids().tolist() == [1] and store.vector(2) is None
    assert [i for i, _ in store.search(vectors[1], 3)] == [1]


def test_saved_store_reopens_with_the_same_ids_vectors_and_info(location):
    store, vectors = filled(location, [5, 6, 7])
    info = store.save()
    assert isinstance(info, StoreInfo) and not store.dirty
    assert (info.embedder, info.dim, info.count) == (EMBEDDER, DIM, 3)
    assert store.info == info == location.info() and location.revision() is not None
    assert isinstance(store.size_bytes(), int) and store.size_bytes() >= 0
    reopened = location.load()
    assert sorted(reopened.ids().tolist()) == [5, 6, 7] and reopened.embedder == EMBEDDER
    assert np.allclose(reopened.reconstruct(6), vectors[1]) and reopened.info == info
    assert reopened.search(vectors[2], 1)[0][0] == 7


def test_each_save_is_a_new_commit(location):
    store, _ = filled(location, [1])
    first, first_revision = store.save(), location.revision()
    store.remove([1])
    store.add(np.array([2, 3]), unit(2, seed=1))
    assert store.dirty
    second = store.save()
    assert second != first and location.info() == second and location.revision() != first_revision
    assert sorted(location.load().ids().tolist()) == [2, 3] and second.count == 2


def test_a_store_set_aside_is_gone_and_a_new_one_starts_afresh(location):
    store, _ = filled(location, [1, 2])
    store.save()
    location.set_aside("damaged", 1_700_000_000.0)
    assert location.load() is None and location.info() is None and location.revision() is None
    location.set_aside("replaced", 1_700_000_001.0)  # nothing committed: nothing to do
    fresh, _ = filled(location, [9], seed=3)
    fresh.save()
    assert location.load().ids().tolist() == [9]


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_the_home_store_is_found_by_settings(home, engine, monkeypatch):
    monkeypatch.setenv("KBLOOP_VECTOR_STORE", engine)
    location = store_location(home.load_settings(), home)
    assert isinstance(location, StoreLocation) and location.load() is None
    assert type(location).__name__.lower().startswith(engine)
    store, _ = filled(location, [1])
    store.save()
    assert location.load().ids().tolist() == [1]
    assert any(home.vector_store_dir.iterdir())
