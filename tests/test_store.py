"""The FAISS store on disk and the consistency check between it and the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from docs_factory import QUERIES, write_corpus
from kbloop.errors import KbloopError, NeedsRebuild, StoreError
from kbloop.vector_store.faiss_store import HEADER, FaissStore


def unit(rows: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_save_load_round_trip_keeps_ids_and_vectors(tmp_path):
    store = FaissStore.create(tmp_path, 8, "test:emb")
    vectors = unit(5)
    store.add(np.array([10, 11, 12, 13, 14]), vectors)
    header = store.save()
    loaded = FaissStore.load(tmp_path)
    assert sorted(loaded.ids().tolist()) == [10, 11, 12, 13, 14]
    assert np.allclose(loaded.reconstruct(12), vectors[2])
    assert loaded.search(vectors[3], 1)[0][0] == 13
    on_disk = json.loads((tmp_path / HEADER).read_text())
    assert on_disk["count"] == 5 and on_disk["dim"] == 8 and on_disk["embedder"] == "test:emb"
    assert on_disk["sha256"] == header.sha256
    assert not (tmp_path / "model.pkl").exists() and list(tmp_path.glob("*.pkl")) == []


def test_each_save_is_a_new_generation_and_old_files_go(tmp_path):
    store = FaissStore.create(tmp_path, 8, "test:emb")
    store.add(np.array([1]), unit(1))
    store.save()
    store.remove([1])
    store.add(np.array([2, 3]), unit(2, seed=1))
    store.save()
    assert sorted(p.name for p in tmp_path.glob("index.*.faiss")) == ["index.2.faiss"]
    assert sorted(FaissStore.load(tmp_path).ids().tolist()) == [2, 3]


def test_a_damaged_index_file_is_detected(tmp_path):
    store = FaissStore.create(tmp_path, 8, "test:emb")
    store.add(np.array([1, 2]), unit(2))
    header = store.save()
    path = tmp_path / header.index_file
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        FaissStore.load(tmp_path)


def test_check_removes_orphan_vectors(open_kb, home):
    write_corpus(home.root / "docs")
    kb = open_kb()
    kb.ingest()
    store = kb.store()
    store.add(np.array([999_999]), unit(1, dim=store.dim))  # as if a crash hit before the manifest commit
    store.save()
    report = open_kb().check()
    assert report.ok and "removed 1 vectors" in report.repaired[0]
    kb = open_kb()
    assert set(kb.store().ids().tolist()) == kb.manifest.vector_ids()


def test_a_corrupt_store_is_rebuilt_from_the_stored_text_by_the_check(open_kb, home):
    write_corpus(home.root / "docs")
    kb = open_kb()
    first = kb.ingest()
    header = FaissStore.read_header(home.vector_store_dir)
    (home.vector_store_dir / header.index_file).write_bytes(b"garbage")
    report = open_kb().check()
    assert not report.ok and "damaged" in report.problems[0]
    assert f"{first.chunks_embedded} chunks had no vector: embedded again" in report.repaired[0]
    kb = open_kb()
    assert set(kb.store().ids().tolist()) == kb.manifest.vector_ids()
    counts = kb.ingest()
    assert counts.files_unchanged == 5 and counts.chunks_embedded == 0
    assert open_kb().search(QUERIES["guide.md"], 1)[0].path == "guide.md"


def test_changing_the_embedder_asks_for_a_rebuild(open_kb, home):
    write_corpus(home.root / "docs")
    open_kb().ingest()
    with pytest.raises(NeedsRebuild, match="kbloop ingest --rebuild"):
        open_kb(embedder="hf:/some/other/model").ingest()
    counts = open_kb().ingest(rebuild=True)
    assert counts.files_changed == 5 and counts.chunks_embedded > 0


def test_langchain_retriever_face(open_kb, home):
    from kbloop.vector_store.langchain import KbloopVectorStore

    write_corpus(home.root / "docs")
    kb = open_kb()
    kb.ingest()
    retriever = KbloopVectorStore(kb).as_retriever(search_kwargs={"k": 2})
    docs = retriever.invoke(QUERIES["page.html"])
    assert len(docs) == 2 and docs[0].metadata["source"] == "page.html"
    scored = KbloopVectorStore(kb).similarity_search_with_relevance_scores(QUERIES["page.html"], k=3)
    assert all(0.0 <= s <= 1.0 for _, s in scored)
    assert [s for _, s in scored] == sorted([s for _, s in scored], reverse=True)
    with pytest.raises(KbloopError, match="follows the docs folder"):
        KbloopVectorStore(kb).add_texts(["x"])


def test_keyword_index_follows_chunks_through_edits_and_deletes(open_kb, home):
    docs = home.root / "docs"
    write_corpus(docs)
    kb = open_kb()
    kb.ingest()
    guide_ids = {c.vector_id for c in kb.manifest.chunks_of(kb.manifest.files()["guide.md"].id)}
    assert set(kb.manifest.keyword_search("brass lens forty minutes", 3)) & guide_ids
    (docs / "guide.md").write_text((docs / "guide.md").read_text().replace("forty", "ninety"))
    kb = open_kb()
    kb.ingest()
    assert kb.manifest.keyword_search("ninety", 5) and not kb.manifest.keyword_search("forty", 5)
    (docs / "guide.md").unlink()
    kb = open_kb()
    kb.ingest()
    assert kb.manifest.keyword_search("lighthouse ninety", 5) == []


def test_an_older_manifest_is_migrated_on_open(tmp_path):
    import sqlite3

    from kbloop.ingest import manifest as manifest_module

    path = tmp_path / "kbloop.sqlite"
    name, sql = manifest_module.MIGRATIONS[0]
    db = sqlite3.connect(path)
    db.executescript(sql + ";CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL);")
    db.execute("INSERT INTO migrations VALUES (?, 0)", (name,))
    db.execute("INSERT INTO files VALUES (1, 'a.md', 'x', 1, 1, 0, 'indexed', NULL, NULL, 1, 0)")
    db.execute("INSERT INTO chunks VALUES (1, 1, 0, 'h', 'the walrus sings at dawn', '{}', 7)")
    db.commit()
    db.close()
    m = manifest_module.Manifest(path)
    applied = [r[0] for r in m.db.execute("SELECT name FROM migrations ORDER BY name")]
    assert applied == [n for n, _ in manifest_module.MIGRATIONS]
    assert m.keyword_search("walrus", 5) == [7]


def test_readers_never_repair_so_they_cannot_race_a_writer(open_kb, home):
    """Vectors a writer saved but has not recorded yet look like orphans; a search must leave them."""
    write_corpus(home.root / "docs")
    kb = open_kb()
    kb.ingest()
    store = kb.store()
    store.add(np.array([777_777]), unit(1, dim=store.dim))
    store.save()
    reader = open_kb()
    assert reader.search(QUERIES["guide.md"], 1)[0].path == "guide.md"
    reader.status()
    assert 777_777 in FaissStore.load(home.vector_store_dir).ids().tolist()
    open_kb().ingest()  # a writer repairs
    assert 777_777 not in FaissStore.load(home.vector_store_dir).ids().tolist()
