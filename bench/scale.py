"""Scale benchmark: how kbloop's costs grow with the corpus, and what to run at which size.

Synthetic corpora of 1x, 10x and 100x kbdev's initial documents (35 -> 3,500 files): copy 0 is
kbdev as it is, and every further copy is each document edited so that all its chunks are new
text (below, "The synthetic corpus"). For each scale, ingest engine and vector store it measures,
each kbloop command in a child process of its own, as a user would run it:

1. full ingest: ``kbloop ingest --json`` in a fresh home; the ingest's own seconds, chunks/s,
   the process's wall time and peak RSS (its own and its descendants', from ``wait4``; and the
   sampled peak of the whole process tree, which includes Ray's workers);
2. re-ingest with nothing changed (median of a few), and its ratio to the full ingest;
3. re-ingest after a one-line edit of one file (median of a few, alternating edits);
4. a probe process, working as the daemon does (one process, models kept): what a no-op
   ingest spends its time on (scan, store load, ids, manifest); search latency over kbdev's
   questions (one warm-up search not counted), in total and split into query embedding,
   vector search and keyword search; then no-op and one-file-edit ingests with the embedder
   and the parsers already loaded ("warm": the command-line figures above include starting
   Python and loading them);
5. disk: the home's ``data/`` and ``vector_store/`` folders.

It also checks that the copies really are new text: the full ingest reuses no vector by hash,
and the manifest's chunk texts are all distinct (a note says otherwise).

Then the growth exponent of each measure: the slope of log(measure) against log(chunks) over the
scales measured (1 is linear; 0 is flat). Last, an approximate-search comparison on the largest
FAISS home: flat (exact) against HNSW and IVF indexes, recall@10 against flat, latency, build
time and memory. On the 100x corpus it uses its own vectors; below 100x it replicates the
vectors it has, with noise, up to the 100x size, and says so.

Run it from the repository root (the machine may be shared and noisy: exponents and ratios
within one run mean more than absolute times):

    python bench/scale.py [--kbdev DIR] [--scales 1,10,100] [--ingest-engines local,ray]
                          [--stores faiss,qdrant] [--qdrant-scales 1,10] [--ray-scales 1,10,100]
                          [--queries 40] [--no-ann] [--quick] [--workdir DIR] [--keep] [--json] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import io
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

# The ingest benchmark's one-line edit (made here in copy 0, kbdev's own text), and how long a
# file must settle before an ingest trusts its size and mtime.
from ingest import EDIT_NEW, EDIT_OLD, EDITED_FILE, EMBEDDER, SETTLE_SECONDS
from workdir import bench_workdir

REPO = Path(__file__).resolve().parent.parent
DEFAULT_KBDEV = REPO.parent / "shared" / "kbdev"
NOOP_REPEATS = 3
EDIT_REPEATS = 2
RSS_SAMPLE_SECONDS = 0.2

# A marker goes into the text at least every this many characters (and at each paragraph's
# first space), so every chunk of 800 characters holds at least one: copies share no chunk.
MARK_EVERY = 240
# ... and at a paragraph's last space when this many characters ran on since its last marker.
CLOSE_AFTER = 40
COPY_FOLDER = "copy-{:03d}"

# Approximate search: HNSW's graph degree and build depth, the search depths tried, and IVF's
# probes. IVF gets about 4 * sqrt(n) lists, the usual starting point.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = (32, 128)
IVF_NPROBE = (8, 32)
ANN_K = 10
ANN_RANDOM_QUERIES = 200
ANN_FULL_SCALE = 100
# Copy-to-original similarity assumed when a corpus has one copy only (no pair to measure).
DEFAULT_COPY_COSINE = 0.95


# -- the synthetic corpus --------------------------------------------------------------------
#
# Copy k > 0 of a document renames the tool ("git" -> "gitk", "Git" -> "Gitk") and inserts markers
# "(ck.n)" at spaces: one at each paragraph's first space, then at least every MARK_EVERY
# characters, and one at its last space (CLOSE_AFTER). Only document text is edited (HTML text nodes outside scripts and styles, Word's
# w:t runs, a PDF's page text), so each copy parses like its original. PDFs are written again,
# one page per original page, from the page text pypdf extracts (as kbloop's loader reads it);
# their title gains " (copy k)". Everything is deterministic: the same copy has the same bytes.

WORD = re.compile(r"\b([Gg])it\b")
INNER_SPACE = re.compile(r"(?<=\S) (?=\S)")
BLANK_LINES = re.compile(r"(\n[ \t]*\n\s*)")
HTML_TOKENS = re.compile(r"(<!--.*?-->|<[^>]*>)", re.S)
HTML_SKIP = ("script", "style")
HTML_BLOCKS = frozenset(("p", "div", "li", "dt", "dd", "td", "th", "pre", "title", "blockquote",
                         "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table"))
DOCX_TOKENS = re.compile(r"(<[^>]+>)")
DOCX_TEXT = "word/document.xml"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass
class Marker:
    """Edits one document of copy ``copy``: renames the tool and inserts numbered markers."""

    copy: int
    every: int = MARK_EVERY
    count: int = 0
    since: int = MARK_EVERY  # characters since the last marker; at ``every`` the next space takes one

    def paragraph(self) -> None:
        """A paragraph starts: its first space takes a marker."""
        self.since = max(self.since, self.every)

    def edit(self, text: str, close: bool = False) -> str:
        """``text`` renamed and marked. ``close`` (the paragraph ends here) also marks its last
        space when text ran on since the last marker, so a chunk that ends with the paragraph
        holds a marker however short it is."""
        text = WORD.sub(lambda m: f"{m.group(1)}it{self.copy}", text)
        spaces = [m.end() for m in INNER_SPACE.finditer(text)]
        pieces, start = [], 0
        for i, at in enumerate(spaces):
            due = self.since + (at - start) >= self.every
            closing = close and i == len(spaces) - 1 and self.since + (len(text) - start) >= CLOSE_AFTER
            if due or closing:
                self.count += 1
                pieces += [text[start:at], f"(c{self.copy}.{self.count}) "]
                self.since, start = 0, at
        self.since += len(text) - start
        pieces.append(text[start:])
        return "".join(pieces)


def edit_lines(text: str, copy: int) -> str:
    """Markdown and plain text: blocks of lines between blank lines are the paragraphs."""
    marker = Marker(copy)
    out = []
    for block in BLANK_LINES.split(text):
        if block.strip():
            marker.paragraph()
            block = marker.edit(block, close=True)
        out.append(block)
    return "".join(out)


def edit_parts(parts: list[tuple[str, str]], copy: int) -> str:
    """Marked-up text as (kind, token) parts: ``text`` is document text, ``break`` a tag that
    starts or ends a paragraph, anything else is kept as it is."""
    closing, last = set(), None
    for i, (kind, token) in enumerate(parts):
        if kind == "text" and token.strip():
            last = i
        elif kind == "break" and last is not None:
            closing.add(last)
            last = None
    closing.add(last)
    marker = Marker(copy)
    out = []
    for i, (kind, token) in enumerate(parts):
        if kind == "break":
            marker.paragraph()
        out.append(marker.edit(token, close=i in closing) if kind == "text" else token)
    return "".join(out)


def edit_html(html: str, copy: int) -> str:
    """HTML: text nodes outside scripts and styles; block elements bound the paragraphs."""
    parts, skipping = [], None
    for token in HTML_TOKENS.split(html):
        if not token.startswith("<"):
            parts.append(("kept" if skipping else "text", token))
            continue
        name = re.match(r"</?\s*([A-Za-z0-9]+)", token)
        tag = name.group(1).lower() if name else ""
        if skipping is None and tag in HTML_SKIP and not token.startswith("</"):
            skipping = tag
        elif skipping == tag and token.startswith("</"):
            skipping = None
        parts.append(("break" if tag in HTML_BLOCKS else "tag", token))
    return edit_parts(parts, copy)


def edit_docx(data: bytes, copy: int) -> bytes:
    """Word: the body's text runs (w:t); w:p elements are the paragraphs. The zip is written
    again with fixed timestamps, so the same copy has the same bytes."""
    source = zipfile.ZipFile(io.BytesIO(data))
    parts, in_text = [], False
    for token in DOCX_TOKENS.split(source.read(DOCX_TEXT).decode("utf-8")):
        if token.startswith("<"):
            in_text = bool(re.match(r"<w:t[ >]", token))
            parts.append(("break" if re.match(r"</?w:p[ >]", token) else "tag", token))
        else:
            parts.append(("text" if in_text else "kept", token))
    body = edit_parts(parts, copy).encode("utf-8")
    edited = io.BytesIO()
    with zipfile.ZipFile(edited, "w") as target:
        for info in source.infolist():
            content = body if info.filename == DOCX_TEXT else source.read(info)
            target.writestr(zipfile.ZipInfo(info.filename, ZIP_TIME), content, compress_type=zipfile.ZIP_DEFLATED)
    return edited.getvalue()


def pdf_pages(data: bytes) -> tuple[list[str], str]:
    """A PDF's page texts as pypdf extracts them (as kbloop's loader reads them), and its title."""
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    title = (reader.metadata.title if reader.metadata else None) or "document"
    return [page.extract_text() or "" for page in reader.pages], title


def edit_pdf(pages: list[str], title: str, copy: int) -> bytes:
    """PDF: each page's text (a paragraph: chunks never cross pages), edited, written as a plain
    PDF of as many pages; the title gains " (copy k)"."""
    marker = Marker(copy)
    edited = []
    for text in pages:
        marker.paragraph()
        edited.append(marker.edit(text, close=True))
    return pdf_bytes(edited, f"{title} (copy {copy})")


def pdf_string(text: str) -> bytes:
    """A PDF literal string in WinAnsi (cp1252), escaped; what cp1252 lacks becomes '?'."""
    out = bytearray(b"(")
    for byte in text.encode("cp1252", errors="replace"):
        if byte in b"()\\":
            out += b"\\" + bytes([byte])
        elif byte < 32 or byte > 126:
            out += f"\\{byte:03o}".encode()
        else:
            out.append(byte)
    return bytes(out + b")")


def pdf_bytes(pages: list[str], title: str) -> bytes:
    """A minimal PDF: one page per text, Courier 8 pt, one line of text per line, sized to fit."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, once the pages' numbers are known
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier /Encoding /WinAnsiEncoding >>",
        b"<< /Title " + pdf_string(title) + b" /Producer (kbloop bench/scale.py) >>",
    ]
    kids = []
    for text in pages:
        lines = text.split("\n")
        width = max(612, 72 + math.ceil(4.8 * max(len(line) for line in lines)))
        height = max(792, 72 + 10 * len(lines))
        content = (f"BT /F1 8 Tf 10 TL 36 {height - 36} Td\n".encode()
                   + b"".join(pdf_string(line) + b" Tj T*\n" for line in lines) + b"ET")
        stream = zlib.compress(content, 6)
        objects.append(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream")
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Resources << /Font << /F1 3 0 R >> >> "
                       b"/Contents %d 0 R >>" % (width, height, len(objects)))
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 4 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@dataclass
class Source:
    """One original document, read once for all its copies."""

    path: Path
    data: bytes

    @cached_property
    def pdf(self) -> tuple[list[str], str]:
        return pdf_pages(self.data)

    def copy(self, copy: int) -> bytes:
        """Copy ``copy`` of the document: its own bytes for copy 0, else edited."""
        if copy == 0:
            return self.data
        suffix = self.path.suffix.lower()
        if suffix in (".md", ".markdown", ".txt"):
            return edit_lines(self.data.decode("utf-8"), copy).encode("utf-8")
        if suffix in (".html", ".htm"):
            return edit_html(self.data.decode("utf-8"), copy).encode("utf-8")
        if suffix == ".docx":
            return edit_docx(self.data, copy)
        if suffix == ".pdf":
            return edit_pdf(*self.pdf, copy)
        raise SystemExit(f"no way to copy {self.path.name}: the corpus generator knows .md .txt .html .docx .pdf")


