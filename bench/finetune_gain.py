"""Does fine-tuning pay? RAG with the base model against RAG with a kbloop adapter, one run.

On ``../shared/kbdev``: ingest ``corpus/initial``, ``kbloop dataset build`` (extractive pairs;
``--teacher`` adds the teacher's), ``kbloop finetune`` a new adapter for ``--model``, then ask
the 40 answerable and 8 unanswerable questions with the same retrieval and prompt, once with
the base model and once with the adapter applied, and print accuracy, refusal and false
refusal side by side (graded as in bench/answers.py).

    python bench/finetune_gain.py [--model MODEL] [--max-records 320] [--epochs 1]
                                  [--lr LR] [--oracle-p P] [--no-base] [--workdir DIR] [--keep]
    python bench/finetune_gain.py --reuse DIR [--no-base]    # ask again with DIR's adapter, no training

The questions are kbdev's own, written by people; no training record is built from them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from answers import (Context, KbloopPipeline, entry_settings, load_items,  # noqa: E402
                     run_pipeline, summarise)
from workdir import bench_workdir, corpus_home  # noqa: E402

from kbloop import models  # noqa: E402
from kbloop.config import Home, Settings  # noqa: E402
from kbloop.dataset.build import build  # noqa: E402
from kbloop.finetune.train import finetune  # noqa: E402
from kbloop.kb import KnowledgeBase  # noqa: E402

KBDEV = Path(__file__).resolve().parent.parent.parent / "shared" / "kbdev"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=Settings().generator,
                        help="the model to fine-tune and ask (default: the default generator, %(default)s)")
    parser.add_argument("--max-records", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--oracle-p", type=float, default=None,
                        help="share of training records that hold their source (KBLOOP_DATASET_ORACLE_P)")
    parser.add_argument("--no-base", action="store_true",
                        help="ask with the adapter only (the base model's row from an earlier run)")
    parser.add_argument("--teacher", action="store_true")
    parser.add_argument("--kbdev", type=Path, default=KBDEV)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--reuse", type=Path, default=None, metavar="DIR",
                        help="ask again with the newest adapter of an earlier --keep run's workdir, not training")
    args = parser.parse_args(argv)

    out_dir = Path(__file__).parent / "out"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = contextlib.nullcontext(args.reuse.resolve()) if args.reuse else None
    with kept or bench_workdir(args.workdir, args.keep, "kbloop-gain-") as workdir:
        if args.reuse:
            home = Home(workdir / "kb")
            settings = home.load_settings()
            args.model = settings.generator
            embedder = models.create("embedder", settings.embedder, settings)
            version = max(p.name for p in home.adapters_dir.iterdir() if (p / "lineage.json").exists())
            trained = None
        else:
            home = corpus_home(workdir / "kb", args.kbdev / "corpus" / "initial")
            extra = {"KBLOOP_GENERATOR": args.model, "KBLOOP_FINETUNE_EPOCHS": str(args.epochs),
                     "KBLOOP_FINETUNE_MAX_RECORDS": str(args.max_records)}
            if args.lr:
                extra["KBLOOP_FINETUNE_LR"] = str(args.lr)
            if args.oracle_p is not None:
                extra["KBLOOP_DATASET_ORACLE_P"] = str(args.oracle_p)
            with open(home.env_file, "a") as fh:
                fh.writelines(f"{k}={v}\n" for k, v in extra.items())
            settings = home.load_settings()
            embedder = models.create("embedder", settings.embedder, settings)
            with KnowledgeBase(home, embedder=embedder) as kb:
                kb.ingest()
                teacher = models.create("teacher", settings.teacher, settings) if args.teacher else None
                counts = build(kb, teacher)
                print(f"dataset: {json.dumps(counts.as_dict())}", flush=True)
                trained = finetune(kb, fresh=True, progress="bar")
                print(f"finetune: {json.dumps(trained.as_dict())}", flush=True)
            version = trained.version
        adapter = home.adapters_dir / version

        ctx = Context(items=load_items(args.kbdev, None), embedder=embedder, home=home)
        rows = {}
        with open(out_dir / f"finetune-gain-{stamp}.jsonl", "w") as out:
            sides = [] if args.no_base else [("base", None)]
            sides.append((f"adapter {version}", adapter))
            for label, adapter_dir in sides:
                generator = models.create("generator", args.model, Settings(model_cache=settings.model_cache))
                generator.adapter = adapter_dir
                print(f"== {args.model} with {label}", flush=True)
                pipeline = KbloopPipeline(home, embedder, generator, entry_settings(home.load_settings(), args.model))
                rows[label] = summarise(run_pipeline(pipeline, args.model, ctx, out))
                pipeline.close()
    if trained:
        print(f"\n{args.model}: {trained.records_new} records, {trained.tokens} tokens, {trained.seconds:.0f}s "
              f"({trained.tokens_per_s:.0f} tok/s)")
    print("| answers with | accuracy | refusal | false refusal |")
    print("| --- | --- | --- | --- |")
    for label, s in rows.items():
        print(f"| {label} | {s['accuracy']['rate']:.3f} ({s['accuracy']['n']}/{s['accuracy']['of']}) | "
              f"{s['refusal']['rate']:.3f} ({s['refusal']['n']}/{s['refusal']['of']}) | "
              f"{s['false_refusal']['rate']:.3f} ({s['false_refusal']['n']}/{s['false_refusal']['of']}) |")


if __name__ == "__main__":
    main()
