"""`kbloop evaluate [show|history]`: candidate against baseline, judge scores, the gate."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from kbloop.cli.output import emit_json
from kbloop.errors import NotFound
from kbloop.evaluate.store import EvaluationStore


@click.group(invoke_without_command=True)
@click.option("--candidate", metavar="VERSION", default=None, help="Adapter to judge (default: the newest).")
@click.option("--baseline", metavar="current|base|VERSION", default="current", show_default=True,
              help="What it must not be worse than (base = no adapter).")
@click.option("--set", "user_sets", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Extra eval JSONL of {question, answer, source?}; answer NOT_IN_KB for must-refuse items.")
@click.option("--max-items", type=click.IntRange(1), default=None, help="Most questions (default KBLOOP_EVAL_MAX_ITEMS).")
@click.option("--no-judge", is_flag=True, help="Deterministic metrics only.")
@click.option("--promote", is_flag=True, help="Make the candidate current if the gate accepts it.")
@click.option("--json", "as_json", is_flag=True, help="Print the report summary as JSON.")
@click.pass_context
def evaluate(ctx: click.Context, candidate, baseline, user_sets, max_items, no_judge, promote, as_json) -> None:
    """Evaluate an adapter against a baseline; the gate decides whether it may answer."""
    if ctx.invoked_subcommand is not None:
        return
    from kbloop.evaluate.run import evaluate as run

    with ctx.obj.open_kb() as kb:
        report = run(kb, candidate, baseline, list(user_sets), use_judge=not no_judge, promote=promote,
                     progress=not as_json and sys.stderr.isatty(), max_items=max_items)
    if as_json:
        emit_json({k: v for k, v in report.to_dict().items() if k != "details"})
        return
    click.echo((Path(report.folder) / "report.md").read_text().split("![")[0].rstrip())
    click.echo(f"\nreport: {report.folder}")
    if report.decision.decision == "accept":
        click.echo(f"{report.candidate} is now current" if report.promoted
                   else f"promote it with `kbloop adapters promote {report.candidate}` (or --promote)")


@evaluate.command()
@click.argument("run", required=False)
@click.pass_obj
def show(obj, run: str | None) -> None:
    """Print the report of RUN (default: the latest)."""
    with obj.open_kb() as kb:
        runs = {r.run: r.folder for r in EvaluationStore(kb.home, kb.manifest.db).runs()
                if (r.folder / "report.md").is_file()}
    if not runs:
        raise NotFound("no evaluations yet: run `kbloop evaluate`")
    latest = list(runs)[-1]
    folder = runs.get(run or latest)
    if folder is None:
        raise NotFound(f"no evaluation {run!r}; latest is {latest}")
    click.echo((folder / "report.md").read_text())
    click.echo(f"plots: {folder / 'compare.png'}, {folder / 'history.png'}")


@evaluate.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def history(obj, as_json: bool) -> None:
    """Every evaluation: when, candidate, baseline, scores and the decision."""
    with obj.open_kb() as kb:
        runs = [r for r in EvaluationStore(kb.home, kb.manifest.db).runs() if r.recorded]
    if as_json:
        emit_json([r.as_record() for r in runs])
        return
    if not runs:
        click.echo("no evaluations yet: run `kbloop evaluate`")
    for r in runs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at))
        click.echo(f"{r.run}  {when}  {r.candidate} vs {r.baseline}: "
                   f"{r.score('candidate'):.3f} vs {r.score('baseline'):.3f}  {r.decision}")