def make_corpus(source: Path, dest: Path, copies: int) -> list[Path]:
    """``copies`` copies of the documents in ``source``, each in its own folder of ``dest``
    (``copy-000`` holds the documents as they are). Returns the files written."""
    sources = [Source(p, p.read_bytes()) for p in sorted(source.iterdir()) if p.is_file()]
    written = []
    for copy in range(copies):
        folder = dest / COPY_FOLDER.format(copy)
        folder.mkdir(parents=True, exist_ok=True)
        for src in sources:
            target = folder / src.path.name
            target.write_bytes(src.copy(copy))
            written.append(target)
    return written


# -- child processes -------------------------------------------------------------------------

class ChildFailed(Exception):
    """A measured kbloop command exited with an error: that configuration is left out."""


@dataclass
class Measured:
    """One child process: what it printed, how long it ran, and how much memory it held."""

    returncode: int
    stdout: str
    stderr: str
    wall: float
    maxrss_bytes: int  # the process and the descendants it waited for (wait4)
    tree_peak_bytes: int  # sampled: the whole process tree's RSS, summed
    cpu_s: float  # user + system CPU seconds of the process and the descendants it waited for

    def json(self) -> Any:
        if self.returncode != 0:
            raise ChildFailed(f"exit {self.returncode}: {self.stderr.strip()[-2000:]}")
        return json.loads(self.stdout)


