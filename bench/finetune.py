"""Fine-tuning benchmark: kbloop's LoRA training against a plain transformers + peft loop,
and the cost of an incremental run after a small knowledge-base update.

Measured in one run, every training in its own fresh child process (``python bench/finetune.py
--child SPEC``), so one side's memory or warm caches never help or hurt the other:

1. throughput, for each model in ``--models``: a home holding ``--corpus-files`` documents of
   the kbdev corpus, ingested, ``dataset build`` (extractive pairs only). kbloop's side is
   ``kbloop.finetune.train.finetune(kb, fresh=True)`` with KBLOOP_FINETUNE_MAX_RECORDS set to
   ``--records``; its tok/s is the TrainResult's (non-padding tokens / seconds of the training
   loop). The plain side is the loop a typical user writes: the same base model folder,
   ``peft.get_peft_model`` with the same LoRA settings (r, alpha, dropout, target modules), the
   very records kbloop's planner picked (``plan_run``), in the same order, encoded with
   ``kbloop.finetune.data.encode`` (so both see the same token ids and skip the same too-long
   records), batches of KBLOOP_FINETUNE_BATCH_SIZE in dataset order right-padded to the longest
   by ``DataCollatorForSeq2Seq``, ``model(**batch, labels=labels).loss / accum`` then backward,
   gradient clipping at 1.0 and an AdamW step (same lr, weight decay 0, warm-up + cosine
   schedule) every KBLOOP_FINETUNE_GRAD_ACCUM micro-batches, for KBLOOP_FINETUNE_EPOCHS passes.
   Its timer starts after one untimed no-grad forward (kbloop's starts after its probe-loss
   pass) and counts the non-padding tokens (attention mask) it trained on, as kbloop does.
   Reported: tok/s of each and kbloop / plain (target >= 1.0).
2. peak memory: each child reads its own VmHWM (peak RSS) from /proc/self/status at the end.
3. incremental cost, with local:smollm2-135m: a home holding ``--corpus-files`` documents but
   some held back: the documents whose share of the training records (counted in part 1's
   home) comes closest to ``--update-share``; ingest, ``dataset build``, train
   adapter A (fresh) on every record and promote it; add the held-back documents, ingest,
   ``dataset build``, then time ``finetune(kb)`` (continues A: the new records plus replay at
   KBLOOP_FINETUNE_REPLAY_RATIO) against ``finetune(kb, fresh=True)`` (a full retrain on every
   active record). Reported: seconds of the whole ``finetune()`` call (model load, probe
   losses and saving included; the target, <= 0.3), seconds of the training loop alone, and tokens.

Part 1's home is built first, part 3 runs next, then part 1's trainings model by model; a
child that dies (say, out of memory) is reported and the rest still run. All runs use
KBLOOP_FINETUNE_EPOCHS=``--epochs`` (default 1), KBLOOP_DATASET_TEACHER_PAIRS=0 and
KBLOOP_FINETUNE_PATIENCE=0 (no early stopping, so every run trains all its records), the other
KBLOOP_FINETUNE_* settings at their defaults (or as set in the environment). The
corpus subset is the ``--corpus-files`` smallest documents, to bound time. Nothing is
downloaded: the packaged models must already be converted under KBLOOP_MODEL_CACHE.

The machine may be shared and noisy (each child also prints the load average before and
after): absolute numbers vary from run to run; the ratios, measured in the same run, mean more.
Details go to ``bench/out/finetune-<time>.json``.

Run it from the repository root:

    python bench/finetune.py [--models local:smollm2-135m,local:qwen2.5-0.5b]
                             [--records N] [--corpus-files 10] [--epochs 1]
                             [--skip-incremental] [--workdir DIR] [--keep] [--json]

The full default run takes about 20 minutes on 2 otherwise idle CPU cores (far longer when
another process competes for them) and needs about 12 GiB of free memory (fp32 training, no
gradient checkpointing; the plain qwen2.5-0.5b loop peaks near 11.5 GiB).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workdir import add_documents, bench_workdir, corpus_home

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "kbdev" / "corpus" / "initial"
OUT_DIR = REPO / "bench" / "out"
EMBEDDER = "local:all-minilm-l6-v2"
DEFAULT_MODELS = "local:smollm2-135m,local:qwen2.5-0.5b"
# Records per model when --records is not given. A record is about 850 tokens; 2 idle CPU
# cores train smollm2-135m at roughly 300 tok/s and qwen2.5-0.5b at roughly 120 (several
# times slower when another process competes for the cores): a few minutes per side.
# 8 records make one optimizer step at the default settings (batch 2 x accumulation 4).
DEFAULT_RECORDS = {"local:smollm2-135m": 32, "local:qwen2.5-0.5b": 16}
FALLBACK_RECORDS = 16
DEFAULT_CORPUS_FILES = 10
INCREMENTAL_MODEL = "local:smollm2-135m"

THROUGHPUT_TARGET = 1.0   # kbloop tok/s / plain tok/s, at least
INCREMENTAL_TARGET = 0.3  # incremental run / full retrain, at most

CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}


# -- inside a child process ------------------------------------------------------------------

def peak_rss_kib() -> int:
    """This process's peak resident set size (VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_settings(spec: dict):
    from kbloop.config import Home

    home = Home(Path(spec["home"]))
    return home, home.load_settings(environ={**os.environ, **spec["overrides"]})


