"""kbloop backends seen through LangChain's interfaces."""

from __future__ import annotations

from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings

if TYPE_CHECKING:
    from kbloop.models.embedders import Embedder


class LangChainEmbeddings(Embeddings):
    """Wraps a kbloop embedder as a LangChain ``Embeddings``."""

    def __init__(self, embedder: "Embedder"):
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed_query(text).tolist()
