"""Incremental ingest over real files of every format, with the real embedder and FAISS."""

from __future__ import annotations

import pytest

from docs_factory import FACTS, QUERIES, write_corpus
from kbloop.errors import KbloopError
from kbloop.ingest import parse as parse_module


@pytest.fixture
def parsed(monkeypatch):
    """Records every file the indexer parses."""
    calls: list[str] = []
    real_load = parse_module.load

    def spy(path, max_bytes=None):
        calls.append(path.name)
        return real_load(path, max_bytes)

    monkeypatch.setattr(parse_module, "load", spy)
    return calls


def docs_of(kb):
    return kb.home.docs_dir(kb.settings)


def top_path(kb, query):
    hits = kb.search(query, 3)
    return hits[0].path if hits else None


def test_every_format_ingests_and_each_fact_is_found(open_kb, home):
    write_corpus(home.root / "docs")
    kb = open_kb()
    counts = kb.ingest()
    assert (counts.files_added, counts.files_failed) == (5, 0)
    assert counts.chunks_embedded > 5
    for name, query in QUERIES.items():
        hits = kb.search(query, 3)
        assert hits[0].path == name, (query, [h.path for h in hits])
        assert any(FACTS[name].split()[1] in h.text for h in hits if h.path == name)


def test_citation_metadata_keeps_pages_and_sections(open_kb, home):
    write_corpus(home.root / "docs")
    kb = open_kb()
    kb.ingest()
    pdf_hit = kb.search(QUERIES["manual.pdf"], 1)[0]
    assert pdf_hit.metadata["page"] == 2 and "p. 2" in pdf_hit.location
    md_hit = kb.search(QUERIES["guide.md"], 1)[0]
    assert md_hit.metadata["section"] == "The lens"
    docx_hit = kb.search(QUERIES["report.docx"], 1)[0]
    assert docx_hit.metadata["section"] == "Findings"


def test_unchanged_reingest_parses_and_embeds_nothing(open_kb, home, parsed, embedder, monkeypatch):
    write_corpus(home.root / "docs")
    open_kb().ingest()
    parsed.clear()
    embedded = []
    monkeypatch.setattr(embedder, "embed", lambda texts: embedded.append(texts))
    counts = open_kb().ingest()
    assert parsed == [] and embedded == []
    assert counts.as_dict() | {"seconds": 0} == {
        "files_added": 0, "files_changed": 0, "files_unchanged": 5, "files_renamed": 0, "files_deleted": 0,
        "files_failed": 0, "files_ignored": 0, "chunks_embedded": 0, "chunks_reused": 0,
        "chunks_removed": 0, "seconds": 0, "failures": []}


def test_editing_one_file_parses_it_alone_and_embeds_only_changed_chunks(open_kb, home, parsed):
    docs = home.root / "docs"
    write_corpus(docs)
    kb = open_kb()
    kb.ingest()
    guide_chunks = kb.manifest.files()["guide.md"].n_chunks
    assert guide_chunks >= 3
    parsed.clear()
    text = (docs / "guide.md").read_text()
    (docs / "guide.md").write_text(text.replace("every forty minutes", "every ninety minutes"))
    counts = open_kb().ingest()
    assert parsed == ["guide.md"]
    assert (counts.files_changed, counts.files_unchanged, counts.files_added) == (1, 4, 0)
    assert counts.chunks_embedded == 1 and counts.chunks_removed == 1
    assert counts.chunks_reused == guide_chunks - 1
    hit = open_kb().search("lighthouse lens rotation interval", 1)[0]
    assert "ninety" in hit.text and "forty" not in hit.text


def test_deleting_a_file_removes_its_passages(open_kb, home):
    docs = home.root / "docs"
    write_corpus(docs)
    kb = open_kb()
    kb.ingest()
    n = kb.manifest.files()["notes.txt"].n_chunks
    (docs / "notes.txt").unlink()
    counts = open_kb().ingest()
    assert (counts.files_deleted, counts.chunks_removed, counts.chunks_embedded) == (1, n, 0)
    kb = open_kb()
    assert all(h.path != "notes.txt" for h in kb.search(QUERIES["notes.txt"], 10))
    assert len(kb.store()) == len(kb.manifest.vector_ids())


def test_rename_embeds_nothing(open_kb, home, parsed):
    docs = home.root / "docs"
    write_corpus(docs)
    open_kb().ingest()
    parsed.clear()
    (docs / "archive").mkdir()
    (docs / "page.html").rename(docs / "archive" / "glacier.html")
    counts = open_kb().ingest()
    assert (counts.files_renamed, counts.chunks_embedded, counts.files_deleted, counts.files_added) == (1, 0, 0, 0)
    assert parsed == []
    assert top_path(open_kb(), QUERIES["page.html"]) == "archive/glacier.html"


