"""What a scan does with what it cannot read, with links, and with text it must still decode.

Read errors are injected (``os.scandir`` and ``open`` fail for chosen paths), so these tests
behave the same as root, whom ``chmod`` does not stop; one test uses a real ``chmod`` where it can.
"""

from __future__ import annotations

import builtins
import errno
import io
import logging
import os

import pytest

from conftest import cli_error, run_cli
from docs_factory import FACTS, QUERIES, make_docx, make_pdf, write_corpus
from kbloop.errors import DocsUnreadable, KbloopError, LoaderError
from kbloop.fsutil import sha256_file
from kbloop.ingest import parse as parse_module
from kbloop.ingest.loaders import load


class Faults:
    """Makes chosen folders unlistable and chosen files unopenable, as ``chmod 000`` would."""

    def __init__(self, monkeypatch):
        self.folders: set[str] = set()
        self.files: set[str] = set()
        real_scandir, real_open, real_io_open = os.scandir, builtins.open, io.open

        def scandir(path="."):
            self._check(path, self.folders)
            return real_scandir(path)

        def opener(real):
            def open_(file, *args, **kwargs):
                if isinstance(file, (str, os.PathLike)):
                    self._check(file, self.files)
                return real(file, *args, **kwargs)
            return open_

        monkeypatch.setattr(os, "scandir", scandir)
        monkeypatch.setattr(builtins, "open", opener(real_open))
        monkeypatch.setattr(io, "open", opener(real_io_open))

    @staticmethod
    def _check(path, denied: set[str]) -> None:
        if os.path.realpath(os.fspath(path)) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    def deny_folder(self, path) -> None:
        self.folders.add(os.path.realpath(path))

    def deny_file(self, path) -> None:
        self.files.add(os.path.realpath(path))

    def clear(self) -> None:
        self.folders.clear()
        self.files.clear()


@pytest.fixture
def faults(monkeypatch):
    return Faults(monkeypatch)


def top_path(kb, query):
    hits = kb.search(query, 3)
    return hits[0].path if hits else None


def indexed(kb):
    return {path: (rec.status, rec.n_chunks) for path, rec in kb.manifest.files().items()}


# -- an unreadable docs folder ------------------------------------------------------------------

