"""How close must a question be to a corrected one to be given its correction? (KBLOOP_CORRECTION_MATCH)

``bench/corrections/same_question.jsonl`` holds every pair of distinct questions of both
development benchmarks (qa_* files, the chat scenario's follow-ups, the corrections benchmark's
paraphrases) whose embeddings are closer than 0.70 with local:all-minilm-l6-v2, each labelled by
hand: ``same`` when a right answer to one is a right answer to the other (a paraphrase, a
follow-up that asks the same), false for a near miss (a neighbouring setting, another function).

For each threshold it prints how many pairs of each kind would match, per corpus and in all, and
the lowest threshold at which no pair of different questions matches: the default of
KBLOOP_CORRECTION_MATCH. A correction given to a different question can mislead its answer; one
not given to a paraphrase only leaves that answer as it was.

    python bench/correction_match.py [--pairs FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from kbloop import models
from kbloop.config import Settings

PAIRS = Path(__file__).parent / "corrections" / "same_question.jsonl"
EMBEDDER = "local:all-minilm-l6-v2"
THRESHOLDS = [0.70, 0.75, 0.80, 0.82, 0.84, 0.85, 0.86, 0.88, 0.90]


def similarities(pairs: list[dict]) -> list[float]:
    embedder = models.create("embedder", EMBEDDER, Settings())
    a = embedder.embed([p["question_a"] for p in pairs])
    b = embedder.embed([p["question_b"] for p in pairs])
    return [round(float(x), 4) for x in np.sum(a * b, axis=1)]


def counts(pairs: list[dict], sims: list[float], threshold: float) -> dict:
    same = [s >= threshold for p, s in zip(pairs, sims) if p["same"]]
    different = [s >= threshold for p, s in zip(pairs, sims) if not p["same"]]
    return {"same_matched": sum(same), "same": len(same), "different_matched": sum(different),
            "different": len(different)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    pairs = [json.loads(line) for line in args.pairs.read_text(encoding="utf-8").splitlines() if line.strip()]
    sims = similarities(pairs)
    corpora = sorted({p["corpus"] for p in pairs})
    rows = []
    for threshold in THRESHOLDS:
        row = {"threshold": threshold, "all": counts(pairs, sims, threshold)}
        for corpus in corpora:
            chosen = [(p, s) for p, s in zip(pairs, sims) if p["corpus"] == corpus]
            row[corpus] = counts([p for p, _ in chosen], [s for _, s in chosen], threshold)
        rows.append(row)
    different = [s for p, s in zip(pairs, sims) if not p["same"]]
    closest = max(different, default=0.0)
    lowest = min((t for t in THRESHOLDS if t > closest), default=None)
    if args.json:
        print(json.dumps({"rows": rows, "closest_different": closest, "lowest_safe": lowest}, indent=1))
        return
    print("| threshold | " + " | ".join(f"{c}: same matched | {c}: different matched" for c in corpora + ["all"])
          + " |")
    print("| --- " * (1 + 2 * (len(corpora) + 1)) + "|")
    for row in rows:
        cells = []
        for c in corpora + ["all"]:
            n = row[c]
            cells += [f"{n['same_matched']}/{n['same']}", f"{n['different_matched']}/{n['different']}"]
        print(f"| {row['threshold']:.2f} | " + " | ".join(cells) + " |")
    print(f"\nthe closest pair of different questions: {closest:.3f}; "
          f"the lowest threshold above it: {lowest}")


if __name__ == "__main__":
    main()
