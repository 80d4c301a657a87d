"""Commands over the index: ingest, search, status, check."""

from __future__ import annotations

import click

from kbloop.cli.output import emit_json, human_bytes, print_counts, print_hits
from kbloop.errors import NeedsRebuild
from kbloop.text import passage


@click.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--rebuild", is_flag=True, help="Parse and embed everything again (after changing the embedder).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_obj
def ingest(obj, paths: tuple[str, ...], rebuild: bool, as_json: bool) -> None:
    """Index the docs folder, or only PATHS inside it; unchanged files cost nothing."""
    with obj.open_kb(progress=not as_json) as kb:
        counts = kb.ingest(list(paths) or None, rebuild=rebuild).as_dict()
    emit_json(counts) if as_json else print_counts(counts)


@click.command()
@click.argument("query")
@click.option("-k", "k", type=click.IntRange(1, 200), default=None, help="How many chunks (default KBLOOP_SEARCH_K).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("--local", is_flag=True, help="Load the embedder in this process even when a server runs.")
@click.pass_obj
def search(obj, query: str, k: int | None, as_json: bool, local: bool) -> None:
    """Show the chunks most similar to QUERY, with file, page or section, and score.

    A running `kbloop serve` or `kbloop daemon` of the same home searches (no model load).
    """
    from kbloop.server.client import RemoteSearch, ServerUnreachable

    hits = None
    remote = None if local else obj.server(RemoteSearch)
    if remote is not None:
        try:
            hits = remote.search(query, k)
        except ServerUnreachable:
            pass
        finally:
            remote.close()
    if hits is None:
        with obj.open_kb() as kb:
            hits = kb.search(query, k)
    if as_json:
        emit_json([{"rank": i, "score": round(h.score, 4), "path": h.path, "location": h.location,
                    "page": h.metadata.get("page"), "section": h.metadata.get("section"),
                    "preview": passage(h.text, query), "text": h.text}
                   for i, h in enumerate(hits, start=1)])
    else:
        print_hits(hits, query)


# What `kbloop status` says of the llama.cpp check of a packaged model (kbloop.models.selfcheck).
ENGINE_CHECKS = {None: "", "runs": " (checked on this CPU)",
                 "without_repacking": " (checked on this CPU: runs without repacked weights)",
                 "crashes": " (llama.cpp crashes on this CPU)"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print status as JSON.")
@click.pass_obj
def status(obj, as_json: bool) -> None:
    """What is indexed, what failed and why, and the last runs."""
    with obj.open_kb() as kb:
        info = kb.status()
    if as_json:
        emit_json(info)
        return
    click.echo(f"home:     {info['home']}")
    click.echo(f"docs:     {info['docs_dir']}")
    click.echo(f"embedder: {info['embedder']}")
    for role, model in info["models"].items():
        click.echo(f"{role}: {model['model']} on {model['engine']}{ENGINE_CHECKS[model['check']]}")
    click.echo(f"indexed:  {info['files_indexed']} files, {info['chunks']} chunks, "
               f"{info['vectors']} vectors ({human_bytes(info['store_bytes'])})")
    if info["failures"]:
        click.echo(f"failed:   {len(info['failures'])} files")
        for f in info["failures"]:
            suffix = " (previous version still searchable)" if f["serving_previous_version"] else ""
            click.echo(f"  {f['path']}: {f['reason']}{suffix}")
    for note in info["notes"]:
        click.echo(f"note:     {note['path']}: {note['note']}")
    learning = info["learning"]
    if learning["dataset_version"]:
        records = ", ".join(f"{n} {split}" for split, n in sorted(learning["records_active"].items()))
        click.echo(f"dataset:  version {learning['dataset_version']} ({records or 'no active'} records)")
    if learning["adapters"]:
        click.echo(f"adapter:  {learning['current_adapter'] or 'none current (base model answers)'} "
                   f"of {learning['adapters']} versions")
    if learning["last_evaluation"]:
        ev = learning["last_evaluation"]
        click.echo(f"evaluated: {ev['candidate']} vs {ev['baseline']}: {ev['decision']} ({ev['run']})")
    daemon = info["daemon"]
    if daemon["running"]:
        doing = f"running {daemon['current']['name']}" if daemon.get("current") else "idle"
        click.echo(f"daemon:   running (pid {daemon['pid']}), {doing}, {daemon.get('queue', 0)} jobs queued")
        for job in daemon.get("recent", [])[:3]:
            click.echo(f"job:      {job['name']} {job['status']}" + (f" ({job['error']})" if job["error"] else ""))
    else:
        click.echo("daemon:   not running")
    for run in info["last_runs"][:3]:
        click.echo(f"run:      {run['kind']} {run['status']}" + (f" ({run['error']})" if run["error"] else ""))


# `kbloop check`'s exit status for each outcome; 1 to 4 are the error kinds' (kbloop.errors).
CHECK_EXIT_CODES = {"consistent": 0, "repaired": 5, "unrepaired": 6}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print {outcome, problems, repaired} as JSON.")
@click.pass_obj
def check(obj, as_json: bool) -> None:
    """Check the index against the manifest and repair what is safe.

    Exits 0 when they agreed, 5 when something was repaired, 6 when a problem is left that
    needs `kbloop ingest` (or `kbloop ingest --rebuild`) to fix.
    """
    with obj.open_kb() as kb:
        try:
            report = kb.check()
        except NeedsRebuild as exc:  # a problem only `kbloop ingest --rebuild` repairs
            problems, repaired = [exc.one_line()], []
        else:
            problems, repaired = report.problems, report.repaired
    outcome = "unrepaired" if problems else "repaired" if repaired else "consistent"
    if as_json:
        emit_json({"outcome": outcome, "problems": problems, "repaired": repaired})
    else:
        for line in problems:
            click.echo(f"problem:  {line}")
        for line in repaired:
            click.echo(f"repaired: {line}")
        if outcome == "consistent":
            click.echo("ok: index and manifest agree")
    if CHECK_EXIT_CODES[outcome]:
        raise SystemExit(CHECK_EXIT_CODES[outcome])
