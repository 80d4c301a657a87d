"""kbloop's index behind LangChain's ``VectorStore`` interface, so ``as_retriever()`` works.

The index follows the docs folder, so this face is read-only: documents enter through
``kbloop ingest`` (which keeps manifest and vectors in step), never through ``add_texts``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from kbloop.errors import KbloopError

if TYPE_CHECKING:
    from kbloop.ingest.manifest import Hit
    from kbloop.kb import KnowledgeBase

READ_ONLY = "the kbloop index follows the docs folder: add files there and run `kbloop ingest`"


def hit_to_document(hit: "Hit") -> Document:
    return Document(page_content=hit.text, id=str(hit.vector_id),
                    metadata={"source": hit.path, **hit.metadata, "score": hit.score})


class KbloopVectorStore(VectorStore):
    def __init__(self, kb: "KnowledgeBase"):
        self.kb = kb

    @property
    def embeddings(self) -> Embeddings:
        return self.kb.embedder.as_langchain()

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        return [(hit_to_document(h), h.score) for h in self.kb.search(query, k)]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        store = self.kb.store()
        if store is None:
            return []
        return [hit_to_document(h) for h in self.kb.manifest.hits(store.search(embedding, k + 8))[:k]]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # Scores are cosine similarities in [-1, 1]; relevance is the same order in [0, 1].
        return lambda score: (score + 1.0) / 2.0

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, **kwargs: Any) -> list[str]:
        raise KbloopError(READ_ONLY)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        raise KbloopError(READ_ONLY)

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None,
                   **kwargs: Any) -> "KbloopVectorStore":
        raise KbloopError(READ_ONLY)
