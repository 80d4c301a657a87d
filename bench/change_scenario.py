"""The whole loop through kbdev's change scenario, ending in an evaluation report with plots.

1. a home over ``corpus/initial``: ingest, ``dataset build``, ``finetune`` adapter A; evaluate
   A against the base model and promote it if the gate accepts (skipped when ``--reuse`` names a
   home that already has an adapter: it is promoted as it is);
2. the change: drop ``corpus/update1`` in, replace ``git-credential-cache.md`` with the modified
   copy, delete ``git-instaweb.html``; ingest, ``dataset build`` (retires the changed and deleted
   chunks' records), ``finetune`` B continuing A with replay;
3. ``evaluate`` B against the base model with the held-out split (old and new knowledge) plus
   kbdev's questions: qa_update1, qa_changes and qa_unanswerable (``--with-initial`` adds the
   qa_initial items the change does not touch).

    python bench/change_scenario.py [--model local:smollm2-135m] [--judge local:qwen2.5-1.5b]
                                    [--reuse DIR] [--workdir DIR] [--max-records 320]
                                    [--max-items 50] [--questions N] [--no-pairwise]

It prints each step's summary and the report's path (report.md, compare.png, history.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from workdir import bench_workdir, corpus_home  # noqa: E402

from kbloop.config import Home  # noqa: E402
from kbloop.dataset.build import build  # noqa: E402
from kbloop.evaluate.run import evaluate  # noqa: E402
from kbloop.finetune.registry import AdapterRegistry  # noqa: E402
from kbloop.finetune.train import finetune  # noqa: E402
from kbloop.kb import KnowledgeBase  # noqa: E402

KBDEV = Path(__file__).resolve().parent.parent.parent / "shared" / "kbdev"


def question_file(out: Path, kbdev: Path, with_initial: bool, limit: int = 0) -> Path:
    """kbdev's questions as one eval JSONL (question, answer, accept, source); ``limit`` > 0
    keeps that many, spread evenly over the list."""
    lines = []
    names = ("qa_update1", "qa_changes", "qa_unanswerable") + (("qa_initial",) if with_initial else ())
    for name in names:
        for line in (kbdev / f"{name}.jsonl").read_text().splitlines():
            item = json.loads(line)
            if item.get("affected_by_change") or item.get("affected_by_deletion"):
                continue
            lines.append(json.dumps({k: item[k] for k in ("question", "answer", "accept", "source") if k in item}))
    if 0 < limit < len(lines):
        lines = [lines[i * len(lines) // limit] for i in range(limit)]
    out.write_text("\n".join(lines) + "\n")
    return out


def step(label: str, data) -> None:
    print(f"== {label}: {json.dumps(data, default=str)[:600]}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="local:smollm2-135m")
    parser.add_argument("--judge", default="local:qwen2.5-1.5b")
    parser.add_argument("--max-records", type=int, default=320)
    parser.add_argument("--max-items", type=int, default=50)
    parser.add_argument("--questions", type=int, default=0,
                        help="Ask only this many of kbdev's questions, spread evenly (0: all), leaving room "
                             "in --max-items for the dataset's held-out questions.")
    parser.add_argument("--no-pairwise", action="store_true", help="Judge each answer alone (half the judge calls).")
    parser.add_argument("--with-initial", action="store_true",
                        help="Also ask qa_initial (old knowledge then comes from those rather than the split).")
    parser.add_argument("--reuse", type=Path, default=None, help="A home from bench/finetune_gain.py --keep.")
    parser.add_argument("--kbdev", type=Path, default=KBDEV)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    settings_lines = {"KBLOOP_GENERATOR": args.model, "KBLOOP_JUDGE": args.judge, "KBLOOP_FINETUNE_EPOCHS": "1",
                      "KBLOOP_FINETUNE_MAX_RECORDS": str(args.max_records), "KBLOOP_DATASET_TEACHER_PAIRS": "0",
                      "KBLOOP_EVAL_PAIRWISE": "false" if args.no_pairwise else "true"}
    with bench_workdir(args.workdir, args.keep or args.reuse is not None, "kbloop-change-") as workdir:
        if args.reuse:
            home = Home(args.reuse.resolve())
        else:
            home = corpus_home(workdir / "kb", args.kbdev / "corpus" / "initial")
        with open(home.env_file, "a") as fh:
            fh.writelines(f"{k}={v}\n" for k, v in settings_lines.items())
        questions = question_file(workdir / "kbdev-questions.jsonl", args.kbdev, args.with_initial, args.questions)
        kb = KnowledgeBase(home)
        registry = AdapterRegistry(kb.home, kb.manifest)
        started = time.perf_counter()

        if not registry.versions():
            step("ingest initial", kb.ingest().as_dict())
            step("dataset initial", build(kb).as_dict())
            step("finetune A", finetune(kb, fresh=True).as_dict())
        first = registry.versions()[-1]
        registry.promote(first, "change scenario: stage 1 adapter")
        step("current", first)

        docs = home.root / "docs"
        for src in sorted((args.kbdev / "corpus" / "update1").iterdir()):
            shutil.copyfile(src, docs / src.name)
        shutil.copyfile(args.kbdev / "corpus" / "modified" / "git-credential-cache.md", docs / "git-credential-cache.md")
        (docs / "git-instaweb.html").unlink(missing_ok=True)
        step("ingest change", kb.ingest().as_dict())
        step("dataset change", build(kb).as_dict())
        trained = finetune(kb)
        step("finetune B", trained.as_dict())
        report = evaluate(kb, trained.version, "base", [questions], progress=True, max_items=args.max_items)
        step("evaluate B vs base", {k: report[k] for k in ("run", "decision", "pairwise", "judge_calls",
                                                           "judge_failures", "slices")})
        print((Path(report["folder"]) / "report.md").read_text())
        print(f"report: {report['folder']}  ({time.perf_counter() - started:.0f}s in all)")
        kb.close()


if __name__ == "__main__":
    main()
