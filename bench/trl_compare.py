"""kbloop's LoRA training loop against TRL's ``SFTTrainer`` on the same records: tokens/s and
peak memory of each, and their ratios.

A home holding ``--corpus-files`` documents of the kbdev corpus is ingested and its training
records built (extractive pairs only); kbloop's planner picks ``--records`` of them for
``--model``. Then two trainings run, each in its own fresh child process so that each peak RSS
(VmHWM) belongs to one run alone:

- kbloop: ``kbloop.finetune.train.finetune(kb, fresh=True)``, early stopping off
  (KBLOOP_FINETUNE_PATIENCE=0: no records held out, no probe evaluations), so both sides
  train on the same records. Its tok/s is the TrainResult's: non-padding tokens / seconds of
  the training loop, which starts after the model is loaded and has run one forward pass.
- TRL: ``trl.SFTTrainer`` on the very records kbloop trained (those kbloop skips as longer
  than KBLOOP_FINETUNE_MAX_SEQ_LEN are left out here too), as a conversational
  prompt/completion dataset with ``completion_only_loss=True``: the same chat template and
  the loss on the answer tokens only. The same LoRA settings (r, alpha, dropout, target
  modules), batch size, gradient accumulation, epochs, peak learning rate, weight decay 0,
  gradient clipping at 1.0, 5% warm-up and cosine decay, AdamW, fp32, gradient checkpointing
  as KBLOOP_FINETUNE_GRADIENT_CHECKPOINTING says; batches grouped by length like kbloop's
  (``--trl-sampler random`` for TRL's default). Its timer runs from the trainer's
  ``on_train_begin`` to ``on_train_end``, after one untimed forward pass, and counts the
  non-padding tokens (attention mask) of the batches it trained on.

Reported: tokens, loop seconds, tok/s, steps and peak RSS of each, kbloop / TRL for tok/s
(above 1: kbloop is faster) and for peak RSS (below 1: kbloop needs less). The machine should
be quiet: another process on the same cores changes both numbers (each child prints the load
average before and after). Details go to ``bench/out/trl-compare-<time>.json``.

TRL is needed only here: ``pip install -r bench/requirements.txt``. Nothing is downloaded at
run time: the packaged models are converted under KBLOOP_MODEL_CACHE on first use. Any
KBLOOP_FINETUNE_* variable in the environment applies to both sides (for a quick check,
KBLOOP_FINETUNE_GRAD_ACCUM=1 makes every micro-batch a step).

Run it from the repository root:

    python bench/trl_compare.py [--model local:qwen2.5-0.5b] [--records 32] [--epochs 1]
                                [--corpus DIR] [--corpus-files 10] [--trl-sampler group_by_length|random]
                                [--workdir DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The fine-tuning benchmark's home, planner and kbloop child, shared rather than copied.
from finetune import (
    DEFAULT_CORPUS,
    EMBEDDER,
    ChildFailed,
    bench_main,
    child_kbloop,
    child_main,
    child_settings,
    corpus_subset,
    ingest_and_build,
    make_home,
    planned_records,
    ratio,
)
from finetune import run_child as finetune_child

DEFAULT_MODEL = "local:qwen2.5-0.5b"
DEFAULT_RECORDS = 32
DEFAULT_CORPUS_FILES = 10


# -- inside a child process ------------------------------------------------------------------

def child_trl(spec: dict) -> dict:
    """TRL's SFTTrainer over the given records; see the module docstring."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from kbloop.dataset.store import DatasetStore
    from kbloop.finetune.config import TrainConfig
    from kbloop.finetune.data import encode
    from kbloop.kb import KnowledgeBase

    started = time.perf_counter()
    home, settings = child_settings(spec)
    cfg = TrainConfig.from_settings(settings)
    with KnowledgeBase(home, settings=settings) as kb:
        base_dir = kb.generator.base_model_dir()  # the folder kbloop trains on
        by_id = {r.id: r for r in DatasetStore(home, kb.manifest).active_records("train")}
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    records = [by_id[i] for i in spec["record_ids"]]
    kept = [r for r in records if encode(r, tokenizer, cfg.max_seq_len) is not None]
    rows = [{"prompt": messages[:-1], "completion": messages[-1:]} for messages in (r.messages() for r in kept)]
    # The converted folder's config still names the GGUF it came from as a quantization, which the
    # Trainer refuses to train; its weights are plain fp32, and load the same without that entry.
    config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    del config.quantization_config
    model = AutoModelForCausalLM.from_pretrained(base_dir, config=config, local_files_only=True, dtype=torch.float32)
    args = SFTConfig(
        output_dir=spec["scratch"], per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, learning_rate=cfg.lr,
        lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
        completion_only_loss=True, max_length=cfg.max_seq_len, packing=False,
        gradient_checkpointing=cfg.gradient_checkpointing, bf16=False, fp16=False, use_cpu=True,
        train_sampling_strategy=spec["trl_sampler"], seed=cfg.seed, save_strategy="no", report_to="none",
        logging_steps=1, disable_tqdm=True, dataloader_pin_memory=False,
    )
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.modules, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora)

    counted = {"tokens": 0, "padded": 0}
    collate = trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        counted["tokens"] += int(batch["attention_mask"].sum())
        counted["padded"] += batch["input_ids"].numel()
        return batch

    trainer.data_collator = counting_collator

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.began

    timer = Timer()
    trainer.add_callback(timer)
    trainer.remove_callback(PrinterCallback)  # the losses are kept in the results, not printed per step
    with torch.no_grad():  # untimed warm-up, as kbloop's probe-loss pass before its timer
        first = trainer.train_dataset[0]["input_ids"]
        trainer.model(input_ids=torch.tensor([first]))
    output = trainer.train()
    losses = [round(entry["loss"], 5) for entry in trainer.state.log_history if "loss" in entry]
    tokens, seconds = counted["tokens"], timer.seconds
    return {"train": {"steps": output.global_step, "records": len(kept), "records_skipped": len(records) - len(kept),
                      "tokens": tokens, "padded_tokens": counted["padded"], "seconds": seconds,
                      "tokens_per_s": tokens / seconds if seconds > 0 else float("inf"), "step_losses": losses},
            "call_seconds": time.perf_counter() - started}


