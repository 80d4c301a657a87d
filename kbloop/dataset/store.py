"""Dataset versions on disk and the status of their records in the manifest.

Each build writes ``data/datasets/<version>.jsonl`` (its new records) and ``<version>.json``
(settings, teacher, counts, parent), both atomically and never edited afterwards. Which records
are still active is a column in the manifest's ``dataset_records`` table, so retiring a record
whose chunk changed or vanished edits no file. The files are written first and the manifest
rows second, in one transaction: a crash in between leaves an unreferenced file that the next
build, reusing the version number, replaces.

The ``dataset_*`` tables are this store's, declared below as migrations.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Collection
from pathlib import Path

from kbloop import __version__
from kbloop.config import Home
from kbloop.dataset.records import CORRECTION, Record, Split, correction_hash
from kbloop.db import Migration, transaction
from kbloop.errors import NotFound
from kbloop.fsutil import atomic_write_bytes
from kbloop.ingest.manifest import Manifest

MIGRATIONS: list[Migration] = [
    (
        "003_datasets",
        # Dataset versions and the status of every record in them. The records themselves live
        # in data/datasets/<version>.jsonl, never edited; retiring one is a row update here.
        """
        CREATE TABLE dataset_versions (
            version TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            parent TEXT,
            info TEXT NOT NULL                  -- JSON: settings, teacher, counts
        );
        CREATE TABLE dataset_records (
            id TEXT PRIMARY KEY,                -- hash of source text hash + question
            version TEXT NOT NULL REFERENCES dataset_versions(version),
            split TEXT NOT NULL,                -- train | eval
            text_hash TEXT NOT NULL,            -- the source chunk's text hash
            path TEXT NOT NULL,
            generator TEXT NOT NULL,
            oracle INTEGER NOT NULL,            -- 1 = the source chunk is in the knowledge
            question TEXT NOT NULL,
            status TEXT NOT NULL,               -- active | retired
            retired_in TEXT,
            retired_reason TEXT                 -- changed | deleted
        );
        CREATE INDEX dataset_records_hash ON dataset_records(text_hash);
        CREATE INDEX dataset_records_status ON dataset_records(status, split);
        CREATE TABLE dataset_chunks (           -- chunk texts already turned into records
            text_hash TEXT PRIMARY KEY,
            version TEXT NOT NULL,
            n_records INTEGER NOT NULL
        );
        """,
    ),
]


class DatasetStore:
    def __init__(self, home: Home, manifest: Manifest):
        self.home, self.db = home, manifest.db
        self.dir = home.datasets_dir

    # -- versions -------------------------------------------------------------------------

    def versions(self) -> list[dict]:
        rows = self.db.execute("SELECT * FROM dataset_versions ORDER BY version")
        return [{"version": r["version"], "created_at": r["created_at"], "parent": r["parent"],
                 **json.loads(r["info"])} for r in rows]

    def latest(self) -> str | None:
        row = self.db.execute("SELECT MAX(version) FROM dataset_versions").fetchone()
        return row[0]

    def next_version(self) -> str:
        latest = self.latest()
        return f"{int(latest) + 1:04d}" if latest else "0001"

    def records_file(self, version: str) -> Path:
        return self.dir / f"{version}.jsonl"

    # -- what has been built ----------------------------------------------------------------

    def processed_hashes(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT text_hash FROM dataset_chunks")}

    def active_questions(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT question FROM dataset_records WHERE status = 'active'")}

    def active_sources(self) -> set[tuple[str, str]]:
        """(text hash, path) of every chunk text that active records were built from. Records of
        users' corrections come from no chunk (their text hash names the rating), so no change
        of the documents retires them."""
        return {(r[0], r[1]) for r in self.db.execute(
            "SELECT DISTINCT text_hash, path FROM dataset_records WHERE status = 'active' AND generator != ?",
            (CORRECTION,))}

    def correction_phrasings(self, rating_ids: Collection[int]) -> dict[int, list[str]]:
        """The questions of each rating's active correction records, by rating id: the question
        as asked and the other phrasings of it that a build kept."""
        by_hash = {correction_hash(i): i for i in rating_ids}
        found: dict[int, list[str]] = {}
        for text_hash, question in self.db.execute(
                "SELECT text_hash, question FROM dataset_records WHERE status = 'active' AND generator = ? "
                "ORDER BY version, id", (CORRECTION,)):
            if text_hash in by_hash:
                found.setdefault(by_hash[text_hash], []).append(question)
        return found

    def count_active(self, text_hashes: Collection[str]) -> int:
        """How many active records were built from these chunk texts."""
        if not text_hashes:
            return 0
        return self.db.execute(
            f"SELECT COUNT(*) FROM dataset_records WHERE status = 'active' AND text_hash IN "
            f"({','.join('?' * len(text_hashes))})", list(text_hashes)).fetchone()[0]

    def commit(self, version: str, parent: str | None, info: dict, records: list[Record],
               processed: dict[str, int], retire: dict[str, str]) -> None:
        """Write the version's files, then record it: new records active, ``retire``'s text
        hashes (hash → reason) retired, ``processed`` chunk hashes marked done."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r.as_dict(), sort_keys=True, ensure_ascii=False) + "\n" for r in records)
        atomic_write_bytes(self.records_file(version), lines.encode("utf-8"))
        meta = {"version": version, "parent": parent, "kbloop_version": __version__, **info}
        atomic_write_bytes(self.dir / f"{version}.json",
                           (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        with transaction(self.db) as db:
            db.execute("INSERT INTO dataset_versions VALUES (?, ?, ?, ?)",
                       (version, time.time(), parent, json.dumps(info, sort_keys=True)))
            for text_hash, reason in retire.items():
                db.execute("""UPDATE dataset_records SET status = 'retired', retired_in = ?, retired_reason = ?
                              WHERE text_hash = ? AND status = 'active'""", (version, reason, text_hash))
                db.execute("DELETE FROM dataset_chunks WHERE text_hash = ?", (text_hash,))
            db.executemany(
                "INSERT OR REPLACE INTO dataset_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active', NULL, NULL)",
                [(r.id, version, r.split, r.source["text_hash"], r.source["path"], r.generator, int(r.oracle),
                  r.instruction) for r in records],
            )
            db.executemany("INSERT OR REPLACE INTO dataset_chunks VALUES (?, ?, ?)",
                           [(h, version, n) for h, n in processed.items()])

    # -- reading --------------------------------------------------------------------------

    def records(self, version: str) -> list[Record]:
        path = self.records_file(version)
        if not path.is_file():
            raise NotFound(f"dataset version {version} has no records file at {path}")
        with open(path, encoding="utf-8") as fh:
            return [Record.from_dict(json.loads(line)) for line in fh if line.strip()]

    def status_of(self) -> dict[str, str]:
        return {r["id"]: r["status"] for r in self.db.execute("SELECT id, status FROM dataset_records")}

    def active_records(self, split: Split | None = None, versions: set[str] | None = None) -> list[Record]:
        """Records still backed by the knowledge base, oldest version first."""
        query = "SELECT id, version FROM dataset_records WHERE status = 'active'"
        args: list = []
        if split:
            query += " AND split = ?"
            args.append(split)
        wanted: dict[str, set[str]] = {}
        for row in self.db.execute(query, args):
            if versions is None or row["version"] in versions:
                wanted.setdefault(row["version"], set()).add(row["id"])
        out: list[Record] = []
        for version in sorted(wanted):
            out += [r for r in self.records(version) if r.id in wanted[version]]
        return out

    def stats(self) -> dict:
        rows = self.db.execute("SELECT split, status, generator, path, oracle FROM dataset_records").fetchall()
        by = {key: Counter() for key in ("status", "split", "generator", "source")}
        active = Counter()
        for r in rows:
            by["status"][r["status"]] += 1
            if r["status"] == "active":
                by["split"][r["split"]] += 1
                by["generator"][r["generator"]] += 1
                by["source"][r["path"]] += 1
                active["oracle" if r["oracle"] else "no_oracle"] += 1
        return {
            "versions": len(self.versions()),
            "latest": self.latest(),
            "records": len(rows),
            "by_status": dict(by["status"]),
            "active_by_split": dict(by["split"]),
            "active_by_generator": dict(by["generator"]),
            "active_by_source": dict(sorted(by["source"].items())),
            "active_oracle": dict(active),
            "chunks_covered": self.db.execute("SELECT COUNT(*) FROM dataset_chunks").fetchone()[0],
        }