def test_an_unreadable_docs_folder_stops_the_ingest_and_deletes_nothing(open_kb, home, faults):
    docs = home.root / "docs"
    write_corpus(docs)
    kb = open_kb()
    kb.ingest()
    before, vectors = indexed(kb), len(kb.store())
    faults.deny_folder(docs)
    for rebuild in (False, True):
        with pytest.raises(DocsUnreadable, match="cannot read the docs folder .*: Permission denied; nothing was"):
            open_kb().ingest(rebuild=rebuild)
    kb = open_kb()
    assert indexed(kb) == before and len(kb.store()) == vectors
    assert top_path(kb, QUERIES["guide.md"]) == "guide.md"
    result = run_cli("ingest", env={"KBLOOP_HOME": str(home.root)})
    assert "cannot read the docs folder" in cli_error(result, 1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder whatever its mode")
def test_a_docs_folder_without_read_permission_deletes_nothing(open_kb, home):
    docs = home.root / "docs"
    write_corpus(docs)
    open_kb().ingest()
    docs.chmod(0)
    try:
        with pytest.raises(DocsUnreadable):
            open_kb().ingest()
    finally:
        docs.chmod(0o755)
    assert open_kb().manifest.counts()["files_indexed"] == 5


# -- an unreadable sub-folder -------------------------------------------------------------------

def test_an_unreadable_subfolder_is_reported_and_its_files_are_kept(open_kb, home, faults, caplog):
    docs = home.root / "docs"
    write_corpus(docs / "archive")
    (docs / "top.md").write_text("# Top\n\nThe ferry leaves the harbour at seven every morning.\n")
    kb = open_kb()
    kb.ingest()
    before, vectors = indexed(kb), len(kb.store())
    faults.deny_folder(docs / "archive")
    with caplog.at_level(logging.WARNING):
        counts = open_kb().ingest()
    assert (counts.files_deleted, counts.chunks_removed, counts.files_unchanged, counts.files_failed) == (0, 0, 1, 1)
    [failure] = counts.failures
    assert failure["path"] == "archive"
    assert failure["reason"].startswith("cannot read folder: Permission denied")
    assert "skipped archive: cannot read folder" in caplog.text
    kb = open_kb()
    assert indexed(kb) == before and len(kb.store()) == vectors
    assert top_path(kb, QUERIES["notes.txt"]) == "archive/notes.txt"
    assert kb.manifest.last_runs(1)[0]["summary"]["failures"] == [failure]
    # Named on its own (as the watcher names paths), the folder is kept too.
    assert open_kb().ingest([docs / "archive"]).files_deleted == 0
    faults.clear()
    assert open_kb().ingest().as_dict() | {"seconds": 0} == {
        "files_added": 0, "files_changed": 0, "files_unchanged": 6, "files_renamed": 0, "files_deleted": 0,
        "files_failed": 0, "files_ignored": 0, "chunks_embedded": 0, "chunks_reused": 0,
        "chunks_removed": 0, "seconds": 0, "failures": []}


# -- an unreadable file -------------------------------------------------------------------------

def test_an_unreadable_file_is_skipped_and_its_indexed_version_kept(open_kb, home, faults, caplog):
    docs = home.root / "docs"
    write_corpus(docs)
    open_kb().ingest()
    guide = docs / "guide.md"
    guide.write_text(guide.read_text().replace("every forty minutes", "every ninety minutes"))
    (docs / "new.md").write_text("# New\n\nThe ferry leaves the harbour at seven every morning.\n")
    (docs / "locked.md").write_text("# Locked\n\nThe vault opens with a brass key.\n")
    faults.deny_file(guide)
    faults.deny_file(docs / "locked.md")
    with caplog.at_level(logging.WARNING):
        counts = open_kb().ingest()
    assert (counts.files_added, counts.files_changed, counts.files_deleted, counts.files_failed) == (1, 0, 0, 2)
    reasons = {f["path"]: f["reason"] for f in counts.failures}
    assert set(reasons) == {"guide.md", "locked.md"}
    assert reasons["guide.md"].startswith("cannot read: Permission denied")
    assert "skipped guide.md: cannot read: Permission denied" in caplog.text
    kb = open_kb()
    assert "forty" in kb.search(QUERIES["guide.md"], 1)[0].text  # the indexed version stays
    assert kb.status()["failures"] == []  # nothing recorded against the content
    assert "locked.md" not in kb.manifest.files()
    faults.clear()
    counts = open_kb().ingest()
    assert (counts.files_added, counts.files_changed, counts.files_failed) == (1, 1, 0)
    assert "ninety" in open_kb().search(QUERIES["guide.md"], 1)[0].text


# -- read errors are not bad content ------------------------------------------------------------

def test_read_errors_during_parsing_are_retried_not_remembered(open_kb, home, monkeypatch):
    """The folder became unreadable after the files were hashed: nothing is recorded as failed,
    and the next ingest reads them."""
    write_corpus(home.root / "docs")
    real_load = parse_module.load

    def failing_load(path, max_bytes=None):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(parse_module, "load", failing_load)
    counts = open_kb().ingest()
    assert (counts.files_added, counts.files_failed) == (0, 5)
    assert {f["reason"] for f in counts.failures} == {"cannot read: Input/output error (tried again next ingest)"}
    kb = open_kb()
    assert kb.manifest.files() == {} and kb.status()["failures"] == []
    monkeypatch.setattr(parse_module, "load", real_load)
    counts = open_kb().ingest()
    assert (counts.files_added, counts.files_unchanged, counts.files_failed) == (5, 0, 0)
    assert top_path(open_kb(), QUERIES["manual.pdf"]) == "manual.pdf"


def test_a_read_failure_recorded_by_an_older_version_is_retried(open_kb, home):
    docs = home.root / "docs"
    docs.mkdir(exist_ok=True)
    path = docs / "guide.md"
    path.write_text(f"# Lighthouse\n\n{FACTS['guide.md']}\n")
    kb = open_kb()
    st = path.stat()
    with kb.manifest.transaction():
        kb.manifest.upsert_file(
            "guide.md", sha256=None, size=st.st_size, mtime_ns=st.st_mtime_ns, checked_at=st.st_mtime + 60,
            status="failed", error=f"unexpected error: PermissionError: [Errno 13] Permission denied: '{path}'",
            failed_sha256=sha256_file(path), n_chunks=0, chunking=None)
    counts = open_kb().ingest()
    assert (counts.files_changed, counts.files_unchanged) == (1, 0)
    kb = open_kb()
    assert kb.status()["failures"] == [] and top_path(kb, QUERIES["guide.md"]) == "guide.md"


@pytest.mark.parametrize("name", ["manual.pdf", "report.docx", "guide.md"])
def test_loaders_raise_read_errors_as_oserror_not_as_bad_content(tmp_path, faults, name):
    write_corpus(tmp_path)
    faults.deny_file(tmp_path / name)
    with pytest.raises(PermissionError):
        load(tmp_path / name)


# -- links --------------------------------------------------------------------------------------

SECRET = "The launch code for the garden sprinkler is swordfish."


@pytest.fixture
def linked_docs(home, tmp_path):
    """docs/ with a real document, links out of it (a file and a folder), a link inside it, and
    two link loops."""
    docs = home.root / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "real.md").write_text("# Real\n\nHarbour seals rest on the sandbank at low tide.\n")
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET + "\n")
    (outside / "folder" / "more.md").write_text("# More\n\nThe attic key hangs behind the clock.\n")
    (docs / "secret.txt").symlink_to(outside / "secret.txt")
    (docs / "elsewhere").symlink_to(outside / "folder", target_is_directory=True)
    (docs / "alias.md").symlink_to(docs / "real.md")
    (docs / "sub" / "up").symlink_to(docs, target_is_directory=True)
    (docs / "loop").symlink_to(docs / "loop")
    return docs


