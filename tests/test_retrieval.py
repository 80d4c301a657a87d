"""Retrieval fuses the embedding ranking with the keyword ranking, and KBLOOP_KEYWORD_WEIGHT says
how much the keyword one counts."""

from __future__ import annotations

from kbloop.retrieval import reciprocal_rank_fusion


def test_the_heavier_ranking_leads_the_fusion():
    dense, keyword = [1, 2], [3, 4]
    assert reciprocal_rank_fusion([dense, keyword]) == [1, 3, 2, 4]
    assert reciprocal_rank_fusion([dense, keyword], weights=[1.0, 3.0]) == [3, 4, 1, 2]
    assert reciprocal_rank_fusion([dense, keyword], weights=[1.0, 0.0])[:2] == [1, 2]


def test_the_keyword_weight_decides_which_ranking_a_search_follows(sample_home, open_kb, embedder):
    question = "harbor verify checksum"
    kb = open_kb(sample_home)
    kb.ingest()
    by_embedding = [vid for vid, _ in kb.store().search(embedder.embed_query(question), 5)]
    by_keyword = kb.manifest.keyword_search(question, 5)
    assert by_embedding[0] != by_keyword[0]  # the two rankings disagree on this question
    assert open_kb(sample_home, keyword_weight=0.0).search(question, 3)[0].vector_id == by_embedding[0]
    assert open_kb(sample_home, keyword_weight=3.0).search(question, 3)[0].vector_id == by_keyword[0]



def test_weight_zero_leaves_the_keyword_index_unread(sample_home, open_kb, embedder, monkeypatch):
    kb = open_kb(sample_home, keyword_weight=0.0)
    kb.ingest()

    def unread(query, depth):
        raise AssertionError("the keyword index was read although its ranking counts for nothing")

    monkeypatch.setattr(kb.manifest, "keyword_search", unread)
    question = "harbor verify checksum"
    by_embedding = [vid for vid, _ in kb.store().search(embedder.embed_query(question), 3)]
    assert [h.vector_id for h in kb.search(question, 3)][:1] == by_embedding[:1]
