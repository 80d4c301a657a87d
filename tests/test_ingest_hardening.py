"""Ingest edge cases found in review: each one lost indexed text, or stopped or hung an ingest.

Unreadable folders are simulated (``os.scandir`` and ``Path.resolve`` fail for chosen paths), so
the tests behave the same as root, whom ``chmod`` does not stop.
"""

from __future__ import annotations

import errno
import os
import pathlib
import sqlite3
import threading

import numpy as np
import pytest
from watchdog.events import DirDeletedEvent, DirMovedEvent, FileDeletedEvent

from kbloop.db import connect
from kbloop.fsutil import read_regular, sha256_file
from kbloop.ingest.watcher import Debouncer, DocsEventHandler
from kbloop.schema import MIGRATIONS
from kbloop.vector_store.faiss_store import FaissStore


class Unreadable:
    """Makes chosen folders unreadable, as ``chmod 000`` would: listing them fails, and so does
    resolving a link whose target lies under one."""

    def __init__(self, monkeypatch):
        self.folders: set[str] = set()
        real_scandir, real_resolve = os.scandir, pathlib.Path.resolve

        def scandir(path="."):
            if os.path.realpath(os.fspath(path)) in self.folders:
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real_scandir(path)

        def resolve(path, strict=False):
            target = os.path.realpath(path)
            if any(target.startswith(folder + os.sep) for folder in self.folders):
                raise PermissionError(errno.EACCES, "Permission denied", target)
            return real_resolve(path, strict=strict)

        monkeypatch.setattr(os, "scandir", scandir)
        monkeypatch.setattr(pathlib.Path, "resolve", resolve)

    def deny(self, folder) -> None:
        self.folders.add(os.path.realpath(folder))

    def clear(self) -> None:
        self.folders.clear()


@pytest.fixture
def unreadable(monkeypatch):
    return Unreadable(monkeypatch)


def texts(kb) -> list[str]:
    return sorted(row[0] for row in kb.manifest.db.execute("SELECT text FROM chunks"))


def searchable(kb, needle: str) -> bool:
    """Whether a search finds a chunk holding ``needle`` (its vector is in the store)."""
    return any(needle in hit.text for hit in kb.search(needle, 10))


def changes(counts) -> dict:
    return {k: v for k, v in counts.as_dict().items() if v and k not in ("seconds", "failures")}


# -- a link into an unreadable folder ------------------------------------------------------------

def test_a_link_whose_target_cannot_be_read_is_kept_not_deleted(open_kb, home, unreadable):
    docs = home.root / "docs"
    (docs / "private" / "sub").mkdir(parents=True)
    (docs / "private" / "guide.md").write_text("# Guide\n\nThe flux capacitor needs 1.21 gigawatts.\n")
    (docs / "private" / "sub" / "deep.md").write_text("# Deep\n\nThe deep secret is zebra-42.\n")
    (docs / "guide-link.md").symlink_to("private/guide.md")
    (docs / "deep-link").symlink_to("private/sub")
    (docs / "gone-link.md").symlink_to("nowhere.md")
    kb = open_kb()
    kb.ingest()
    before = set(kb.manifest.files())

    unreadable.deny(docs / "private")
    counts = kb.ingest()
    assert set(kb.manifest.files()) == before
    assert counts.files_deleted == 0 and counts.files_ignored == 1  # the broken link stays ignored
    assert {f["path"] for f in counts.failures} == {"private", "guide-link.md", "deep-link"}


def test_a_folder_unreadable_while_the_chunking_changed_is_split_anew_once_readable(open_kb, home, unreadable):
    """A new chunk size splits every document again. One in a folder that cannot be read then
    keeps its chunks, and is split the new way as soon as it can be read, not left as it was."""
    docs = home.root / "docs"
    (docs / "team").mkdir()
    body = "\n\n".join(f"Paragraph {i} says the relay station {i} hums at {i * 7} hertz." for i in range(40))
    (docs / "open.md").write_text(f"# Open\n\n{body}\n")
    (docs / "team" / "notes.md").write_text(f"# Notes\n\n{body}\n")
    kb = open_kb()
    kb.ingest()
    before = kb.manifest.files()["team/notes.md"].n_chunks

    unreadable.deny(docs / "team")
    kb = open_kb(chunk_size=300, chunk_overlap=40)
    kb.ingest()
    assert kb.manifest.files()["team/notes.md"].n_chunks == before  # kept, as it was split
    unreadable.clear()
    kb.ingest()
    files = kb.manifest.files()
    assert files["team/notes.md"].n_chunks == files["open.md"].n_chunks  # split as open.md was


# -- repairing a damaged index --------------------------------------------------------------------

