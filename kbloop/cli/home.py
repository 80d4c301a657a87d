"""Commands that make homes: init and quickstart."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import click

from kbloop.cli.output import print_counts, print_hits

SAMPLE_QUESTION = "Which port does Harbor listen on by default?"


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
def init(directory: str) -> None:
    """Make a kb home in DIRECTORY: docs/, vector_store/, data/ and a documented .env."""
    from kbloop.config import init_home

    home = init_home(directory)
    click.echo(f"kb home ready at {home.root}")
    click.echo(f"next: put documents in {home.root / 'docs'} and run `kbloop --home {home.root} ingest`")


@click.command()
@click.argument("directory", default="kbloop-quickstart", type=click.Path(file_okay=False))
def quickstart(directory: str) -> None:
    """Make a home with bundled sample documents, ingest them and answer one question, offline."""
    from kbloop.assistant.answer import Assistant
    from kbloop.cli.assistant import print_sources, stream_answer
    from kbloop.config import init_home
    from kbloop.kb import KnowledgeBase

    home = init_home(directory)
    docs = home.root / "docs"
    samples = resources.files("kbloop.samples")
    for item in samples.iterdir():
        if item.name.endswith((".md", ".txt", ".html")) and not (docs / item.name).exists():
            with resources.as_file(item) as src:
                shutil.copyfile(src, docs / item.name)
    click.echo(f"home: {home.root} (sample documents in {docs})")
    with KnowledgeBase(home) as kb:
        print_counts(kb.ingest().as_dict())
        click.echo(f"\nsearch: {SAMPLE_QUESTION}")
        print_hits(kb.search(SAMPLE_QUESTION, 3), SAMPLE_QUESTION)
        click.echo(f"\nask ({kb.settings.generator}): {SAMPLE_QUESTION}")
        print_sources(stream_answer(Assistant(kb), SAMPLE_QUESTION))
    click.echo(f"\nnext: kbloop --home {Path(home.root)} ask \"How do I restore a backup?\"")
