"""Does the gate stop a damaged adapter? One trained on shuffled answers, evaluated as the learn job does.

On a copy of a home whose learn cycle has run (for instance the one ``bench/corrections.py
--keep`` leaves): every training record's answer is moved to another record (one random
cycle, so none keeps its own), a fresh adapter is trained on the same number of records as
the home's first adapter, the records are put back, and the damaged adapter is evaluated
against the adapter the home answers with now (or the base model) by ``kbloop.evaluate.run``
with the home's judge and settings, as the daemon's learn job would. The home named is not
changed.

    python bench/gate.py --home DIR [--keep]

It prints the gate's decision and reasons, and both sides' scores.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from kbloop.config import Home
from kbloop.dataset.store import DatasetStore
from kbloop.evaluate.run import evaluate
from kbloop.finetune.registry import AdapterRegistry
from kbloop.finetune.train import finetune
from kbloop.kb import KnowledgeBase


def shuffled_answers(text: str, seed: int) -> str:
    """The records of a dataset file with each one's answer moved to the next in a random cycle."""
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    answers = {i: rows[i]["answer"] for i in train}
    order = random.Random(seed).sample(train, len(train))
    for here, there in zip(order, order[1:] + order[:1]):
        rows[here]["answer"] = answers[there]
    return "".join(json.dumps(r) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="kbloop-gate-"))
    try:
        shutil.copytree(args.home, workdir / "kb", symlinks=True)
        home = Home(workdir / "kb")
        with KnowledgeBase(home) as kb:
            registry = AdapterRegistry(kb.home, kb.manifest)
            first = registry.lineage(min(p.name for p in home.adapters_dir.iterdir()
                                         if (p / "lineage.json").exists()))
            store = DatasetStore(kb.home, kb.manifest)
            files = {v["version"]: store.records_file(v["version"]) for v in store.versions()}
            originals = {v: f.read_text() for v, f in files.items()}
            for version, path in files.items():
                path.write_text(shuffled_answers(originals[version], args.seed))
            cap = len(first["record_ids"]) + len(first["probe_ids"])
            capped = KnowledgeBase(home, kb.settings.model_copy(update={"finetune_max_records": cap}),
                                   embedder=kb.embedder)
            started = time.perf_counter()
            try:
                damaged = finetune(capped, fresh=True)
            finally:
                for version, path in files.items():
                    path.write_text(originals[version])
            print(f"damaged adapter {damaged.version}: {damaged.records_new} records, {damaged.steps} steps, "
                  f"{(time.perf_counter() - started) / 60:.1f} min", flush=True)
            baseline = registry.current() or "base"
            started = time.perf_counter()
            report = evaluate(kb, damaged.version, "current", promote=True)
            print(f"evaluation against {baseline}: {(time.perf_counter() - started) / 60:.1f} min")
            print(f"decision: {report.decision.decision}")
            for reason in report.decision.reasons:
                print(f"  - {reason}")
            for side in ("candidate", "baseline"):
                print(f"{side}: {json.dumps(report.metrics[side]['all'])}")
            print(f"still answering: {registry.current() or 'base'}")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
