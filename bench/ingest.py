"""Ingest benchmark: how close a full ingest gets to the embedder, and how cheap re-ingests are.

Measured in one run, with one embedder loaded (and warmed up) before any timing, so model
load time is never counted:

1. full ingest: a fresh home holding the corpus; chunks embedded and chunks/s;
2. raw embedder: ``embed()`` over the same chunks' embed texts in one call (the ceiling),
   and the ratio full-ingest chunks/s / raw chunks/s;
3. re-ingest with nothing changed (median of 5), as a fraction of the full ingest;
4. re-ingest after a one-line edit of one file, against ingesting that file alone in a
   fresh home (median of 3 interleaved pairs; each pair is a new edit).

Every timed ingest opens a new ``KnowledgeBase`` and times ``kb.ingest()`` only; that call
opens the manifest and the store, as a command-line ``kbloop ingest`` would. The machine may
be shared and noisy: only ratios within one run mean much.

Run it from the repository root:

    python bench/ingest.py [--corpus DIR] [--workdir DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from kbloop import models
from kbloop.config import Home
from kbloop.ingest.chunking import embed_text
from kbloop.ingest.indexer import IngestCounts
from kbloop.kb import KnowledgeBase
from workdir import bench_workdir, corpus_files, corpus_home

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "kbdev" / "corpus" / "initial"
EMBEDDER = "local:all-minilm-l6-v2"

EDITED_FILE = "git-credential-cache.md"
EDIT_OLD, EDIT_NEW = "(default: 900)", "(default: 2700)"

NOOP_REPEATS = 5
EDIT_REPEATS = 3
# Files whose mtime is older than this when an ingest confirms them are later trusted on
# size and mtime alone (the indexer's RACY_SECONDS is 2.0).
SETTLE_SECONDS = 2.5

NOOP_TARGET = 0.01  # re-ingest with nothing changed / full ingest
EDIT_TARGET = 1.5  # re-ingest after editing one file / ingesting that file alone

COUNT_FIELDS = ("files_added", "files_changed", "files_unchanged", "files_failed",
                "chunks_embedded", "chunks_reused", "chunks_removed")


# -- small helpers ---------------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()``'s result and the seconds it took."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def rate(items: int, seconds: float) -> float:
    return items / seconds if seconds > 0 else float("inf")


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


def short_counts(counts: IngestCounts) -> dict[str, int]:
    return {name: getattr(counts, name) for name in COUNT_FIELDS}


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}={value}" for name, value in counts.items() if value)


def format_samples(samples: list[float]) -> str:
    return "[" + ", ".join(f"{s:.4f}" for s in samples) + "]"


def swap_text(path: Path, old: str, new: str) -> None:
    """Replace the one occurrence of ``old`` in ``path`` with ``new``."""
    text = path.read_text(encoding="utf-8")
    if text.count(old) != 1:
        raise SystemExit(f"expected exactly one {old!r} in {path}, found {text.count(old)}")
    path.write_text(text.replace(old, new), encoding="utf-8")


def timed_ingest(home: Home, embedder: Any) -> tuple[IngestCounts, float]:
    """Open a new knowledge base on ``home`` and time one ``kb.ingest()``."""
    kb = KnowledgeBase(home, embedder=embedder)
    try:
        return timed(kb.ingest)
    finally:
        kb.close()


def manifest_embed_texts(home: Home, embedder: Any) -> list[str]:
    """The distinct texts the manifest's chunks were embedded as, in vector id order."""
    kb = KnowledgeBase(home, embedder=embedder)
    try:
        rows = kb.manifest.db.execute("SELECT text, metadata FROM chunks ORDER BY vector_id").fetchall()
    finally:
        kb.close()
    return list(dict.fromkeys(embed_text(row["text"], json.loads(row["metadata"])) for row in rows))


# -- the measurements ------------------------------------------------------------------------

def measure_full(home: Home, embedder: Any) -> dict:
    counts, seconds = timed_ingest(home, embedder)
    return {"seconds": seconds, "counts": short_counts(counts),
            "chunks_per_s": rate(counts.chunks_embedded, seconds)}


def measure_raw(texts: list[str], embedder: Any) -> dict:
    vectors, seconds = timed(lambda: embedder.embed(texts))
    return {"seconds": seconds, "texts": len(texts), "shape": list(vectors.shape),
            "chunks_per_s": rate(len(texts), seconds)}


