"""The manifest: the home's SQLite database, and the store of what it knows of the documents:
every file, chunk and vector id, the keyword index beside the vectors, runs and settings.

The files, chunks, runs and meta tables are this module's; the other tables in the same file
belong to their own stores (datasets, feedback, evaluations), which share this connection.
The knowledge base opens it with every store's migrations (``kbloop.schema``).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from kbloop.db import Migration, connect, snapshot, transaction
from kbloop.fsutil import exclusive, try_lock

log = logging.getLogger(__name__)

# The highest vector id ever given (meta key): ids are never given again, so a reader that holds
# an older store never finds another chunk's text under a vector it has.
TOP_VECTOR_ID = "top_vector_id"

MIGRATIONS: list[Migration] = [
    (
        "001_files_chunks_runs",
        """
        CREATE TABLE files (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,          -- relative to the docs folder, '/' separated
            sha256 TEXT,                        -- of the bytes now indexed; NULL = must re-index
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            checked_at REAL NOT NULL,           -- when size/mtime were last confirmed against sha256
            status TEXT NOT NULL,               -- indexed | failed
            error TEXT,                         -- why the last attempt failed, or a note
            failed_sha256 TEXT,                 -- bytes that failed; not retried until they change
            n_chunks INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        );
        CREATE TABLE chunks (
            id INTEGER PRIMARY KEY,
            file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
            ordinal INTEGER NOT NULL,
            text_hash TEXT NOT NULL,            -- sha256 of the embedded text
            text TEXT NOT NULL,
            metadata TEXT NOT NULL,             -- JSON: section, page, title
            vector_id INTEGER NOT NULL UNIQUE
        );
        CREATE INDEX chunks_file ON chunks(file_id);
        CREATE INDEX chunks_hash ON chunks(text_hash);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL,
            status TEXT NOT NULL,               -- running | ok | failed
            summary TEXT,                       -- JSON counts
            error TEXT
        );
        """,
    ),
    (
        "002_chunks_fts",
        # A keyword index beside the vectors: exact terms (option names, config keys) that
        # embeddings blur. Triggers keep it equal to the chunks table, cascades included.
        """
        CREATE VIRTUAL TABLE chunks_fts USING fts5(body, tokenize = 'unicode61 remove_diacritics 2');
        CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
            INSERT INTO chunks_fts (rowid, body) VALUES (new.id,
                coalesce(json_extract(new.metadata, '$.title'), '') || ' ' ||
                coalesce(json_extract(new.metadata, '$.section'), '') || ' ' || new.text);
        END;
        CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
            DELETE FROM chunks_fts WHERE rowid = old.id;
        END;
        CREATE TRIGGER chunks_fts_update AFTER UPDATE OF text, metadata ON chunks BEGIN
            UPDATE chunks_fts SET body =
                coalesce(json_extract(new.metadata, '$.title'), '') || ' ' ||
                coalesce(json_extract(new.metadata, '$.section'), '') || ' ' || new.text
            WHERE rowid = new.id;
        END;
        INSERT INTO chunks_fts (rowid, body)
            SELECT id, coalesce(json_extract(metadata, '$.title'), '') || ' ' ||
                       coalesce(json_extract(metadata, '$.section'), '') || ' ' || text FROM chunks;
        """,
    ),
    (
        "008_vector_ids_never_reused",
        f"""
        INSERT OR REPLACE INTO meta (key, value)
            SELECT '{TOP_VECTOR_ID}', CAST(COALESCE(MAX(vector_id), 0) AS TEXT) FROM chunks;
        CREATE TRIGGER chunks_top_vector_id AFTER INSERT ON chunks BEGIN
            INSERT OR REPLACE INTO meta (key, value) VALUES ('{TOP_VECTOR_ID}', CAST(MAX(new.vector_id,
                COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = '{TOP_VECTOR_ID}'), 0)) AS TEXT));
        END;
        """,
    ),
    (
        "009_files_chunking",
        # How each file's chunks were split (chunker version, size, overlap). A new chunking splits
        # each file again when it is next read: one that could not be read keeps its mark until then.
        """
        ALTER TABLE files ADD COLUMN chunking TEXT;
        UPDATE files SET chunking = (SELECT value FROM meta WHERE key = 'chunking');
        """,
    ),
]

# A word in half the chunks or more is as common as a stop word there (see Manifest.common_words).
COMMON_SHARE = 0.5
COMMON_LEAST = 20
COMMON_META = "common_words"  # meta key: the common words and the chunks they were read from
# Why a run stopped that recorded no end of its own.
INTERRUPTED = "its process ended before it finished (killed, or the machine stopped)"


@dataclass(frozen=True)
class FileRecord:
    id: int
    path: str
    sha256: str | None
    size: int
    mtime_ns: int
    checked_at: float
    status: str
    error: str | None
    failed_sha256: str | None
    n_chunks: int
    chunking: str | None = None  # how its chunks were split; None: before kbloop recorded it


@dataclass(frozen=True)
class ChunkRecord:
    id: int
    file_id: int
    ordinal: int
    text_hash: str
    text: str
    metadata: dict
    vector_id: int


@dataclass(frozen=True)
class Hit:
    """A chunk found by search, with what a citation needs."""

    vector_id: int
    score: float
    path: str
    text: str
    metadata: dict

    @property
    def location(self) -> str:
        parts = [self.path]
        if self.metadata.get("page"):
            parts.append(f"p. {self.metadata['page']}")
        if self.metadata.get("section"):
            parts.append(f"§ {self.metadata['section']}")
        return ", ".join(parts)


class Manifest:
    """Files, chunks, runs and meta. ``db`` is the home's connection, which the other stores
    of the same home (``DatasetStore``, ``FeedbackStore``, ``EvaluationStore``) share."""

    def __init__(self, path: Path, migrations: Sequence[Migration] = MIGRATIONS):
        """Open the database at ``path``, applying the ``migrations`` it lacks: by default this
        store's own tables; the knowledge base passes the whole schema."""
        self.path = Path(path)
        self.db = connect(self.path, migrations)
        self._common: tuple[tuple, frozenset[str]] | None = None  # common_words, and what it was read from

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """Writes that land together or not at all (see ``kbloop.db.transaction``)."""
        return transaction(self.db)

    def snapshot(self) -> AbstractContextManager[sqlite3.Connection]:
        """Reads that all see one committed state (see ``kbloop.db.snapshot``)."""
        return snapshot(self.db)

    # -- meta -----------------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- files ----------------------------------------------------------------------------

    def files(self) -> dict[str, FileRecord]:
        rows = self.db.execute(
            "SELECT id, path, sha256, size, mtime_ns, checked_at, status, error, failed_sha256, n_chunks, chunking "
            "FROM files"
        )
        return {row["path"]: FileRecord(**dict(row)) for row in rows}

    def failures(self) -> list[FileRecord]:
        return [f for f in self.files().values() if f.status == "failed"]

    def upsert_file(self, path: str, *, sha256: str | None, size: int, mtime_ns: int, checked_at: float,
                    status: str, error: str | None, failed_sha256: str | None, n_chunks: int,
                    chunking: str | None) -> int:
        self.db.execute(
            """INSERT INTO files (path, sha256, size, mtime_ns, checked_at, status, error, failed_sha256,
                                  n_chunks, chunking, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(path) DO UPDATE SET sha256=excluded.sha256, size=excluded.size,
                 mtime_ns=excluded.mtime_ns, checked_at=excluded.checked_at, status=excluded.status,
                 error=excluded.error, failed_sha256=excluded.failed_sha256, n_chunks=excluded.n_chunks,
                 chunking=excluded.chunking, updated_at=excluded.updated_at""",
            (path, sha256, size, mtime_ns, checked_at, status, error, failed_sha256, n_chunks, chunking, time.time()),
        )
        return self.db.execute("SELECT id FROM files WHERE path = ?", (path,)).fetchone()["id"]

    def touch_file(self, file_id: int, size: int, mtime_ns: int, checked_at: float) -> None:
        self.db.execute("UPDATE files SET size=?, mtime_ns=?, checked_at=? WHERE id=?",
                        (size, mtime_ns, checked_at, file_id))

    def rename_file(self, old_path: str, new_path: str, mtime_ns: int, checked_at: float) -> None:
        self.db.execute("UPDATE files SET path=?, mtime_ns=?, checked_at=? WHERE path=?",
                        (new_path, mtime_ns, checked_at, old_path))

    def delete_file(self, path: str) -> list[int]:
        """Remove a file and its chunks; returns the vector ids they held."""
        vector_ids = [r["vector_id"] for r in self.db.execute(
            "SELECT vector_id FROM chunks JOIN files ON files.id = chunks.file_id WHERE files.path = ?", (path,))]
        self.db.execute("DELETE FROM files WHERE path = ?", (path,))
        return vector_ids

    # -- chunks ---------------------------------------------------------------------------

    def chunks_of(self, file_id: int) -> list[ChunkRecord]:
        rows = self.db.execute("SELECT * FROM chunks WHERE file_id = ? ORDER BY ordinal", (file_id,))
        return [_chunk(row) for row in rows]

    def indexed_chunks(self) -> list[tuple[str, ChunkRecord]]:
        """Every chunk of an indexed file with its file's path, in path and reading order, read
        in one snapshot (an ingest may commit meanwhile; the next reader sees it)."""
        with self.snapshot():
            rows = self.db.execute(
                """SELECT chunks.*, files.path FROM chunks JOIN files ON files.id = chunks.file_id
                   WHERE files.status = 'indexed' ORDER BY files.path, chunks.ordinal"""
            ).fetchall()
        return [(row["path"], _chunk(row)) for row in rows]

    def text_hash_of(self, vector_id: int) -> str | None:
        """The text hash of the chunk stored under ``vector_id``; None when no chunk has it."""
        row = self.db.execute("SELECT text_hash FROM chunks WHERE vector_id = ?", (vector_id,)).fetchone()
        return row["text_hash"] if row else None

    def vector_ids(self) -> set[int]:
        return {row[0] for row in self.db.execute("SELECT vector_id FROM chunks")}

    def max_vector_id(self) -> int:
        """The highest vector id ever given, its chunk deleted since or not (never given again)."""
        given = self.db.execute("SELECT COALESCE(MAX(vector_id), 0) FROM chunks").fetchone()[0]
        return max(given, int(self.get_meta(TOP_VECTOR_ID, "0")))

    def retire_vector_ids(self, top: int) -> None:
        """Ids up to ``top`` are not given again: vectors a killed run saved but never recorded."""
        if top > self.max_vector_id():
            self.set_meta(TOP_VECTOR_ID, str(top))

    def vector_for_hash(self, text_hash: str) -> int | None:
        row = self.db.execute("SELECT vector_id FROM chunks WHERE text_hash = ? LIMIT 1", (text_hash,)).fetchone()
        return row["vector_id"] if row else None

    def chunks_of_vectors(self, vector_ids: set[int]) -> list[ChunkRecord]:
        """The chunks stored under these vector ids, in vector id order."""
        rows = self.db.execute("SELECT * FROM chunks ORDER BY vector_id")
        return [_chunk(row) for row in rows if row["vector_id"] in vector_ids]

    def insert_chunk(self, file_id: int, ordinal: int, text_hash: str, text: str, metadata: dict,
                     vector_id: int) -> None:
        self.db.execute(
            "INSERT INTO chunks (file_id, ordinal, text_hash, text, metadata, vector_id) VALUES (?, ?, ?, ?, ?, ?)",
            (file_id, ordinal, text_hash, text, json.dumps(metadata, sort_keys=True), vector_id),
        )

    def update_chunk(self, chunk_id: int, ordinal: int, text: str, metadata: dict) -> None:
        self.db.execute("UPDATE chunks SET ordinal=?, text=?, metadata=? WHERE id=?",
                        (ordinal, text, json.dumps(metadata, sort_keys=True), chunk_id))

    def delete_chunks(self, chunk_ids: list[int]) -> None:
        self.db.executemany("DELETE FROM chunks WHERE id = ?", [(i,) for i in chunk_ids])

    def keyword_search(self, query: str, limit: int) -> list[int]:
        """Vector ids of the chunks that best match the query's words (BM25), best first."""
        words = list(dict.fromkeys(w for w in re.findall(r"\w+", query.lower()) if len(w) > 1))
        if not words:
            return []
        # FTS5's BM25 floors the weight of a word in half the rows or more at 1e-6, so the common
        # words add nothing to the ranking of a chunk that holds another query word, yet each is
        # a pass over a list of half the chunks. Asked alone, they are all there is to rank by.
        common = self.common_words()
        match = " OR ".join(f'"{w}"' for w in [w for w in words if w not in common] or words)
        rows = self.db.execute(  # ranked inside FTS5 first: a join before the LIMIT looks up every match
            """SELECT chunks.vector_id FROM (SELECT rowid, rank FROM chunks_fts WHERE chunks_fts MATCH ?
                                             ORDER BY rank LIMIT ?) AS best
               JOIN chunks ON chunks.id = best.rowid ORDER BY best.rank""",
            (match, limit),
        )
        return [row[0] for row in rows]

    def common_words(self, share: float = COMMON_SHARE, least: int = COMMON_LEAST) -> frozenset[str]:
        """The words that at least ``share`` of the chunks contain ("git" in git's manual):
        they tell no chunk from another, so the grounding checks and the keyword search do not
        count them. None in a knowledge base of fewer than ``least`` chunks, where a share says
        little; numbers never. Kept until the chunks change, since it reads the whole keyword
        index; the ingest that changed them records them for every other process."""
        key = self._chunks_key(share, least)
        if self._common is None or self._common[0] != key:
            recorded = self._recorded_common()
            words = recorded[1] if recorded and recorded[0] == key else self._read_common_words(share, least, key[0])
            self._common = (key, words)
        return self._common[1]

    def record_common_words(self) -> None:
        """Store the default common words with what they were read from, where they are not
        already: the keyword index is read once per change, not once per process."""
        words = self.common_words()
        key = self._common[0]
        if self._recorded_common() != (key, words):
            self.set_meta(COMMON_META, json.dumps({"key": list(key), "words": sorted(words)}))

    def _chunks_key(self, share: float, least: int) -> tuple:
        count, last = self.db.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM chunks").fetchone()
        return (count, last, share, least)

    def _recorded_common(self) -> tuple[tuple, frozenset[str]] | None:
        try:
            recorded = json.loads(self.get_meta(COMMON_META) or "null")
            return (tuple(recorded["key"]), frozenset(recorded["words"])) if recorded else None
        except (ValueError, TypeError, KeyError):  # damaged: read the index again
            return None

    def _read_common_words(self, share: float, least: int, count: int) -> frozenset[str]:
        if count < least:
            return frozenset()
        try:
            self.db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.chunks_vocab "
                            "USING fts5vocab(main, chunks_fts, 'row')")
            rows = self.db.execute("SELECT term FROM temp.chunks_vocab WHERE doc >= ?", (share * count,)).fetchall()
        except sqlite3.Error as exc:  # answers go on, checking with stop words only
            log.warning("cannot read the keyword index's word counts: %s", exc)
            rows = []
        return frozenset(row[0] for row in rows if not row[0].isdigit())

    def hits(self, scored: list[tuple[int, float]]) -> list[Hit]:
        """Search results for (vector id, score) pairs, in the same order; unknown ids are dropped."""
        if not scored:
            return []
        marks = ",".join("?" * len(scored))
        rows = self.db.execute(
            f"""SELECT chunks.vector_id, chunks.text, chunks.metadata, files.path FROM chunks
                JOIN files ON files.id = chunks.file_id WHERE chunks.vector_id IN ({marks})""",
            [vid for vid, _ in scored],
        )
        by_id = {row["vector_id"]: row for row in rows}
        return [Hit(vid, score, by_id[vid]["path"], by_id[vid]["text"], json.loads(by_id[vid]["metadata"]))
                for vid, score in scored if vid in by_id]

    def counts(self) -> dict[str, int]:
        row = self.db.execute(
            """SELECT (SELECT COUNT(*) FROM files WHERE status = 'indexed') AS files_indexed,
                      (SELECT COUNT(*) FROM files WHERE status = 'failed') AS files_failed,
                      (SELECT COUNT(*) FROM chunks) AS chunks"""
        ).fetchone()
        return dict(row)

    # -- runs -----------------------------------------------------------------------------

    def start_run(self, kind: str) -> int:
        cur = self.db.execute("INSERT INTO runs (kind, started_at, status) VALUES (?, ?, 'running')",
                              (kind, time.time()))
        return cur.lastrowid

    def finish_run(self, run_id: int, status: str, summary: dict | None = None, error: str | None = None) -> None:
        self.db.execute("UPDATE runs SET finished_at=?, status=?, summary=?, error=? WHERE id=?",
                        (time.time(), status, json.dumps(summary, sort_keys=True) if summary else None,
                         error, run_id))

    @contextmanager
    def recording(self, kind: str) -> Iterator[dict]:
        """Record the body as one run: 'running' now, then 'ok' with the summary the body fills
        in, or 'failed' with the error, so `kbloop status` shows what happened to it.

        A process killed outright (kill -9, a power cut) records nothing, so while the body runs
        this process holds the run's lock (``data/runs/<id>.lock``), taken before the row is
        visible. The kernel drops it when the process dies, however it dies: a 'running' run
        whose lock is free was cut short, and shows (then is recorded) as 'interrupted'."""
        with ExitStack() as held:
            with self.transaction():
                self.mark_interrupted_runs()
                run_id = self.start_run(kind)
                lock = self._run_lock(run_id)
                held.enter_context(exclusive(lock, f"{kind} run"))
                held.callback(lock.unlink, missing_ok=True)
            summary: dict = {}
            try:
                yield summary
            except BaseException as exc:
                self.finish_run(run_id, "failed", error=f"{exc.__class__.__name__}: {exc}")
                raise
            self.finish_run(run_id, "ok", summary)

    def _run_lock(self, run_id: int) -> Path:
        return self.path.parent / "runs" / f"{run_id}.lock"

    def _run_alive(self, run_id: int) -> bool:
        """Whether the process of a 'running' run still holds the run's lock."""
        try:
            with open(self._run_lock(run_id)) as fh:
                return not try_lock(fh)  # closing the file drops the lock this took
        except FileNotFoundError:
            return False

    def mark_interrupted_runs(self) -> int:
        """Record the runs whose process ended without finishing them as 'interrupted'."""
        gone = [row["id"] for row in self.db.execute("SELECT id FROM runs WHERE status = 'running'").fetchall()
                if not self._run_alive(row["id"])]
        for run_id in gone:
            self.db.execute("UPDATE runs SET status = 'interrupted', error = ? WHERE id = ? AND status = 'running'",
                            (INTERRUPTED, run_id))
            self._run_lock(run_id).unlink(missing_ok=True)
        return len(gone)

    def last_runs(self, limit: int = 5) -> list[dict]:
        """The latest runs, newest first; one still 'running' whose process is gone shows as
        'interrupted' (the next run or check records it so)."""
        rows = self.db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        runs = [dict(row) | {"summary": json.loads(row["summary"]) if row["summary"] else None} for row in rows]
        for run in runs:
            if run["status"] == "running" and not self._run_alive(run["id"]):
                run.update(status="interrupted", error=INTERRUPTED)
        return runs


def _chunk(row: sqlite3.Row) -> ChunkRecord:
    return ChunkRecord(row["id"], row["file_id"], row["ordinal"], row["text_hash"], row["text"],
                       json.loads(row["metadata"]), row["vector_id"])
