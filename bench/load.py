"""Load test of the HTTP API: ``GET /api/search`` from concurrent clients over loopback.

Makes a temporary home from the kbdev corpus (``../shared/kbdev/corpus/initial``, the git
manual; the bundled samples when it is absent), ingests it with ``kbloop ingest``, and starts
``kbloop serve --port 0`` as a separate process, so clients and server do not share one
interpreter. One warm-up search loads the server's embedder and is not counted. Then
``--clients`` threads, each with its own keep-alive connection, send ``--requests`` searches
in all (questions from the corpus's question set, round robin), stopping early at
``--max-seconds``. Prints requests/s, p50/p95/max latency (nearest rank) and the errors: any
status other than 200, or a failed connection.

``--mixed`` sends three kinds of request at once for ``--max-seconds``: searches from
``--clients`` threads as above; answers (``POST /v1/chat/completions``, one client, since the
server generates one answer at a time), from ``local:smollm2-135m`` with answer checks off when
the benchmark starts the server; and ingests (``POST /api/ingest``, one client) that each
follow an edit of a probe document the benchmark writes into the docs folder and removes at
the end, timed until the job is done. It reports requests, errors and p50/p95 latency per kind;
an error is an unexpected status, a failed connection, or an ingest job that failed.

The machine may be shared and noisy. Run it from the repository root:

    python bench/load.py [--requests 400] [--clients 8] [--max-seconds 60] [--url URL] [--mixed] [--json]

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
# Answers come from the smallest packaged model, kept short, so the mix stays cheap.
ANSWER_ENV = {"KBLOOP_GENERATOR": "local:smollm2-135m", "KBLOOP_VERIFY_ANSWERS": "false",
              "KBLOOP_MAX_NEW_TOKENS": "48"}
PROBE = "kbloop-load-probe.md"
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
def started_server(workdir: Path, extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, dict]]:
    """A fresh home with the corpus ingested, served by `kbloop serve` in its own process."""
    home = workdir / "kb"
    env = server_env(home) | (extra_env or {})
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
    with serving(env) as url:
        yield url, info


@contextmanager
def serving(env: dict[str, str]) -> Iterator[str]:
    """``kbloop serve`` on a free loopback port, in its own process with ``env``: its URL."""
    proc = subprocess.Popen(kbloop("serve", "--port", "0"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise SystemExit("kbloop serve did not start")
        yield url
    finally:
        interrupt(proc, 60)


def interrupt(proc: subprocess.Popen, grace: float) -> None:
    """Stop ``proc`` as Ctrl-C would; kill it if it is still there after ``grace`` seconds."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace)
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


def latency_stats(latencies: list[float], errors: Counter[str]) -> dict:
    """Requests, errors and nearest-rank latencies of one kind of request."""
    return {
        "requests": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1) if latencies else None,
        "p95_ms": round(percentile(latencies, 0.95) * 1000, 1) if latencies else None,
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "errors": sum(errors.values()), "error_kinds": dict(errors),
    }


