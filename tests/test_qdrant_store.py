"""The Qdrant store: generations and their commit record, staging, a writer killed mid-save, the
embedded engine's one-process lock, its settings, `kbloop migrate-store`, and a whole home on it.

The contract every engine meets is in test_vector_store_contract.py; these tests run Qdrant
embedded in a temporary folder (no server is needed).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env, cli_error, run_cli
from docs_factory import FILLER, QUERIES, write_corpus
from kbloop.config import set_setting
from kbloop.errors import BackendUnavailable, ConfigError, Conflict, StoreError
from kbloop.ingest.indexer import Indexer
from kbloop.kb import KnowledgeBase
from kbloop.scheduler.lock import DaemonLock
from kbloop.vector_store import store_location
from kbloop.vector_store.faiss_store import FaissLocation
from kbloop.vector_store.qdrant_store import CLAIMS, RECORD, STAGED, Endpoint, QdrantInfo, QdrantLocation

DIM = 8
EMBEDDER = "test:emb"


def unit(rows: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def embedded(folder: Path) -> QdrantLocation:
    return QdrantLocation(folder, Endpoint(path=(folder / "qdrant").resolve()))


def saved(location: QdrantLocation, ids: list[int], seed: int = 0) -> np.ndarray:
    store = location.create(DIM, EMBEDDER)
    vectors = unit(len(ids), seed)
    store.add(np.array(ids), vectors)
    store.save()
    return vectors


def released() -> None:
    """Close the embedded clients nothing uses any more, so another process may open the folder."""
    gc.collect()


def points_on_disk(folder: Path, collection: str) -> int:
    """Points the embedded engine has written for ``collection``, committed or not."""
    path = folder / "qdrant" / "collection" / collection / "storage.sqlite"
    for _ in range(50):
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1) as db:
                return db.execute("SELECT count(*) FROM points").fetchone()[0]
        except sqlite3.OperationalError:  # the writer holds it for a moment
            time.sleep(0.02)
    raise AssertionError(f"{path} stayed locked")


def python(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# -- generations, staging, cleaning ------------------------------------------------------------


def test_a_reader_sees_one_commit_while_a_writer_saves_the_next(tmp_path):
    location = embedded(tmp_path)
    vectors = saved(location, [1, 2, 3])
    reader = location.load()
    writer = location.load()
    writer.remove([1])
    writer.add(np.array([4]), unit(1, seed=5))
    writer.save()
    # The reader keeps to its generation: the point added since is not in its searches.
    assert 4 not in [i for i, _ in reader.search(unit(1, seed=5)[0], 4)]
    assert sorted(location.load().ids().tolist()) == [2, 3, 4]
    assert np.allclose(location.load().reconstruct(2), vectors[1]) and location.load().vector(1) is None
    assert json.loads((tmp_path / RECORD).read_text())["generation"] == 2


def test_a_staged_store_is_invisible_until_promoted_then_the_old_collection_goes(tmp_path):
    location = embedded(tmp_path)
    saved(location, [1, 2])
    before, revision = location.info(), location.revision()
    staged = location.stage(DIM, EMBEDDER)
    staged.add(np.array([7, 8, 9]), unit(3, seed=2))
    staged.save()
    assert location.info() == before and location.revision() == revision
    assert sorted(location.load().ids().tolist()) == [1, 2]
    assert sorted(location.load_staged().ids().tolist()) == [7, 8, 9]

    location.promote()
    assert sorted(location.load().ids().tolist()) == [7, 8, 9] and location.load_staged() is None
    assert location.info().collection == "kbloop-2" and location.revision() != revision
    # The replaced collection outlives the promotion (readers may still search it) until a tidy-up.
    assert json.loads((tmp_path / CLAIMS).read_text())["collections"] == ["kbloop-1", "kbloop-2"]
    assert location.clean() == ["removed 1 Qdrant collections that no store uses (left by a save that was killed)"]
    with location.connection.session() as client:
        assert not client.collection_exists("kbloop-1")
        assert {a.alias_name: a.collection_name for a in client.get_aliases().aliases} == {"kbloop": "kbloop-2"}
    with pytest.raises(StoreError, match="no staged store"):
        location.promote()


def test_clean_removes_a_rebuild_that_did_not_finish(tmp_path):
    location = embedded(tmp_path)
    saved(location, [1])
    staged = location.stage(DIM, EMBEDDER)
    staged.add(np.array([5]), unit(1))
    staged.save()
    assert location.clean() == ["removed the index of a rebuild that did not finish; the index before it stays in use"]
    assert not (tmp_path / STAGED).exists() and location.load().ids().tolist() == [1]
    with location.connection.session() as client:
        assert [c.name for c in client.get_collections().collections] == ["kbloop-1"]
    assert location.clean() == []


def test_a_store_set_aside_keeps_its_collection_until_the_next_save(tmp_path):
    location = embedded(tmp_path)
    saved(location, [1])
    location.set_aside("damaged", 1_700_000_000.0)
    assert (tmp_path / f"{RECORD}.damaged-1700000000").is_file() and location.clean() == []
    saved(location, [2])
    with location.connection.session() as client:
        assert [c.name for c in client.get_collections().collections] == ["kbloop-2"]


def test_a_save_that_failed_midway_changes_nothing_and_can_be_retried(tmp_path, monkeypatch):
    location = embedded(tmp_path)
    saved(location, [1, 2, 3, 4, 5])
    store = location.load()
    store.remove([1, 2, 3])
    store.add(np.arange(10, 16), unit(6, seed=4))
    client = location.connection.client
    set_payload, calls = client.set_payload, []
    monkeypatch.setattr("kbloop.vector_store.qdrant_store.PAGE", 2)

    def fails_at_the_second_page(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")
        return set_payload(*args, **kwargs)

    monkeypatch.setattr(client, "set_payload", fails_at_the_second_page)
    with pytest.raises(OSError, match="disk full"):
        store.save()
    assert sorted(location.load().ids().tolist()) == [1, 2, 3, 4, 5] and location.info().generation == 1
    # What the failed attempt wrote must not come back with the retry, which no longer has id 10.
    assert store.remove([10]) == 1
    store.save()
    assert sorted(location.load().ids().tolist()) == [4, 5, *range(11, 16)]
    assert points_on_disk(tmp_path, "kbloop-1") == 7


def test_a_collection_that_does_not_match_its_record_is_damage(tmp_path):
    location = embedded(tmp_path)
    saved(location, [1, 2])
    record = json.loads((tmp_path / RECORD).read_text())
    (tmp_path / RECORD).write_text(json.dumps(record | {"count": 3}))
    with pytest.raises(StoreError, match="holds 2x8, the record says 3x8"):
        location.load()
    (tmp_path / RECORD).write_text(json.dumps(record | {"collection": "kbloop-9"}))
    with pytest.raises(StoreError, match="kbloop-9 .* does not exist"):
        location.load()


def test_embedded_size_is_its_files_and_a_server_takes_none_here(tmp_path):
    location = embedded(tmp_path)
    saved(location, [1, 2])
    assert location.load().size_bytes() > 0
    remote = QdrantLocation(tmp_path, Endpoint(url="http://127.0.0.1:9"))
    assert remote.info() == location.info() and remote.create(DIM, EMBEDDER).size_bytes() == 0


# -- a writer killed mid-save, other processes ----------------------------------------------------

WRITER = """
import sys, time
import numpy as np
from pathlib import Path
from kbloop.vector_store.qdrant_store import Endpoint, QdrantLocation
folder = Path(sys.argv[1])
store = QdrantLocation(folder, Endpoint(path=(folder / "qdrant").resolve())).load()
store.remove(range(1, 11))
store.add(np.arange(1000, 1400), np.random.default_rng(1).normal(size=(400, 8)).astype(np.float32))


