"""`kbloop daemon`: the scheduler in the foreground (run it under systemd, launchd or tmux)."""

from __future__ import annotations

import click


@click.command()
@click.pass_obj
def daemon(obj) -> None:
    """Watch the docs folder and run scheduled jobs until SIGTERM or Ctrl-C.

    Changed files are ingested about a second after they settle; a full scan runs every
    KBLOOP_SCAN_INTERVAL_MINUTES and a consistency check daily at KBLOOP_CHECK_AT. One daemon
    per home; logs go to stderr and data/logs/daemon.log; `kbloop status` shows what it does.
    It also serves the HTTP API and web page (KBLOOP_SERVE_HOST:PORT, or a free loopback port
    when that one is taken), so `kbloop ask`, `search` and `chat` answer without loading models.
    """
    from kbloop.scheduler.daemon import run_daemon
    from kbloop.server.background import answering

    run_daemon(obj.home(), serve=lambda home, settings: answering(home, settings, "daemon"))
