"""Commands over the vector store engine: migrate-store."""

from __future__ import annotations

import click

from kbloop.errors import Conflict


@click.command("migrate-store")
@click.option("--to", "target", type=click.Choice(["faiss", "qdrant"]), required=True,
              help="The engine to move the vectors to (KBLOOP_QDRANT_* say where Qdrant runs).")
@click.pass_obj
def migrate_store(obj, target: str) -> None:
    """Move the index to another vector store engine and switch the home to it.

    Vectors are copied by id, not embedded again. The home keeps its store until the copy is saved
    and matches the manifest; then KBLOOP_VECTOR_STORE is written to the home's .env and the old
    store is set aside. Stop `kbloop daemon` and `kbloop serve` first: they would keep the old one.
    """
    from kbloop.daemon_state import daemon_status
    from kbloop.ingest.migrate import migrate_store as migrate
    from kbloop.server.address import running_server

    home = obj.home()
    if daemon_status(home.data_dir)["running"] or running_server(home.data_dir):
        raise Conflict("a `kbloop daemon` or `kbloop serve` of this home is running and would keep using the "
                       "old store: stop it, migrate, then start it again")
    with obj.open_kb() as kb:
        done = migrate(kb.indexer, target)
    click.echo(f"copied {done.vectors} vectors from {done.source} to {done.target}; "
               f"KBLOOP_VECTOR_STORE={done.target} is set in {home.env_file}")
