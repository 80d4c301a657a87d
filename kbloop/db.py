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

import sqlite3
import time
from contextlib import contextmanager
from collections.abc import Sequence
from pathlib import Path
from typing import Iterator

Migration = tuple[str, str]  # (name, SQL script); numbered in the order they must run


def connect(path: Path, migrations: Sequence[Migration]) -> sqlite3.Connection:
    """Open (creating it if need be) the database at ``path`` and apply the ``migrations`` it
    lacks, in order.

    Autocommit mode (``isolation_level=None``): transactions are explicit, through
    ``transaction`` and ``snapshot``. WAL lets readers keep reading while a writer commits;
    ``synchronous=FULL`` makes a commit survive a power cut. One connection may be used by
    several threads in turn (the server's readers are pooled), never at once.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    migrate(db, migrations)
    return db


def migrate(db: sqlite3.Connection, steps: Sequence[Migration]) -> None:
    """Apply, in order, the steps the ``migrations`` table does not list yet."""
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    applied = {row["name"] for row in db.execute("SELECT name FROM migrations")}
    for name, sql in steps:
        if name in applied:
            continue
        # One script, one transaction: a migration applies entirely or not at all.
        db.executescript(
            f"BEGIN IMMEDIATE;\n{sql}\n"
            f"INSERT INTO migrations VALUES ('{name}', {time.time()!r});\nCOMMIT;"
        )


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