def tree_rss(pid: int) -> int:
    """The summed RSS of ``pid`` and its descendants now (0 when it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_child(cmd: list[str], env: dict[str, str], workdir: Path) -> Measured:
    """Run ``cmd``, sampling its process tree's memory, and reap it with ``wait4`` for its peak RSS."""
    out_path, err_path = workdir / "child.stdout", workdir / "child.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=workdir)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(RSS_SAMPLE_SECONDS):
                peak[0] = max(peak[0], tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(proc.returncode, out_path.read_text(), err_path.read_text(errors="replace"), wall,
                    usage.ru_maxrss * 1024, peak[0], usage.ru_utime + usage.ru_stime)


def child_env(engine: str, store: str, ray_workers: int) -> dict[str, str]:
    """The environment of every kbloop child: nothing KBLOOP_* inherited but the model cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBLOOP_")}
    if "KBLOOP_MODEL_CACHE" in os.environ:
        env["KBLOOP_MODEL_CACHE"] = os.environ["KBLOOP_MODEL_CACHE"]
    env.update(OMP_WAIT_POLICY="PASSIVE", KBLOOP_EMBEDDER=EMBEDDER, KBLOOP_INGEST_ENGINE=engine,
               KBLOOP_VECTOR_STORE=store, KBLOOP_RAY_WORKERS=str(ray_workers), TOKENIZERS_PARALLELISM="false")
    return env


def kbloop_command(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "kbloop.cli.main", "--home", str(home), *args]


# -- the probe: a child that opens a home, times a no-op's parts, then searches ----------------

def percentile(samples: list[float], share: float) -> float:
    return float(np.percentile(np.asarray(samples), share * 100)) if samples else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def probe(home_dir: Path, questions: list[str], noop_repeats: int, edit_repeats: int) -> dict:
    """In one process, as the daemon works: what a no-op ingest's parts cost, the chunk counts,
    search latency, then no-op and one-file-edit ingests with the embedder already loaded."""
    from kbloop.config import Home
    from kbloop.ingest.scan import Scan, scan_folder
    from kbloop.kb import KnowledgeBase

    home = Home(home_dir)
    with KnowledgeBase(home) as kb:
        docs = home.docs_dir(kb.settings).resolve()
        scan = Scan()
        _, scan_s = timed(lambda: scan_folder(scan, docs, follow_external=False))
        store, load_s = timed(kb.indexer.location.load)
        _, ids_s = timed(store.ids)
        _, vector_ids_s = timed(kb.manifest.vector_ids)
        _, files_s = timed(kb.manifest.files)
        kb.indexer.store = store
        chunks = kb.manifest.db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT text_hash), COUNT(DISTINCT text) FROM chunks").fetchone()
        _, embedder_load_s = timed(lambda: kb.search(questions[0]))  # loads the embedder: not counted
        total, embed, vector, keyword = [], [], [], []
        for question in questions:
            _, seconds = timed(lambda: kb.search(question))
            total.append(seconds)
            query, seconds = timed(lambda: kb.embedder.embed_query(question))
            embed.append(seconds)
            depth = max(4 * kb.settings.search_k, 20)
            vector.append(timed(lambda: store.search(query, depth))[1])
            keyword.append(timed(lambda: kb.manifest.keyword_search(question, depth))[1])
        search_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        noops = [timed(kb.ingest)[1] for _ in range(noop_repeats)]
        edited = docs / COPY_FOLDER.format(0) / EDITED_FILE
        toggle_edit(edited)
        kb.ingest()  # loads the document parsers, as the daemon's first ingest does: not counted
        edits = []
        for _ in range(edit_repeats):
            toggle_edit(edited)
            counts, seconds = timed(kb.ingest)
            edits.append({"seconds": seconds, "chunks_embedded": counts.chunks_embedded,
                          "files_changed": counts.files_changed})
    ms = lambda samples, share: percentile(samples, share) * 1000  # noqa: E731
    return {
        "files": len(scan.files), "chunks": chunks[0], "distinct_hashes": chunks[1], "distinct_texts": chunks[2],
        "noop_parts_s": {"scan": scan_s, "store_load": load_s, "store_ids": ids_s,
                         "manifest_vector_ids": vector_ids_s, "manifest_files": files_s},
        "embedder_load_s": embedder_load_s,
        "warm": {"noop_s": statistics.median(noops), "noop_samples_s": noops,
                 "edit_s": statistics.median(e["seconds"] for e in edits), "edits": edits},
        "search": {"n": len(questions), "p50_ms": ms(total, 0.5), "p95_ms": ms(total, 0.95),
                   "embed_p50_ms": ms(embed, 0.5), "vector_p50_ms": ms(vector, 0.5),
                   "vector_p95_ms": ms(vector, 0.95), "keyword_p50_ms": ms(keyword, 0.5),
                   "keyword_p95_ms": ms(keyword, 0.95)},
        "search_maxrss_bytes": search_maxrss,
    }


# -- one configuration -------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    scale: int
    engine: str
    store: str

    @property
    def label(self) -> str:
        return f"{self.scale}x {self.engine}/{self.store}"

    @property
    def series(self) -> str:
        return f"{self.engine}/{self.store}"


@dataclass
class Options:
    kbdev: Path
    queries: int
    ray_workers: int
    noop_repeats: int
    edit_repeats: int


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def toggle_edit(path: Path) -> None:
    """The one-line edit: EDIT_OLD becomes EDIT_NEW, or back when it was made already."""
    text = path.read_text(encoding="utf-8")
    old, new = (EDIT_NEW, EDIT_OLD) if EDIT_NEW in text else (EDIT_OLD, EDIT_NEW)
    if text.count(old) != 1:
        raise SystemExit(f"expected exactly one {old!r} in {path}, found {text.count(old)}")
    path.write_text(text.replace(old, new), encoding="utf-8")


def questions(kbdev: Path, n: int) -> list[str]:
    """The first ``n`` of kbdev's answerable questions (repeated when ``n`` is larger)."""
    items = [json.loads(line)["question"] for line in (kbdev / "qa_initial.jsonl").read_text().splitlines() if line]
    return [items[i % len(items)] for i in range(n)]


def ingest_once(home: Path, env: dict[str, str], workdir: Path) -> dict:
    measured = run_child(kbloop_command(home, "ingest", "--json"), env, workdir)
    counts = measured.json()
    return {"seconds": counts["seconds"], "wall": measured.wall, "cpu_s": measured.cpu_s,
            "maxrss_bytes": measured.maxrss_bytes,
            "tree_peak_bytes": measured.tree_peak_bytes,
            "counts": {k: v for k, v in counts.items() if k not in ("seconds", "failures")},
            "failures": counts["failures"]}


def measure_config(config: Config, corpus: Path, workdir: Path, options: Options) -> dict:
    from kbloop.config import init_home

    home = init_home(workdir / config.label.replace(" ", "-").replace("/", "-"))
    docs = home.root / "docs"
    shutil.copytree(corpus, docs, dirs_exist_ok=True)
    env = child_env(config.engine, config.store, options.ray_workers)
    time.sleep(SETTLE_SECONDS)

    full = ingest_once(home.root, env, workdir)
    chunks = full["counts"]["chunks_embedded"] + full["counts"]["chunks_reused"]
    full["chunks_per_s"] = full["counts"]["chunks_embedded"] / full["seconds"]
    print(f"  full ingest: {full['seconds']:.1f} s ({full['wall']:.1f} s wall, {full['cpu_s']:.0f} CPU s), "
          f"{chunks} chunks "
          f"({full['counts']['chunks_reused']} reused), {full['chunks_per_s']:.1f} chunks/s, "
          f"peak RSS {full['maxrss_bytes'] / 2**20:.0f} MiB (tree {full['tree_peak_bytes'] / 2**20:.0f} MiB)")
    if full["failures"]:
        print(f"  {len(full['failures'])} files failed, e.g. {full['failures'][0]}")

    noops = [ingest_once(home.root, env, workdir) for _ in range(options.noop_repeats)]
    noop = {"samples_s": [r["seconds"] for r in noops], "walls": [r["wall"] for r in noops],
            "seconds": statistics.median(r["seconds"] for r in noops),
            "wall": statistics.median(r["wall"] for r in noops), "counts": noops[-1]["counts"]}
    noop["ratio"] = noop["seconds"] / full["seconds"]
    print(f"  no-op re-ingest: {noop['seconds'] * 1000:.0f} ms ({noop['wall']:.1f} s wall), "
          f"{noop['ratio']:.5f} of the full ingest")

    edited = docs / COPY_FOLDER.format(0) / EDITED_FILE
    edits = []
    for _ in range(options.edit_repeats):
        toggle_edit(edited)
        edits.append(ingest_once(home.root, env, workdir))
    edit = {"samples_s": [r["seconds"] for r in edits], "walls": [r["wall"] for r in edits],
            "seconds": statistics.median(r["seconds"] for r in edits),
            "wall": statistics.median(r["wall"] for r in edits), "counts": edits[-1]["counts"]}
    print(f"  one-file edit re-ingest: {edit['seconds'] * 1000:.0f} ms ({edit['wall']:.1f} s wall); "
          f"embedded {edit['counts']['chunks_embedded']}, reused {edit['counts']['chunks_reused']}")

    probe_cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", str(home.root), "--kbdev",
                 str(options.kbdev), "--queries", str(options.queries), "--repeats",
                 f"{options.noop_repeats},{options.edit_repeats}"]
    probed = run_child(probe_cmd, env, workdir).json()
    warm = probed["warm"]
    print(f"  in one process, embedder loaded ({probed['embedder_load_s']:.1f} s to load): no-op "
          f"{warm['noop_s'] * 1000:.0f} ms, one-file edit {warm['edit_s'] * 1000:.0f} ms")
    parts = probed["noop_parts_s"]
    print("  a no-op's parts: " + ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in parts.items()))
    search = probed["search"]
    print(f"  search: p50 {search['p50_ms']:.1f} ms, p95 {search['p95_ms']:.1f} ms over {search['n']} queries "
          f"(vector p50 {search['vector_p50_ms']:.2f} ms, keyword p50 {search['keyword_p50_ms']:.2f} ms)")
    disk = {"data_bytes": folder_bytes(home.data_dir), "store_bytes": folder_bytes(home.vector_store_dir)}
    print(f"  disk: data {disk['data_bytes'] / 2**20:.1f} MiB, vector store {disk['store_bytes'] / 2**20:.1f} MiB")
    if probed["distinct_texts"] != probed["chunks"] or full["counts"]["chunks_reused"]:
        print(f"  NOTE: {probed['chunks'] - probed['distinct_texts']} chunk texts repeat, "
              f"{full['counts']['chunks_reused']} vectors were reused by hash")
    return {"scale": config.scale, "engine": config.engine, "store": config.store, "home": str(home.root),
            "files": probed["files"], "chunks": chunks, "distinct_hashes": probed["distinct_hashes"],
            "distinct_texts": probed["distinct_texts"], "full": full, "noop": noop, "edit": edit,
            "noop_parts_s": parts, "embedder_load_s": probed["embedder_load_s"], "warm": warm,
            "search": search, "search_maxrss_bytes": probed["search_maxrss_bytes"], "disk": disk}


