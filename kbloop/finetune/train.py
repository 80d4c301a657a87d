"""``kbloop finetune``: LoRA on CPU, continuing from the adapter that answers now.

The run, top to bottom (``finetune``):

1. plan: the parent is the current adapter (or ``--from``, or none with ``--fresh``); the
   records are the active training records the parent has not seen, plus a replay sample of
   ones it has (``KBLOOP_FINETUNE_REPLAY_RATIO`` per new record), so it keeps what it knew;
2. load the generator's base model and either the parent adapter, trainable, or a new one;
3. measure the loss on a fixed probe of the parent's records before training: it equals the
   parent's final probe loss, which shows the run starts from the parent's weights; that pass
   is timed, and its speed gives the run's time estimate, told before the first step;
4. train: answer tokens only, batches of similar length, gradient accumulation, AdamW with a
   short warm-up and cosine decay; a checkpoint every N steps for ``--resume``. Every few steps
   the loss on this run's probe, records held out of training, is measured; once it stays above
   its best for ``patience`` measurements the run stops early (``stopping.py``);
5. keep the adapter with the lowest probe loss, write the adapter folder and its lineage, and
   rename the folder into the registry in one step. The new version is a candidate, not current.

All of a run's state lives in data/adapters/.runs/<version>/ until that last rename, so a
crash damages no adapter, and ``--resume`` continues from the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from kbloop import __version__
from kbloop.dataset.records import CORRECTION, Record
from kbloop.dataset.store import DatasetStore
from kbloop.errors import KbloopError, NotFound
from kbloop.finetune.config import TrainConfig
from kbloop.finetune.data import Example, answer_loss, collate, encode, length_batches
from kbloop.finetune.registry import AdapterRegistry
from kbloop.finetune.stopping import EarlyStopping, probe_size
from kbloop.fsutil import atomic_write_bytes, exclusive, fsync_folder
from kbloop.progress import ProgressMode, step_progress

log = logging.getLogger(__name__)

PROBE_SIZE = 8  # records whose loss is measured before and after a run that holds none out
WARMUP_FRACTION = 0.05
# Forward passes' worth of work in one training token: the forward pass and a backward pass
# of about the same work (the base weights are frozen, so it computes no gradients for them;
# measured 2 to 2.5 on smollm2-135m); one more when gradient checkpointing recomputes the forward.
TRAIN_COST = 2


@dataclass
class Plan:
    """Everything a run needs to be repeated or resumed, written before the first step."""

    version: str
    parent: str | None
    base_model: str
    lr: float
    record_ids: list[str]            # the new records
    replay_ids: list[str]            # older records mixed in
    probe_ids: list[str]             # fixed sample whose loss is measured before and after
    parent_probe_ids: list[str]      # the parent's probe, to show where this run starts
    dataset_versions: list[str]
    config: TrainConfig
    seen_ids: list[str] = field(default_factory=list)  # all records this adapter has learned from
    new_dataset_versions: list[str] = field(default_factory=list)  # where the new records came from
    probe_held_out: bool = False     # the probe is kept out of training, and early stopping watches it

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        return cls(**{**data, "config": TrainConfig(**data["config"])})


@dataclass
class TrainResult:
    version: str
    parent: str | None
    steps: int
    records_new: int
    records_replay: int
    records_skipped: int
    tokens: int
    seconds: float
    tokens_per_s: float
    initial_parent_probe_loss: float | None
    final_probe_loss: float
    resumed_from_step: int = 0
    records_probe: int = 0           # held out of training for early stopping
    probe_losses: list[list[float]] = field(default_factory=list)  # [step, loss] at each evaluation
    best_step: int | None = None     # the step whose adapter was kept, with early stopping
    stopped_early: bool = False
    stop_reason: str = ""
    probe_seconds: float = 0.0       # of ``seconds``, spent measuring the probe loss
    estimated_seconds: float | None = None  # the estimate told before the first step

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunOutline:
    """What a run is about to do, told before its first step."""

    version: str
    parent: str | None
    generator: str
    records_new: int
    records_replay: int
    records_probe: int               # held out of training; 0 when early stopping is off
    records_skipped: int
    epochs: int
    steps: int
    records_per_step: int
    lr: float
    lora_r: int
    eval_steps: int
    patience: int
    resumed_from_step: int
    estimated_seconds: float | None  # None when nothing was timed to estimate from


def base_model_id(folder: Path) -> str:
    """Which base weights an adapter belongs to: the packaged GGUF's pinned hash, else the
    folder's config plus its weight files' names and sizes."""
    import hashlib

    stamp = folder / "kbloop-source.json"
    if stamp.is_file():
        return "gguf-sha256:" + json.loads(stamp.read_text())["gguf_sha256"]
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return "folder-sha256:" + digest.hexdigest()


# -- planning --------------------------------------------------------------------------------


def pending_records(kb) -> int:
    """Active training records the current adapter has not learned from. Its held-out probe
    records do not count: they wait for a run that has new records, or every run would leave
    a few behind that start another."""
    registry = AdapterRegistry(kb.home, kb.manifest)
    current = registry.current()
    lineage = registry.lineage(current) if current else {}
    done = set(lineage.get("seen_ids", []))
    if lineage.get("probe_held_out"):
        done |= set(lineage["probe_ids"])
    return sum(1 for r in DatasetStore(kb.home, kb.manifest).active_records("train") if r.id not in done)


def plan_run(kb, registry: AdapterRegistry, parent: str | None, fresh: bool, base_id: str,
             max_records: int | None = None) -> Plan:
    settings = kb.settings
    config = TrainConfig.from_settings(settings)
    if max_records is not None:
        config = replace(config, max_records=max_records)
    if fresh:
        parent = None
    elif parent is None:
        parent = registry.current()
    parent_lineage = registry.lineage(parent) if parent else {}
    if parent and parent_lineage.get("base_model") != base_id:
        raise KbloopError(
            f"adapter {parent} was trained for another base model than {settings.generator}; "
            "use --fresh to start a new adapter"
        )
    active = DatasetStore(kb.home, kb.manifest).active_records("train")
    if not active:
        raise NotFound("no training records: run `kbloop dataset build` first")
    seen = set(parent_lineage.get("seen_ids", []))
    new = [r.id for r in active if r.id not in seen]
    corrections = {r.id for r in active if r.generator == CORRECTION}
    if config.max_records and len(new) > config.max_records:
        # Users' corrections always; then the newest knowledge first; within a dataset
        # version, a seeded sample.
        version_of = {r.id: r.version for r in active}
        shuffled = random.Random(config.seed).sample(new, len(new))
        ranked = sorted(shuffled, key=lambda i: (i in corrections, version_of[i]), reverse=True)
        keep = set(ranked[:max(config.max_records, len(corrections & set(new)))])
        new = [i for i in new if i in keep]
    if not new:
        raise KbloopError(f"nothing new to learn: adapter {parent} has seen every active training record "
                          "(build a dataset after the documents change, or use --fresh)")
    rng = random.Random(config.seed)
    pool = [r.id for r in active if r.id in seen]
    replay = rng.sample(pool, min(len(pool), round(config.replay_ratio * len(new)))) if parent else []
    held_out = probe_size(len(new) + len(replay), config.probe_fraction) if config.patience else 0
    # A correction is never held out: the user expects the next adapter to have learned it.
    probe_pool = [i for i in new + replay if i not in corrections]
    probe = rng.sample(probe_pool, min(held_out or PROBE_SIZE, len(probe_pool)))
    if held_out and not set(new) - set(probe):
        held_out, probe = 0, probe[:PROBE_SIZE]  # a probe must leave something new to learn
    if held_out:
        # Held out of training; its new records stay unseen, so the next run learns them.
        kept_out = set(probe)
        new = [i for i in new if i not in kept_out]
        replay = [i for i in replay if i not in kept_out]
    by_id = {r.id: r for r in active}
    return Plan(
        version=registry.next_version(), parent=parent, base_model=base_id,
        lr=config.incremental_lr if parent else config.lr,
        record_ids=new, replay_ids=replay, probe_ids=probe,
        parent_probe_ids=parent_lineage.get("probe_ids", []),
        dataset_versions=sorted({by_id[i].version for i in new + replay}),
        config=config,
        seen_ids=sorted(seen | set(new)),
        new_dataset_versions=sorted({by_id[i].version for i in new}),
        probe_held_out=bool(held_out),
    )


def repeated_corrections(records: dict[str, Record], ids: list[str], cfg: TrainConfig,
                         encode_one: Callable[[Record], Example | None]) -> list[Example]:
    """The extra copies of the users' corrections among ``ids``, so that each correction is
    trained ``correction_repeats`` times an epoch in all: its records (the question as asked,
    then its other phrasings) take the extra copies in turn, every copy with its sources in
    another seeded order, so the answer is learned for the question, not for one arrangement
    of the prompt."""
    by_rating: dict[object, list[Record]] = {}
    for rid in ids:
        record = records.get(rid)
        if record is not None and record.generator == CORRECTION:
            by_rating.setdefault(record.source.get("feedback_id", rid), []).append(record)
    extra = []
    for group in by_rating.values():
        group.sort(key=lambda r: "phrasing_of" in r.source)  # the question as asked first
        rngs = [random.Random(f"{cfg.seed}:{r.id}") for r in group]
        for n in range(max(0, cfg.correction_repeats - len(group))):
            record, rng = group[n % len(group)], rngs[n % len(group)]
            example = encode_one(replace(record, knowledge=rng.sample(record.knowledge, len(record.knowledge))))
            if example is not None:
                extra.append(example)
    return extra


def records_by_id(kb, ids: set[str]) -> dict[str, Record]:
    """Records by id from every dataset version's file (retired ones too: a probe is fixed)."""
    store = DatasetStore(kb.home, kb.manifest)
    found: dict[str, Record] = {}
    for version in [v["version"] for v in store.versions()]:
        for record in store.records(version):
            if record.id in ids:
                found[record.id] = record
    return found