def test_copy_of_a_file_reuses_vectors(open_kb, home):
    docs = home.root / "docs"
    write_corpus(docs)
    open_kb().ingest()
    (docs / "copy.md").write_bytes((docs / "guide.md").read_bytes())
    counts = open_kb().ingest()
    assert counts.files_added == 1 and counts.chunks_embedded == 0 and counts.chunks_reused > 0


def test_bad_files_are_recorded_with_reasons_and_the_rest_is_indexed(open_kb, home):
    docs = home.root / "docs"
    write_corpus(docs)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\nthis is not a pdf body")
    (docs / "image.md").write_bytes(bytes(range(256)) * 40)
    (docs / "empty.txt").write_bytes(b"")
    (docs / "legacy.txt").write_bytes("Café crème brûlée recipe from the Provençal kitchen: caramelise sugar.".encode("latin-1"))
    kb = open_kb()
    counts = kb.ingest()
    reasons = {f["path"]: f["reason"] for f in counts.failures}
    assert set(reasons) == {"broken.pdf", "image.md", "empty.txt"}
    assert "PDF" in reasons["broken.pdf"]
    assert "binary" in reasons["image.md"]
    assert reasons["empty.txt"] == "empty file"
    assert counts.files_added == 6  # the five good files and the latin-1 one
    status = kb.status()
    assert {f["path"] for f in status["failures"]} == set(reasons)
    assert status["notes"] == [{"path": "legacy.txt", "note": "not UTF-8; decoded as cp1252"}]
    hit = kb.search("crème brûlée caramelise sugar", 1)[0]
    assert hit.path == "legacy.txt" and "Café crème brûlée" in hit.text
    # Failed files are not retried until their bytes change.
    assert open_kb().ingest().files_failed == 0


def test_a_file_that_breaks_keeps_its_last_good_version(open_kb, home):
    docs = home.root / "docs"
    write_corpus(docs)
    open_kb().ingest()
    (docs / "manual.pdf").write_bytes(b"%PDF-1.4 truncated garbage")
    counts = open_kb().ingest()
    assert counts.files_failed == 1
    kb = open_kb()
    assert top_path(kb, QUERIES["manual.pdf"]) == "manual.pdf"
    [failure] = kb.status()["failures"]
    assert failure["serving_previous_version"] is True


def test_ingest_of_given_paths_only_touches_them(open_kb, home, parsed):
    docs = home.root / "docs"
    write_corpus(docs)
    open_kb().ingest()
    parsed.clear()
    (docs / "notes.txt").write_text("FRESH NOTES\n\nThe kiln reaches twelve hundred degrees.\n")
    (docs / "guide.md").write_text("# Changed too\n\nbut not named on the command line\n")
    counts = open_kb().ingest([docs / "notes.txt"])
    assert parsed == ["notes.txt"] and counts.files_changed == 1
    with pytest.raises(KbloopError, match="outside the docs folder"):
        open_kb().ingest([home.root])


def test_temp_and_hidden_files_are_ignored(open_kb, home):
    docs = home.root / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "real.md").write_text("# Real\n\nThe real document talks about harbour seals.\n")
    for name in (".hidden.md", "real.md~", ".real.md.swp", "draft.tmp", "~$report.docx"):
        (docs / name).write_text("junk")
    (docs / ".obsidian").mkdir()
    (docs / ".obsidian" / "workspace.md").write_text("# Not a document\n")
    counts = open_kb().ingest()
    assert counts.files_added == 1 and counts.files_failed == 0
    assert counts.files_ignored == 6  # five names, and the hidden folder once
    assert open_kb().ingest([docs / "draft.tmp"]).files_ignored == 1


def test_changing_chunk_settings_resplits_every_file(open_kb, home):
    write_corpus(home.root / "docs")
    before = open_kb().ingest()
    counts = open_kb(chunk_size=300, chunk_overlap=50).ingest()
    assert counts.files_changed == 5 and counts.chunks_embedded > before.chunks_embedded


def test_racy_edit_within_the_same_second_is_noticed(open_kb, home):
    """A file edited right after indexing, with size and mtime unchanged, is still re-read."""
    docs = home.root / "docs"
    docs.mkdir(exist_ok=True)
    path = docs / "racy.md"
    path.write_text("# Racy\n\nThe value is AAAA.\n")
    open_kb().ingest()
    st = path.stat()
    path.write_text("# Racy\n\nThe value is BBBB.\n")
    import os

    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    counts = open_kb().ingest()
    assert counts.files_changed == 1
    # The file was hashed, so the new text is what is indexed.
    assert "BBBB" in open_kb().search("the value", 1)[0].text
