"""The home's SQLite database: one connection per opener, migrated when it opens.

Every table has one owning store (the manifest's files and chunks, the dataset store, the
feedback store, the evaluation store), and each owner declares its tables as numbered
migrations beside its code; ``kbloop.schema`` lists them all in order. The ``migrations`` table
records which ran, so a database made by an older kbloop opens with a newer one and gains only
what it lacks. A migration that has run in someone's home is never edited: a change is a new
migration with the next number.

This module knows no table: the stores import it, so it imports none of them.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator

from kbloop.errors import StoreError

Migration = tuple[str, str]  # (name, SQL script); numbered in the order they must run


class ReadOnlyConnection(sqlite3.Connection):
    """A connection to a database kbloop may not write (``mode=ro``): every read works, and a
    write fails as one StoreError naming the folder, not as SQLite's "attempt to write a
    readonly database" from deep inside whichever store tried."""

    folder: Path

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        with self._refusing_writes():
            return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        with self._refusing_writes():
            return super().executemany(sql, parameters)

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        with self._refusing_writes():
            return super().executescript(script)

    @contextmanager
    def _refusing_writes(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_READONLY:
                raise
            raise StoreError(f"{self.folder} is not writable, so kbloop can read this home but not change it: "
                             "make the folder writable (or run as its owner) and try again") from None


def connect(path: Path, migrations: Sequence[Migration]) -> sqlite3.Connection:
    """Open (creating it if need be) the database at ``path`` and apply the ``migrations`` it
    lacks, in order.

    Autocommit mode (``isolation_level=None``): transactions are explicit, through
    ``transaction`` and ``snapshot``. WAL lets readers keep reading while a writer commits;
    ``synchronous=FULL`` makes a commit survive a power cut. One connection may be used by
    several threads in turn (the server's readers are pooled), never at once.

    A database in a folder kbloop may not write (a read-only mount, another user's home) opens
    read-only instead: searches and status work, and the first write fails in one line.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the data folder {path.parent} ({exc.strerror}): "
                         "make its parent writable, or point --home at an existing home") from None
    if not _writable(path):
        return connect_read_only(path, migrations)
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    _use_wal(db)
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    migrate(db, migrations)
    return db


def _use_wal(db: sqlite3.Connection, wait: float = 30.0) -> None:
    """Switch to WAL. The switch needs the database to itself and SQLite does not wait for that
    (no busy handler), so a second process opening a new home at the same moment gets "database
    is locked" at once: it retries here until the other has switched, or ``wait`` seconds pass."""
    deadline = time.monotonic() + wait
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _writable(path: Path) -> bool:
    """Whether SQLite can write here: WAL writes ``-wal`` and ``-shm`` files beside the database."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def connect_read_only(path: Path, migrations: Sequence[Migration]) -> ReadOnlyConnection:
    """Open an existing database for reading only: no WAL switch, no migrations (both write).

    Without a ``-wal`` file every commit is in the database file itself, and in a folder no one
    may write no writer can add one, so SQLite is told the file is immutable: it then needs no
    ``-shm`` file, which it could not create here.
    """
    if not path.is_file():
        raise StoreError(f"{path.parent} is not writable and holds no database yet: "
                         "make it writable, or point --home at an existing home")
    mode = "mode=ro" if path.with_name(f"{path.name}-wal").exists() else "mode=ro&immutable=1"
    db = sqlite3.connect(f"{path.absolute().as_uri()}?{mode}", uri=True, timeout=30, isolation_level=None,
                         check_same_thread=False, factory=ReadOnlyConnection)
    db.folder = path.parent
    db.row_factory = sqlite3.Row
    try:
        applied = {row["name"] for row in db.execute("SELECT name FROM migrations")}
    except sqlite3.DatabaseError as exc:
        db.close()
        raise StoreError(f"cannot read {path} ({exc}), and its folder is not writable") from None
    missing = [name for name, _ in migrations if name not in applied]
    if missing:
        db.close()
        raise StoreError(f"{path} needs upgrading ({', '.join(missing)}) but {path.parent} is not writable: "
                         "run kbloop once where it may write there")
    db.execute("PRAGMA foreign_keys=ON")
    return db


def migrate(db: sqlite3.Connection, steps: Sequence[Migration]) -> None:
    """Apply, in order, the steps the ``migrations`` table does not list yet.

    Each step takes the write lock first and only then reads which steps are applied: two
    processes opening a new home at once would otherwise both see a step missing, and the
    second would run it again ("table ... already exists")."""
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    for name, sql in steps:
        # One step, one transaction: a migration applies entirely or not at all.
        db.execute("BEGIN IMMEDIATE")
        try:
            if not db.execute("SELECT 1 FROM migrations WHERE name = ?", (name,)).fetchone():
                for statement in _statements(sql):
                    db.execute(statement)
                db.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _statements(script: str) -> Iterator[str]:
    """The complete SQL statements of ``script``, one at a time (``executescript`` would commit
    the open transaction first)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Writes that land together or not at all. IMMEDIATE takes the write lock at the start, so
    two writers queue instead of one failing halfway with a busy database."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@contextmanager
def snapshot(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Reads that all see the same committed state (WAL), while writers go on committing.
    Inside a transaction already open on this connection, that transaction is the snapshot."""
    if db.in_transaction:
        yield db
        return
    db.execute("BEGIN")
    try:
        yield db
    finally:
        db.execute("COMMIT")
