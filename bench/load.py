"""Load test of the HTTP API: ``GET /api/search`` from concurrent clients over loopback.

Makes a temporary home from the kbdev corpus (``../shared/kbdev/corpus/initial``, the git
manual; the bundled samples when it is absent), ingests it with ``kbloop ingest``, and starts
``kbloop serve --port 0`` as a separate process, so clients and server do not share one
interpreter. One warm-up search loads the server's embedder and is not counted. Then
``--clients`` threads, each with its own keep-alive connection, send ``--requests`` searches
in all (questions from the corpus's question set, round robin), stopping early at
``--max-seconds``. Prints requests/s, p50/p95/max latency (nearest rank) and the errors: any
status other than 200, or a failed connection.

The machine may be shared and noisy. Run it from the repository root:

    python bench/load.py [--requests 400] [--clients 8] [--max-seconds 60] [--url URL] [--json]

``--url`` measures a server that is already running instead of starting one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from workdir import bench_workdir

REPO = Path(__file__).resolve().parent.parent
KBDEV = REPO.parent / "shared" / "kbdev"
SAMPLES = REPO / "kbloop" / "samples"
FALLBACK_QUERIES = ["default port", "how long does an invitation last", "restore a backup", "listen_port",
                    "the server does not start", "where is the configuration file", "mDNS discovery"]


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was actually measured."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def kbloop(*args: str) -> list[str]:
    return [sys.executable, "-m", "kbloop.cli.main", *args]


def server_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBLOOP_")}
    return env | {"KBLOOP_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE"}


def corpus_and_queries() -> tuple[Path, list[str]]:
    corpus = KBDEV / "corpus" / "initial"
    questions = KBDEV / "qa_initial.jsonl"
    if corpus.is_dir() and questions.is_file():
        lines = questions.read_text(encoding="utf-8").splitlines()
        return corpus, [json.loads(line)["question"] for line in lines if line.strip()]
    return SAMPLES, FALLBACK_QUERIES


@contextmanager
def started_server(workdir: Path) -> Iterator[tuple[str, dict]]:
    """A fresh home with the corpus ingested, served by `kbloop serve` in its own process."""
    home = workdir / "kb"
    env = server_env(home)
    corpus, _ = corpus_and_queries()
    subprocess.run(kbloop("init", str(home)), env=env, check=True, stdout=subprocess.DEVNULL)
    for item in corpus.iterdir():
        if item.is_file() and item.suffix in (".md", ".txt", ".html", ".htm", ".pdf", ".docx"):
            shutil.copyfile(item, home / "docs" / item.name)
    started = time.perf_counter()
    done = subprocess.run(kbloop("ingest", "--json"), env=env, check=True, capture_output=True, text=True)
    counts = json.loads(done.stdout)
    info = {"corpus": str(corpus), "files": counts["files_added"], "chunks": counts["chunks_embedded"]
            + counts["chunks_reused"], "ingest_s": round(time.perf_counter() - started, 1)}
    proc = subprocess.Popen(kbloop("serve", "--port", "0"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise SystemExit("kbloop serve did not start")
        yield url, info
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_load(url: str, queries: list[str], requests: int, clients: int, max_seconds: float) -> dict:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    next_index = iter(range(requests))
    deadline = time.perf_counter() + max_seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                started = time.perf_counter()
                try:
                    response = http.get("/api/search", params={"q": queries[i % len(queries)], "k": 5})
                    failure = None if response.status_code == 200 else f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    failure = exc.__class__.__name__
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if failure:
                        errors[failure] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "requests": len(latencies), "clients": clients, "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 1) if wall else 0.0,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1) if latencies else None,
        "p95_ms": round(percentile(latencies, 0.95) * 1000, 1) if latencies else None,
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "errors": sum(errors.values()), "error_kinds": dict(errors),
        "stopped_by_time_cap": len(latencies) < requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="searches in all (default 400)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop sending after this long (default 60)")
    parser.add_argument("--url", help="measure this running server instead of starting one")
    parser.add_argument("--workdir", type=Path, help="an empty folder to work in (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    _, queries = corpus_and_queries()

    def measure(url: str, info: dict) -> None:
        warm = httpx.get(f"{url}/api/search", params={"q": queries[0]}, timeout=120)
        warm.raise_for_status()
        result = info | run_load(url, queries, args.requests, args.clients, args.max_seconds)
        if args.json:
            print(json.dumps(result, indent=2))
            return
        for key in ("corpus", "files", "chunks", "ingest_s"):
            if key in result:
                print(f"{key:>10}: {result[key]}")
        print(f"{'load':>10}: {result['requests']} searches from {result['clients']} clients in {result['seconds']} s"
              + (" (stopped by the time cap)" if result["stopped_by_time_cap"] else ""))
        print(f"{'rate':>10}: {result['requests_per_s']} requests/s")
        print(f"{'latency':>10}: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, max {result['max_ms']} ms")
        print(f"{'errors':>10}: {result['errors']}" + (f" {result['error_kinds']}" if result["errors"] else ""))

    if args.url:
        measure(args.url.rstrip("/"), {})
        return
    with bench_workdir(args.workdir, args.keep, "kbloop-load-") as workdir, started_server(workdir) as (url, info):
        measure(url, info)


if __name__ == "__main__":
    main()