def child_kbloop(spec: dict) -> dict:
    """``finetune(kb, fresh=...)``, timed; the TrainResult and the call's seconds."""
    from kbloop.finetune.train import finetune
    from kbloop.kb import KnowledgeBase

    home, settings = child_settings(spec)
    with KnowledgeBase(home, settings=settings) as kb:
        started = time.perf_counter()
        result = finetune(kb, fresh=spec["fresh"])
        call_seconds = time.perf_counter() - started
    return {"train": result.as_dict(), "call_seconds": call_seconds}


def child_plain(spec: dict) -> dict:
    """The plain transformers + peft loop over the given records; see the module docstring."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        get_cosine_schedule_with_warmup,
    )

    from kbloop.dataset.store import DatasetStore
    from kbloop.finetune.data import encode
    from kbloop.finetune.config import TrainConfig
    from kbloop.kb import KnowledgeBase

    started = time.perf_counter()
    home, settings = child_settings(spec)
    cfg = TrainConfig.from_settings(settings).as_dict()
    with KnowledgeBase(home, settings=settings) as kb:
        base_dir = kb.generator.base_model_dir()  # the folder kbloop trains on (no model loaded here)
        by_id = {r.id: r for r in DatasetStore(home, kb.manifest).active_records("train")}
    records = [by_id[i] for i in spec["record_ids"]]

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    torch.manual_seed(cfg["seed"])
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True, dtype=torch.float32)
    if cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(
        r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg["lora_dropout"],
        target_modules=[m.strip() for m in cfg["target_modules"].split(",") if m.strip()],
        task_type="CAUSAL_LM",
    ))

    encoded = [encode(r, tokenizer, cfg["max_seq_len"]) for r in records]
    features = [{"input_ids": e.input_ids, "attention_mask": [1] * e.n_tokens, "labels": e.labels}
                for e in encoded if e is not None]
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
    size, accum = cfg["batch_size"], cfg["grad_accum"]
    batches = [features[i:i + size] for _ in range(cfg["epochs"]) for i in range(0, len(features), size)]
    total_steps = math.ceil(len(batches) / accum)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, int(total_steps * 0.05)), total_steps)

    model.train()
    with torch.no_grad():  # untimed warm-up, as kbloop's probe-loss pass before its timer
        warm = collator(batches[0])
        model(input_ids=warm["input_ids"], attention_mask=warm["attention_mask"])
    tokens, padded, steps, losses = 0, 0, 0, []
    loop_started = time.perf_counter()
    step_loss = 0.0
    for index, batch_features in enumerate(batches):
        batch = collator(batch_features)
        labels = batch.pop("labels")
        loss = model(**batch, labels=labels).loss / accum
        loss.backward()
        step_loss += loss.item()
        tokens += int(batch["attention_mask"].sum())
        padded += batch["input_ids"].numel()
        if (index + 1) % accum == 0 or index + 1 == len(batches):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            losses.append(round(step_loss, 5))
            step_loss = 0.0
    seconds = time.perf_counter() - loop_started
    return {"train": {"steps": steps, "records": len(features), "records_skipped": len(records) - len(features),
                      "tokens": tokens, "padded_tokens": padded, "seconds": seconds,
                      "tokens_per_s": tokens / seconds if seconds > 0 else float("inf"),
                      "step_losses": losses},
            "call_seconds": time.perf_counter() - started}


def child_main(spec_path: Path, kinds: dict | None = None) -> None:
    """A child process: run the training the spec names (``kinds`` maps its kind to a function)
    and write its result, peak memory and load average beside the spec."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    spec = json.loads(spec_path.read_text())
    load_before = os.getloadavg()[0]
    out = (kinds or {"kbloop": child_kbloop, "plain": child_plain})[spec["kind"]](spec)
    import torch

    out.update(peak_rss_kib=peak_rss_kib(), load_before=load_before, load_after=os.getloadavg()[0],
               torch_threads=torch.get_num_threads())
    Path(spec["result"]).write_text(json.dumps(out))