# -- growth ------------------------------------------------------------------------------------

MEASURES: dict[str, Callable[[dict], float]] = {
    "full ingest s": lambda r: r["full"]["seconds"],
    "full ingest CPU s": lambda r: r["full"].get("cpu_s", 0.0),
    "chunks/s": lambda r: r["full"]["chunks_per_s"],
    "no-op s": lambda r: r["noop"]["seconds"],
    "no-op / full": lambda r: r["noop"]["ratio"],
    "edit s": lambda r: r["edit"]["seconds"],
    "no-op s, warm": lambda r: r["warm"]["noop_s"],
    "edit s, warm": lambda r: r["warm"]["edit_s"],
    "search p50": lambda r: r["search"]["p50_ms"],
    "search p95": lambda r: r["search"]["p95_ms"],
    "vector search p50": lambda r: r["search"]["vector_p50_ms"],
    "keyword search p50": lambda r: r["search"]["keyword_p50_ms"],
    "scan s": lambda r: r["noop_parts_s"]["scan"],
    "store load s": lambda r: r["noop_parts_s"]["store_load"],
    "ingest peak RSS": lambda r: r["full"]["maxrss_bytes"],
    "disk (data + store)": lambda r: r["disk"]["data_bytes"] + r["disk"]["store_bytes"],
}


