"""Entry point: the ``kbloop`` group, home resolution and the one-line error edge."""

from __future__ import annotations

import logging
import sys

import click

from kbloop.errors import KbloopError


class Context:
    """What every command gets: the --home option, resolved lazily."""

    def __init__(self, home: str | None):
        self.home_option = home

    def home(self):
        from kbloop.config import find_home

        return find_home(self.home_option)

    def open_kb(self, progress: bool = False):
        from kbloop.kb import KnowledgeBase

        return KnowledgeBase(self.home(), progress=progress and sys.stderr.isatty())

    def server(self, client: type):
        """A ``client`` of this home's running ``kbloop serve`` or ``daemon``, or None when none
        runs: asking it saves loading the models in this process."""
        from kbloop.server.address import running_server

        home = self.home()
        url = running_server(home.data_dir)
        if url is None:
            return None
        return client(url, home.load_settings().api_key)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar=None, metavar="DIR",
              help="The kb home (default: $KBLOOP_HOME, else the current folder).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="kbloop")
@click.pass_context
def cli(ctx: click.Context, home: str | None, verbose: int) -> None:
    """kbloop: an offline, incremental knowledge assistant over a folder of documents."""
    level = {0: logging.ERROR, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = Context(home)


def _register() -> None:
    from kbloop.cli import assistant, corrections, daemon, dataset, evaluate, finetune, home, index, serve, store

    for command in (home.init, home.quickstart, index.ingest, index.search, index.status, index.check,
                    assistant.ask, assistant.chat, daemon.daemon, dataset.dataset, corrections.corrections,
                    finetune.finetune, finetune.adapters, finetune.export, evaluate.evaluate,
                    serve.serve, store.migrate_store):
        cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a domain error becomes one line on stderr and the exit code of its kind."""
    try:
        cli.main(args=argv, prog_name="kbloop", standalone_mode=False)
    except KbloopError as exc:
        click.echo(f"error: {exc.one_line()}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