# -- the parent: homes, children, report -----------------------------------------------------

class ChildFailed(RuntimeError):
    """A training child process ended without a result."""


def run_child(workdir: Path, name: str, spec: dict, script: Path = Path(__file__)) -> dict:
    """Run one training in a fresh Python process (``script --child SPEC``); its result dict."""
    spec_path = workdir / f"child-{name}.json"
    result_path = workdir / f"child-{name}.result.json"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    print(f"   [{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script.resolve()), "--child", str(spec_path)],
                          check=False, env={**os.environ, **CHILD_ENV}, cwd=REPO)
    if proc.returncode != 0 or not result_path.is_file():
        killed = "; killed, most likely for lack of memory" if proc.returncode == -9 else ""
        raise ChildFailed(f"child {name} failed (exit {proc.returncode}{killed})")
    out = json.loads(result_path.read_text())
    out["process_seconds"] = time.perf_counter() - started
    t = out["train"]
    print(f"   [{time.strftime('%H:%M:%S')}] {name}: {t['tokens']} tokens in {t['seconds']:.1f} s = "
          f"{t['tokens_per_s']:.1f} tok/s, {t.get('steps', '?')} steps; call {out['call_seconds']:.1f} s; "
          f"peak RSS {out['peak_rss_kib'] / 1024:.0f} MiB; load {out['load_before']:.2f} -> {out['load_after']:.2f}",
          flush=True)
    return out


def corpus_subset(corpus: Path, count: int) -> list[Path]:
    """The ``count`` smallest documents (all when count is 0), by name for ties."""
    files = sorted((p for p in corpus.iterdir() if p.is_file()), key=lambda p: (p.stat().st_size, p.name))
    return files[:count] if count else files


def ingest_and_build(home, embedder) -> dict:
    from kbloop.dataset.build import build
    from kbloop.kb import KnowledgeBase

    with KnowledgeBase(home, embedder=embedder) as kb:
        ingested = kb.ingest()
        counts = build(kb)
    return {"files_added": ingested.files_added, "files_failed": ingested.files_failed,
            "chunks_embedded": ingested.chunks_embedded, "dataset": counts.as_dict()}