def growth_exponent(sizes: list[float], values: list[float]) -> float | None:
    """The slope of log(value) against log(size): 1 grows linearly, 0 stays flat. Values that are
    not positive (not measured) are left out; None when fewer than two sizes are left."""
    points = [(math.log(s), math.log(v)) for s, v in zip(sizes, values) if s > 0 and v > 0]
    if len({x for x, _ in points}) < 2:
        return None
    xs, ys = zip(*points)
    return float(np.polyfit(xs, ys, 1)[0])


def exponents(results: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per engine/store pair, each measure's growth exponent over the scales it was measured at."""
    series: dict[str, list[dict]] = {}
    for result in results:
        series.setdefault(f"{result['engine']}/{result['store']}", []).append(result)
    return {name: {measure: growth_exponent([r["chunks"] for r in rows], [fn(r) for r in rows])
                   for measure, fn in MEASURES.items()}
            for name, rows in series.items()}


def results_table(results: list[dict]) -> str:
    lines = ["| scale | engine / store | files | chunks | full ingest | chunks/s | no-op re-ingest (/ full) "
             "| one-file edit | no-op / edit, warm | search p50 / p95 | ingest peak RSS | disk: data + store |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(
            f"| {r['scale']}x | {r['engine']} / {r['store']} | {r['files']} | {r['chunks']} "
            f"| {r['full']['seconds']:.1f} s ({r['full'].get('cpu_s', 0):.0f} CPU s) | {r['full']['chunks_per_s']:.1f} "
            f"| {r['noop']['seconds'] * 1000:.0f} ms ({r['noop']['ratio']:.4f}) | {r['edit']['seconds'] * 1000:.0f} ms "
            f"| {r['warm']['noop_s'] * 1000:.0f} / {r['warm']['edit_s'] * 1000:.0f} ms "
            f"| {r['search']['p50_ms']:.1f} / {r['search']['p95_ms']:.1f} ms "
            f"| {r['full']['maxrss_bytes'] / 2**20:.0f} MiB "
            f"| {r['disk']['data_bytes'] / 2**20:.1f} + {r['disk']['store_bytes'] / 2**20:.1f} MiB |")
    return "\n".join(lines)


def exponents_table(growth: dict[str, dict[str, float | None]]) -> str:
    names = list(growth)
    lines = ["| measure | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for measure in MEASURES:
        cells = [growth[name][measure] for name in names]
        lines.append(f"| {measure} | " + " | ".join("–" if c is None else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


# -- approximate search ------------------------------------------------------------------------

def load_home_vectors(home_dir: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """The vectors of a FAISS home, with each one's file path and chunk text, in the same order."""
    import faiss

    from kbloop.config import Home
    from kbloop.kb import KnowledgeBase
    from kbloop.vector_store.faiss_store import FaissStore

    home = Home(home_dir)
    store = FaissStore.load(home.vector_store_dir)
    inner = faiss.downcast_index(store.index.index)
    vectors = inner.reconstruct_n(0, inner.ntotal)
    with KnowledgeBase(home) as kb:
        chunks = {c.vector_id: (path, c.text) for path, c in kb.manifest.indexed_chunks()}
    rows = [chunks[int(i)] for i in store.ids()]
    return vectors, [p for p, _ in rows], [t for _, t in rows]


def copy_cosine(vectors: np.ndarray, paths: list[str]) -> float | None:
    """Median, over copy 1's vectors, of the best cosine with any vector of copy 0: how near a
    copy's chunks sit to their originals. None with one copy only."""
    first = [i for i, p in enumerate(paths) if p.startswith(COPY_FOLDER.format(0) + "/")]
    second = [i for i, p in enumerate(paths) if p.startswith(COPY_FOLDER.format(1) + "/")]
    if not first or not second:
        return None
    return float(np.median((vectors[second] @ vectors[first].T).max(axis=1)))


def replicate(vectors: np.ndarray, target: int, cosine: float, seed: int = 0) -> np.ndarray:
    """``vectors`` and noisy copies of them up to ``target`` rows, each copy at about ``cosine``
    to its original (Gaussian noise of the matching size, then unit length again)."""
    rng = np.random.default_rng(seed)
    n, dim = vectors.shape
    sigma = math.sqrt(max(1.0 / cosine**2 - 1.0, 0.0) / dim)
    parts, have = [vectors], n
    while have < target:
        take = min(n, target - have)
        noisy = vectors[:take] + rng.normal(0.0, sigma, size=(take, dim)).astype(np.float32)
        parts.append(noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
        have += take
    return np.ascontiguousarray(np.vstack(parts), dtype=np.float32)


def rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def query_latencies(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple[list[float], np.ndarray]:
    """One query at a time, as kbloop searches: each one's seconds, and the ids found."""
    found, seconds = [], []
    for query in queries:
        ids, spent = timed(lambda: search(query.reshape(1, -1)))
        found.append(ids[0])
        seconds.append(spent)
    return seconds, np.vstack(found)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


def ann_row(name: str, build_s: float, rss_delta: int, index: Any, seconds: list[float], recall: float | None) -> dict:
    import faiss

    return {"index": name, "build_s": build_s, "index_bytes": int(faiss.serialize_index(index).size),
            "rss_delta_bytes": rss_delta, "p50_ms": percentile(seconds, 0.5) * 1000,
            "p95_ms": percentile(seconds, 0.95) * 1000, "recall_at_10": recall}


def compare_ann(vectors: np.ndarray, queries: np.ndarray) -> list[dict]:
    """Flat (exact) against HNSW and IVF on the same vectors and queries."""
    import faiss

    n, dim = vectors.shape
    rows = []
    before = rss_now()
    flat, build = timed(lambda: _built(faiss.IndexFlatIP(dim), vectors))
    seconds, truth = query_latencies(lambda q: flat.search(q, ANN_K)[1], queries)
    rows.append(ann_row("flat (exact)", build, rss_now() - before, flat, seconds, 1.0))

    before = rss_now()

    def hnsw_index() -> Any:
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return _built(index, vectors)

    hnsw, build = timed(hnsw_index)
    delta = rss_now() - before
    for ef in HNSW_EF_SEARCH:
        hnsw.hnsw.efSearch = ef
        seconds, found = query_latencies(lambda q: hnsw.search(q, ANN_K)[1], queries)
        rows.append(ann_row(f"HNSW M={HNSW_M} efSearch={ef}", build, delta, hnsw, seconds, recall_at(found, truth)))
    del hnsw

    nlist = max(1, int(4 * math.sqrt(n)))
    before = rss_now()

    def ivf_index() -> Any:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        return _built(index, vectors)

    ivf, build = timed(ivf_index)
    delta = rss_now() - before
    for nprobe in IVF_NPROBE:
        ivf.nprobe = nprobe
        seconds, found = query_latencies(lambda q: ivf.search(q, ANN_K)[1], queries)
        rows.append(ann_row(f"IVF nlist={nlist} nprobe={nprobe}", build, delta, ivf, seconds,
                            recall_at(found, truth)))
    return rows


def _built(index: Any, vectors: np.ndarray) -> Any:
    index.add(vectors)
    return index


def run_ann(results: list[dict], kbdev: Path, n_questions: int, full_scale: int, seed: int = 0) -> dict | None:
    """The approximate-search comparison on the largest FAISS home measured, at ``full_scale``
    times kbdev's size (replicating that home's vectors when it is smaller)."""
    from kbloop import models
    from kbloop.config import Home

    homes = sorted((r for r in results if r["store"] == "faiss"), key=lambda r: (r["scale"], r["engine"] != "local"))
    if not homes:
        print("\nApproximate search: skipped (no FAISS home was measured)")
        return None
    source = homes[-1]
    vectors, paths, texts = load_home_vectors(Path(source["home"]))
    target = len(vectors) * full_scale // source["scale"]
    if source["scale"] >= full_scale:
        how = f"the {source['scale']}x corpus's own {len(vectors)} vectors"
        cosine = None
    else:
        measured = copy_cosine(vectors, paths)
        cosine = measured if measured is not None else DEFAULT_COPY_COSINE
        how = (f"the {source['scale']}x corpus's {len(vectors)} vectors replicated with noise to {target} "
               f"(the {full_scale}x size), each noisy copy at cosine {cosine:.3f} to its original "
               + ("(the median copy-to-original cosine measured in that corpus)" if measured is not None
                  else "(assumed: one copy only, nothing to measure)"))
        vectors = replicate(vectors, target, cosine, seed)
    embedder = models.create("embedder", EMBEDDER, Home(Path(source["home"])).load_settings())
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(texts), size=min(ANN_RANDOM_QUERIES, len(texts)), replace=False)
    queries = np.vstack([np.vstack([embedder.embed_query(q) for q in questions(kbdev, n_questions)]),
                         embedder.embed([texts[i] for i in picked])]).astype(np.float32)
    print(f"\nApproximate search on {how}; {len(queries)} queries ({n_questions} questions, "
          f"{len(picked)} random chunk texts), k={ANN_K}")
    rows = compare_ann(vectors, queries)
    print(ann_table(rows))
    return {"source": source["home"], "source_scale": source["scale"], "vectors": int(len(vectors)),
            "how": how, "copy_cosine": cosine, "queries": int(len(queries)), "rows": rows}


def ann_table(rows: list[dict]) -> str:
    lines = ["| index | recall@10 vs flat | query p50 / p95 | build | index size | RSS growth |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['index']} | {r['recall_at_10']:.3f} | {r['p50_ms']:.2f} / {r['p95_ms']:.2f} ms "
                     f"| {r['build_s']:.1f} s | {r['index_bytes'] / 2**20:.0f} MiB "
                     f"| {r['rss_delta_bytes'] / 2**20:.0f} MiB |")
    return "\n".join(lines)


# -- the run -----------------------------------------------------------------------------------

def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def plan(args: argparse.Namespace) -> tuple[list[Config], list[str]]:
    """The configurations to measure, in order, and notes on what was left out and why."""
    notes = []
    engines = list(args.ingest_engines)
    ray_ready = importlib.util.find_spec("ray") and importlib.util.find_spec("kbloop.ingest.ray_engine")
    if "ray" in engines and not ray_ready:
        engines.remove("ray")
        notes.append("ray engine skipped: Ray or kbloop.ingest.ray_engine is not importable")
    configs = []
    for scale in args.scales:
        for engine in engines:
            for store in args.stores:
                if store == "qdrant" and scale not in args.qdrant_scales:
                    continue
                if engine == "ray" and scale not in args.ray_scales:
                    continue
                configs.append(Config(scale, engine, store))
    skipped_qdrant = [s for s in args.scales if "qdrant" in args.stores and s not in args.qdrant_scales]
    if skipped_qdrant:
        notes.append(f"qdrant not measured at {', '.join(f'{s}x' for s in skipped_qdrant)}: embedded Qdrant writes "
                     "about 14 ms per vector (--qdrant-scales)")
    skipped_ray = [s for s in args.scales if "ray" in engines and s not in args.ray_scales]
    if skipped_ray:
        notes.append(f"ray not measured at {', '.join(f'{s}x' for s in skipped_ray)} (--ray-scales)")
    return configs, notes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kbdev", type=Path, default=DEFAULT_KBDEV,
                        help=f"the kbdev benchmark folder (default: {DEFAULT_KBDEV})")
    parser.add_argument("--scales", type=int_list, default=[1, 10, 100],
                        help="copies of kbdev's initial documents, comma-separated (default: 1,10,100)")
    parser.add_argument("--ingest-engines", type=name_list, default=["local"],
                        help="local and/or ray, comma-separated (default: local; ray runs with --ray-workers)")
    parser.add_argument("--stores", type=name_list, default=["faiss", "qdrant"],
                        help="faiss and/or qdrant (embedded), comma-separated (default: faiss,qdrant)")
    parser.add_argument("--qdrant-scales", type=int_list, default=[1, 10],
                        help="scales at which qdrant is measured (default: 1,10; it writes ~14 ms per vector)")
    parser.add_argument("--ray-scales", type=int_list, default=None,
                        help="scales at which the ray engine is measured (default: all of --scales)")
    parser.add_argument("--ray-workers", type=int, default=2, help="KBLOOP_RAY_WORKERS for the ray engine (default: 2)")
    parser.add_argument("--queries", type=int, default=40,
                        help="search queries per home (default: 40, kbdev's questions)")
    parser.add_argument("--no-ann", action="store_true", help="leave out the approximate-search comparison")
    parser.add_argument("--ann-scale", type=int, default=ANN_FULL_SCALE,
                        help=f"compare search indexes at this many times kbdev's size (default: {ANN_FULL_SCALE})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1x only, local engine, FAISS, 10 queries, one no-op and one edit, "
                             "search indexes compared at 2x")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="empty or new folder for the corpora and homes (default: a temporary folder, "
                             "deleted at the end unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--json", action="store_true", help="also print all results as JSON")
    parser.add_argument("--out", type=Path, default=None, help="write all results as JSON to this file")
    parser.add_argument("--probe", type=Path, default=None, help=argparse.SUPPRESS)  # the child's mode
    parser.add_argument("--repeats", type=int_list, default=[NOOP_REPEATS, EDIT_REPEATS], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.scales, args.ingest_engines, args.stores, args.queries, args.ann_scale = [1], ["local"], ["faiss"], 10, 2
    args.ray_scales = args.scales if args.ray_scales is None else args.ray_scales
    for engine in args.ingest_engines:
        if engine not in ("local", "ray"):
            parser.error(f"unknown ingest engine {engine!r}: local or ray")
    for store in args.stores:
        if store not in ("faiss", "qdrant"):
            parser.error(f"unknown store {store!r}: faiss or qdrant")
    return args


def run(args: argparse.Namespace, workdir: Path) -> dict:
    configs, notes = plan(args)
    source = args.kbdev / "corpus" / "initial"
    base_files = len([p for p in source.iterdir() if p.is_file()])
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"kbdev: {args.kbdev} ({base_files} initial documents); workdir: {workdir}")
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    for note in notes:
        print(f"note: {note}")
    quick = args.quick
    options = Options(args.kbdev.resolve(), args.queries, args.ray_workers,
                      1 if quick else NOOP_REPEATS, 1 if quick else EDIT_REPEATS)
    results = []
    for scale in sorted({c.scale for c in configs}):
        corpus = workdir / f"corpus-{scale}x"
        files, seconds = timed(lambda: make_corpus(source, corpus, scale))
        print(f"\n{scale}x corpus: {len(files)} files, {folder_bytes(corpus) / 2**20:.1f} MiB, made in {seconds:.1f} s")
        for config in (c for c in configs if c.scale == scale):
            print(f"\n{config.label}")
            try:
                results.append(measure_config(config, corpus, workdir, options))
            except ChildFailed as exc:
                notes.append(f"{config.label} left out: a command failed ({exc})")
                print(f"  FAILED, left out: {exc}")
    growth = exponents(results)
    print("\n## Results\n")
    print(results_table(results))
    print("\n## Growth exponents (slope of log(measure) against log(chunks))\n")
    print(exponents_table(growth))
    ann = None if args.no_ann else run_ann(results, args.kbdev, min(args.queries, 40), args.ann_scale)
    return {"started": started.isoformat(timespec="seconds"), "load_average_start": os.getloadavg(),
            "cpus": os.cpu_count(), "notes": notes, "results": results, "exponents": growth, "ann": ann}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.probe is not None:
        print(json.dumps(probe(args.probe, questions(args.kbdev, args.queries), *args.repeats)))
        return
    if not (args.kbdev / "corpus" / "initial").is_dir():
        raise SystemExit(f"{args.kbdev} has no corpus/initial folder: pass --kbdev")
    with bench_workdir(args.workdir, args.keep, prefix="kbloop-bench-scale-") as workdir:
        results = run(args, workdir)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    if args.json:
        print("\n" + json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
