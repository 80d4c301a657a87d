"""Freshness benchmark: seconds from a file landing in docs/ to it being searchable via the daemon.

Starts ``kbloop daemon`` as a subprocess on a temporary home (default settings unless
``--debounce`` is given), drops one warm-up file whose time includes the daemon loading its
embedder (not counted), then drops files one at a time. For each file the clock starts just
before it is written, and stops when the manifest shows it indexed with exactly these bytes
and ``KnowledgeBase.search`` for its sentence ranks it first (polled every 50 ms, with the
embedder of this process loaded before any timing). The next file is dropped only after the
previous one is found. Prints every latency, then p50 and p95 (nearest rank).

The debounce (default 1.0 s of quiet) is part of what is measured: it is the floor.
The machine may be shared and noisy. Run it from the repository root:

    python bench/freshness.py [--files 20] [--debounce SECONDS] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kbloop import models
from kbloop.config import Home, init_home
from kbloop.daemon_state import daemon_status
from kbloop.kb import KnowledgeBase

EMBEDDER = "local:all-minilm-l6-v2"
POLL_SECONDS = 0.05
TIMEOUT_SECONDS = 120
CODEWORDS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "heron", "indigo", "jasper",
             "kestrel", "lagoon", "marble", "nectar", "onyx", "pewter", "quartz", "russet", "sable", "tundra",
             "umber", "vellum", "willow", "xenon", "yarrow", "zephyr"]


def sentence(i: int) -> str:
    word = CODEWORDS[i % len(CODEWORDS)]
    return f"The storeroom behind gate {word}-{i} keeps {i + 3} spare {word} lanterns for the night ferry."


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was actually measured."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def indexed_sha(home: Home, rel: str) -> str | None:
    try:
        with sqlite3.connect(f"file:{home.manifest_path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT sha256 FROM files WHERE path = ? AND status = 'indexed'", (rel,)).fetchone()
    except sqlite3.OperationalError:
        return None
    return row[0] if row else None


def searchable(home: Home, embedder, rel: str, text: str, sha: str) -> bool:
    if indexed_sha(home, rel) != sha:  # cheap first; search only once the manifest has it
        return False
    with KnowledgeBase(home, embedder=embedder) as kb:  # a new one each time: it caches the store
        hits = kb.search(text, 1)
    return bool(hits) and hits[0].path == rel


def drop_and_wait(home: Home, embedder, i: int, proc: subprocess.Popen) -> float:
    """Write file ``i`` and return the seconds until it is searchable."""
    rel, text = f"fresh-{i:03d}.md", sentence(i)
    data = f"# Note {i}\n\n{text}\n".encode()
    sha = hashlib.sha256(data).hexdigest()
    start = time.perf_counter()
    (home.docs_dir(home.load_settings()) / rel).write_bytes(data)
    while not searchable(home, embedder, rel, text, sha):
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode}")
        if time.perf_counter() - start > TIMEOUT_SECONDS:
            raise SystemExit(f"{rel} was not searchable after {TIMEOUT_SECONDS} s")
        time.sleep(POLL_SECONDS)
    return time.perf_counter() - start


def start_daemon(home: Home, debounce: float | None, log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBLOOP_")}
    env |= {"KBLOOP_HOME": str(home.root), "OMP_WAIT_POLICY": "PASSIVE"}
    if debounce is not None:
        env["KBLOOP_DEBOUNCE_SECONDS"] = str(debounce)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kbloop.cli.main", "daemon"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while daemon_status(home.data_dir).get("state") != "running" or daemon_status(home.data_dir)["current"]:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not start; see {log_path}")
        time.sleep(POLL_SECONDS)
    return proc


def run(n_files: int, debounce: float | None, workdir: Path) -> dict:
    home = init_home(workdir / "kb")
    settings = home.load_settings()
    t0 = time.perf_counter()
    embedder = models.create("embedder", EMBEDDER, settings)
    embedder.embed(["warm up"])
    print(f"workdir: {workdir}")
    print(f"bench process embedder loaded in {time.perf_counter() - t0:.2f} s (not counted)")
    proc = start_daemon(home, debounce, workdir / "daemon.stderr")
    try:
        warm = drop_and_wait(home, embedder, 0, proc)
        print(f"daemon pid {proc.pid}, debounce {debounce if debounce is not None else settings.debounce_seconds} s; "
              f"warm-up file (daemon loads its embedder) {warm:.2f} s (not counted)")
        samples = []
        for i in range(1, n_files + 1):
            samples.append(drop_and_wait(home, embedder, i, proc))
            print(f"  file {i:2d}: {samples[-1]:.3f} s")
    finally:
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(60)
    results = {
        "files": n_files, "debounce_seconds": debounce if debounce is not None else settings.debounce_seconds,
        "samples": [round(s, 4) for s in samples], "p50": percentile(samples, 0.50),
        "p95": percentile(samples, 0.95), "mean": statistics.fmean(samples), "max": max(samples),
        "daemon_exit_code": exit_code,
    }
    print(f"\nfreshness over {n_files} files: p50 {results['p50']:.3f} s, p95 {results['p95']:.3f} s "
          f"(mean {results['mean']:.3f} s, max {results['max']:.3f} s); daemon exit code {exit_code}")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20, help="files dropped one at a time (default 20)")
    parser.add_argument("--debounce", type=float, default=None,
                        help="KBLOOP_DEBOUNCE_SECONDS for the daemon (default: the setting's default)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to make the temporary home")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--json", action="store_true", help="also print all results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kbloop-freshness-", dir=args.workdir))
    try:
        results = run(args.files, args.debounce, workdir)
    finally:
        if args.keep:
            print(f"\nkept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print("\n" + json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