# -- the loop's helpers ----------------------------------------------------------------------


def get_lr(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first steps, then cosine decay to a tenth of the peak."""
    warmup = max(1, int(total * WARMUP_FRACTION))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def estimate_loss(model, examples: list[Example], pad_id: int, batch_size: int) -> float | None:
    """Mean loss per answer token over ``examples``, dropout off."""
    import torch

    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            loss, n = answer_loss(model, collate(examples[i:i + batch_size], pad_id))
            total += float(loss)
            tokens += n
    model.train(was_training)
    return total / max(tokens, 1)


def timed_loss(model, examples: list[Example], pad_id: int, batch_size: int) -> tuple[float | None, float]:
    """``estimate_loss`` and the seconds it took: the probe's forward passes time the run."""
    started = time.perf_counter()
    loss = estimate_loss(model, examples, pad_id, batch_size)
    return loss, time.perf_counter() - started


def train_cost(cfg: TrainConfig) -> int:
    """Forward passes' worth of work in one training token."""
    return TRAIN_COST + (1 if cfg.gradient_checkpointing else 0)


def estimate_seconds(forward_tokens: int, forward_rate: float | None) -> float | None:
    """Seconds for ``forward_tokens`` of forward-pass work at ``forward_rate`` tokens/s; None
    when nothing was timed."""
    return forward_tokens / forward_rate if forward_rate else None


def read_log(train_log: Path) -> list[dict]:
    """The entries of a run's train_log.jsonl. A line that does not parse (the torn last line of
    a write cut short by a full disk or a crash) is skipped: it must not stop a resume."""
    entries = []
    text = train_log.read_text(encoding="utf-8", errors="replace") if train_log.is_file() else ""
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            entries.append(entry)
    return entries


def logged_rate(train_log: Path) -> float | None:
    """The training tokens/s an interrupted run last logged, to estimate what is left of it."""
    entries = [e for e in read_log(train_log) if isinstance(e.get("tokens_per_s"), (int, float))]
    return entries[-1]["tokens_per_s"] if entries else None


def cut_log(train_log: Path, step: int) -> None:
    """Keep the log's entries up to ``step``, where a resumed run continues: the steps after the
    checkpoint are trained again, and each step must appear once. Replaced atomically."""
    if not train_log.is_file():
        return
    kept = [e for e in read_log(train_log) if e["step"] <= step]
    atomic_write_bytes(train_log, "".join(json.dumps(e) + "\n" for e in kept).encode())


def adapter_copy(model) -> dict:
    """A copy of the adapter's weights as they are now, which later steps leave as it is."""
    from peft import get_peft_model_state_dict

    return {name: tensor.detach().clone() for name, tensor in get_peft_model_state_dict(model).items()}


def load_for_training(base_dir: Path, plan: Plan, registry: AdapterRegistry, threads: int):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(plan.config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True, dtype=torch.float32)
    if plan.config.gradient_checkpointing:
        base.gradient_checkpointing_enable()
        base.enable_input_require_grads()
    if plan.parent:
        model = PeftModel.from_pretrained(base, registry.path(plan.parent), is_trainable=True)
    else:
        cfg = plan.config
        model = get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                target_modules=cfg.modules, task_type="CAUSAL_LM"))
    return model, tokenizer