def child(spec_path: Path) -> None:
    child_main(spec_path, {"kbloop": child_kbloop, "trl": child_trl})


# -- the parent ------------------------------------------------------------------------------

def run_child(workdir: Path, name: str, spec: dict) -> dict:
    """One training in a fresh Python process; its result dict."""
    try:
        return finetune_child(workdir, name, {**spec, "scratch": str(workdir / f"{name}-out")}, Path(__file__))
    except ChildFailed as exc:
        raise SystemExit(str(exc)) from None


def summary_table(model: str, kbloop: dict, trl: dict) -> str:
    k, t = kbloop["train"], trl["train"]
    rows = [
        ("train tok/s", f"{k['tokens_per_s']:.1f}", f"{t['tokens_per_s']:.1f}",
         f"**{ratio(k['tokens_per_s'], t['tokens_per_s']):.2f}**"),
        ("peak RSS (MiB)", f"{kbloop['peak_rss_kib'] / 1024:.0f}", f"{trl['peak_rss_kib'] / 1024:.0f}",
         f"**{ratio(kbloop['peak_rss_kib'], trl['peak_rss_kib']):.2f}**"),
        ("tokens (non-padding) / loop seconds", f"{k['tokens']} / {k['seconds']:.1f}",
         f"{t['tokens']} / {t['seconds']:.1f}", f"{ratio(k['seconds'], t['seconds']):.2f} (s)"),
        ("optimizer steps", str(k["steps"]), str(t["steps"]), ""),
        ("whole child, loading included (s)", f"{kbloop['call_seconds']:.1f}", f"{trl['call_seconds']:.1f}", ""),
    ]
    lines = [f"| {model} | kbloop | TRL SFTTrainer | kbloop / TRL |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace, workdir: Path) -> dict:
    from kbloop import models
    from kbloop.config import Settings
    from kbloop.finetune.registry import AdapterRegistry
    from kbloop.kb import KnowledgeBase

    files = corpus_subset(args.corpus, args.corpus_files)
    print(f"corpus: {args.corpus} ({len(files)} smallest files); workdir: {workdir}; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    home = make_home(workdir / "home", files, {"KBLOOP_EMBEDDER": EMBEDDER, "KBLOOP_DATASET_TEACHER_PAIRS": "0"})
    built = ingest_and_build(home, models.create("embedder", EMBEDDER, Settings()))
    print(f"home: {built['chunks_embedded']} chunks, {built['dataset']['records_train']} train records", flush=True)
    overrides = {"KBLOOP_GENERATOR": args.model, "KBLOOP_FINETUNE_MAX_RECORDS": str(args.records),
                 "KBLOOP_FINETUNE_EPOCHS": str(args.epochs), "KBLOOP_FINETUNE_PATIENCE": "0"}
    record_ids, config = planned_records(home, overrides)
    print(f"\n== {args.model}: {len(record_ids)} records, {config['epochs']} epochs; batch {config['batch_size']} x "
          f"accum {config['grad_accum']}, max_seq_len {config['max_seq_len']}, LoRA r={config['lora_r']} "
          f"alpha={config['lora_alpha']} on {config['target_modules']}, lr {config['lr']}", flush=True)
    spec = {"home": str(home.root), "overrides": overrides}
    kbloop = run_child(workdir, "kbloop", {**spec, "kind": "kbloop", "fresh": True})
    with KnowledgeBase(home) as kb:
        trained = AdapterRegistry(kb.home, kb.manifest).lineage(kbloop["train"]["version"])["record_ids"]
    if trained != record_ids:
        raise SystemExit(f"kbloop trained other records than its plan showed ({len(trained)} vs {len(record_ids)})")
    trl = run_child(workdir, "trl", {**spec, "kind": "trl", "record_ids": record_ids, "trl_sampler": args.trl_sampler})
    if kbloop["train"]["tokens"] != trl["train"]["tokens"]:
        print(f"   note: the sides trained {kbloop['train']['tokens']} and {trl['train']['tokens']} tokens "
              "(their chat-template renderings differ); tok/s is still per token trained", flush=True)
    table = summary_table(args.model, kbloop, trl)
    print("\n" + table)
    import trl as trl_package

    return {"model": args.model, "records": len(record_ids), "config": config, "trl_version": trl_package.__version__,
            "trl_sampler": args.trl_sampler, "kbloop": kbloop, "trl": trl,
            "tok_s_ratio": ratio(kbloop["train"]["tokens_per_s"], trl["train"]["tokens_per_s"]),
            "rss_ratio": ratio(kbloop["peak_rss_kib"], trl["peak_rss_kib"]), "table": table}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"the base model (default: {DEFAULT_MODEL})")
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS,
                        help=f"training records (default: {DEFAULT_RECORDS})")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the records (default: 1)")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help=f"documents (default: {DEFAULT_CORPUS})")
    parser.add_argument("--corpus-files", type=int, default=DEFAULT_CORPUS_FILES,
                        help=f"use only this many smallest documents; 0 for all (default: {DEFAULT_CORPUS_FILES})")
    parser.add_argument("--trl-sampler", choices=["group_by_length", "random"], default="group_by_length",
                        help="TRL's batch order: grouped by length like kbloop's (default), or TRL's own default")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="empty or new folder for the home (default: a temporary one, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--json", action="store_true", help="also print all results as JSON")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    bench_main(parse_args(argv), run, child, "trl-compare")


if __name__ == "__main__":
    main()
