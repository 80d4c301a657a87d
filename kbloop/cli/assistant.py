"""Commands that answer: ask and chat."""

from __future__ import annotations

import click

from kbloop.cli.output import emit_json


def print_sources(answer) -> None:
    if answer.refused:
        click.echo(f"\n({answer.refusal_reason})")
        return
    shown = [s for s in answer.sources if s.cited] or answer.sources
    click.echo("\nSources:")
    for source in shown:
        click.echo(f"  [{source.n}] {source.location}  (score {source.score:.2f})")


def stream_answer(assistant, question: str, history=None):
    """Print the answer as it is generated; return the final Answer."""
    from kbloop.assistant.answer import Answer

    shown = ""
    for item in assistant.stream(question, history):
        if isinstance(item, Answer):
            click.echo()
            if item.retracts(shown):
                click.echo(item.answer)
            return item
        shown += item
        click.echo(item, nl=False)
    raise RuntimeError("no answer")


@click.command()
@click.argument("question")
@click.option("--json", "as_json", is_flag=True, help="Print {answer, sources, model, adapter, timings} as JSON.")
@click.pass_obj
def ask(obj, question: str, as_json: bool) -> None:
    """Answer QUESTION from the knowledge base, streamed, with its sources."""
    from kbloop.assistant.answer import Assistant

    with obj.open_kb() as kb:
        assistant = Assistant(kb)
        if as_json:
            emit_json(assistant.ask(question).as_dict())
            return
        print_sources(stream_answer(assistant, question))


@click.command()
@click.pass_obj
def chat(obj) -> None:
    """A conversation: follow-up questions are understood in the light of earlier ones."""
    from kbloop.assistant.answer import Assistant

    with obj.open_kb() as kb:
        assistant = Assistant(kb)
        history: list[tuple[str, str]] = []
        click.echo("Ask about your documents. An empty line or Ctrl-D ends the chat.")
        while True:
            try:
                question = input("\n> ").strip()
            except EOFError:
                break
            if not question:
                break
            kb.follow_adapter(assistant.generator)
            answer = stream_answer(assistant, question, history)
            print_sources(answer)
            history.append((question, answer.answer))
