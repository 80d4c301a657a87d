"""`kbloop finetune`, `kbloop adapters list|show|promote|rollback`, `kbloop export ollama|merged`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kbloop.cli.output import emit_json

if TYPE_CHECKING:
    from kbloop.config import Settings
    from kbloop.finetune.train import RunOutline

# Each option sets these settings for one run; --lr is the rate of a new and a continued adapter alike.
RUN_OPTIONS = {
    "model": ("generator",),
    "max_records": ("finetune_max_records",),
    "epochs": ("finetune_epochs",),
    "lr": ("finetune_lr", "finetune_incremental_lr"),
    "rank": ("finetune_lora_r",),
    "patience": ("finetune_patience",),
}


def run_settings(settings: Settings, options: dict[str, str | None]) -> Settings:
    """``settings`` with the options given in place, checked as the settings are; a bad value
    stops the command with one line that names the option."""
    from pydantic import ValidationError

    from kbloop.errors import ConfigError

    given = {name: value for name, value in options.items() if value is not None}
    changed = {field: value for name, value in given.items() for field in RUN_OPTIONS[name]}
    try:
        return type(settings).model_validate(settings.model_dump() | changed)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = next(name for name, fields in RUN_OPTIONS.items() if error["loc"] and error["loc"][0] in fields)
        message = error["msg"].removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
        raise ConfigError(f"bad option --{name.replace('_', '-')}={given[name]}: {message}") from None


def describe_outline(outline: RunOutline) -> list[str]:
    """What a run is about to do, as the lines printed before its first step."""
    from kbloop.progress import format_seconds

    start = f"continuing {outline.parent}" if outline.parent else "a new adapter"
    records = f"{outline.records_new} new + {outline.records_replay} replayed"
    if outline.records_probe:
        records += f", {outline.records_probe} held out as the probe"
    if outline.records_skipped:
        records += f", {outline.records_skipped} skipped as too long"
    if outline.records_probe:
        every = "step" if outline.eval_steps == 1 else f"{outline.eval_steps} steps"
        stopping = (f"probe loss every {every}; stop after {outline.patience} in a row without a new best "
                    "and keep the best adapter")
    elif outline.patience:
        stopping = "off (too few records to hold out a probe)"
    else:
        stopping = "off (patience 0)"
    if outline.estimated_seconds is None:
        estimate = "unknown (nothing timed yet)"
    else:
        basis = "the interrupted run's speed" if outline.resumed_from_step else "a timed pass over the probe"
        estimate = f"about {format_seconds(outline.estimated_seconds)} (an estimate from {basis})"
    steps = f"{outline.steps} steps of {outline.records_per_step} records"
    if outline.resumed_from_step:
        steps += f", resuming after step {outline.resumed_from_step}"
    return [f"finetune {outline.version}: {start} for {outline.generator}",
            f"  records: {records}",
            f"  training: {outline.epochs} epochs, {steps}, lr {outline.lr:g}, LoRA rank {outline.lora_r}",
            f"  early stopping: {stopping}",
            f"  time: {estimate}"]


@click.command()
@click.option("--from", "parent", metavar="VERSION", default=None,
              help="Continue this adapter version instead of the current one.")
@click.option("--fresh", is_flag=True, help="Start a new adapter from the base model.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run from its latest checkpoint.")
@click.option("--model", metavar="SPEC", default=None,
              help="Base model to train for, e.g. local:qwen2.5-0.5b or local:smollm2-135m (default: "
                   "KBLOOP_GENERATOR). The adapter answers only when KBLOOP_GENERATOR names this model.")
@click.option("--max-records", metavar="N", default=None,
              help="Train on at most N new records, newest first; 0 takes all (default: KBLOOP_FINETUNE_MAX_RECORDS).")
@click.option("--epochs", metavar="N", default=None, help="Passes over the records (default: KBLOOP_FINETUNE_EPOCHS).")
@click.option("--lr", metavar="RATE", default=None,
              help="Peak learning rate of this run, new or continued adapter (default: KBLOOP_FINETUNE_LR, or "
                   "KBLOOP_FINETUNE_INCREMENTAL_LR when continuing).")
@click.option("--rank", metavar="N", default=None,
              help="LoRA rank of a new adapter; a continued one keeps its parent's (default: KBLOOP_FINETUNE_LORA_R).")
@click.option("--patience", metavar="N", default=None,
              help="Stop after N probe-loss measurements in a row without a new best and keep the best adapter; "
                   "0: no early stopping (default: KBLOOP_FINETUNE_PATIENCE).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def finetune(obj, parent: str | None, fresh: bool, resume: bool, model: str | None, max_records: str | None,
             epochs: str | None, lr: str | None, rank: str | None, patience: str | None, as_json: bool) -> None:
    """Train a LoRA adapter on the training records the current adapter has not seen.

    The options set this run only; the home's settings stay as they are. Before the first step
    it prints what it will do and an estimate of how long that takes, then shows progress.
    The new version is a candidate: `kbloop evaluate --promote` or `kbloop adapters promote`
    makes it the one that answers.
    """
    from kbloop.errors import KbloopError
    from kbloop.finetune.train import finetune as run
    from kbloop.kb import KnowledgeBase
    from kbloop.progress import progress_mode

    options = {"model": model, "max_records": max_records, "epochs": epochs, "lr": lr, "rank": rank,
               "patience": patience}
    if sum([bool(parent), fresh, resume]) > 1:
        raise KbloopError("choose one of --from, --fresh and --resume")
    if resume and any(value is not None for value in options.values()):
        raise KbloopError("--resume continues the interrupted run as it was planned: leave out "
                          + ", ".join(f"--{name.replace('_', '-')}" for name, v in options.items() if v is not None))
    home = obj.home()
    settings = run_settings(home.load_settings(), options)

    def announce(outline: RunOutline) -> None:
        if not as_json:
            click.echo("\n".join(describe_outline(outline)), err=True)

    with KnowledgeBase(home, settings) as kb:
        result = run(kb, parent=parent, fresh=fresh, resume=resume, progress=progress_mode(not as_json, sys.stderr),
                     announce=announce)
    if as_json:
        emit_json(result.as_dict())
        return
    start = f"continued {result.parent}" if result.parent else "new adapter"
    click.echo(f"adapter {result.version} ({start}): {result.records_new} new + {result.records_replay} replayed "
               f"records, {result.steps} steps, {result.tokens} tokens in {result.seconds:.0f}s "
               f"({result.tokens_per_s:.0f} tok/s)")
    if result.initial_parent_probe_loss is not None:
        click.echo(f"probe loss: {result.initial_parent_probe_loss:.4f} at start (the parent's), "
                   f"{result.final_probe_loss:.4f} after")
    else:
        click.echo(f"probe loss after training: {result.final_probe_loss:.4f}")
    click.echo(f"stopped: {result.stop_reason}")
    click.echo(f"it is a candidate: `kbloop evaluate --candidate {result.version} --promote` "
               f"or `kbloop adapters promote {result.version}`")


@click.group()
def adapters() -> None:
    """The adapter registry: versions, which one answers, promotion and rollback."""


@adapters.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def list_(obj, as_json: bool) -> None:
    """Every adapter version, its parent, records and gate decision; * marks the current one."""
    from kbloop.finetune.registry import AdapterRegistry

    with obj.open_kb() as kb:
        rows = AdapterRegistry(kb.home, kb.manifest).listing()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no adapters yet: run `kbloop finetune`")
        return
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["created_at"] or 0))
        loss = f"{row['final_loss']:.3f}" if row["final_loss"] is not None else "-"
        click.echo(f"{'*' if row['current'] else ' '} {row['version']}  {when}  parent {row['parent'] or 'base':5}  "
                   f"+{row['records'].get('new', 0)} new/{row['records'].get('replay', 0)} replay  "
                   f"probe loss {loss}  gate {row['gate'] or '-'}")


@adapters.command()
@click.argument("version", default="current")
@click.pass_obj
def show(obj, version: str) -> None:
    """The lineage of VERSION (default: current) as JSON, without the record id lists."""
    from kbloop.finetune.registry import AdapterRegistry

    with obj.open_kb() as kb:
        registry = AdapterRegistry(kb.home, kb.manifest)
        lineage = registry.lineage(registry.resolve(version))
    emit_json({k: v for k, v in lineage.items() if not k.endswith("_ids")})


@adapters.command()
@click.argument("version")
@click.pass_obj
def promote(obj, version: str) -> None:
    """Make VERSION the adapter that answers (`base` for none)."""
    from kbloop.finetune.registry import AdapterRegistry

    with obj.open_kb() as kb:
        registry = AdapterRegistry(kb.home, kb.manifest)
        target = None if version == "base" else registry.resolve(version)
        registry.promote(target, "promoted by hand")
    click.echo(f"current adapter: {target or 'none (base model)'}")


@adapters.command()
@click.pass_obj
def rollback(obj) -> None:
    """Go back to the adapter that was current before the last promotion."""
    from kbloop.finetune.registry import AdapterRegistry

    with obj.open_kb() as kb:
        now = AdapterRegistry(kb.home, kb.manifest).rollback()
    click.echo(f"current adapter: {now or 'none (base model)'}")


@click.group()
def export() -> None:
    """Hand an adapter to other tools."""


@export.command()
@click.argument("version", default="current")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write (default: data/exports/<version>-ollama).")
@click.pass_obj
def ollama(obj, version: str, out: Path | None) -> None:
    """Write an Ollama Modelfile (FROM the base model, ADAPTER this adapter)."""
    from kbloop.finetune.export import export_ollama

    with obj.open_kb() as kb:
        modelfile, command = export_ollama(kb, version, out)
    click.echo(f"wrote {modelfile}")
    click.echo(f"create the model with: {command}")


@export.command()
@click.argument("version", default="current")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write: new, empty or an earlier merged export (default: data/exports/<version>-merged).")
@click.pass_obj
def merged(obj, version: str, out: Path | None) -> None:
    """Write a Hugging Face model folder with the adapter merged into the base weights."""
    from kbloop.finetune.export import export_merged

    with obj.open_kb() as kb:
        folder = export_merged(kb, version, out)
    click.echo(f"wrote {folder} (use it with KBLOOP_GENERATOR=hf:{folder})")