def held_at_the_commit(*args):  # every point and tombstone is written; the record is not yet
    print("committing", flush=True)
    time.sleep(600)


QdrantLocation.commit = held_at_the_commit
print("saving", flush=True)
store.save()
"""


def test_a_writer_killed_mid_save_leaves_the_previous_commit(tmp_path):
    location = embedded(tmp_path)
    vectors = saved(location, list(range(1, 51)))
    before = location.info()
    del location
    released()

    writer = python(WRITER, str(tmp_path))
    try:
        # Killed at the last step before the commit: a fixed point, where a kill timed by
        # polling the files could land after the commit on a fast machine.
        said = [writer.stdout.readline(), writer.stdout.readline()]
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    assert said == ["saving\n", "committing\n"], writer.stderr.read()
    assert points_on_disk(tmp_path, "kbloop-1") > 50

    location = embedded(tmp_path)
    store = location.load()
    assert location.info() == before and store.info == before
    assert sorted(store.ids().tolist()) == list(range(1, 51)) and len(store) == 50
    assert np.allclose(store.reconstruct(3), vectors[2]) and store.vector(1200) is None
    assert [i for i, _ in store.search(vectors[0], 1)] == [1]
    # The next save removes what the killed one wrote before it commits its own.
    store.add(np.array([60]), unit(1, seed=9))
    store.save()
    assert points_on_disk(tmp_path, "kbloop-1") == 51
    assert sorted(location.load().ids().tolist()) == [*range(1, 51), 60]


HOLDER = """
import sys, time
from pathlib import Path
from kbloop.vector_store.qdrant_store import Endpoint, QdrantLocation
folder = Path(sys.argv[1])
store = QdrantLocation(folder, Endpoint(path=(folder / "qdrant").resolve())).load()
print(sorted(store.ids().tolist()), flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_embedded_qdrant_is_reopened_by_another_process_once_closed(tmp_path):
    location = embedded(tmp_path)
    saved(location, [3, 1, 2])
    del location
    released()
    reader = python(HOLDER, str(tmp_path), "0")
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert out == "[1, 2, 3]\n"
    assert sorted(embedded(tmp_path).load().ids().tolist()) == [1, 2, 3]


def test_a_second_process_on_embedded_qdrant_gets_one_line(tmp_path, home):
    set_setting(home, "vector_store", "qdrant")
    location = store_location(home.load_settings(), home)
    saved(location, [1, 2])
    del location
    released()
    holder = python(HOLDER, str(home.vector_store_dir), "60")
    try:
        assert holder.stdout.readline() == "[1, 2]\n", holder.stderr.read()
        with pytest.raises(Conflict, match="open in another process") as info:
            store_location(home.load_settings(), home).load()
        assert "\n" not in str(info.value) and "KBLOOP_QDRANT_URL" in str(info.value)
        line = cli_error(run_cli("--home", str(home.root), "check"), 4)
        assert "open in another process" in line
    finally:
        holder.kill()
        holder.wait()
    assert sorted(store_location(home.load_settings(), home).load().ids().tolist()) == [1, 2]


def test_an_unreachable_server_is_no_damage(home):
    set_setting(home, "vector_store", "qdrant")
    record = QdrantInfo(embedder="local:all-minilm-l6-v2", dim=384, count=1, saved_at=1.0,
                        collection="kbloop-1", generation=1)
    (home.vector_store_dir / RECORD).write_text(json.dumps(record.__dict__))
    env = {"KBLOOP_QDRANT_URL": "http://127.0.0.1:9"}
    with pytest.raises(BackendUnavailable, match="cannot reach Qdrant at http://127.0.0.1:9"):
        store_location(home.load_settings(environ=env), home).load()
    line = cli_error(run_cli("--home", str(home.root), "check", env=env), 1)
    assert "cannot reach Qdrant" in line and "KBLOOP_QDRANT_URL" in line
    assert (home.vector_store_dir / RECORD).is_file()  # not set aside as damaged


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values,expected", [
    ({"KBLOOP_VECTOR_STORE": "milvus"}, r"KBLOOP_VECTOR_STORE='milvus'.*'faiss' or 'qdrant'"),
    ({"KBLOOP_QDRANT_URL": "localhost:6333"}, r"KBLOOP_QDRANT_URL='localhost:6333'.*http\(s\) URL"),
    ({"KBLOOP_QDRANT_COLLECTION": "my/kb"}, r"KBLOOP_QDRANT_COLLECTION='my/kb'.*letters, digits"),
    ({"KBLOOP_QDRANT_URL": "http://q:6333", "KBLOOP_QDRANT_PATH": "q"}, r"KBLOOP_QDRANT_URL and KBLOOP_QDRANT_PATH"),
    ({"KBLOOP_QDRANT_REPLICATION_FACTOR": "2", "KBLOOP_QDRANT_WRITE_CONSISTENCY": "3"},
     r"KBLOOP_QDRANT_WRITE_CONSISTENCY \(3\) must not exceed KBLOOP_QDRANT_REPLICATION_FACTOR \(2\)"),
])
def test_bad_qdrant_settings_are_one_line_errors(home, values, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        home.load_settings(environ=values)
    assert "\n" not in str(info.value)


def test_qdrant_settings_choose_where_it_runs(home):
    settings = home.load_settings(environ={"KBLOOP_VECTOR_STORE": "qdrant"})
    location = store_location(settings, home)
    assert location.endpoint == Endpoint(path=home.vector_store_dir / "qdrant") and location.name == "kbloop"
    settings = home.load_settings(environ={"KBLOOP_VECTOR_STORE": "qdrant", "KBLOOP_QDRANT_PATH": "elsewhere"})
    assert store_location(settings, home).endpoint.path == home.root / "elsewhere"
    settings = home.load_settings(environ={
        "KBLOOP_VECTOR_STORE": "qdrant", "KBLOOP_QDRANT_URL": "https://q.example:6333/", "KBLOOP_QDRANT_API_KEY": "s3",
        "KBLOOP_QDRANT_COLLECTION": "team-kb", "KBLOOP_QDRANT_SHARDS": "4", "KBLOOP_QDRANT_REPLICATION_FACTOR": "2"})
    location = store_location(settings, home)
    assert location.endpoint == Endpoint(url="https://q.example:6333", api_key="s3")
    assert "s3" not in repr(location.endpoint)
    assert (location.name, location.options.shards, location.options.replication_factor) == ("team-kb", 4, 2)


def test_set_setting_replaces_its_line_and_keeps_the_others(home):
    home.env_file.write_text(
        "# notes\nKBLOOP_SEARCH_K=9\nexport KBLOOP_VECTOR_STORE=faiss\nKBLOOP_VECTOR_STORE=faiss\n")
    os.chmod(home.env_file, 0o640)
    set_setting(home, "vector_store", "qdrant")
    assert home.env_file.read_text() == "# notes\nKBLOOP_SEARCH_K=9\nKBLOOP_VECTOR_STORE=qdrant\n"
    assert stat.S_IMODE(home.env_file.stat().st_mode) == 0o640
    home.env_file.write_text("KBLOOP_SEARCH_K=9")
    set_setting(home, "vector_store", "faiss")
    assert home.env_file.read_text() == "KBLOOP_SEARCH_K=9\nKBLOOP_VECTOR_STORE=faiss\n"
    with pytest.raises(ConfigError, match="KBLOOP_VECTOR_STORE='chroma'"):
        set_setting(home, "vector_store", "chroma")
    assert home.load_settings().vector_store == "faiss"


# -- migrate-store and a home on Qdrant ------------------------------------------------------------


def store_contents(location) -> dict[int, np.ndarray]:
    store = location.load()
    return {int(i): store.reconstruct(i) for i in store.ids()}


def top_hits(kb) -> dict[str, list[tuple[str, float]]]:
    return {q: [(h.path, round(h.score, 4)) for h in kb.search(q, 3)] for q in QUERIES.values()}


def test_migrate_store_both_ways_keeps_ids_vectors_and_search(open_kb, home):
    write_corpus(home.root / "docs")
    kb = open_kb()
    kb.ingest()
    faiss_vectors, hits = store_contents(kb.indexer.location), top_hits(kb)
    manifest_ids = kb.manifest.vector_ids()
    assert set(faiss_vectors) == manifest_ids

    result = run_cli("--home", str(home.root), "migrate-store", "--to", "qdrant")
    assert result.exit_code == 0, result.output
    assert f"copied {len(manifest_ids)} vectors from faiss to qdrant" in result.stdout
    assert home.env_file.read_text().endswith("KBLOOP_VECTOR_STORE=qdrant\n")
    assert "# KBLOOP_CHUNK_SIZE=800" in home.env_file.read_text()  # the rest of the file is kept
    assert list(home.vector_store_dir.glob("header.json.replaced-*"))  # the FAISS store is set aside

    kb = open_kb()
    assert kb.settings.vector_store == "qdrant"
    qdrant_vectors = store_contents(kb.indexer.location)
    assert set(qdrant_vectors) == manifest_ids
    assert all(np.allclose(qdrant_vectors[i], faiss_vectors[i], atol=1e-6) for i in manifest_ids)
    assert top_hits(kb) == hits
    assert run_cli("--home", str(home.root), "check").exit_code == 0

    result = run_cli("--home", str(home.root), "migrate-store", "--to", "faiss")
    assert result.exit_code == 0, result.output
    kb = open_kb()
    assert kb.settings.vector_store == "faiss" and not (home.vector_store_dir / RECORD).exists()
    back = store_contents(kb.indexer.location)
    assert set(back) == manifest_ids and all(np.allclose(back[i], faiss_vectors[i], atol=1e-6) for i in manifest_ids)
    assert top_hits(kb) == hits
    assert run_cli("--home", str(home.root), "check").exit_code == 0


def test_migrate_store_refuses_in_one_line_and_leaves_the_home_as_it_was(open_kb, home):
    write_corpus(home.root / "docs")
    open_kb().ingest()
    env_before = home.env_file.read_text()

    line = cli_error(run_cli("--home", str(home.root), "migrate-store", "--to", "faiss"), 1)
    assert "already keeps its vectors in faiss" in line
    line = cli_error(run_cli("--home", str(home.root), "migrate-store", "--to", "qdrant",
                             env={"KBLOOP_VECTOR_STORE": "faiss"}), 2)
    assert "KBLOOP_VECTOR_STORE is set in the environment" in line
    with DaemonLock(home.data_dir):
        line = cli_error(run_cli("--home", str(home.root), "migrate-store", "--to", "qdrant"), 4)
        assert "stop it, migrate" in line

    header = FaissLocation(home.vector_store_dir).info()
    index = home.vector_store_dir / header.index_file
    index.write_bytes(index.read_bytes()[:-8] + b"damaged!")
    line = cli_error(run_cli("--home", str(home.root), "migrate-store", "--to", "qdrant"), 1)
    assert "the faiss store cannot be copied" in line and "checksum" in line
    assert home.env_file.read_text() == env_before and not (home.vector_store_dir / RECORD).exists()


def test_a_migration_stopped_before_the_switch_changes_nothing_and_runs_again(open_kb, home, monkeypatch):
    write_corpus(home.root / "docs")
    kb = open_kb()
    kb.ingest()
    hits, env_before = top_hits(kb), home.env_file.read_text()

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("kbloop.ingest.migrate.set_setting", crash)
    with pytest.raises(KeyboardInterrupt):
        run_cli("--home", str(home.root), "migrate-store", "--to", "qdrant")
    assert home.env_file.read_text() == env_before
    assert top_hits(open_kb()) == hits and open_kb().check().ok
    monkeypatch.undo()

    assert run_cli("--home", str(home.root), "migrate-store", "--to", "qdrant").exit_code == 0
    kb = open_kb()
    assert kb.settings.vector_store == "qdrant" and top_hits(kb) == hits
    report = kb.check()  # removes the first attempt's copy
    assert report.ok and report.repaired == [
        "removed 1 Qdrant collections that no store uses (left by a save that was killed)"]
    assert kb.check().repaired == []


def test_a_home_on_embedded_qdrant_ingests_searches_and_checks(home):
    set_setting(home, "vector_store", "qdrant")
    write_corpus(home.root / "docs")
    result = run_cli("--home", str(home.root), "ingest", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files_added"] == 5
    for name, query in QUERIES.items():
        result = run_cli("--home", str(home.root), "search", query, "-k", "1", "--json", "--local")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)[0]["path"] == name

    result = run_cli("--home", str(home.root), "check")
    assert result.exit_code == 0 and "ok: index and manifest agree" in result.stdout
    info = json.loads(run_cli("--home", str(home.root), "status", "--json").stdout)
    assert info["vectors"] == info["chunks"] > 0 and info["store_bytes"] > 0
    assert (home.vector_store_dir / RECORD).is_file() and not list(home.vector_store_dir.glob("*.faiss"))

    (home.root / "docs" / "guide.md").unlink()
    assert json.loads(run_cli("--home", str(home.root), "ingest", "--json").stdout)["files_deleted"] == 1
    assert run_cli("--home", str(home.root), "check").exit_code == 0
    result = run_cli("--home", str(home.root), "search", QUERIES["guide.md"], "--json", "--local")
    assert "guide.md" not in {hit["path"] for hit in json.loads(result.stdout)}

    # A rebuild fills a new collection and puts it in use; the next check removes the old one.
    assert run_cli("--home", str(home.root), "ingest", "--rebuild").exit_code == 0
    assert json.loads((home.vector_store_dir / RECORD).read_text())["collection"] == "kbloop-2"
    result = run_cli("--home", str(home.root), "check", "--json")
    assert json.loads(result.stdout)["repaired"] == [
        "removed 1 Qdrant collections that no store uses (left by a save that was killed)"]
    result = run_cli("--home", str(home.root), "search", QUERIES["notes.txt"], "-k", "1", "--json", "--local")
    assert json.loads(result.stdout)[0]["path"] == "notes.txt"
    assert run_cli("--home", str(home.root), "check").exit_code == 0


class Crash(Exception):
    """Stands for a process dying at this point."""


@pytest.mark.parametrize("dies_in", ["manifest swap", "promotion"])
def test_a_rebuild_that_died_is_settled_by_the_next_check(open_kb, home, monkeypatch, dies_in):
    set_setting(home, "vector_store", "qdrant")
    write_corpus(home.root / "docs")
    open_kb().ingest()
    in_use = open_kb().indexer.location.info()

    def die(*args):
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(Indexer, "_record", die) if dies_in == "manifest swap" else patch.setattr(
            QdrantLocation, "promote", die)
        with pytest.raises(Crash):
            open_kb().ingest(rebuild=True)
    assert (home.vector_store_dir / STAGED).is_file() and open_kb().indexer.location.info() == in_use
    if dies_in == "manifest swap":  # the manifest still names the vectors in use
        assert open_kb().search(QUERIES["page.html"], 1)[0].path == "page.html"

    report = open_kb().check()
    expected = "rebuild that did not finish" if dies_in == "manifest swap" else "finished a rebuild"
    assert report.ok and expected in report.repaired[0]
    kb = open_kb()
    assert set(kb.store().ids().tolist()) == kb.manifest.vector_ids()
    assert kb.search(QUERIES["manual.pdf"], 1)[0].path == "manual.pdf"
    with kb.indexer.location.connection.session() as client:
        assert [c.name for c in client.get_collections().collections] == [kb.indexer.location.info().collection]


@pytest.mark.slow
def test_an_ingest_killed_mid_save_is_repaired_by_check(open_kb, home, embedder):
    set_setting(home, "vector_store", "qdrant")
    docs = home.root / "docs"
    write_corpus(docs)
    with KnowledgeBase(home, embedder=embedder) as kb:
        kb.ingest()
        collection = kb.indexer.location.info().collection
    committed = points_on_disk(home.vector_store_dir, collection)
    del kb
    released()

    for n in range(40):
        (docs / f"extra-{n}.md").write_text(f"# Extra {n}\n\nLedger entry {n} of the harbour.\n\n{FILLER * 6}\n")
    writer = subprocess.Popen([sys.executable, "-m", "kbloop.cli.main", "ingest"], env=cli_env(home.root),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while points_on_disk(home.vector_store_dir, collection) <= committed:
        assert time.monotonic() < deadline and writer.poll() is None, writer.stderr.read()
        time.sleep(0.05)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()

    first = run_cli("--home", str(home.root), "check")
    assert first.exit_code in (0, 5), first.output
    second = run_cli("--home", str(home.root), "check")
    assert second.exit_code == 0 and "ok: index and manifest agree" in second.stdout
    kb = open_kb()
    assert set(kb.store().ids().tolist()) == kb.manifest.vector_ids()
    # The extras of batches committed before the kill stay indexed; the rest are done again.
    files = kb.manifest.files()
    extras = sum(path.startswith("extra-") and record.status == "indexed" for path, record in files.items())
    assert kb.ingest().files_added == 40 - extras
    assert [h.path for h in kb.search("Ledger entry 17 of the harbour", 3)][0] == "extra-17.md"
    assert kb.check().ok and kb.check().repaired == []