def test_repairing_a_damaged_index_keeps_text_that_cannot_be_parsed_now(open_kb, home, unreadable):
    docs = home.root / "docs"
    (docs / "manual.md").write_text("# Manual\n\nThe default port is 8765.\n")
    (docs / "private").mkdir()
    (docs / "private" / "notes.md").write_text("# Notes\n\nThe backup key is walrus-77.\n")
    (docs / "other.md").write_text("# Other\n\nNothing special.\n")
    kb = open_kb()
    kb.ingest()
    (docs / "manual.md").write_bytes(b"\x00\x01\x02garbage" * 100)  # a bad save: the last good version stays
    kb.ingest()
    kb.close()

    header = FaissStore.read_header(home.vector_store_dir)
    index_file = home.vector_store_dir / header.index_file
    data = bytearray(index_file.read_bytes())
    data[-10] ^= 0xFF
    index_file.write_bytes(bytes(data))
    unreadable.deny(docs / "private")

    kb = open_kb()
    kb.ingest()
    for needle in ("8765", "walrus-77", "Nothing special"):
        assert searchable(kb, needle), needle
    store_ids = set(kb.indexer.location.load().ids().tolist())
    assert store_ids == kb.manifest.vector_ids()
    assert kb.manifest.files()["manual.md"].status == "failed"


# -- moving a file whose content broke -------------------------------------------------------------

def test_moving_a_broken_file_keeps_its_last_good_version(open_kb, home):
    docs = home.root / "docs"
    (docs / "manual.md").write_text("# Manual\n\nThe default port is 8765.\n")
    kb = open_kb()
    kb.ingest()
    (docs / "manual.md").write_bytes(b"\x00\x01binary garbage" * 50)
    kb.ingest()
    (docs / "archive").mkdir()
    (docs / "manual.md").rename(docs / "archive" / "manual.md")

    counts = kb.ingest()
    assert changes(counts) == {"files_renamed": 1}
    record = kb.manifest.files()["archive/manual.md"]
    assert record.status == "failed" and record.n_chunks == 1
    assert searchable(kb, "8765")


def test_a_move_to_a_name_another_loader_reads_is_parsed_again(open_kb, home):
    """notes.md renamed notes.txt holds the same bytes, but a text file is not read as Markdown:
    it is parsed again, not taken over as a move; a move between names one loader reads
    (.markdown, .md) still is."""
    docs = home.root / "docs"
    (docs / "notes.md").write_text("# Setup\n\nThe default port is 8765.\n")
    kb = open_kb()
    kb.ingest()
    (docs / "notes.md").rename(docs / "notes.markdown")
    assert changes(kb.ingest()) == {"files_renamed": 1}
    (docs / "notes.markdown").rename(docs / "notes.txt")
    counts = kb.ingest()
    assert counts.files_renamed == 0 and counts.files_added == 1 and counts.files_deleted == 1
    assert set(kb.manifest.files()) == {"notes.txt"} and searchable(kb, "8765")


# -- named paths ---------------------------------------------------------------------------------

def test_a_link_loop_among_named_paths_is_skipped_and_the_rest_indexed(open_kb, home, caplog):
    docs = home.root / "docs"
    (docs / "a.md").write_text("# A\n\nOld text about apples.\n")
    kb = open_kb()
    kb.ingest()
    (docs / "a.md").write_text("# A\n\nNew text about pears.\n")
    (docs / "loop.md").symlink_to("loop.md")

    counts = kb.ingest(sorted([str(docs / "a.md"), str(docs / "loop.md")]))
    assert changes(counts) == {"files_changed": 1, "files_ignored": 1, "chunks_embedded": 1, "chunks_removed": 1}
    assert texts(kb) == ["A\n\nNew text about pears."]
    assert "loop.md" in caplog.text


def test_a_named_path_through_a_linked_folder_is_the_path_the_scan_indexed(open_kb, home):
    docs = home.root / "docs"
    (docs / "real").mkdir()
    (docs / "real" / "x.md").write_text("# X\n\nThe launch code is 0000.\n")
    (docs / "shared").symlink_to("real")
    kb = open_kb()
    kb.ingest()
    assert set(kb.manifest.files()) == {"real/x.md", "shared/x.md"}

    (docs / "real" / "x.md").unlink()
    assert changes(kb.ingest([str(docs / "shared" / "x.md")])) == {"files_deleted": 1, "chunks_removed": 1}
    assert changes(kb.ingest([str(docs / "real" / "x.md")])) == {"files_deleted": 1, "chunks_removed": 1}
    assert kb.manifest.files() == {}
    assert not searchable(kb, "launch code")


