"""Replay kbloop's model-free checks over the replies a run of bench/answers.py recorded.

A new check on replies (``kbloop.assistant.grounding``) or on questions (the refusals made before
the model is asked) changes only the outcomes where it fires. Greedy decoding repeats itself, so
those outcomes can be read off a recorded run in seconds, before a run of tens of minutes: every
recorded answer is put through today's checks with its sources retrieved again, from a fresh
home of the benchmark's corpus, and each one the checks would now stop is listed with whether
it was right. A check that would cost right answers shows here first, on every corpus at once.

What a replay cannot tell is left open, not guessed:

- a reply now found to answer nothing (a refusal, no number where one is asked, a pasted source
  block, the question restated) is read again by a real run (docs/answers.md), and that
  reading's outcome is unknown: listed as *read again*;
- the model-based checks (the value check, the judge's readings) and a change to the prompt or
  to retrieval need a real run.

Run it from the repository root, on the files bench/answers.py wrote:

    python bench/replay.py bench/out/answers-<time>-kbdev.jsonl [more files]
                           [--bench kbdev,pydev,pgdev] [--workdir DIR] [--keep]

Each file's benchmark is the name its file ends with (``answers-<time>-pgdev.jsonl``), else the
one ``--bench`` gives in the same place of its list (names as in bench/answers.py, or folders).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from answers import CORPORA, EMBEDDER, UNANSWERABLE, bench_folder, comma_list
from kbloop import models
from kbloop.assistant.answer import UNANSWERED, Assistant
from kbloop.assistant.grounding import RESTATED, reply_problem
from kbloop.kb import KnowledgeBase
from workdir import bench_workdir, corpus_home

# The pipelines whose replies kbloop's checks stand between the model and the reader.
CHECKED = ("kbloop", "api")
# Problems after which a real run asks again: a reply that answered nothing, or only restated the question.
ASKED_AGAIN = (*UNANSWERED, RESTATED)
# How each outcome is marked on its answer's line: a lost right answer stands out.
LABELS = {"read again": "read again", "right answer lost": "RIGHT ANSWER LOST", "wrong answer refused": "refused"}


@dataclass(frozen=True)
class Stopped:
    """A recorded answer that today's checks would not show as it was."""

    record: dict
    reason: str
    read_again: bool
    """A real run reads the sources again (the reply answered nothing): the outcome is open."""

    @property
    def outcome(self) -> str:
        if self.read_again:
            return "read again"
        answerable = self.record["expected"] != UNANSWERABLE
        return "right answer lost" if answerable and self.record["correct"] else "wrong answer refused"


def benchmark_of(path: Path, given: str | None) -> Path:
    """The benchmark a per-item file belongs to: the name it ends with, else ``given``."""
    name = path.stem.rsplit("-", 1)[-1]
    if name in CORPORA:
        return bench_folder(name)
    if given is None:
        raise SystemExit(f"{path}: name its benchmark with --bench (the file name does not end with one of "
                         f"{', '.join(CORPORA)})")
    return bench_folder(given)


def read_records(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SystemExit(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{path}: not a file of bench/answers.py (line {exc.lineno}: {exc.msg})") from None


def replay(records: list[dict], assistant: Assistant) -> list[Stopped]:
    """The recorded answers that today's checks would stop: refused before the model is asked, or
    a reply problem (``reply_problem``). Refusals and the chat scenario's later turns (whose
    retrieval depends on the turns before) are not replayed."""
    common = assistant.kb.manifest.common_words()
    stopped = []
    for record in records:
        if record["refused"] or (record.get("chat") and record.get("kind") != "first"):
            continue
        question, answer = record["question"], record["answer"]
        hits = assistant.sources(question)
        if reason := assistant.refuse_before_generating(question, hits, common):
            stopped.append(Stopped(record, reason, False))
        elif reason := reply_problem(answer, question, hits, common):
            stopped.append(Stopped(record, reason, reason in ASKED_AGAIN))
    return stopped


def outcomes(records: list[dict], stopped: list[Stopped]) -> dict:
    """Accuracy and refusal as recorded, and as they would be with the stopped answers refused
    (those read again are counted as recorded: their outcome is open)."""
    refused = {id(s.record) for s in stopped if not s.read_again}
    answerable = [r for r in records if r["expected"] != UNANSWERABLE and r.get("set") != "chat"]
    unanswerable = [r for r in records if r["expected"] == UNANSWERABLE]
    return {
        "accuracy": (sum(r["correct"] for r in answerable),
                     sum(r["correct"] and id(r) not in refused for r in answerable), len(answerable)),
        "refusal": (sum(r["refused"] for r in unanswerable),
                    sum(r["refused"] or id(r) in refused for r in unanswerable), len(unanswerable)),
    }


def report(name: str, records: list[dict], stopped: list[Stopped]) -> str:
    lines = [f"## {name}", ""]
    for pipeline in dict.fromkeys(r["pipeline"] for r in records):
        mine = [r for r in records if r["pipeline"] == pipeline]
        hit = [s for s in stopped if s.record["pipeline"] == pipeline]
        result = outcomes(mine, hit)
        kinds = Counter(s.outcome for s in hit)
        note = "" if pipeline in CHECKED else " (no kbloop checks in its run: shown for what they would do)"
        accuracy, refusal = result["accuracy"], result["refusal"]
        lines.append(f"{pipeline}{note}: {len(hit)} of {len(mine)} replies stopped "
                     f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items())) or 'none'}); "
                     f"accuracy {accuracy[0]}/{accuracy[2]} -> {accuracy[1]}/{accuracy[2]}, "
                     f"refusal {refusal[0]}/{refusal[2]} -> {refusal[1]}/{refusal[2]}")
        for s in hit:
            r = s.record
            lines.append(f"  {r['id']:4} {LABELS[s.outcome]:17} {' '.join(r['answer'].split())[:90]!r}: {s.reason}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="per-item files of bench/answers.py")
    parser.add_argument("--bench", type=comma_list, default=[],
                        help="each file's benchmark, in order, where its name does not say it")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="empty or new folder for the homes (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs = [(path, benchmark_of(path, args.bench[n] if n < len(args.bench) else None), read_records(path))
            for n, path in enumerate(args.files)]
    for _, bench, _ in runs:
        if not (bench / "corpus" / "initial").is_dir():
            raise SystemExit(f"{bench} is not a benchmark folder (no corpus/initial)")
    with bench_workdir(args.workdir, args.keep, prefix="kbloop-bench-replay-") as workdir:
        homes: dict[Path, KnowledgeBase] = {}
        try:
            for path, bench, records in runs:
                if bench not in homes:
                    home = corpus_home(workdir / f"{len(homes)}-{bench.name}", bench / "corpus" / "initial")
                    settings = home.load_settings()
                    kb = KnowledgeBase(home, settings, embedder=models.create("embedder", EMBEDDER, settings))
                    kb.ingest()
                    homes[bench] = kb
                stopped = replay(records, Assistant(homes[bench], verifier=None))
                print(report(f"{path.name} ({bench.name})", records, stopped) + "\n")
        finally:
            for kb in homes.values():
                kb.close()


if __name__ == "__main__":
    main()