def measure_noop(home: Home, embedder: Any, repeats: int) -> dict:
    runs = [timed_ingest(home, embedder) for _ in range(repeats)]
    return {"samples": [s for _, s in runs], "median": statistics.median(s for _, s in runs),
            "counts": [short_counts(c) for c, _ in runs]}


def measure_edit(home: Home, embedder: Any, workdir: Path, repeats: int) -> dict:
    """Interleave: edit the file, re-ingest the home, then ingest the edited file alone."""
    edited = home.docs_dir(home.load_settings()) / EDITED_FILE
    edits = [(EDIT_OLD, EDIT_NEW), (EDIT_NEW, EDIT_OLD)]
    reingest, alone = [], []
    for i in range(repeats):
        swap_text(edited, *edits[i % 2])
        counts, seconds = timed_ingest(home, embedder)
        reingest.append({"seconds": seconds, "counts": short_counts(counts)})
        alone_home = corpus_home(workdir / f"alone-{i + 1}", [edited])
        counts, seconds = timed_ingest(alone_home, embedder)
        alone.append({"seconds": seconds, "counts": short_counts(counts)})
    return {
        "reingest": reingest, "alone": alone,
        "reingest_median": statistics.median(r["seconds"] for r in reingest),
        "alone_median": statistics.median(r["seconds"] for r in alone),
    }


# -- reporting -------------------------------------------------------------------------------

def edit_counts_ok(edit: dict) -> bool:
    """Every edit re-ingest changed exactly one file and embedded fewer chunks than the file has."""
    return all(r["counts"]["files_changed"] == 1 and r["counts"]["files_added"] == 0
               and r["counts"]["chunks_embedded"] <= a["counts"]["chunks_embedded"]
               for r, a in zip(edit["reingest"], edit["alone"]))


def summarise(full: dict, raw: dict, noop: dict, edit: dict) -> dict:
    noop_ratio = ratio(noop["median"], full["seconds"])
    edit_ratio = ratio(edit["reingest_median"], edit["alone_median"])
    return {
        "full_chunks_per_s": full["chunks_per_s"],
        "raw_chunks_per_s": raw["chunks_per_s"],
        "full_over_raw": ratio(full["chunks_per_s"], raw["chunks_per_s"]),
        "noop_ratio": noop_ratio, "noop_target": NOOP_TARGET,
        "noop_verdict": verdict(noop_ratio, NOOP_TARGET),
        "edit_ratio": edit_ratio, "edit_target": EDIT_TARGET,
        "edit_verdict": verdict(edit_ratio, EDIT_TARGET),
        "edit_counts_ok": edit_counts_ok(edit),
    }


