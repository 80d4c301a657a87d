"""Does kbloop learn from its users? Three corrections through the API, one learn cycle, paraphrases.

On ``../shared/kbdev`` (or another benchmark folder, such as ``bench/pydev``), one run:

1. ingest ``corpus/initial`` into a new home and start ``kbloop serve`` (its own process);
2. ask the three questions of ``bench/corrections/<folder name>.jsonl`` through the OpenAI-compatible API,
   and two paraphrases of each, with the base model;
3. send each question a thumbs-down carrying the right answer, as a user would type it
   (``POST /api/feedback`` with ``correction``);
4. ask the same questions and paraphrases again at once, still with the base model: the
   corrections are now among the sources of the questions that ask what they corrected
   (``KBLOOP_CORRECTIONS_AS_SOURCES``); then stop the server;
5. run the daemon's learn job once (``kbloop.scheduler.jobs.learn``: dataset build, fine-tune,
   evaluate with the judge, promote when the gate accepts), timed;
6. start the server again, with ``KBLOOP_CORRECTIONS_AS_SOURCES=false`` so that only what the
   adapter learned counts, and ask the same questions and paraphrases: it answers with the
   adapter the gate promoted, or with the base model when the gate rejected the candidate;
7. ask them once more as a user meets the assistant after the cycle: the promoted adapter, and
   the corrections as sources, now matched through the phrasings the build kept as well.

``--no-learn`` stops after step 4 (a few minutes instead of half an hour).

    python bench/corrections.py [--bench DIR] [--max-records 24] [--eval-items 12] [--no-learn]
                                [--set KBLOOP_NAME=VALUE ...] [--workdir DIR] [--keep]
    python bench/corrections.py --ask DIR/kb [--bench DIR]   # ask again on a kept home

The learn job builds extractive pairs only (``KBLOOP_DATASET_TEACHER_PAIRS=0``: the teacher's plan
assumes 130 s a chunk here) and trains at most ``--max-records`` of the documents' records
besides the corrections, which a run always takes. The paraphrases are graded as in
bench/answers.py; they were written for this benchmark and no training record is built from them.
Per-item results go to bench/out/corrections-<time>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from answers import Reply, grade  # noqa: E402
from load import kbloop, server_env, serving  # noqa: E402
from workdir import bench_workdir, corpus_home  # noqa: E402

from kbloop.dataset.records import CORRECTION  # noqa: E402
from kbloop.dataset.store import DatasetStore  # noqa: E402
from kbloop.kb import KnowledgeBase  # noqa: E402
from kbloop.scheduler.jobs import learn  # noqa: E402

KBDEV = Path(__file__).resolve().parent.parent.parent / "shared" / "kbdev"
ITEMS = Path(__file__).parent / "corrections"  # <benchmark folder name>.jsonl


@contextmanager
def client_of(home: Path, **env: str) -> Iterator[httpx.Client]:
    """A client of ``kbloop serve`` of ``home``, in its own process on a free loopback port."""
    with serving(server_env(home) | env) as url, httpx.Client(base_url=url, timeout=600) as client:
        yield client


def ask(client: httpx.Client, question: str) -> tuple[Reply, str | None]:
    """One non-streamed answer through the API, and the adapter that gave it."""
    response = client.post("/v1/chat/completions",
                           json={"model": "kbloop", "messages": [{"role": "user", "content": question}]})
    response.raise_for_status()
    answer = response.json()["kbloop"]
    return Reply(answer["answer"], answer["refused"], answer["sources"]), answer.get("adapter")


def ask_all(client: httpx.Client, items: list[dict], side: str, out) -> list[dict]:
    rows = []
    for item in items:
        for kind, question in [("asked", item["question"])] + [("paraphrase", p) for p in item["paraphrases"]]:
            started = time.perf_counter()
            reply, adapter = ask(client, question)
            row = {"side": side, "id": item["id"], "kind": kind, "question": question, "answer": reply.answer,
                   "refused": reply.refused, "correct": grade(item, reply), "adapter": adapter,
                   "correction_given": any(s["path"].startswith("correction #") for s in reply.sources),
                   "seconds": round(time.perf_counter() - started, 1)}
            rows.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()
            mark = "right" if row["correct"] else "WRONG"
            given = " (its correction among the sources)" if row["correction_given"] else ""
            print(f"  [{side} {item['id']} {kind}] {mark}{given}: {reply.answer[:110]!r}", flush=True)
    return rows


def correct(client: httpx.Client, item: dict, reply: dict) -> int:
    """A thumbs-down with the right answer, as the web page's *Wrong* box sends it."""
    response = client.post("/api/feedback", json={
        "rating": "down", "question": item["question"], "answer": reply["answer"],
        "refused": reply["refused"], "correction": item["correction"]})
    response.raise_for_status()
    return response.json()["id"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", "--kbdev", dest="bench", type=Path, default=KBDEV,
                        help="a benchmark folder: corpus/initial/ holds its documents")
    parser.add_argument("--items", type=Path, default=None,
                        help="the questions, corrections and paraphrases (default: bench/corrections/<folder>.jsonl)")
    parser.add_argument("--max-records", type=int, default=24,
                        help="the documents' records one learn cycle trains, besides the corrections")
    parser.add_argument("--eval-items", type=int, default=12, help="KBLOOP_EVAL_MAX_ITEMS of the learn job")
    parser.add_argument("--no-learn", action="store_true",
                        help="stop after asking again with the corrections as sources, before the learn job")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a kbloop setting for this run's home, e.g. KBLOOP_FINETUNE_CORRECTION_REPEATS=16 "
                             "(repeatable)")
    parser.add_argument("--ask", type=Path, default=None, metavar="HOME",
                        help="only ask the questions and paraphrases again, on the home a --keep run left "
                             "(its workdir's kb/), as a user meets it: no ingest, corrections or learning")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if bad := [s for s in args.settings if "=" not in s or not s.startswith("KBLOOP_")]:
        parser.error(f"--set takes KBLOOP_NAME=VALUE, not {bad[0]!r}")
    items_path = args.items or ITEMS / f"{args.bench.resolve().name}.jsonl"
    items = [json.loads(line) for line in items_path.read_text(encoding="utf-8").splitlines() if line.strip()]

    out_dir = Path(__file__).parent / "out"
    out_dir.mkdir(exist_ok=True)
    out_path = out_dir / f"corrections-{args.bench.resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    if args.ask:
        with client_of(args.ask.resolve()) as client, open(out_path, "w") as out:
            table([(f"asked again on {args.ask}", ask_all(client, items, "again", out))])
        print(f"\nper item: {out_path}")
        return
    with bench_workdir(args.workdir, args.keep, "kbloop-corrections-") as workdir, open(out_path, "w") as out:
        home = corpus_home(workdir / "kb", args.bench / "corpus" / "initial")
        extra = {"KBLOOP_DATASET_TEACHER_PAIRS": "0", "KBLOOP_FINETUNE_MAX_RECORDS": str(args.max_records),
                 "KBLOOP_EVAL_MAX_ITEMS": str(args.eval_items)}
        extra |= dict(s.split("=", 1) for s in args.settings)
        if os.environ.get("KBLOOP_MODEL_CACHE"):
            extra["KBLOOP_MODEL_CACHE"] = os.environ["KBLOOP_MODEL_CACHE"]
        with open(home.env_file, "a") as fh:
            fh.writelines(f"{k}={v}\n" for k, v in extra.items())
        subprocess.run(kbloop("ingest", "--json"), env=server_env(home.root), check=True, stdout=subprocess.DEVNULL)

        print("== the base model, through the API; then the corrections", flush=True)
        with client_of(home.root) as client:
            before = ask_all(client, items, "before", out)
            for item in items:
                [asked] = [r for r in before if r["id"] == item["id"] and r["kind"] == "asked"]
                correct(client, item, asked)
            print("== at once, the base model with the corrections among its sources", flush=True)
            at_once = ask_all(client, items, "at once", out)
        sides = [("base, before the corrections", before), ("base, the corrections as sources", at_once)]
        if args.no_learn:
            table(sides)
            print(f"\nper item: {out_path}")
            return

        print("== the learn job", flush=True)
        started = time.perf_counter()
        with KnowledgeBase(home) as kb:
            summary = learn(kb)
            learn_s = time.perf_counter() - started
            trained = [r.instruction for r in DatasetStore(kb.home, kb.manifest).active_records("train")
                       if r.generator == CORRECTION]
        print(json.dumps(summary), flush=True)
        print("the corrected questions as trained:\n" + "\n".join(f"  {q}" for q in trained), flush=True)
        out.write(json.dumps({"learn": summary, "seconds": round(learn_s), "trained_questions": trained}) + "\n")

        print("== after the learn cycle, through the API, without the corrections as sources", flush=True)
        with client_of(home.root, KBLOOP_CORRECTIONS_AS_SOURCES="false") as client:
            after = ask_all(client, items, "after", out)
        print("== after the learn cycle, as a user meets it: the adapter and the corrections as sources",
              flush=True)
        with client_of(home.root) as client:
            after_both = ask_all(client, items, "after, with the corrections", out)

    evaluation = summary.get("evaluate")
    decision = evaluation.get("decision") if isinstance(evaluation, dict) else evaluation
    print(f"\nlearn job: {learn_s / 60:.1f} min; dataset {json.dumps(summary['dataset'].get('by_generator'))}; "
          f"finetune {json.dumps(summary.get('finetune'))}; gate: {decision}")
    if isinstance(evaluation, dict):
        print("the gate's reasons:\n" + "\n".join(f"  {r}" for r in evaluation.get("reasons", [])))
    table(sides + [("after the learn cycle, the adapter alone", after),
                   ("after the learn cycle, the adapter and the corrections as sources", after_both)])
    print(f"\nper item: {out_path}")


def table(sides: list[tuple[str, list[dict]]]) -> None:
    print("| answers | asked: right | paraphrases: right | correction given (asked, paraphrases) | adapter |")
    print("| --- | --- | --- | --- | --- |")
    for side, rows in sides:
        asked = [r for r in rows if r["kind"] == "asked"]
        para = [r for r in rows if r["kind"] == "paraphrase"]
        adapters = sorted({r["adapter"] or "none" for r in rows})
        given = f"{sum(r['correction_given'] for r in asked)}/{len(asked)}, " \
                f"{sum(r['correction_given'] for r in para)}/{len(para)}"
        print(f"| {side} | {sum(r['correct'] for r in asked)}/{len(asked)} | "
              f"{sum(r['correct'] for r in para)}/{len(para)} | {given} | {', '.join(adapters)} |")


if __name__ == "__main__":
    main()