def test_a_named_path_through_a_link_out_of_docs_is_still_refused(open_kb, home, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.md").write_text("# X\n\noutside text\n")
    (home.root / "docs" / "ext").symlink_to(outside)
    kb = open_kb()
    with pytest.raises(Exception, match="KBLOOP_FOLLOW_EXTERNAL_LINKS"):
        kb.ingest([str(home.root / "docs" / "ext" / "x.md")])
    kb = open_kb(follow_external_links=True)
    assert changes(kb.ingest([str(home.root / "docs" / "ext" / "x.md")]))["files_added"] == 1
    assert set(kb.manifest.files()) == {"ext/x.md"}


def test_a_file_name_that_is_not_utf8_is_skipped_and_the_rest_indexed(open_kb, home, caplog):
    docs = home.root / "docs"
    (docs / "good.md").write_text("# Good\n\nHarbor keeps nightly snapshots.\n")
    try:
        with open(os.fsencode(str(docs)) + b"/notes-caf\xe9.md", "wb") as fh:
            fh.write(b"# Notes\n\nsome text\n")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    kb = open_kb()
    counts = kb.ingest()
    assert changes(counts) == {"files_added": 1, "files_ignored": 1, "chunks_embedded": 1}
    assert set(kb.manifest.files()) == {"good.md"}
    assert "not valid UTF-8" in caplog.text
    named = kb.ingest([os.fsdecode(os.fsencode(str(docs)) + b"/notes-caf\xe9.md")])
    assert changes(named) == {"files_ignored": 1}


# -- a path swapped for a pipe -------------------------------------------------------------------

@pytest.mark.parametrize("read", [sha256_file, read_regular])
def test_reading_a_pipe_fails_at_once_instead_of_blocking(tmp_path, read):
    fifo = tmp_path / "a.md"
    os.mkfifo(fifo)
    outcome = []

    def attempt():
        try:
            read(fifo)
        except OSError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # unblock the reader that waits for a writer, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    assert outcome and "not a regular file" in str(outcome[0])


def test_a_document_swapped_for_a_pipe_after_the_scan_is_skipped(open_kb, home, monkeypatch):
    from kbloop.ingest.indexer import Indexer

    docs = home.root / "docs"
    (docs / "a.md").write_text("# A\n\nfirst version\n")
    kb = open_kb()
    kb.ingest()
    (docs / "a.md").write_text("# A\n\nsecond version, a bit longer\n")
    real_scan = Indexer._scan

    def scan_then_swap(self, paths):
        scan = real_scan(self, paths)
        (docs / "a.md").unlink()
        os.mkfifo(docs / "a.md")
        return scan

    monkeypatch.setattr(Indexer, "_scan", scan_then_swap)
    done = []
    worker = threading.Thread(target=lambda: done.append(kb.ingest()), daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():
        os.close(os.open(docs / "a.md", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the ingest blocked on a FIFO")
    assert done[0].files_failed == 1 and "not a regular file" in done[0].failures[0]["reason"]
    assert texts(kb) == ["A\n\nfirst version"]


# -- the database ----------------------------------------------------------------------------------

def test_two_connections_opening_a_new_database_at_once_both_succeed(tmp_path):
    for attempt in range(15):
        path = tmp_path / f"home{attempt}" / "kbloop.sqlite"
        barrier, errors = threading.Barrier(3), []

        def open_it():
            barrier.wait()
            try:
                connect(path, MIGRATIONS).close()
            except sqlite3.Error as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        db = connect(path, MIGRATIONS)
        assert [r[0] for r in db.execute("SELECT name FROM migrations")] == [name for name, _ in MIGRATIONS]
        db.close()


def test_a_failed_migration_leaves_nothing_behind(tmp_path):
    path = tmp_path / "kbloop.sqlite"
    steps = [("001_ok", "CREATE TABLE a (x);"), ("002_bad", "CREATE TABLE b (x);\nCREATE TABLE a (x);")]
    with pytest.raises(sqlite3.OperationalError):
        connect(path, steps)
    db = sqlite3.connect(path)
    assert [r[0] for r in db.execute("SELECT name FROM migrations")] == ["001_ok"]
    assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'b'").fetchone()
    db.close()


# -- the watcher -----------------------------------------------------------------------------------

def test_the_watcher_passes_events_of_folders_named_like_backups(tmp_path):
    root = tmp_path / "docs"
    debouncer = Debouncer(0)
    handler = DocsEventHandler(root, debouncer)
    handler.on_any_event(DirMovedEvent(str(root / "notes"), str(root / "notes~")))
    handler.on_any_event(DirDeletedEvent(str(root / "2023.bak")))
    handler.on_any_event(FileDeletedEvent(str(root / "draft.md.bak")))  # a backup file: never indexed
    handler.on_any_event(DirDeletedEvent(str(root / ".git")))
    assert debouncer.due() == sorted(str(root / name) for name in ("notes", "notes~", "2023.bak"))


# -- a reader racing a save ------------------------------------------------------------------------

def test_loading_the_store_while_a_save_lands_reads_the_new_header(tmp_path, monkeypatch):
    store = FaissStore.create(tmp_path, 4, "fake")
    store.add(np.array([1]), np.eye(4, dtype=np.float32)[:1])
    store.save()
    real_read_header = FaissStore.read_header.__func__
    saved = []

    def read_header_then_save(cls, directory, header_name="header.json"):
        header = real_read_header(cls, directory, header_name)
        if not saved:  # a writer saves between the reader's header and its index file
            saved.append(True)
            store.add(np.array([2]), np.eye(4, dtype=np.float32)[1:2])
            store.save()
        return header

    monkeypatch.setattr(FaissStore, "read_header", classmethod(read_header_then_save))
    loaded = FaissStore.load(tmp_path)
    assert sorted(loaded.ids().tolist()) == [1, 2]


def test_a_reader_holding_the_store_before_an_ingest_never_gets_another_chunks_text(open_kb, home):
    """A vector id names one chunk's text for the life of the home. A reader holds the store it
    loaded while a writer deletes a document and adds another; if the new chunks took the freed
    ids, the reader's old vectors would lead to the new document's text for what the deleted one
    said."""
    docs = home.root / "docs"
    (docs / "a-keep.md").write_text("# Keep\n\nThe lighthouse keeper polishes the brass lens each dawn.\n")
    (docs / "z-gone.md").write_text("# Gone\n\nThe submarine galley serves borscht on Thursdays.\n")
    writer = open_kb()
    writer.ingest()
    reader = open_kb()
    held = reader.store()  # loaded before the change, as a server's request may hold it
    gone_ids = vector_ids(writer, "z-gone.md")
    (docs / "z-gone.md").unlink()
    (docs / "new.md").write_text("# New\n\nQuarterly tax forms are filed with the county clerk.\n")
    writer.ingest()
    new_ids = vector_ids(writer, "new.md")
    assert min(new_ids) > max(gone_ids)
    assert reader.store() is held
    hits = reader.search("What does the submarine galley serve?", 5)
    assert not any("tax forms" in hit.text for hit in hits)


def test_ids_of_vectors_a_crash_left_behind_are_not_given_again(open_kb, home):
    """Vectors saved by a run that died before recording them are removed by the next check;
    their ids are not given to other text either, since a reader may hold that store."""
    (home.root / "docs" / "a.md").write_text("# A\n\nAlpha text about owls.\n")
    kb = open_kb()
    kb.ingest()
    store = kb.store()
    orphan = kb.manifest.max_vector_id() + 1
    store.add(np.array([orphan]), store.reconstruct(orphan - 1)[None, :])
    store.save()  # what a run killed between saving its vectors and recording them leaves
    kb = open_kb()
    assert kb.check().repaired
    (home.root / "docs" / "c.md").write_text("# C\n\nGamma text about orcas.\n")
    kb.ingest()
    assert min(vector_ids(kb, "c.md")) > orphan


def vector_ids(kb, path: str) -> set[int]:
    """The vector ids of the chunks the manifest holds for the document ``path``."""
    return {c.vector_id for c in kb.manifest.chunks_of(kb.manifest.files()[path].id)}


def test_two_threads_writing_one_file_atomically_do_not_share_a_temporary(tmp_path, monkeypatch):
    """The daemon's job thread and its server's threads may write one file (an adapter's lineage)
    at once: each write goes through its own temporary file, so both complete and the file holds
    one of them whole."""
    import os
    import threading

    from kbloop import fsutil

    target = tmp_path / "lineage.json"
    real_replace = os.replace
    inner: list[BaseException] = []

    def replace_after_another_thread_writes(src, dst):
        monkeypatch.setattr(fsutil.os, "replace", real_replace)  # only the first write is interleaved
        other = threading.Thread(target=lambda: _capture(inner, fsutil.atomic_write_bytes, target, b"inner"))
        other.start()
        other.join()
        return real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", replace_after_another_thread_writes)
    fsutil.atomic_write_bytes(target, b"outer")
    assert not inner and target.read_bytes() == b"outer"
    assert [p.name for p in tmp_path.iterdir()] == ["lineage.json"]
    assert fsutil.remove_stale_temporaries(tmp_path) == []


def _capture(errors: list, call, *args) -> None:
    try:
        call(*args)
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
        errors.append(exc)
