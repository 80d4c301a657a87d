"""The serve command: the HTTP API and the web page, in the foreground."""

from __future__ import annotations

import signal

import click


@click.command()
@click.option("--host", default=None, metavar="ADDR",
              help="Address to listen on (default KBLOOP_SERVE_HOST, 127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="TCP port (default KBLOOP_SERVE_PORT, 8765; 0 picks a free one).")
@click.option("--log-requests", is_flag=True, help="Log every request to stderr.")
@click.pass_obj
def serve(obj, host: str | None, port: int | None, log_requests: bool) -> None:
    """Serve an OpenAI-compatible API (/v1) and a web page for asking questions.

    Chat clients take http://HOST:PORT/v1 as their base URL and `kbloop` as the model.
    Set KBLOOP_API_KEY to require `Authorization: Bearer <key>` on every API request.
    """
    from kbloop.server.app import LOOPBACK, base_url, bind, create_app, run_server
    from kbloop.server.address import published
    from kbloop.server.service import Service

    home = obj.home()
    settings = home.load_settings()
    chosen = {"serve_host": host, "serve_port": port}
    settings = settings.model_copy(update={k: v for k, v in chosen.items() if v is not None})
    sock = bind(settings.serve_host, settings.serve_port)
    if settings.serve_host not in LOOPBACK and not settings.api_key:
        click.echo(f"warning: listening on {settings.serve_host} without KBLOOP_API_KEY: anyone who can reach "
                   "this port can query and ingest", err=True)
    url = base_url(sock)
    click.echo(f"kbloop serving {home.root}", err=True)
    click.echo(f"  web page:        {url}/", err=True)
    click.echo(f"  OpenAI base URL: {url}/v1  (model: kbloop)", err=True)
    click.echo(url, nl=True)  # stdout: the address alone, for scripts
    # The server stops on SIGINT or SIGTERM and then re-raises the signal: both end up here.
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        with published(home.data_dir, url, "serve"):
            run_server(create_app(Service(home, settings)), sock, log_requests)
    except KeyboardInterrupt:
        pass
    click.echo("stopped", err=True)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
