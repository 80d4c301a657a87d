"""Word tests of the grounding checks: a knowledge base's own common words (its product's name
on every page) count as stop words, read from the keyword index rather than written down for one
manual; a qualified name counts as mentioned where the manual drops its module's name."""

from __future__ import annotations

from kbloop.assistant.grounding import keyword_evidence, restates
from kbloop.ingest.manifest import Hit, Manifest
from kbloop.kb import MIGRATIONS


def manifest_with(tmp_path, texts: list[str]) -> Manifest:
    manifest = Manifest(tmp_path / "kbloop.sqlite", MIGRATIONS)
    with manifest.transaction():
        file_id = manifest.db.execute(
            "INSERT INTO files (path, size, mtime_ns, sha256, status, checked_at, updated_at) "
            "VALUES ('a.txt', 1, 1, 'x', 'indexed', 0, 0)"
        ).lastrowid
        for n, text in enumerate(texts):
            manifest.insert_chunk(file_id, n, f"h{n}", text, {}, n)
    return manifest


def test_words_in_half_the_chunks_or_more_are_common_and_numbers_never(tmp_path):
    texts = [f"Harbor release 3 page {n}: setting{n} controls part {n} of the server." for n in range(30)]
    texts += [f"Unrelated note {n} about lighthouse keepers." for n in range(10)]
    manifest = manifest_with(tmp_path, texts)
    common = manifest.common_words()
    assert {"harbor", "release", "page", "server"} <= common
    assert "3" not in common and "lighthouse" not in common and "setting1" not in common


def test_a_small_knowledge_base_has_no_common_words(tmp_path):
    manifest = manifest_with(tmp_path, [f"Harbor page {n}" for n in range(5)])
    assert manifest.common_words() == frozenset()


def test_common_words_follow_the_chunks(tmp_path):
    manifest = manifest_with(tmp_path, [f"Harbor note {n}" for n in range(25)])
    assert "harbor" in manifest.common_words()
    with manifest.transaction():
        file_id = manifest.db.execute("SELECT id FROM files").fetchone()[0]
        for n in range(25, 60):
            manifest.insert_chunk(file_id, n, f"h{n}", f"Lighthouse note {n}", {}, n)
    assert "harbor" not in manifest.common_words() and "note" in manifest.common_words()


def test_a_common_word_in_the_reply_does_not_make_it_an_answer():
    question = "Which port does the proxy listen on?"
    reply = "Harbor: the proxy listen on port."
    assert not restates(reply, question)
    assert restates(reply, question, frozenset({"harbor", "port"}))


def test_keyword_evidence_does_not_count_a_word_every_chunk_has():
    question = "What does harbor.retention keep in harbor?"
    chunk = Hit(0, 0.2, "a.txt", "Harbor keeps logs in harbor's own folder.", {})
    assert keyword_evidence(question, chunk)
    assert not keyword_evidence(question, chunk, frozenset({"harbor"}))


def test_a_method_documented_under_its_module_counts_as_mentioned():
    from kbloop.assistant.grounding import unmentioned_terms

    chunk = Hit(0, 0.7, "csv.md", "The Sniffer class deduces formats. Sniffer.has_header(sample) analyses the sample.", {})
    assert unmentioned_terms("How many rows does csv.Sniffer.has_header() sample?", [chunk]) == []
    # two-part names stay exact: a near-miss setting is not its neighbour
    assert unmentioned_terms("What is the default of csv.field_size_limit?", [chunk]) == ["csv.field_size_limit"]
    assert unmentioned_terms("What does csv.Sniffer.sniff_rows do?", [chunk]) == ["csv.sniffer.sniff_rows"]
