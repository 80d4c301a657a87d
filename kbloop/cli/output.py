"""Small helpers for what commands print."""

from __future__ import annotations

import json

import click


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def print_counts(counts: dict) -> None:
    click.echo(
        "files:  {files_added} added, {files_changed} changed, {files_unchanged} unchanged, "
        "{files_renamed} renamed, {files_deleted} deleted, {files_failed} failed, "
        "{files_ignored} ignored".format(**counts)
    )
    click.echo("chunks: {chunks_embedded} embedded, {chunks_reused} reused, {chunks_removed} removed".format(**counts))
    for failure in counts.get("failures", []):
        click.echo(f"  failed {failure['path']}: {failure['reason']}")
    click.echo(f"took {counts['seconds']:.2f}s")


def print_hits(hits: list, query: str) -> None:
    """Each hit with the sentences that match the query best, not merely the chunk's start."""
    from kbloop.text import passage

    if not hits:
        click.echo("no matches (is anything ingested? try `kbloop status`)")
    for rank, hit in enumerate(hits, start=1):
        click.echo(f"[{rank}] {hit.score:.3f}  {hit.location}")
        click.echo(f"    {passage(hit.text, query)}")
