"""Does retrieval put each question's evidence in front of the model? (KBLOOP_KEYWORD_WEIGHT)

For both development corpora (``../shared/kbdev`` and ``bench/pydev``), it ingests the initial
documents into a kbloop home, then, for each keyword weight, retrieves the sources of every
answerable question as the assistant does (``Assistant.retrieve``: the first
KBLOOP_RETRIEVE_K chunks, plus a chunk for each exact term none of them mentions) and counts the
questions' evidence sentences (``evidence``, and ``evidence2`` of a question that needs two) that
those sources hold. A chunk holds a sentence when it has at least 80% of the sentence's words,
since markup is rendered differently in chunks than in the benchmark's evidence. It prints, per
corpus and weight, evidence held among the sources the model reads and among the first 6 chunks,
and the questions whose every evidence sentence the sources hold.

No model answers, so it takes a few minutes (the ingest); it measures only what the model can
read. ``bench/answers.py --models local:qwen2.5-0.5b,local:qwen2.5-0.5b@keyword_weight=3`` measures
what it then answers.

    python bench/retrieval.py [--weights 0,1,2,3,6] [--kbdev DIR] [--workdir DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from answers import ingest_kbloop, read_jsonl
from kbloop import models
from kbloop.assistant.answer import Assistant
from kbloop.config import Home, Settings
from kbloop.kb import KnowledgeBase
from workdir import bench_workdir, corpus_home

REPO = Path(__file__).resolve().parent.parent
CORPORA = {"kbdev": REPO.parent / "shared" / "kbdev", "pydev": REPO / "bench" / "pydev"}
EMBEDDER = "local:all-minilm-l6-v2"
HELD = 0.8  # share of an evidence sentence's words a chunk must have
WIDE = 6


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9_]+", text.lower()))


def holds(evidence: str, texts: list[str]) -> bool:
    wanted = words(evidence)
    return any(len(wanted & words(text)) >= HELD * len(wanted) for text in texts)


def evidence_of(item: dict) -> list[str]:
    return [e for e in (item.get("evidence"), item.get("evidence2")) if e]


def measure(home: Home, embedder, items: list[dict], weight: float) -> dict:
    settings = home.load_settings().model_copy(update={"keyword_weight": weight})
    read = wide = whole = sentences = 0
    with KnowledgeBase(home, settings, embedder=embedder) as kb:
        assistant = Assistant(kb, verifier=None, corrections=False)
        for item in items:
            sources = [h.text for h in assistant.retrieve(item["question"])]
            first = [h.text for h in kb.search(item["question"], WIDE)]
            found = [holds(e, sources) for e in evidence_of(item)]
            sentences += len(found)
            read += sum(found)
            wide += sum(holds(e, first) for e in evidence_of(item))
            whole += all(found)
    return {"weight": weight, "evidence_read": read, f"evidence_in_{WIDE}": wide, "evidence": sentences,
            "questions_whole": whole, "questions": len(items)}


def table(rows: list[dict]) -> str:
    lines = ["| corpus | keyword weight | evidence in the sources read | evidence in the first 6 | "
             "questions with all their evidence |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['corpus']} | {r['weight']:g} | {r['evidence_read']}/{r['evidence']} | "
                     f"{r[f'evidence_in_{WIDE}']}/{r['evidence']} | {r['questions_whole']}/{r['questions']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="0,1,2,3,6", help="keyword weights to compare, comma-separated")
    parser.add_argument("--kbdev", type=Path, default=CORPORA["kbdev"], help="the kbdev benchmark folder")
    parser.add_argument("--workdir", type=Path, default=None, help="an empty folder to work in (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args()
    try:
        weights = [float(w) for w in args.weights.split(",")]
    except ValueError:
        raise SystemExit(f"--weights: {args.weights!r} is not a comma-separated list of numbers")
    corpora = {**CORPORA, "kbdev": args.kbdev}
    embedder = models.create("embedder", EMBEDDER, Settings())
    rows = []
    with bench_workdir(args.workdir, args.keep, "kbloop-bench-retrieval-") as workdir:
        for name, corpus in corpora.items():
            items = read_jsonl(corpus / "qa_initial.jsonl", None)
            home = corpus_home(workdir / name, corpus / "corpus" / "initial")
            ingest_kbloop(home, embedder)
            for weight in weights:
                rows.append({"corpus": name, **measure(home, embedder, items, weight)})
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
