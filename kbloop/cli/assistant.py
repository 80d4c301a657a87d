"""Commands that answer: ask and chat."""

from __future__ import annotations

import click

from kbloop.cli.output import emit_json


def print_sources(answer) -> None:
    if answer.timings.get("asked_as"):  # a follow-up, rewritten to stand alone
        click.echo(click.style(f"(read as: {answer.timings['asked_as']})", dim=True))
    if answer.refused:
        click.echo(f"\n({answer.refusal_reason})")
        return
    shown = [s for s in answer.sources if s.cited] or answer.sources
    click.echo("\nSources:")
    for source in shown:
        click.echo(f"  [{source.n}] {source.location}  (score {source.score:.2f})")


def stream_answer(assistant, question: str, history=None):
    """Print the answer and return the final Answer.

    Only a terminal sees the reply while it is generated, dimmed as provisional; when the
    checks then replace it (a refusal), those lines are erased and the final answer printed in
    their place. A pipe or a file gets the final answer alone, never text that is taken back.
    """
    from kbloop.assistant.answer import Answer, Progress

    live = click.get_text_stream("stdout").isatty()
    shown = ""
    for item in assistant.stream(question, history):
        if isinstance(item, Progress):
            continue
        if isinstance(item, Answer):
            if live and shown:
                erase_lines(shown)
            click.echo(item.answer)
            return item
        shown += item
        if live:
            click.echo(click.style(item, dim=True), nl=False)
    raise RuntimeError("no answer")


def erase_lines(text: str) -> None:
    """Move the cursor back to where ``text`` began on the terminal and clear from there on."""
    import shutil

    width = max(shutil.get_terminal_size().columns, 1)
    rows = sum(max(1, -(-len(line) // width)) for line in text.split("\n"))
    click.echo(f"\r\x1b[{rows - 1}A\x1b[J" if rows > 1 else "\r\x1b[J", nl=False)


LOCAL = click.option("--local", is_flag=True,
                     help="Load the models in this process even when `kbloop serve` or `daemon` runs.")


@click.command()
@click.argument("question")
@click.option("--json", "as_json", is_flag=True, help="Print {answer, sources, model, adapter, timings} as JSON.")
@LOCAL
@click.pass_obj
def ask(obj, question: str, as_json: bool, local: bool) -> None:
    """Answer QUESTION from the knowledge base, streamed, with its sources.

    A running `kbloop serve` or `kbloop daemon` of the same home answers it (no model load);
    otherwise the models load in this process.
    """
    from kbloop.server.client import RemoteAssistant, ServerUnreachable

    remote = None if local else obj.server(RemoteAssistant)
    if remote is not None:
        try:
            _ask(remote, question, as_json)
            return
        except ServerUnreachable:  # it stopped since it announced itself: answer here
            pass
        finally:
            remote.close()
    from kbloop.assistant.answer import Assistant

    with obj.open_kb() as kb:
        _ask(Assistant(kb), question, as_json)


def _ask(assistant, question: str, as_json: bool) -> None:
    if as_json:
        emit_json(assistant.ask(question).as_dict())
        return
    print_sources(stream_answer(assistant, question))


@click.command()
@LOCAL
@click.pass_obj
def chat(obj, local: bool) -> None:
    """A conversation: follow-up questions are understood in the light of earlier ones.

    Like `ask`, it uses a running server of the same home when there is one.
    """
    from kbloop.server.client import RemoteAssistant

    remote = None if local else obj.server(RemoteAssistant)
    if remote is not None:
        try:
            _converse(remote, refresh=lambda: None)
        finally:
            remote.close()
        return
    from kbloop.assistant.answer import Assistant

    with obj.open_kb() as kb:
        assistant = Assistant(kb)
        _converse(assistant, refresh=lambda: kb.follow_adapter(assistant.generator))


def _converse(assistant, refresh) -> None:
    history: list[tuple[str, str]] = []
    click.echo("Ask about your documents. An empty line or Ctrl-D ends the chat.")
    while True:
        try:
            question = input("\n> ").strip()
        except EOFError:
            break
        if not question:
            break
        refresh()  # an adapter promoted meanwhile answers the next question
        answer = stream_answer(assistant, question, history)
        print_sources(answer)
        history.append((question, answer.answer))