# -- the run ---------------------------------------------------------------------------------


def finetune(kb, parent: str | None = None, fresh: bool = False, resume: bool = False,
             progress: ProgressMode = "off", announce: Callable[[RunOutline], None] | None = None,
             max_records: int | None = None) -> TrainResult:
    """Train the next adapter version; see the module docstring for the steps. ``announce``
    hears what the run will do before its first step; ``max_records`` caps the new records in
    place of KBLOOP_FINETUNE_MAX_RECORDS."""
    registry = AdapterRegistry(kb.home, kb.manifest)
    runs = registry.dir / ".runs"
    with exclusive(registry.dir / ".train.lock", "fine-tuning run"):
        base_dir = kb.generator.base_model_dir()
        if base_dir is None:
            raise KbloopError(f"the model {kb.settings.generator} cannot be fine-tuned here: "
                              "use a local: or hf: model (an Ollama model can use an exported adapter)")
        base_id = base_model_id(base_dir)
        published = drop_published_runs(registry)
        if resume:
            unfinished = sorted(p for p in runs.glob("*/plan.json")) if runs.is_dir() else []
            if not unfinished:
                done = f": run {published[-1]} had finished and was already published as adapter " \
                       f"{published[-1]} (its leftover folder is removed)" if published else ""
                raise NotFound(f"no interrupted fine-tuning run to resume{done}")
            run_dir = unfinished[-1].parent
            plan = load_plan(run_dir)
            if plan.base_model != base_id:  # its checkpoint's weights fit only the model it began with
                raise KbloopError(f"the interrupted run {plan.version} trains another base model than "
                                  f"KBLOOP_GENERATOR={kb.settings.generator}: set the generator it began with "
                                  f"to resume it, or delete {run_dir} to start afresh")
        else:
            plan = plan_run(kb, registry, parent, fresh, base_id, max_records)
            run_dir = runs / plan.version
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            atomic_write_bytes(run_dir / "plan.json", json.dumps(plan.as_dict(), indent=1).encode())
        with kb.manifest.recording("finetune") as summary:
            result = _train(kb, registry, plan, base_dir, run_dir, progress, announce)
            summary.update(result.as_dict())
    return result


