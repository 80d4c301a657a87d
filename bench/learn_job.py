"""The daemon's nightly learn job through kbdev's change scenario: unattended, timed, per 100 new chunks.

1. a home that has been through one learn cycle: ``--home DIR`` names one (for instance the home
   that ``bench/corrections.py --keep`` leaves); without it the benchmark makes one over
   ``corpus/initial`` and runs the learn job on it once, in this process;
2. ``kbloop daemon`` starts on that home (its own process), with its learn time
   (``KBLOOP_LEARN_AT``) set to a minute a little ahead;
3. the change lands in the watched folder while it runs: ``corpus/update1``'s 8 documents,
   ``git-credential-cache.md`` replaced by the modified copy, ``git-instaweb.html`` deleted;
4. the daemon ingests the change, and at its learn time runs the learn job on its own: dataset
   build, fine-tune continuing the current adapter, evaluation with the judge, promotion when the
   gate accepts. The benchmark waits for that run in ``kbloop status --json`` and stops the daemon.

    python bench/learn_job.py [--home DIR] [--kbdev DIR] [--max-records N] [--teacher] [--timeout-min 180]

It prints the learn run's wall time, the new chunks its dataset build read, the time per 100 of
them, and what the run's summary names: the documents read and retired, the records, the
adapter and the gate's decision. The learn job builds extractive pairs only unless ``--teacher``
(its plan assumes 130 s a chunk for the packaged teacher on two cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from load import interrupt, kbloop, server_env  # noqa: E402
from workdir import corpus_home  # noqa: E402

from kbloop.config import Home  # noqa: E402
from kbloop.kb import KnowledgeBase  # noqa: E402
from kbloop.scheduler.jobs import learn  # noqa: E402

KBDEV = Path(__file__).resolve().parent.parent.parent / "shared" / "kbdev"


def status(env: dict) -> dict:
    done = subprocess.run(kbloop("status", "--json"), env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def apply_change(kbdev: Path, docs: Path) -> None:
    for src in sorted((kbdev / "corpus" / "update1").iterdir()):
        shutil.copyfile(src, docs / src.name)
    shutil.copyfile(kbdev / "corpus" / "modified" / "git-credential-cache.md", docs / "git-credential-cache.md")
    (docs / "git-instaweb.html").unlink()


def learn_time(lead_s: float) -> str:
    """HH:MM, local time, of the first whole minute at least ``lead_s`` seconds ahead."""
    at = time.time() + lead_s
    return time.strftime("%H:%M", time.localtime(at + (60 - time.localtime(at).tm_sec) % 60))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None, help="a home already through one learn cycle")
    parser.add_argument("--kbdev", type=Path, default=KBDEV)
    parser.add_argument("--max-records", type=int, default=0,
                        help="KBLOOP_FINETUNE_MAX_RECORDS of the learn job (0, the default: every new record)")
    parser.add_argument("--teacher", action="store_true", help="let the learn job's build use the teacher")
    parser.add_argument("--timeout-min", type=float, default=180)
    args = parser.parse_args(argv)

    if args.home is None:
        root = Path(time.strftime("/tmp/kbloop-learn-%Y%m%d-%H%M%S"))
        home = corpus_home(root / "kb", args.kbdev / "corpus" / "initial")
        with KnowledgeBase(home) as kb:
            kb.ingest()
            started = time.perf_counter()
            first = learn(kb)
        print(f"first learn cycle, {(time.perf_counter() - started) / 60:.1f} min: {json.dumps(first)}", flush=True)
    else:
        home = Home(args.home.resolve())
    env = server_env(home.root) | {
        "KBLOOP_DATASET_TEACHER_PAIRS": "2" if args.teacher else "0",
        "KBLOOP_FINETUNE_MAX_RECORDS": str(args.max_records),
    }
    if not (home.root / "docs" / "git-instaweb.html").exists():
        raise SystemExit(f"{home.root} has had the change already: start from a home over corpus/initial")

    env["KBLOOP_LEARN_AT"] = learn_time(150)
    with open(home.root / "daemon-bench.log", "w") as log:
        daemon = subprocess.Popen(kbloop("daemon"), env=env, stdout=log, stderr=subprocess.STDOUT)
        began = time.time()
        try:
            time.sleep(20)  # the start-up scan; then the change lands while the daemon watches
            apply_change(args.kbdev, home.root / "docs")
            print(f"daemon {daemon.pid} running; change applied; learn job at {env['KBLOOP_LEARN_AT']}", flush=True)
            run = None
            while run is None:
                if daemon.poll() is not None:
                    raise SystemExit(f"the daemon exited with status {daemon.returncode}; see {log.name}")
                if time.time() - began > args.timeout_min * 60:
                    raise SystemExit(f"no learn run finished within {args.timeout_min} min")
                time.sleep(30)
                runs = status(env)["last_runs"]
                run = next((r for r in runs if r["kind"] == "learn" and r["started_at"] > began
                            and r["status"] != "running"), None)
        finally:
            interrupt(daemon, 300)  # the daemon finishes the job it runs, then exits

    seconds = run["finished_at"] - run["started_at"]
    summary = run["summary"] or {}
    print(json.dumps(run, indent=1))
    dataset = summary.get("dataset", {})
    chunks = dataset.get("chunks_new", 0)
    print(f"\nlearn run: {run['status']}, {seconds / 60:.1f} min wall; {chunks} new chunks read"
          + (f"; {seconds / 60 * 100 / chunks:.1f} min per 100 new chunks" if chunks else ""))
    print(f"changed: {json.dumps(dataset.get('changed'))}")
    print(f"finetune: {json.dumps(summary.get('finetune'))}")
    print(f"evaluate: {json.dumps(summary.get('evaluate'))}")
    print(f"home: {home.root}")


if __name__ == "__main__":
    main()