def planned_records(home, overrides: dict[str, str]) -> tuple[list[str], dict]:
    """The records ``finetune(kb, fresh=True)`` will train on, from kbloop's own planner."""
    from kbloop.finetune.registry import AdapterRegistry
    from kbloop.finetune.train import base_model_id, plan_run
    from kbloop.kb import KnowledgeBase

    settings = home.load_settings(environ={**os.environ, **overrides})
    with KnowledgeBase(home, settings=settings) as kb:
        registry = AdapterRegistry(kb.home, kb.manifest)
        plan = plan_run(kb, registry, None, True, base_model_id(kb.generator.base_model_dir()))
    return plan.record_ids, plan.config.as_dict()


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def measure_throughput(model: str, records: int, home, workdir: Path) -> dict:
    overrides = {"KBLOOP_GENERATOR": model, "KBLOOP_FINETUNE_MAX_RECORDS": str(records),
                 "KBLOOP_FINETUNE_PATIENCE": "0"}
    record_ids, config = planned_records(home, overrides)
    tag = model.split(":", 1)[-1]
    print(f"\n== {model}: {len(record_ids)} records; batch {config['batch_size']} x accum {config['grad_accum']}, "
          f"max_seq_len {config['max_seq_len']}, LoRA r={config['lora_r']} alpha={config['lora_alpha']} "
          f"dropout={config['lora_dropout']} on {config['target_modules']}, lr {config['lr']}, "
          f"epochs {config['epochs']}", flush=True)
    spec = {"home": str(home.root), "overrides": overrides}
    kbloop = run_child(workdir, f"{tag}-kbloop", {**spec, "kind": "kbloop", "fresh": True})
    from kbloop.finetune.registry import AdapterRegistry
    from kbloop.kb import KnowledgeBase

    with KnowledgeBase(home) as kb:
        trained_ids = AdapterRegistry(kb.home, kb.manifest).lineage(kbloop["train"]["version"])["record_ids"]
    if trained_ids != record_ids:
        raise SystemExit(f"kbloop trained other records than its plan showed ({len(trained_ids)} vs {len(record_ids)})")
    plain = run_child(workdir, f"{tag}-plain", {**spec, "kind": "plain", "record_ids": record_ids})
    k, p = kbloop["train"], plain["train"]
    if k["records_skipped"] != p["records_skipped"]:
        print(f"   WARNING: kbloop skipped {k['records_skipped']} records, plain {p['records_skipped']}")
    return {"model": model, "records": len(record_ids), "config": config, "kbloop": kbloop, "plain": plain,
            "tokens_equal": k["tokens"] == p["tokens"],
            "tok_s_ratio": ratio(k["tokens_per_s"], p["tokens_per_s"]),
            "rss_ratio": ratio(kbloop["peak_rss_kib"], plain["peak_rss_kib"])}


def train_records_per_file(home) -> dict[str, int]:
    """Active training records of a built home, by document name."""
    from kbloop.dataset.store import DatasetStore
    from kbloop.kb import KnowledgeBase

    counts: dict[str, int] = {}
    with KnowledgeBase(home) as kb:
        for record in DatasetStore(home, kb.manifest).active_records("train"):
            name = Path(record.source["path"]).name
            counts[name] = counts.get(name, 0) + 1
    return counts


def held_back(files: list[Path], share: float, per_file: dict[str, int]) -> list[Path]:
    """The documents whose training records together come closest to ``share`` of all (at
    least one, never every one): an exact subset-sum over the per-document record counts."""
    total = sum(per_file.values())
    counted = sorted((f for f in files if per_file.get(f.name, 0)), key=lambda f: f.name)
    if len(counted) < 2 or not total:
        raise SystemExit("the incremental part needs at least two documents with training records")
    reachable: dict[int, list[Path]] = {0: []}
    for f in counted:
        for held, chosen in list(reachable.items()):
            reachable.setdefault(held + per_file[f.name], chosen + [f])
    return reachable[min((h for h in reachable if 0 < h < total), key=lambda h: (abs(h / total - share), h))]


