"""`kbloop finetune`, `kbloop adapters list|show|promote|rollback`, `kbloop export ollama|merged`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from kbloop.cli.output import emit_json


@click.command()
@click.option("--from", "parent", metavar="VERSION", default=None,
              help="Continue this adapter version instead of the current one.")
@click.option("--fresh", is_flag=True, help="Start a new adapter from the base model.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run from its latest checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def finetune(obj, parent: str | None, fresh: bool, resume: bool, as_json: bool) -> None:
    """Train a LoRA adapter on the training records the current adapter has not seen.

    The new version is a candidate: `kbloop evaluate --promote` or `kbloop adapters promote`
    makes it the one that answers.
    """
    from kbloop.errors import KbloopError
    from kbloop.finetune.train import finetune as run

    if sum([bool(parent), fresh, resume]) > 1:
        raise KbloopError("choose one of --from, --fresh and --resume")
    with obj.open_kb() as kb:
        result = run(kb, parent=parent, fresh=fresh, resume=resume, progress=not as_json and sys.stderr.isatty())
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
              help="Folder to write (default: data/exports/<version>-merged).")
@click.pass_obj
def merged(obj, version: str, out: Path | None) -> None:
    """Write a Hugging Face model folder with the adapter merged into the base weights."""
    from kbloop.finetune.export import export_merged

    with obj.open_kb() as kb:
        folder = export_merged(kb, version, out)
    click.echo(f"wrote {folder} (use it with KBLOOP_GENERATOR=hf:{folder})")
