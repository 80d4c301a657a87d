"""kbloop backends seen through LangChain's interfaces."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from langchain_core.embeddings import Embeddings


class Embeds(Protocol):
    """What LangChain needs of a kbloop embedder."""

    def embed(self, texts: list[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


class LangChainEmbeddings(Embeddings):
    """Wraps a kbloop embedder as a LangChain ``Embeddings``."""

    def __init__(self, embedder: Embeds):
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed_query(text).tolist()