def measure_incremental(files: list[Path], share: float, per_file: dict[str, int], epochs: int, embedder,
                        workdir: Path) -> dict:
    from kbloop.finetune.registry import AdapterRegistry
    from kbloop.kb import KnowledgeBase

    later = held_back(files, share, per_file)
    first = [f for f in files if f not in later]
    settings = {"KBLOOP_GENERATOR": INCREMENTAL_MODEL, "KBLOOP_EMBEDDER": EMBEDDER,
                "KBLOOP_DATASET_TEACHER_PAIRS": "0", "KBLOOP_FINETUNE_EPOCHS": str(epochs),
                "KBLOOP_FINETUNE_PATIENCE": "0"}
    home = corpus_home(workdir / "incremental", first, settings)
    expected = sum(per_file.get(f.name, 0) for f in later) / max(sum(per_file.values()), 1)
    print(f"\n== incremental ({INCREMENTAL_MODEL}): {len(first)} documents first, then "
          f"{', '.join(f.name for f in later)} added (~{expected:.0%} of the training records)", flush=True)
    initial = ingest_and_build(home, embedder)
    print(f"   initial: {initial['chunks_embedded']} chunks, {initial['dataset']['records_train']} train records",
          flush=True)
    spec = {"home": str(home.root), "overrides": {}}
    adapter_a = run_child(workdir, "incremental-A", {**spec, "kind": "kbloop", "fresh": True})
    with KnowledgeBase(home) as kb:
        AdapterRegistry(kb.home, kb.manifest).promote(adapter_a["train"]["version"], "bench/finetune.py parent A")
    add_documents(home, later)
    update = ingest_and_build(home, embedder)
    print(f"   update: {update['chunks_embedded']} chunks, {update['dataset']['records_train']} new train records",
          flush=True)
    incremental = run_child(workdir, "incremental-continue", {**spec, "kind": "kbloop", "fresh": False})
    full = run_child(workdir, "incremental-full", {**spec, "kind": "kbloop", "fresh": True})
    i, f = incremental["train"], full["train"]
    return {"model": INCREMENTAL_MODEL, "first_files": [p.name for p in first], "added_files": [p.name for p in later],
            "initial": initial, "update": update, "adapter_a": adapter_a, "incremental": incremental, "full": full,
            "new_share": ratio(update["dataset"]["records_train"],
                               update["dataset"]["records_train"] + initial["dataset"]["records_train"]),
            "call_ratio": ratio(incremental["call_seconds"], full["call_seconds"]),
            "loop_ratio": ratio(i["seconds"], f["seconds"]),
            "token_ratio": ratio(i["tokens"], f["tokens"])}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def summary_tables(throughput: list[dict], incremental: dict | None) -> str:
    lines = []
    if throughput:
        lines += ["| model | measure | kbloop | plain transformers+peft | kbloop / plain | target | result |",
                  "|---|---|---|---|---|---|---|"]
        for t in throughput:
            if "error" in t:
                lines.append(f"| {t['model']} | {t['records']} records | {t['error']} | | | | FAIL |")
                continue
            k, p = t["kbloop"], t["plain"]
            kt, pt = k["train"], p["train"]
            name = t["model"]
            lines.append(f"| {name} | train tok/s | {kt['tokens_per_s']:.1f} | {pt['tokens_per_s']:.1f} | "
                         f"{t['tok_s_ratio']:.3f} | >= {THROUGHPUT_TARGET} | "
                         f"{verdict(t['tok_s_ratio'] >= THROUGHPUT_TARGET)} |")
            lines.append(f"| {name} | tokens (non-padding) / loop seconds | {kt['tokens']} / {kt['seconds']:.1f} | "
                         f"{pt['tokens']} / {pt['seconds']:.1f} (padded {pt['padded_tokens']}) | "
                         f"{ratio(kt['seconds'], pt['seconds']):.3f} (s) | same tokens | "
                         f"{verdict(t['tokens_equal'])} |")
            lines.append(f"| {name} | records trained (skipped too long) / steps | "
                         f"{t['records'] - kt['records_skipped']} ({kt['records_skipped']}) / {kt['steps']} | "
                         f"{pt['records']} ({pt['records_skipped']}) / {pt['steps']} | | | |")
            lines.append(f"| {name} | peak RSS (MiB) | {k['peak_rss_kib'] / 1024:.0f} | {p['peak_rss_kib'] / 1024:.0f} | "
                         f"{t['rss_ratio']:.3f} | | |")
            lines.append(f"| {name} | whole call incl. load (s) | {k['call_seconds']:.1f} | {p['call_seconds']:.1f} | "
                         f"{ratio(k['call_seconds'], p['call_seconds']):.3f} | | |")
    if incremental and "error" in incremental:
        lines += ["", f"incremental ({incremental['model']}): {incremental['error']}"]
    elif incremental:
        inc, full = incremental["incremental"], incremental["full"]
        it, ft = inc["train"], full["train"]
        if lines:
            lines.append("")
        header = (f"| incremental ({incremental['model']}) after adding {', '.join(incremental['added_files'])} "
                  "| continue A | full retrain | ratio | target | result |")
        lines += [header, "|---|---|---|---|---|---|"]
        lines.append(f"| new train records / all active | {incremental['update']['dataset']['records_train']} / "
                     f"{incremental['update']['dataset']['records_train'] + incremental['initial']['dataset']['records_train']}"
                     f" | | {incremental['new_share']:.3f} | | |")
        lines.append(f"| records trained (new + replay) | {it['records_new']} + {it['records_replay']} | "
                     f"{ft['records_new']} + {ft['records_replay']} | "
                     f"{ratio(it['records_new'] + it['records_replay'], ft['records_new']):.3f} | | |")
        lines.append(f"| finetune() call seconds (load, probes, save incl.) | {inc['call_seconds']:.1f} | "
                     f"{full['call_seconds']:.1f} | {incremental['call_ratio']:.3f} | <= {INCREMENTAL_TARGET} | "
                     f"{verdict(incremental['call_ratio'] <= INCREMENTAL_TARGET)} |")
        lines.append(f"| training loop seconds | {it['seconds']:.1f} | {ft['seconds']:.1f} | "
                     f"{incremental['loop_ratio']:.3f} | <= {INCREMENTAL_TARGET} | "
                     f"{verdict(incremental['loop_ratio'] <= INCREMENTAL_TARGET)} |")
        lines.append(f"| tokens trained | {it['tokens']} | {ft['tokens']} | {incremental['token_ratio']:.3f} | "
                     f"<= {INCREMENTAL_TARGET} | {verdict(incremental['token_ratio'] <= INCREMENTAL_TARGET)} |")
        lines.append(f"| train tok/s | {it['tokens_per_s']:.1f} | {ft['tokens_per_s']:.1f} | "
                     f"{ratio(it['tokens_per_s'], ft['tokens_per_s']):.3f} | | |")
        lines.append(f"| peak RSS (MiB) | {inc['peak_rss_kib'] / 1024:.0f} | {full['peak_rss_kib'] / 1024:.0f} | "
                     f"{ratio(inc['peak_rss_kib'], full['peak_rss_kib']):.3f} | | |")
    return "\n".join(lines)


