"""`kbloop corrections list|withdraw`: the right answers users typed under *Wrong*."""

from __future__ import annotations

import time
from dataclasses import asdict

import click

from kbloop.cli.output import emit_json


@click.group()
def corrections() -> None:
    """Corrections users typed under a *Wrong* answer (web page or POST /api/feedback).

    A correction is read by every answer to a question that asks the same (KBLOOP_CORRECTION_MATCH),
    becomes training data at the next `kbloop dataset build`, and is asked by every evaluation.
    Withdrawing one stops all three.
    """


@corrections.command("list")
@click.option("--all", "everything", is_flag=True, help="Also list withdrawn corrections.")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
@click.pass_obj
def list_corrections(obj, everything: bool, as_json: bool) -> None:
    """The corrections, oldest first: id, date, question and the right answer."""
    with obj.open_kb() as kb:
        shown = kb.feedback.corrections()
        if everything:
            shown = sorted(shown + kb.feedback.taken_back(), key=lambda r: r.id)
    if as_json:
        emit_json([{k: v for k, v in asdict(r).items() if k != "sources"} for r in shown])
        return
    if not shown:
        click.echo("no corrections")
    for rating in shown:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rating.created_at))
        state = " (withdrawn)" if rating.withdrawn_at else ""
        click.echo(f"#{rating.id}  {when}{state}\n  Q: {rating.question}\n  A: {rating.correction}")


@corrections.command()
@click.argument("feedback_id", metavar="ID", type=int)
@click.pass_obj
def withdraw(obj, feedback_id: int) -> None:
    """Take back correction ID: answers and evaluations stop reading it now, and the next
    `kbloop dataset build` retires its training records. Its text stays stored."""
    with obj.open_kb() as kb:
        rating = kb.feedback.withdraw(feedback_id)
    click.echo(f"correction #{rating.id} withdrawn: {rating.question}")