def load_plan(run_dir: Path) -> Plan:
    """The plan an interrupted run was started with; one that cannot be used is reported with
    the folder to delete, since --resume would fail on it every time."""
    path = run_dir / "plan.json"
    try:
        return Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, KeyError, KbloopError) as exc:
        reason = exc.one_line() if isinstance(exc, KbloopError) else f"{type(exc).__name__}: {exc}"
        raise KbloopError(f"the interrupted run's plan {path} cannot be used ({reason}): delete {run_dir} "
                          "and run `kbloop finetune` again") from None


def _train(kb, registry: AdapterRegistry, plan: Plan, base_dir: Path, run_dir: Path, progress: ProgressMode,
           announce: Callable[[RunOutline], None] | None) -> TrainResult:
    import torch
    from peft import set_peft_model_state_dict

    cfg = plan.config
    model, tokenizer = load_for_training(base_dir, plan, registry, kb.settings.torch_threads)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    wanted = set(plan.record_ids) | set(plan.replay_ids) | set(plan.probe_ids) | set(plan.parent_probe_ids)
    records = records_by_id(kb, wanted)

    def examples(ids: list[str]) -> list[Example]:
        out = [encode(records[i], tokenizer, cfg.max_seq_len) for i in ids if i in records]
        return [e for e in out if e is not None]

    train_set = examples(plan.record_ids + plan.replay_ids)
    skipped = len(plan.record_ids) + len(plan.replay_ids) - len(train_set)
    train_set += repeated_corrections(records, plan.record_ids + plan.replay_ids, cfg,
                                      lambda r: encode(r, tokenizer, cfg.max_seq_len))
    if not train_set:
        raise KbloopError(f"every selected record is longer than KBLOOP_FINETUNE_MAX_SEQ_LEN={cfg.max_seq_len}")
    probe, parent_probe = examples(plan.probe_ids), examples(plan.parent_probe_ids)
    # Early stopping watches the held-out probe; a run too small to hold one out trains to the end.
    stopping = EarlyStopping(cfg.patience) if plan.probe_held_out and probe else None

    batches = [b for epoch in range(cfg.epochs)
               for b in length_batches(train_set, cfg.batch_size, cfg.seed + epoch)]
    accum = cfg.grad_accum
    total_steps = math.ceil(len(batches) / accum)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=plan.lr, weight_decay=0.0)

    step, tokens_done = 0, 0
    checkpoint = run_dir / "checkpoint"
    best_adapter = None  # the adapter weights of the best probe loss so far, with early stopping
    recover_checkpoint(checkpoint)
    if (checkpoint / "state.pt").is_file():
        state = load_checkpoint(checkpoint / "state.pt")
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        step, tokens_done, initial = state["step"], state["tokens"], state["initial_parent_probe_loss"]
        if stopping is not None:
            stopping, best_adapter = EarlyStopping(**state["stopping"]), state["best_adapter"]
        log.info("resuming %s at step %d of %d", plan.version, step, total_steps)
        cut_log(run_dir / "train_log.jsonl", step)
        logged = logged_rate(run_dir / "train_log.jsonl")
        forward_rate = logged * train_cost(cfg) if logged else None
    else:
        cut_log(run_dir / "train_log.jsonl", 0)  # a resumed run with no checkpoint starts again
        # Before any step: a continued adapter's loss on its parent's probe is the parent's final loss.
        first = parent_probe or probe
        initial, spent = timed_loss(model, first, pad_id, cfg.batch_size)
        forward_rate = sum(e.n_tokens for e in first) / spent if first else None
    resumed_from = step
    evaluations = sum(1 for s in range(step + 1, total_steps + 1) if s % cfg.eval_steps == 0 or s == total_steps)
    estimate = estimate_seconds(sum(e.n_tokens for b in batches[step * accum:] for e in b) * train_cost(cfg)
                                + (evaluations * sum(e.n_tokens for e in probe) if stopping else 0), forward_rate)
    if announce is not None:
        announce(RunOutline(plan.version, plan.parent, cfg.generator, len(plan.record_ids), len(plan.replay_ids),
                            len(plan.probe_ids) if stopping else 0, skipped, cfg.epochs, total_steps,
                            cfg.batch_size * accum, plan.lr, model.peft_config["default"].r, cfg.eval_steps,
                            cfg.patience, resumed_from, estimate))

    model.train()
    train_log = open(run_dir / "train_log.jsonl", "a", encoding="utf-8")
    bar = step_progress(progress, total=total_steps, initial=step, desc=f"finetune {plan.version}", unit="step")
    timed_tokens, timed_from, probe_seconds = 0, time.perf_counter(), 0.0
    try:
        while step < total_steps:
            lr = get_lr(step, total_steps, plan.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro = batches[step * accum:(step + 1) * accum]
            n_answer = sum(e.n_answer_tokens for b in micro for e in b)
            loss_sum = 0.0
            for batch in micro:
                # Summed over answer tokens and divided by the step's total: every answer token
                # weighs the same, however the records fell into micro-batches.
                summed, _ = answer_loss(model, collate(batch, pad_id))
                loss = summed / max(n_answer, 1)
                loss.backward()
                loss_sum += loss.item()
                n_tokens = sum(e.n_tokens for e in batch)
                tokens_done += n_tokens
                timed_tokens += n_tokens
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            rate = timed_tokens / max(time.perf_counter() - timed_from - probe_seconds, 1e-9)
            entry = {"step": step, "of": total_steps, "loss": round(loss_sum, 5), "lr": lr,
                     "tokens": tokens_done, "tokens_per_s": round(rate, 1), "time": time.time()}
            postfix = {"loss": f"{loss_sum:.3f}", "tok_s": f"{rate:.0f}"}
            if stopping is not None and (step % cfg.eval_steps == 0 or step == total_steps):
                probe_loss, spent = timed_loss(model, probe, pad_id, cfg.batch_size)
                probe_seconds += spent
                if stopping.record(step, probe_loss):
                    best_adapter = adapter_copy(model)
                entry["probe_loss"] = round(probe_loss, 5)
            if stopping is not None and stopping.losses:
                postfix["probe"] = f"{stopping.losses[-1][1]:.3f}"
            train_log.write(json.dumps(entry) + "\n")
            train_log.flush()
            if bar is not None:
                bar.set_postfix(**postfix)
                bar.update(1)
            if stopping is not None and stopping.should_stop:
                break
            if step % cfg.checkpoint_steps == 0 and step < total_steps:
                _save_checkpoint(model, optimizer, step, tokens_done, initial, checkpoint,
                                 stopping=stopping.as_dict() if stopping else None, best_adapter=best_adapter)
    finally:
        train_log.close()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - timed_from
    if stopping is not None:
        if best_adapter is None:
            raise KbloopError(f"training diverged: the probe loss was never a finite number ({stopping.losses}); "
                              "run again with a lower learning rate (--lr)")
        set_peft_model_state_dict(model, best_adapter)  # the best adapter, not the last
        final, reason = stopping.best_loss, stopping.reason(step, total_steps)
    else:
        final = estimate_loss(model, probe, pad_id, cfg.batch_size)
        why = "KBLOOP_FINETUNE_PATIENCE=0" if not cfg.patience else "too few records to hold out a probe"
        reason = f"completed all {total_steps} steps; no early stopping ({why})"
    outcome = {"records_probe": len(plan.probe_ids) if stopping else 0,
               "probe_losses": stopping.losses if stopping else [],
               "best_step": stopping.best_step if stopping else None,
               "stopped_early": step < total_steps, "stop_reason": reason}
    _publish(model, registry, plan, run_dir, {
        "final_probe_loss": final, "initial_parent_probe_loss": initial if plan.parent else None,
        "base_probe_loss": None if plan.parent else initial, **outcome,
    }, tokens_done, skipped)
    _prepare_for_serving(kb, registry.path(plan.version))
    return TrainResult(plan.version, plan.parent, step, len(plan.record_ids), len(plan.replay_ids), skipped,
                       tokens_done, round(seconds, 2), round(timed_tokens / max(seconds - probe_seconds, 1e-9), 1),
                       initial if plan.parent else None, final, resumed_from, **outcome,
                       probe_seconds=round(probe_seconds, 2),
                       estimated_seconds=round(estimate, 1) if estimate is not None else None)


def _prepare_for_serving(kb, adapter: Path) -> None:
    """Convert the new adapter for the answering engine now; a failure only delays that to the
    adapter's first use (where it is reported), it never loses the trained adapter."""
    try:
        written = kb.generator.prepare_adapter(adapter)
    except KbloopError as exc:
        log.warning("adapter %s is saved, but not yet converted for %s: %s", adapter.name, kb.generator.spec, exc)
        return
    if written is not None:
        log.info("adapter %s converted for llama.cpp: %s", adapter.name, written.name)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state: tensors, numbers and containers of them, nothing else. Unpickling
    anything more could run code that whoever can write into data/ put there."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise KbloopError(f"{path} holds more than tensors and numbers, so it is not loaded (it could run code): "
                          f"delete {path.parent} to start this run again from its first step") from None