def test_links_out_of_the_docs_folder_are_not_followed(open_kb, linked_docs, caplog):
    with caplog.at_level(logging.WARNING):
        counts = open_kb().ingest()
    kb = open_kb()
    assert set(kb.manifest.files()) == {"real.md", "alias.md"}
    assert counts.files_ignored == 4 and counts.files_failed == 0
    assert "skipped secret.txt: link to" in caplog.text and "outside the docs folder" in caplog.text
    assert "skipped elsewhere: link to" in caplog.text
    assert "skipped sub/up: link to a folder that contains it (a loop)" in caplog.text
    assert "skipped loop: link cannot be followed" in caplog.text
    assert all(SECRET not in hit.text for hit in kb.search("launch code garden sprinkler", 5))
    with pytest.raises(KbloopError, match="outside the docs folder.*KBLOOP_FOLLOW_EXTERNAL_LINKS"):
        kb.ingest([linked_docs / "secret.txt"])


def test_following_external_links_is_a_setting(open_kb, linked_docs):
    counts = open_kb(follow_external_links=True).ingest()
    kb = open_kb(follow_external_links=True)
    assert set(kb.manifest.files()) == {"real.md", "alias.md", "secret.txt", "elsewhere/more.md"}
    assert counts.files_added == 4
    assert top_path(kb, "launch code garden sprinkler") == "secret.txt"
    assert kb.ingest([linked_docs / "secret.txt"]).files_unchanged == 1
    # Turned off again, the next scan drops what the links brought in.
    counts = open_kb().ingest()
    assert counts.files_deleted == 2 and set(open_kb().manifest.files()) == {"real.md", "alias.md"}


# -- text that must decode, and files with no text ----------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig", "utf-32"])
def test_text_with_a_byte_order_mark_is_decoded(tmp_path, encoding):
    marks = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}
    path = tmp_path / "notes.txt"
    path.write_bytes(marks.get(encoding, b"") + "Harbour seals rest on the sandbank.\n".encode(encoding))
    loaded = load(path)
    assert [e.text for e in loaded.elements] == ["Harbour seals rest on the sandbank."] and loaded.notes == []


def test_a_utf16_document_is_indexed(open_kb, home):
    docs = home.root / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "guide.md").write_bytes(f"# Lighthouse\n\n{FACTS['guide.md']}\n".encode("utf-16"))
    counts = open_kb().ingest()
    assert (counts.files_added, counts.files_failed) == (1, 0)
    assert top_path(open_kb(), QUERIES["guide.md"]) == "guide.md"


def test_no_text_has_its_own_reason_and_only_a_pdf_gets_the_ocr_hint(tmp_path):
    (tmp_path / "blank.md").write_text("   \n\n\t  \n")
    (tmp_path / "tags.html").write_text("<html><head></head><body><div><p></p></div></body></html>")
    (tmp_path / "scan.pdf").write_bytes(make_pdf([[]]))
    make_docx(tmp_path / "empty.docx", "", [])
    for name in ("blank.md", "tags.html", "empty.docx"):
        with pytest.raises(LoaderError, match="^no text") as raised:
            load(tmp_path / name)
        assert "OCR" not in str(raised.value), name
    with pytest.raises(LoaderError, match="OCR"):
        load(tmp_path / "scan.pdf")
    (tmp_path / "binary.md").write_bytes(b"\xff\xfe" + "\x01\x02\x03".encode("utf-16-le") * 300)
    with pytest.raises(LoaderError, match="binary"):
        load(tmp_path / "binary.md")
