"""Chunking: a document's elements become overlapping chunks that remember section and page.

The elements of each page are joined into one text and split with LangChain's recursive
splitter, so small sections pack together; each chunk takes the section and page of the
element it starts in. What gets embedded is the chunk with its document title and section in front,
and its hash is the chunk's identity: same hash, same vector.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from itertools import groupby

from langchain_text_splitters import RecursiveCharacterTextSplitter

from kbloop.ingest.loaders import Element, Loaded

SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    text: str
    metadata: dict
    embed_text: str

    @property
    def text_hash(self) -> str:
        return hashlib.sha256(self.embed_text.encode("utf-8")).hexdigest()


def make_splitter(chunk_size: int, chunk_overlap: int) -> RecursiveCharacterTextSplitter:
    return RecursiveCharacterTextSplitter(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True,
    )


def chunk_document(loaded: Loaded, splitter: RecursiveCharacterTextSplitter) -> list[Chunk]:
    """Chunks of a document; no chunk crosses a page boundary, so a page citation is exact."""
    chunks: list[Chunk] = []
    for _, run in groupby(loaded.elements, key=lambda e: e.page):
        chunks += _chunk_run(list(run), loaded.title, splitter, first_ordinal=len(chunks))
    return chunks


def _chunk_run(elements: list[Element], title: str | None, splitter: RecursiveCharacterTextSplitter,
               first_ordinal: int) -> list[Chunk]:
    starts: list[int] = []
    offset = 0
    for element in elements:
        starts.append(offset)
        offset += len(element.text) + len(SEPARATOR)
    full_text = SEPARATOR.join(e.text for e in elements)

    chunks = []
    for ordinal, doc in enumerate(splitter.create_documents([full_text]), start=first_ordinal):
        element = elements[max(0, bisect.bisect_right(starts, doc.metadata["start_index"]) - 1)]
        metadata = {k: v for k, v in (("title", title), ("section", element.section),
                                      ("page", element.page)) if v}
        chunks.append(Chunk(ordinal, doc.page_content, metadata, embed_text(doc.page_content, metadata)))
    return chunks


def embed_text(text: str, metadata: dict) -> str:
    """The text a chunk is embedded as: where it sits, then what it says."""
    context = [metadata[k] for k in ("title", "section") if metadata.get(k)]
    if len(context) == 2 and context[0] == context[1]:
        context = context[:1]
    return (" > ".join(context) + "\n" + text) if context else text