def checkpoint_step(folder: Path) -> int | None:
    """The step of the checkpoint in ``folder``, or None when it is incomplete: its state file
    is missing or does not load (a save cut short)."""
    import torch

    try:
        return int(torch.load(folder / "state.pt", weights_only=True)["step"])
    except Exception as exc:  # noqa: BLE001 - any failure to load means: not a usable checkpoint
        if (folder / "state.pt").exists():
            log.warning("ignoring the incomplete checkpoint %s: %s", folder, exc)
        return None


def recover_checkpoint(folder: Path) -> None:
    """Put back a checkpoint that a crash inside ``_save_checkpoint`` left aside: between its two
    renames, ``folder`` is missing while the new one (.checkpoint.tmp) and the previous one
    (.checkpoint.old) are on disk. The newest complete one becomes ``folder`` again."""
    if (folder / "state.pt").is_file():
        return
    found = [(step, side) for side in (folder.with_name(".checkpoint.tmp"), folder.with_name(".checkpoint.old"))
             if side.is_dir() and (step := checkpoint_step(side)) is not None]
    if not found:
        return
    step, side = max(found, key=lambda f: f[0])
    log.info("recovering the step-%d checkpoint from %s", step, side.name)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(side, folder)


def _save_checkpoint(model, optimizer, step: int, tokens: int, initial: float | None, folder: Path, *,
                     stopping: dict | None = None, best_adapter: dict | None = None) -> None:
    """Adapter weights, optimizer state and the step, and with early stopping its probe losses
    and the best adapter so far, replacing the previous checkpoint atomically."""
    import torch
    from peft import get_peft_model_state_dict

    tmp = folder.with_name(".checkpoint.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"adapter": get_peft_model_state_dict(model), "optimizer": optimizer.state_dict(), "step": step,
                "tokens": tokens, "initial_parent_probe_loss": initial, "stopping": stopping,
                "best_adapter": best_adapter}, tmp / "state.pt")
    old = folder.with_name(".checkpoint.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _publish(model, registry: AdapterRegistry, plan: Plan, run_dir: Path, losses: dict, tokens: int,
             skipped: int) -> None:
    """Write the finished adapter next to the run, then move it into the registry in one rename."""
    staging = run_dir / "adapter"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    lineage = {
        "version": plan.version, "parent": plan.parent, "base_model": plan.base_model,
        "generator": plan.config.generator, "created_at": time.time(), "kbloop_version": __version__,
        "dataset_versions": plan.dataset_versions, "new_dataset_versions": plan.new_dataset_versions,
        "records": {"new": len(plan.record_ids), "replay": len(plan.replay_ids), "skipped_too_long": skipped,
                    "seen_total": len(plan.seen_ids)},
        "tokens": tokens, "lr": plan.lr, "probe_ids": plan.probe_ids, "probe_held_out": plan.probe_held_out,
        "seen_ids": plan.seen_ids,
        "record_ids": plan.record_ids, "replay_ids": plan.replay_ids, **losses,
    }
    # Written and synced before the rename: a power cut must not leave a version with a torn lineage.
    atomic_write_bytes(staging / "lineage.json", (json.dumps(lineage, indent=2, sort_keys=True) + "\n").encode())
    atomic_write_bytes(staging / "training_config.json", (json.dumps(
        plan.config.as_dict() | {"kbloop_version": __version__}, indent=2, sort_keys=True) + "\n").encode())
    shutil.copyfile(run_dir / "train_log.jsonl", staging / "train_log.jsonl")
    registry.dir.mkdir(parents=True, exist_ok=True)
    target = registry.dir / plan.version
    # Never over an existing version: the rename would fail (or merge folders); the trained
    # adapter stays in the run folder either way.
    keep = f"the trained adapter is kept in {staging}: move {target} away and run `kbloop finetune --resume`"
    if target.exists():
        raise KbloopError(f"cannot publish adapter {plan.version}: {target} already exists; {keep}")
    try:
        os.replace(staging, target)
    except OSError as exc:
        raise KbloopError(f"cannot publish adapter {plan.version} to {target} ({exc.strerror or exc}); "
                          f"{keep}") from None
    fsync_folder(registry.dir)
    shutil.rmtree(run_dir, ignore_errors=True)


def drop_published_runs(registry: AdapterRegistry) -> list[str]:
    """Remove the run folders of versions already in the registry: a crash in ``_publish``
    after its rename leaves one behind, and it is a finished run, not one to resume."""
    runs = registry.dir / ".runs"
    done = [p for p in sorted(runs.iterdir()) if p.is_dir() and (registry.dir / p.name / "lineage.json").is_file()] \
        if runs.is_dir() else []
    for run_dir in done:
        log.warning("run %s was already published as adapter %s: removing its leftover folder %s",
                    run_dir.name, run_dir.name, run_dir)
        shutil.rmtree(run_dir)
    return [p.name for p in done]
