"""Parse and split one file of the docs folder, wherever that runs: in the indexer's process or
on a Ray worker (``kbloop.ingest.ray_engine``). A file that cannot be read is reported, never
recorded as failed, so that a scan that cannot read something never deletes it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kbloop.errors import LoaderError
from kbloop.ingest.chunking import Chunk, chunk_document
from kbloop.ingest.loaders import load, supported
from kbloop.ingest.scan import unreadable_reason

if TYPE_CHECKING:
    from langchain_text_splitters import TextSplitter

log = logging.getLogger(__name__)


@dataclass
class Parsed:
    """One file parsed and split, wherever that ran: its chunks, or why its content failed
    (``error``, recorded in the manifest), or why it could not be read (``unreadable``, only
    reported). ``vectors`` (text hash -> vector) holds what an engine embedded beside the parse."""

    chunks: list[Chunk] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    unreadable: str | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


def parse_file(docs: Path, rel: str, max_bytes: int, splitter: TextSplitter) -> Parsed:
    """Parse and split ``docs/rel``; the same function runs in this process and on Ray workers."""
    path = docs / rel
    try:
        if not supported(path):
            raise LoaderError(f"unsupported file type {path.suffix or '(none)'}")
        loaded = load(path, max_bytes)
        return Parsed(chunk_document(loaded, splitter), loaded.notes)
    except LoaderError as exc:
        return Parsed(error=str(exc))
    except OSError as exc:
        # The file could not be read, which says nothing of its content: the caller skips it.
        return Parsed(unreadable=unreadable_reason(exc))
    except Exception as exc:  # one bad file must never stop the run
        log.exception("unexpected error reading %s", rel)
        return Parsed(error=f"unexpected error: {exc.__class__.__name__}: {exc}")
