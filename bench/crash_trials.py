"""Crash trials: ``kill -9`` an ingest at a random moment, then check, ingest again and verify.

Copies the kbdev corpus (``../shared/kbdev/corpus/initial``, the git manual) into a fresh home
and measures two clean ingests first: the whole corpus into an empty index (state A), and the
change to state B (four files edited, one renamed, one deleted). Those two runs give the
reference: how many chunks each file has in each state, and how long each ingest takes.

Each trial then starts ``kbloop ingest`` as a process and sends it SIGKILL after a random time
within the measured duration. Even trials start from an empty index (state A); odd ones from a
complete index of state A with the docs already changed to state B, so kills land in startup,
the check, hashing, parsing, embedding and the saves alike. After the kill it runs
``kbloop check --json`` and ``kbloop ingest`` and verifies:

- ``kbloop status --json``: chunks == vectors, and as many chunks as the reference;
- the manifest (opened read-only): every document indexed exactly once, with the reference
  number of chunks and one chunk row per ordinal, and nothing else;
- ``kbloop search --json``: known phrases find their file among the first five hits.

Run it from the repository root (OMP_WAIT_POLICY=PASSIVE is set for the child processes):

    python bench/crash_trials.py [--trials 20] [--seed 0] [--max-minutes M] [--workdir DIR] [--keep] [--json]

``--max-minutes`` starts no new trial after that long; the summary says how many ran.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workdir import bench_workdir

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "kbdev" / "corpus" / "initial"
SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".docx")

# State B: edits to Markdown files (a paragraph appended), one rename, one deletion.
EDITED = ["git-archive.md", "git-bundle.md", "git-describe.md", "git-check-ignore.md"]
RENAMED = ("git-credential-cache.md", "moved/git-credential-cache.md")
DELETED = "git-daemon.html"
EDIT_TEXT = ("\n\n## Crash trial note\n\nThe {name} page was edited for a crash trial; the "
             "marmalade lighthouse code for it is {code}.\n")

# Phrases from documents that no state changes, and the file each must find.
PHRASES = [
    ("loose objects before git gc --auto packs them", "git-gc.html"),
    ("cherry-pick apply the changes introduced by some existing commits", "git-cherry-pick.pdf"),
]


@dataclass
class Trial:
    """What one kill and its recovery came to."""

    number: int
    start: str  # "empty" or "changed"
    kill_after_s: float
    exited_before_kill: bool
    check_outcome: str
    check_exit: int
    ingest_exit: int
    chunks: int
    vectors: int
    expected_chunks: int
    files_ok: bool
    phrases_found: int
    repairs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.problems

    @property
    def chunks_lost(self) -> int:
        return max(0, self.expected_chunks - self.chunks)


def kbloop(*args: str) -> list[str]:
    return [sys.executable, "-m", "kbloop.cli.main", *args]


def child_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBLOOP_")}
    return env | {"KBLOOP_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE"}


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(kbloop(*args), env=child_env(home), capture_output=True, text=True, timeout=900)


def fresh_home(home: Path) -> None:
    """A new home holding the corpus as it is (state A), nothing indexed."""
    shutil.rmtree(home, ignore_errors=True)
    subprocess.run(kbloop("init", str(home)), env=child_env(home), check=True, stdout=subprocess.DEVNULL)
    for item in sorted(CORPUS.iterdir()):
        if item.is_file() and item.suffix in SUFFIXES:
            shutil.copyfile(item, home / "docs" / item.name)


def to_state_b(docs: Path, code: int) -> None:
    """Edit, rename and delete, as a user between two ingests would."""
    for name in EDITED:
        with (docs / name).open("a", encoding="utf-8") as out:
            out.write(EDIT_TEXT.format(name=name, code=code))
    (docs / RENAMED[1]).parent.mkdir(exist_ok=True)
    (docs / RENAMED[0]).rename(docs / RENAMED[1])
    (docs / DELETED).unlink()


def to_state_a(docs: Path) -> None:
    """Back to the corpus as shipped: the edited files, the renamed and the deleted one."""
    for name in [*EDITED, RENAMED[0], DELETED]:
        shutil.copyfile(CORPUS / name, docs / name)
    shutil.rmtree(docs / Path(RENAMED[1]).parent, ignore_errors=True)


def manifest_files(home: Path) -> dict[str, tuple[str, int, int, int]]:
    """path -> (status, n_chunks, chunk rows, distinct ordinals), from the manifest read-only."""
    uri = f"file:{home / 'data' / 'kbloop.sqlite'}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=30) as db:
        rows = db.execute(
            """SELECT f.path, f.status, f.n_chunks, COUNT(c.id), COUNT(DISTINCT c.ordinal)
               FROM files f LEFT JOIN chunks c ON c.file_id = f.id GROUP BY f.id""").fetchall()
    return {path: (status, n, rows_, ordinals) for path, status, n, rows_, ordinals in rows}


def docs_paths(docs: Path) -> set[str]:
    return {p.relative_to(docs).as_posix() for p in docs.rglob("*") if p.is_file() and p.suffix in SUFFIXES}


def timed_ingest(home: Path) -> float:
    started = time.perf_counter()
    done = run(home, "ingest", "--json")
    if done.returncode != 0:
        raise SystemExit(f"kbloop ingest failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def reference(home: Path) -> dict[str, int]:
    return {path: n for path, (_, n, _, _) in manifest_files(home).items()}


def verify(home: Path, expected: dict[str, int]) -> tuple[dict, bool, int, list[str]]:
    """status, whether the files match the reference, phrases found, and every problem seen."""
    problems: list[str] = []
    status = json.loads(run(home, "status", "--json").stdout)
    if status["chunks"] != status["vectors"]:
        problems.append(f"{status['chunks']} chunks but {status['vectors']} vectors")
    if status["chunks"] != sum(expected.values()):
        problems.append(f"{status['chunks']} chunks, expected {sum(expected.values())}")
    files = manifest_files(home)
    on_disk = docs_paths(home / "docs")
    file_problems: list[str] = []
    if set(files) != on_disk:
        file_problems.append(f"manifest files differ from docs: missing {sorted(on_disk - set(files))}, "
                             f"extra {sorted(set(files) - on_disk)}")
    for path, (state, n_chunks, rows, ordinals) in sorted(files.items()):
        if state != "indexed" or n_chunks != rows or rows != ordinals or n_chunks != expected.get(path):
            file_problems.append(f"{path}: {state}, n_chunks {n_chunks}, {rows} rows, {ordinals} ordinals, "
                                 f"expected {expected.get(path)}")
    problems += file_problems
    found = 0
    for phrase, source in PHRASES:
        out = run(home, "search", phrase, "-k", "5", "--json")
        hits = json.loads(out.stdout) if out.returncode == 0 else []
        if any(hit["path"] == source for hit in hits):
            found += 1
        else:
            problems.append(f"search {phrase!r} did not find {source}")
    return status, not file_problems, found, problems


def trial(number: int, home: Path, start: str, duration: float, expected: dict[str, int],
          rng: random.Random) -> Trial:
    docs = home / "docs"
    if start == "empty":
        fresh_home(home)
    else:  # a complete index of state A; the docs move to state B before the killed ingest
        to_state_a(docs)
        if run(home, "ingest").returncode != 0:
            raise SystemExit("could not bring the index back to state A")
        to_state_b(docs, code=1000 + number)
    kill_after = round(rng.uniform(0.0, duration), 2)
    proc = subprocess.Popen(kbloop("ingest"), env=child_env(home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        proc.wait(kill_after)
        exited = True
    except subprocess.TimeoutExpired:
        exited = False
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    checked = run(home, "check", "--json")
    try:
        report = json.loads(checked.stdout)
        outcome, repairs = report["outcome"], report["repaired"]
    except (json.JSONDecodeError, KeyError):
        outcome, repairs = f"no JSON: {checked.stderr.strip()[-300:]}", []
    ingested = run(home, "ingest")
    status, files_ok, found, problems = verify(home, expected)
    if checked.returncode not in (0, 5):
        problems.insert(0, f"check exited {checked.returncode}: {outcome}")
    if ingested.returncode != 0:
        problems.insert(0, f"ingest exited {ingested.returncode}: {ingested.stderr.strip()[-300:]}")
    for stream in (checked.stderr, ingested.stderr):
        if "Traceback" in stream:
            problems.append("a traceback on stderr")
    return Trial(number, start, kill_after, exited, outcome, checked.returncode, ingested.returncode,
                 status["chunks"], status["vectors"], sum(expected.values()), files_ok, found, repairs, problems)


def summarize(trials: list[Trial], baseline: dict) -> dict:
    return baseline | {
        "trials": len(trials),
        "consistent": sum(t.consistent for t in trials),
        "repaired_by_check": sum(t.check_outcome == "repaired" for t in trials),
        "clean_at_check": sum(t.check_outcome == "consistent" for t in trials),
        "finished_before_kill": sum(t.exited_before_kill for t in trials),
        "chunks_lost": sum(t.chunks_lost for t in trials),
        "results": [asdict(t) | {"consistent": t.consistent, "chunks_lost": t.chunks_lost} for t in trials],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="kills in all (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times (default 0)")
    parser.add_argument("--max-minutes", type=float, help="start no trial after this long (default: no limit)")
    parser.add_argument("--workdir", type=Path, help="an empty folder to work in (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        raise SystemExit(f"the corpus is missing: {CORPUS}")
    rng = random.Random(args.seed)
    say = (lambda *a: None) if args.json else print

    deadline = time.monotonic() + args.max_minutes * 60 if args.max_minutes else None
    with bench_workdir(args.workdir, args.keep, "kbloop-crash-") as workdir:
        home = workdir / "kb"
        fresh_home(home)
        full_s = timed_ingest(home)
        ref_a = reference(home)
        to_state_b(home / "docs", code=999)
        change_s = timed_ingest(home)
        ref_b = reference(home)
        baseline = {"corpus": str(CORPUS), "files": len(ref_a), "chunks_a": sum(ref_a.values()),
                    "chunks_b": sum(ref_b.values()), "full_ingest_s": round(full_s, 1),
                    "change_ingest_s": round(change_s, 1)}
        say(f"reference: {len(ref_a)} files, {baseline['chunks_a']} chunks; full ingest {full_s:.1f} s, "
            f"change to state B {change_s:.1f} s ({baseline['chunks_b']} chunks)")
        trials: list[Trial] = []
        for number in range(1, args.trials + 1):
            if deadline is not None and time.monotonic() > deadline:
                say(f"time is up after {number - 1} trials")
                break
            start = "empty" if number % 2 else "changed"
            duration, expected = (full_s, ref_a) if start == "empty" else (change_s, ref_b)
            result = trial(number, home, start, duration, expected, rng)
            trials.append(result)
            say(f"trial {number:>2} ({start:>7}, kill at {result.kill_after_s:5.2f} s"
                f"{', had finished' if result.exited_before_kill else ''}): check {result.check_outcome}, "
                f"{result.chunks} chunks / {result.vectors} vectors (expected {result.expected_chunks}), "
                f"{result.phrases_found}/{len(PHRASES)} phrases: "
                + ("consistent" if result.consistent else "INCONSISTENT: " + "; ".join(result.problems)))
        summary = summarize(trials, baseline)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"summary: {summary['consistent']}/{summary['trials']} consistent, "
          f"{summary['repaired_by_check']} repaired by check, {summary['clean_at_check']} clean at check, "
          f"{summary['finished_before_kill']} finished before the kill, {summary['chunks_lost']} chunks lost")


if __name__ == "__main__":
    main()