class Mix:
    """Latencies and errors per kind of request, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {"search": [], "answer": [], "ingest": []}
        self.errors: dict[str, Counter[str]] = {kind: Counter() for kind in self.latencies}

    def record(self, kind: str, seconds: float, failure: str | None) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)
            if failure:
                self.errors[kind][failure] += 1

    def timed(self, kind: str, call) -> None:
        """Run ``call`` (which returns a failure or None) and record how long it took."""
        started = time.perf_counter()
        try:
            failure = call()
        except httpx.HTTPError as exc:
            failure = exc.__class__.__name__
        except (KeyError, ValueError) as exc:  # a reply without the fields the API documents
            failure = f"unexpected reply ({exc.__class__.__name__}: {exc})"
        self.record(kind, time.perf_counter() - started, failure)


def status_failure(response: httpx.Response) -> str | None:
    return None if response.status_code == 200 else f"HTTP {response.status_code}"


def ask(http: httpx.Client, question: str) -> str | None:
    response = http.post("/v1/chat/completions", json={
        "model": "kbloop", "messages": [{"role": "user", "content": question}]})
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    return None if response.json()["choices"][0]["message"]["content"] else "empty answer"


def ingest_after_edit(http: httpx.Client, probe: Path, round_: int) -> str | None:
    """Edit the probe document, start an ingest and wait until the job is done."""
    probe.write_text(f"# Load probe\n\nRound {round_}: the load probe counts {round_ * 7} lanterns "
                     f"on shelf {round_ % 13}.\n", encoding="utf-8")
    started = http.post("/api/ingest", json={})
    if started.status_code != 202:
        return f"HTTP {started.status_code}"
    job_url = started.headers["Location"]
    while True:
        job = http.get(job_url)
        if job.status_code != 200:
            return f"HTTP {job.status_code}"
        state = job.json()
        if state["state"] != "running":
            return None if state["state"] == "ok" else f"ingest {state['state']}: {state.get('error')}"
        time.sleep(0.05)


def run_mixed(url: str, queries: list[str], clients: int, seconds: float) -> dict:
    """Searches, answers and ingests at once, until ``seconds`` have passed."""
    mix = Mix()
    deadline = time.perf_counter() + seconds
    docs = Path(httpx.get(f"{url}/api/status", timeout=60).json()["docs_dir"])
    probe = docs / PROBE

    def searcher(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            i = offset
            while time.perf_counter() < deadline:
                query = queries[i % len(queries)]
                mix.timed("search", lambda: status_failure(http.get("/api/search", params={"q": query, "k": 5})))
                i += clients

    def answerer() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            i = 0
            while time.perf_counter() < deadline:
                question = queries[(i * 5 + 3) % len(queries)]
                mix.timed("answer", lambda: ask(http, question))
                i += 1

    def ingester() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            round_ = 0
            while time.perf_counter() < deadline:
                round_ += 1
                mix.timed("ingest", lambda: ingest_after_edit(http, probe, round_))
                time.sleep(0.5)  # files keep changing, but not faster than a person saves them

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(clients)]
    threads += [threading.Thread(target=answerer), threading.Thread(target=ingester)]
    started = time.perf_counter()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:  # the probe leaves the docs folder, and the index, as it found them
        probe.unlink(missing_ok=True)
        with httpx.Client(base_url=url, timeout=60) as http:
            mix.timed("ingest", lambda: ingest_after_removal(http))
    wall = time.perf_counter() - started
    kinds = {kind: latency_stats(mix.latencies[kind], mix.errors[kind]) for kind in mix.latencies}
    return {"clients": clients, "seconds": round(wall, 2), "errors": sum(k["errors"] for k in kinds.values())} | kinds


def ingest_after_removal(http: httpx.Client) -> str | None:
    """One more ingest once the probe is gone, waiting for a running one to finish first."""
    while (latest := http.get("/api/ingest")).status_code == 200 and latest.json()["state"] == "running":
        time.sleep(0.1)
    started = http.post("/api/ingest", json={})
    if started.status_code != 202:
        return f"HTTP {started.status_code}"
    while (job := http.get(started.headers["Location"]).json())["state"] == "running":
        time.sleep(0.05)
    return None if job["state"] == "ok" else f"ingest {job['state']}: {job.get('error')}"


def print_mixed(result: dict) -> None:
    for key in ("corpus", "files", "chunks", "ingest_s"):
        if key in result:
            print(f"{key:>10}: {result[key]}")
    print(f"{'load':>10}: {result['clients']} search clients, 1 answer client, 1 ingest client, "
          f"{result['seconds']} s")
    for kind in ("search", "answer", "ingest"):
        stats = result[kind]
        print(f"{kind:>10}: {stats['requests']} requests, p50 {stats['p50_ms']} ms, p95 {stats['p95_ms']} ms, "
              f"max {stats['max_ms']} ms, {stats['errors']} errors"
              + (f" {stats['error_kinds']}" if stats["errors"] else ""))
    print(f"{'errors':>10}: {result['errors']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="searches in all (default 400)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop sending after this long (default 60)")
    parser.add_argument("--url", help="measure this running server instead of starting one")
    parser.add_argument("--workdir", type=Path, help="an empty folder to work in (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--mixed", action="store_true",
                        help="searches, answers and ingests at once for --max-seconds")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    _, queries = corpus_and_queries()

    def measure(url: str, info: dict) -> None:
        warm = httpx.get(f"{url}/api/search", params={"q": queries[0]}, timeout=120)
        warm.raise_for_status()
        if args.mixed:
            # The first answer loads the model; like the first search, it is not counted.
            with httpx.Client(base_url=url, timeout=600) as http:
                if failure := ask(http, queries[0]):
                    raise SystemExit(f"the warm-up answer failed: {failure}")
            result = info | run_mixed(url, queries, args.clients, args.max_seconds)
            print(json.dumps(result, indent=2)) if args.json else print_mixed(result)
            return
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
    extra_env = ANSWER_ENV if args.mixed else None
    with (bench_workdir(args.workdir, args.keep, "kbloop-load-") as workdir,
          started_server(workdir, extra_env) as (url, info)):
        measure(url, info)


if __name__ == "__main__":
    main()
