"""Retrieval: the chunks that best answer a query, from vector and keyword rankings fused.

The assistant, dataset building and evaluation all search through one ``Retriever``:

1. the query is embedded and the vector store gives its nearest chunks;
2. the manifest's keyword index (BM25) gives the chunks that share its words;
3. the two rankings are fused by reciprocal rank (RRF), which needs no score calibration; the
   keyword ranking weighs ``KBLOOP_KEYWORD_WEIGHT`` times the vector ranking (1, alike;
   bench/retrieval.py and docs/answers.md say what other weights do);
4. each hit carries its cosine similarity to the query, whichever ranking found it, so scores
   mean the same thing everywhere (the refusal threshold reads them);
5. chunks that contain the exact technical terms the question names come first, as written: a
   name the layout broke over lines (``kbloop.text.term_text``) counts where the assistant checks
   what the sources mention, not in this order; and the order decides every place, the last
   included (both measured: docs/benchmarks.md, "Names the layout broke over lines").
"""

from __future__ import annotations

from typing import Any, Callable

from kbloop.errors import KbloopError
from kbloop.ingest.manifest import Hit, Manifest
from kbloop.text import technical_terms

RRF_K = 60


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = RRF_K,
                           weights: list[float] | None = None) -> list[int]:
    """Ids ordered by the sum of weight / (k + rank) over the rankings that hold them (each
    ranking's weight 1 unless ``weights`` says otherwise)."""
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings)):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores, key=lambda item: -scores[item])


class Retriever:
    """Searches one home's index.

    ``store`` and ``embedder`` are callables, so a reader can hand in the snapshot it holds and
    nothing loads until the first search.
    """

    def __init__(self, manifest: Manifest, store: Callable[[], Any], embedder: Callable[[], Any],
                 default_k: int, keyword_weight: float = 1.0):
        self.manifest = manifest
        self._store = store
        self._embedder = embedder
        self.default_k = default_k
        self.keyword_weight = keyword_weight

    def search(self, query: str, k: int | None = None) -> list[Hit]:
        """The k chunks that best answer ``query``, best first."""
        if not query.strip():
            raise KbloopError("empty query: say what to search for")
        k = k or self.default_k
        store = self._store()
        if store is None or len(store) == 0:
            return []
        vector = self._embedder().embed_query(query)
        depth = max(4 * k, 20)
        dense = dict(store.search(vector, depth))
        keyword = self.manifest.keyword_search(query, depth) if self.keyword_weight > 0 else []
        scored = []
        for vid in reciprocal_rank_fusion([list(dense), keyword], weights=[1.0, self.keyword_weight])[:depth]:
            score = dense[vid] if vid in dense else _cosine(store, vid, vector)
            if score is not None:
                scored.append((vid, score))
        hits = self.manifest.hits(scored)  # drops vectors awaiting cleanup after a crash
        terms = technical_terms(query)
        if terms:
            hits.sort(key=lambda h: -sum(term in h.text.lower() for term in terms))  # stable
        return hits[:k]


def _cosine(store: Any, vid: int, query: Any) -> float | None:
    """The query's similarity to a stored vector (None if the id is not stored)."""
    vector = store.vector(vid)
    return None if vector is None else float(vector @ query)
