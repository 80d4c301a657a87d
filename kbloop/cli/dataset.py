"""`kbloop dataset build|stats|show|export`: training data from the knowledge base."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from kbloop.cli.output import emit_json
from kbloop.errors import NotFound


@click.group()
def dataset() -> None:
    """Instruction-knowledge-answer records built from new or changed chunks.

    Corrections users typed under a *Wrong* answer (web page or POST /api/feedback) become
    training records too, at the next build: the question, what retrieval finds for it then,
    and the correction as the answer; and so do the teacher's other phrasings of the question
    (KBLOOP_DATASET_CORRECTION_PHRASINGS).
    """


@dataset.command()
@click.option("--teacher/--no-teacher", default=True,
              help="Also have the teacher model (KBLOOP_TEACHER) ask and answer questions, its answers checked by "
                   "KBLOOP_JUDGE; --no-teacher uses extractive pairs only.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Read at most this many new chunks now.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_obj
def build(obj, teacher: bool, limit: int | None, as_json: bool) -> None:
    """Build the next dataset version; an unchanged knowledge base builds nothing.

    Each correction sent since the last build (a *Wrong* answer with the right one typed in)
    becomes a training record whose knowledge is what retrieval finds for its question now,
    and so does each of the other phrasings of that question the teacher writes
    (KBLOOP_DATASET_CORRECTION_PHRASINGS; none with --no-teacher).
    """
    from kbloop.dataset.answers import answer_checker
    from kbloop.dataset.build import build as run_build
    from kbloop.progress import progress_mode

    with obj.open_kb() as kb:
        model = checker = rephraser = None
        if teacher and kb.settings.dataset_teacher_pairs:
            model = kb.model("teacher")
            checker = answer_checker(kb, model)
        elif teacher:
            rephraser = lambda: kb.model("teacher")  # noqa: E731 - loaded only for a new correction
        # A bar on a terminal; in a log, a pipe or under --json, a line now and then.
        mode = "lines" if as_json else progress_mode(True, sys.stderr)
        counts = run_build(kb, model, progress=mode, limit=limit, verifier=checker,
                           announce=lambda plan: click.echo(plan.describe(), err=True), rephraser=rephraser).as_dict()
    if as_json:
        emit_json(counts)
        return
    if counts["version"] is None:
        click.echo(f"nothing new: {counts['chunks_unchanged']} chunks already have their records")
        return
    click.echo(f"dataset {counts['version']}: {counts['records_train']} train + {counts['records_eval']} eval "
               f"records from {counts['chunks_new']} new chunks and {counts['corrections']} corrections "
               f"({counts['correction_phrasings']} more phrasings); "
               f"{counts['records_retired']} records retired "
               f"({counts['chunks_retired']} chunks changed or gone, "
               f"{counts['corrections_withdrawn']} corrections withdrawn)")
    click.echo(f"pairs: {counts['pairs_generated']} generated, {counts['pairs_unsupported']} unsupported, "
               f"{counts['pairs_bad_length']} bad length, {counts['pairs_duplicate']} duplicates")
    if counts["answers_written"]:
        dropped = counts["answers_rejected"] + counts["answers_unchecked"]
        click.echo(f"teacher answers: {counts['answers_written']} written, {counts['answers_written'] - dropped} "
                   f"kept, {counts['answers_rejected']} rejected, {counts['answers_unchecked']} not checked")
    records = sum(counts["by_family"].values())
    split = ", ".join(f"{family} {n} ({100 * n / records:.0f}%)" for family, n in counts["by_family"].items())
    click.echo(f"yield: {counts['records_per_100_chunks']:g} records per 100 chunks read; {split or 'no records'}")
    for generator, n in sorted(counts["by_generator"].items()):
        click.echo(f"  {generator}: {n}")
    click.echo(f"took {counts['seconds']:.2f}s")


@dataset.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def stats(obj, as_json: bool) -> None:
    """Record counts by status, split, generator and source file, and the versions."""
    from kbloop.dataset.store import DatasetStore

    with obj.open_kb() as kb:
        store = DatasetStore(kb.home, kb.manifest)
        info = store.stats() | {"version_list": store.versions()}
    if as_json:
        emit_json(info)
        return
    if not info["versions"]:
        click.echo("no dataset yet: run `kbloop dataset build`")
        return
    click.echo(f"versions: {info['versions']} (latest {info['latest']}); chunks covered: {info['chunks_covered']}")
    click.echo(f"records:  {info['records']} ({_pairs(info['by_status'])})")
    click.echo(f"active:   {_pairs(info['active_by_split'])}; {_pairs(info['active_oracle'])}")
    click.echo(f"by generator: {_pairs(info['active_by_generator'])}")
    click.echo("by source:")
    for path, n in info["active_by_source"].items():
        click.echo(f"  {n:5d}  {path}")
    for v in info["version_list"]:
        c = v["counts"]
        click.echo(f"version {v['version']} (parent {v['parent'] or '-'}): +{c['records_train']} train "
                   f"+{c['records_eval']} eval, {c['records_retired']} retired, teacher {v['teacher'] or 'none'}")


def _pairs(counter: dict) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(counter.items())) or "none"


@dataset.command()
@click.argument("version", required=False)
@click.option("-n", "limit", type=click.IntRange(1), default=5, help="How many records.")
@click.option("--id", "record_id", default=None, help="Show the one record with this id.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON lines.")
@click.pass_obj
def show(obj, version: str | None, limit: int, record_id: str | None, as_json: bool) -> None:
    """Show records of VERSION (default: the latest)."""
    from kbloop.dataset.store import DatasetStore

    with obj.open_kb() as kb:
        store = DatasetStore(kb.home, kb.manifest)
        version = version or store.latest()
        if version is None:
            raise NotFound("no dataset yet: run `kbloop dataset build`")
        status = store.status_of()
        records = store.records(version)
    if record_id:
        records = [r for r in records if r.id == record_id]
        if not records:
            raise NotFound(f"no record {record_id} in dataset version {version}")
    for record in records[:limit]:
        if as_json:
            click.echo(json.dumps(record.as_dict() | {"status": status.get(record.id)}, ensure_ascii=False))
            continue
        where = ", ".join(f"{'*' if k.oracle else ' '}{k.path}" for k in record.knowledge)
        click.echo(f"{record.id}  [{record.split}, {record.generator}, {status.get(record.id, '?')}]")
        click.echo(f"  Q: {record.instruction}")
        click.echo(f"  A: {record.answer}")
        click.echo(f"  knowledge: {where}  (* = source)")


@dataset.command()
@click.option("--format", "fmt", type=click.Choice(["chat", "alpaca"]), default="chat", show_default=True,
              help="chat: {messages}; alpaca: {system, instruction, input, output}. Both LLaMA-Factory compatible.")
@click.option("--split", type=click.Choice(["train", "eval"]), default="train", show_default=True)
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (default: standard output).")
@click.pass_obj
def export(obj, fmt: str, split: str, out: Path | None) -> None:
    """Write the active records of SPLIT as JSONL (retired records are left out)."""
    from kbloop.dataset.store import DatasetStore
    from kbloop.fsutil import atomic_write_bytes

    with obj.open_kb() as kb:
        records = DatasetStore(kb.home, kb.manifest).active_records(split)
    lines = "".join(json.dumps(getattr(r, fmt)(), ensure_ascii=False) + "\n" for r in records)
    if out is None:
        click.echo(lines, nl=False)
    else:
        atomic_write_bytes(out, lines.encode("utf-8"))
        click.echo(f"wrote {len(records)} {split} records to {out}", err=True)
