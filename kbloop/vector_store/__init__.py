"""kbloop's vector store: the ``VectorStore`` protocol, FAISS behind it, and its LangChain face."""

from __future__ import annotations

from kbloop.config import Home, Settings
from kbloop.vector_store.base import SetAsideReason, StoreInfo, StoreLocation, VectorStore
from kbloop.vector_store.faiss_store import FaissLocation

__all__ = ["SetAsideReason", "StoreInfo", "StoreLocation", "VectorStore", "store_location"]


def store_location(settings: Settings, home: Home) -> StoreLocation:
    """Where ``home`` keeps its vectors: the one place that chooses the engine.

    FAISS files in the home's ``vector_store/`` folder: the embedded engine and, so far, the only
    one, so ``settings`` choose nothing yet.
    """
    return FaissLocation(home.vector_store_dir)
