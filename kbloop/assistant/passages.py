"""What the answering model reads of each source: the whole chunk, or (``KBLOOP_PASSAGE_CHARS``)
its sentences closest to the question.

A chunk holds the answer in one or two sentences among several about neighbouring settings,
and a small model answers from whatever it reads. Cut to its first line (what the chunk is
about: an option's name, a heading) and the sentences nearest the question in meaning, in
their own order with "…" where text is left out, a prompt is shorter and read sooner. Users are
shown, and the checks read, the whole chunks.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from kbloop.ingest.manifest import Hit
from kbloop.text import SENTENCE_BREAK

GAP = " … "


def sentences(text: str) -> list[str]:
    return [" ".join(s.split()) for s in SENTENCE_BREAK.split(text.strip()) if s and s.strip()]


def narrowed(question: str, hits: list[Hit], chars: int, embedder) -> list[Hit]:
    """``hits`` with each text longer than ``chars`` cut to its first sentence and the
    sentences most similar to ``question`` (by the embedder's cosine), as many as fit in
    ``chars`` (the best one always), in their own order. ``chars`` 0 keeps every text whole."""
    if chars <= 0:
        return hits
    split = [sentences(h.text) if len(h.text) > chars else [] for h in hits]
    flat = [s for parts in split for s in parts[1:]]
    if not flat:
        return hits
    scores = iter(np.asarray(embedder.embed(flat)) @ np.asarray(embedder.embed_query(question)))
    shown = []
    for hit, parts in zip(hits, split):
        if not parts:
            shown.append(hit)
            continue
        own = [next(scores) for _ in parts[1:]]
        ranked = sorted(range(1, len(parts)), key=lambda i: -own[i - 1])
        keep, size = {0}, len(parts[0])
        for i in ranked:
            if len(keep) > 1 and size + len(GAP) + len(parts[i]) > chars:
                continue
            keep.add(i)
            size += len(GAP) + len(parts[i])
        shown.append(replace(hit, text=join(parts, sorted(keep))))
    return shown


def join(parts: list[str], kept: list[int]) -> str:
    """The kept sentences in order: a space between neighbours, "…" where some were left out."""
    text = parts[kept[0]]
    for before, i in zip(kept, kept[1:]):
        text += (" " if i == before + 1 else GAP) + parts[i]
    return text
