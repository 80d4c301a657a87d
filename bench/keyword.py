"""The keyword search, with every word of a question against without the home's common words.

For each benchmark corpus it ingests ``corpus/initial`` into a scratch home, then asks the
keyword index each question of ``qa_*.jsonl`` both ways: at 1x, and on a copy of the manifest
whose chunks are repeated ``--copies`` times (100 copies of kbdev are about the 100x corpus of
bench/scale.py). It prints, per corpus and size, how many questions get the same top 20 both
ways, and the p50/p95 time of each and their ratio, measured in one run.

    python bench/keyword.py [--bench DIR ...] [--copies 110] [--rounds 3] [--workdir DIR] [--keep]

Only the manifest's keyword index is asked; the embedder runs only to ingest.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from answers import ingest_kbloop, read_jsonl  # noqa: E402
from workdir import bench_workdir, corpus_home  # noqa: E402

from kbloop import models  # noqa: E402
from kbloop.ingest.manifest import COMMON_META, Manifest  # noqa: E402
from kbloop.kb import MIGRATIONS  # noqa: E402

BENCHES = [Path(__file__).resolve().parent.parent.parent / "shared" / "kbdev", Path(__file__).parent / "pydev"]
DEPTH = 20  # what a search of k=5 asks the keyword index for


def every_word(manifest: Manifest, query: str, limit: int) -> list[int]:
    """The keyword search as it was: every word of the query, ranked after a join with the chunks."""
    words = [w for w in re.findall(r"\w+", query.lower()) if len(w) > 1]
    if not words:
        return []
    rows = manifest.db.execute(
        "SELECT chunks.vector_id FROM chunks_fts JOIN chunks ON chunks.id = chunks_fts.rowid "
        "WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts) LIMIT ?",
        (" OR ".join(f'"{w}"' for w in dict.fromkeys(words)), limit))
    return [row[0] for row in rows]


def copied(source: Path, target: Path, copies: int) -> Path:
    """A manifest holding ``copies`` copies of every file and chunk of ``source``."""
    with sqlite3.connect(source) as db, sqlite3.connect(target) as out:
        db.backup(out)
    with sqlite3.connect(target) as out:
        step = out.execute("SELECT MAX(vector_id) FROM chunks").fetchone()[0] + 1
        originals = out.execute("SELECT id, path FROM files").fetchall()
        for n in range(1, copies):
            for file_id, path in originals:
                new_id = out.execute(
                    "INSERT INTO files (path, sha256, size, mtime_ns, checked_at, status, n_chunks, updated_at) "
                    "SELECT ?, sha256, size, mtime_ns, checked_at, status, n_chunks, updated_at FROM files "
                    "WHERE id = ?", (f"copy-{n}/{path}", file_id)).lastrowid
                out.execute("INSERT INTO chunks (file_id, ordinal, text_hash, text, metadata, vector_id) "
                            "SELECT ?, ordinal, text_hash, text, metadata, vector_id + ? FROM chunks "
                            "WHERE file_id = ?", (new_id, n * step, file_id))
    return target


def timed(search, questions: list[str], rounds: int) -> tuple[list[list[int]], list[float]]:
    results, times = [], []
    for _ in range(rounds):
        results = []
        for question in questions:
            started = time.perf_counter()
            results.append(search(question))
            times.append(1000 * (time.perf_counter() - started))
    return results, times


def measure(path: Path, questions: list[str], rounds: int) -> dict:
    manifest = Manifest(path, MIGRATIONS)
    manifest.set_meta(COMMON_META, "")  # read them from the keyword index, as the ingest that records them does
    started = time.perf_counter()
    common = manifest.common_words()
    read_ms = 1000 * (time.perf_counter() - started)
    manifest.record_common_words()
    before, before_ms = timed(lambda q: every_word(manifest, q, DEPTH), questions, rounds)
    after, after_ms = timed(lambda q: manifest.keyword_search(q, DEPTH), questions, rounds)
    p = lambda times, q: statistics.quantiles(times, n=100)[q - 1]  # noqa: E731
    row = {"chunks": manifest.counts()["chunks"], "common_words": sorted(common), "common_read_ms": read_ms,
           "same_top20": sum(a == b for a, b in zip(before, after)), "same_top5": sum(
               a[:5] == b[:5] for a, b in zip(before, after)), "questions": len(questions),
           "every_word_p50": p(before_ms, 50), "every_word_p95": p(before_ms, 95),
           "without_common_p50": p(after_ms, 50), "without_common_p95": p(after_ms, 95)}
    manifest.close()
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", type=Path, action="append", default=None)
    parser.add_argument("--copies", type=int, default=110)
    parser.add_argument("--rounds", type=int, default=3, help="times each question is asked each way")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    with bench_workdir(args.workdir, args.keep, "kbloop-keyword-") as workdir:
        for bench in args.bench or BENCHES:
            questions = [item["question"] for name in sorted(bench.glob("qa_*.jsonl"))
                         for item in read_jsonl(name, None)]
            home = corpus_home(workdir / bench.name, bench / "corpus" / "initial")
            settings = home.load_settings()
            print(f"{bench.name}: ingest {ingest_kbloop(home, models.create('embedder', settings.embedder, settings))}",
                  flush=True)
            for copies in (1, args.copies):
                path = home.manifest_path if copies == 1 else copied(
                    home.manifest_path, workdir / f"{bench.name}-x{copies}.sqlite", copies)
                rows.append({"corpus": bench.name, "copies": copies, **measure(path, questions, args.rounds)})
                print(json.dumps(rows[-1]), flush=True)
    print("\n| corpus | chunks | same top 20 / top 5 | every word p50 / p95 | without common words p50 / p95 "
          "| p50 ratio | reading the common words |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        n = r["questions"]
        print(f"| {r['corpus']} | {r['chunks']:,} | {r['same_top20']}/{n} / {r['same_top5']}/{n} "
              f"| {r['every_word_p50']:.1f} / {r['every_word_p95']:.1f} ms "
              f"| {r['without_common_p50']:.1f} / {r['without_common_p95']:.1f} ms "
              f"| {r['every_word_p50'] / r['without_common_p50']:.2f}x | {r['common_read_ms']:.0f} ms |")


if __name__ == "__main__":
    main()
