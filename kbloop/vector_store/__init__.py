"""kbloop's vector store: the ``VectorStore`` protocol, FAISS and Qdrant behind it, and its LangChain face."""

from __future__ import annotations

from collections.abc import Callable

from kbloop.config import Home, Settings
from kbloop.vector_store.base import SetAsideReason, StoreInfo, StoreLocation, VectorStore
from kbloop.vector_store.faiss_store import FaissLocation

__all__ = ["SetAsideReason", "StoreInfo", "StoreLocation", "VectorStore", "store_location"]


def _faiss(settings: Settings, home: Home) -> StoreLocation:
    return FaissLocation(home.vector_store_dir)


def _qdrant(settings: Settings, home: Home) -> StoreLocation:
    # Imported here: qdrant-client takes a second to import, which FAISS homes need not pay.
    from kbloop.vector_store.qdrant_store import QdrantLocation

    return QdrantLocation.configured(settings, home)


# KBLOOP_VECTOR_STORE -> the location of that engine's store in a home.
ENGINES: dict[str, Callable[[Settings, Home], StoreLocation]] = {"faiss": _faiss, "qdrant": _qdrant}


def store_location(settings: Settings, home: Home) -> StoreLocation:
    """Where ``home`` keeps its vectors: the one place that chooses the engine.

    KBLOOP_VECTOR_STORE picks it: FAISS files in the home's ``vector_store/`` folder (the
    default), or Qdrant, embedded in a folder or on a server, with its commit record in that
    same folder.
    """
    return ENGINES[settings.vector_store](settings, home)