def run(args: argparse.Namespace, workdir: Path) -> dict:
    from kbloop import models

    files = corpus_subset(args.corpus, args.corpus_files)
    model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"corpus: {args.corpus} ({len(files)} smallest files: {', '.join(f.name for f in files)})")
    print(f"workdir: {workdir}; python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    from kbloop.config import Settings

    embedder = models.create("embedder", EMBEDDER, Settings())
    started = time.perf_counter()
    # One home over the whole subset: part 1 trains from it, and its records per document
    # choose the update of part 3.
    home = corpus_home(workdir / "throughput", files, {"KBLOOP_EMBEDDER": EMBEDDER,
                                                     "KBLOOP_DATASET_TEACHER_PAIRS": "0",
                                                     "KBLOOP_FINETUNE_EPOCHS": str(args.epochs)})
    built = ingest_and_build(home, embedder)
    per_file = train_records_per_file(home)
    print(f"home over the subset: {built['chunks_embedded']} chunks, {built['dataset']['records_train']} train "
          f"records ({', '.join(f'{name} {n}' for name, n in sorted(per_file.items()))})", flush=True)
    incremental = None
    if not args.skip_incremental:
        try:
            incremental = measure_incremental(files, args.update_share, per_file, args.epochs, embedder, workdir)
        except ChildFailed as exc:
            print(f"   {exc}", flush=True)
            incremental = {"model": INCREMENTAL_MODEL, "error": str(exc)}
    throughput = []
    if model_list:
        for model in model_list:
            records = args.records or DEFAULT_RECORDS.get(model, FALLBACK_RECORDS)
            try:
                throughput.append(measure_throughput(model, records, home, workdir))
            except ChildFailed as exc:
                print(f"   {exc}", flush=True)
                throughput.append({"model": model, "records": records, "error": str(exc)})
    seconds = time.perf_counter() - started
    print(f"\n## Summary (one run, {seconds / 60:.1f} min; absolute numbers vary on a shared machine, "
          f"ratios are from the same run)\n")
    print(summary_tables(throughput, incremental))
    return {"corpus": str(args.corpus), "files": [f.name for f in files], "epochs": args.epochs,
            "seconds": seconds, "throughput": throughput, "incremental": incremental}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma-separated generators for the throughput part; empty skips it "
                             f"(default: {DEFAULT_MODELS})")
    parser.add_argument("--records", type=int, default=None,
                        help="records per model in the throughput part (default: "
                             + ", ".join(f"{m.split(':')[-1]} {n}" for m, n in DEFAULT_RECORDS.items()) + ")")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help=f"documents (default: {DEFAULT_CORPUS})")
    parser.add_argument("--corpus-files", type=int, default=DEFAULT_CORPUS_FILES,
                        help="use only this many smallest documents of the corpus; 0 for all "
                             f"(default: {DEFAULT_CORPUS_FILES}, about 70 training records)")
    parser.add_argument("--update-share", type=float, default=0.1,
                        help="the update is the set of documents whose share of the training records is "
                             "closest to this (default: 0.1)")
    parser.add_argument("--epochs", type=int, default=1, help="KBLOOP_FINETUNE_EPOCHS for every run (default: 1)")
    parser.add_argument("--skip-incremental", action="store_true", help="skip part 3")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="empty or new folder for the homes (default: a temporary one, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--json", action="store_true", help="also print all results as JSON")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def bench_main(args: argparse.Namespace, run, child, name: str) -> None:
    """What a training benchmark's ``main`` does: a child runs its training; the parent checks the
    corpus, runs ``run(args, workdir)`` and keeps the results in ``bench/out/<name>-<time>.json``."""
    if args.child is not None:
        child(args.child)
        return
    args.corpus = args.corpus.resolve()
    if not args.corpus.is_dir():
        raise SystemExit(f"corpus folder {args.corpus} does not exist")
    for key, value in CHILD_ENV.items():
        os.environ.setdefault(key, value)
    with bench_workdir(args.workdir, args.keep, prefix=f"kbloop-bench-{name}-") as workdir:
        results = run(args, workdir)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\ndetails: {out}")
    if args.json:
        print("\n" + json.dumps(results, indent=2))


def main(argv: list[str] | None = None) -> None:
    bench_main(parse_args(argv), run, child_main, "finetune")


if __name__ == "__main__":
    main()