def summary_table(full: dict, raw: dict, noop: dict, edit: dict, summary: dict) -> str:
    edit_counts = edit["reingest"][-1]["counts"]
    alone_counts = edit["alone"][-1]["counts"]
    rows = [
        ("full ingest", f"{full['seconds']:.3f} s, {full['counts']['chunks_embedded']} chunks embedded, "
                        f"{summary['full_chunks_per_s']:.1f} chunks/s", "", ""),
        ("raw embedder (ceiling)", f"{raw['seconds']:.3f} s, {raw['texts']} texts, "
                                   f"{summary['raw_chunks_per_s']:.1f} chunks/s", "", ""),
        ("full ingest / raw embedder (chunks/s)", f"{summary['full_over_raw']:.3f}", "", ""),
        ("re-ingest nothing changed / full ingest",
         f"{summary['noop_ratio']:.4f} ({noop['median'] * 1000:.1f} ms / {full['seconds']:.3f} s)",
         f"<= {NOOP_TARGET}", summary["noop_verdict"]),
        ("re-ingest after editing one file / ingesting that file alone",
         f"{summary['edit_ratio']:.3f} ({edit['reingest_median'] * 1000:.1f} ms / "
         f"{edit['alone_median'] * 1000:.1f} ms)",
         f"<= {EDIT_TARGET}", summary["edit_verdict"]),
        ("counts: full ingest", format_counts(full["counts"]), "", ""),
        ("counts: re-ingest nothing changed (last)", format_counts(noop["counts"][-1]), "", ""),
        ("counts: re-ingest after edit (last)", format_counts(edit_counts),
         "files_changed=1, few chunks embedded", "PASS" if summary["edit_counts_ok"] else "FAIL"),
        ("counts: that file alone (last)", format_counts(alone_counts), "", ""),
    ]
    lines = ["| measure | value | target | result |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                        help=f"folder of documents to ingest (default: {DEFAULT_CORPUS})")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="empty or new folder for the benchmark homes (default: a new temporary "
                             "folder, deleted at the end unless --keep; a folder given here is kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--json", action="store_true", help="also print all results as JSON")
    return parser.parse_args(argv)


def run(corpus: Path, workdir: Path) -> dict:
    files = corpus_files(corpus)
    if not any(f.name == EDITED_FILE for f in files):
        raise SystemExit(f"{corpus} has no {EDITED_FILE}")
    print(f"corpus: {corpus} ({len(files)} files)")
    print(f"workdir: {workdir}")

    home = corpus_home(workdir / "full", files)
    embedder = models.create("embedder", EMBEDDER, home.load_settings())
    _, load_seconds = timed(lambda: embedder.embed(["warm up"]))
    print(f"embedder: {EMBEDDER} loaded and warmed up in {load_seconds:.2f} s (not counted)")
    time.sleep(SETTLE_SECONDS)

    full = measure_full(home, embedder)
    print(f"\n1. full ingest: {full['seconds']:.3f} s; {format_counts(full['counts'])}")
    print(f"   {full['counts']['chunks_embedded']} chunks embedded, {full['chunks_per_s']:.1f} chunks/s")

    raw = measure_raw(manifest_embed_texts(home, embedder), embedder)
    full_over_raw = ratio(full["chunks_per_s"], raw["chunks_per_s"])
    print(f"\n2. raw embedder: {raw['texts']} embed texts in {raw['seconds']:.3f} s, "
          f"{raw['chunks_per_s']:.1f} chunks/s")
    print(f"   full ingest chunks/s / raw chunks/s = {full_over_raw:.3f}")

    noop = measure_noop(home, embedder, NOOP_REPEATS)
    print(f"\n3. re-ingest nothing changed: samples (s) {format_samples(noop['samples'])}, "
          f"median {noop['median'] * 1000:.1f} ms")
    for i, counts in enumerate(noop["counts"], 1):
        print(f"   run {i}: {format_counts(counts)}")
    print(f"   re-ingest nothing changed / full ingest = {ratio(noop['median'], full['seconds']):.4f} "
          f"(target <= {NOOP_TARGET})")

    edit = measure_edit(home, embedder, workdir, EDIT_REPEATS)
    print(f"\n4. edit {EDITED_FILE}: {EDIT_OLD} <-> {EDIT_NEW}, {EDIT_REPEATS} interleaved pairs")
    for i, (re_run, alone_run) in enumerate(zip(edit["reingest"], edit["alone"]), 1):
        print(f"   pair {i}: re-ingest {re_run['seconds'] * 1000:.1f} ms ({format_counts(re_run['counts'])})")
        print(f"           alone     {alone_run['seconds'] * 1000:.1f} ms ({format_counts(alone_run['counts'])})")
    print(f"   re-ingest samples (s) {format_samples([r['seconds'] for r in edit['reingest']])}, "
          f"median {edit['reingest_median'] * 1000:.1f} ms")
    print(f"   alone samples (s)     {format_samples([r['seconds'] for r in edit['alone']])}, "
          f"median {edit['alone_median'] * 1000:.1f} ms")
    print(f"   re-ingest after editing one file / ingesting that file alone = "
          f"{ratio(edit['reingest_median'], edit['alone_median']):.3f} (target <= {EDIT_TARGET})")

    summary = summarise(full, raw, noop, edit)
    print("\n## Summary\n")
    print(summary_table(full, raw, noop, edit, summary))
    return {"corpus": str(corpus), "files": len(files), "embedder": EMBEDDER,
            "full": full, "raw": raw, "noop": noop, "edit": edit, "summary": summary}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    corpus = args.corpus.resolve()
    if not corpus.is_dir():
        raise SystemExit(f"corpus folder {corpus} does not exist")
    with bench_workdir(args.workdir, args.keep, prefix="kbloop-bench-ingest-") as workdir:
        results = run(corpus, workdir)
    if args.json:
        print("\n" + json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
