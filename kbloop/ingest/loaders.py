"""Loaders: one file in, a list of text elements (with section and page) out.

Markdown, text, HTML and Word go through unstructured; PDFs through pypdf, which parses
offline in milliseconds. unstructured wants spaCy's ``en_core_web_sm`` and downloads it on
first use; kbloop gives it a blank English pipeline with a sentencizer instead, so nothing is
ever fetched (its part-of-speech heuristics then see no tags, which only affects how plain
text lines are classified, not what text is kept).

Every failure of the content is a ``LoaderError`` whose message is the reason recorded in the
manifest. A file that cannot be read raises ``OSError`` instead, which says nothing of its
content: loaders read the bytes before they parse, so a parser never turns a read error into
a verdict on the file.
"""

from __future__ import annotations

import codecs
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kbloop.errors import LoaderError
from kbloop.fsutil import read_regular

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Element:
    text: str
    section: str | None = None
    page: int | None = None


@dataclass
class Loaded:
    elements: list[Element]
    title: str | None = None
    notes: list[str] = field(default_factory=list)


LoaderFn = Callable[[Path], Loaded]
LOADERS: dict[str, LoaderFn] = {}


def loader(*extensions: str) -> Callable[[LoaderFn], LoaderFn]:
    def decorate(fn: LoaderFn) -> LoaderFn:
        for ext in extensions:
            LOADERS[ext] = fn
        return fn

    return decorate


def supported(path: Path) -> bool:
    return path.suffix.lower() in LOADERS


def same_reader(a: Path, b: Path) -> bool:
    """Whether the same loader reads both paths (.md and .markdown, .htm and .html): the same
    bytes under another such name parse the same, so a move between them needs no new parse."""
    return LOADERS.get(a.suffix.lower()) is LOADERS.get(b.suffix.lower())


def load(path: Path, max_bytes: int | None = None) -> Loaded:
    """Parse one file. Raises LoaderError with a reason a person can act on."""
    fn = LOADERS.get(path.suffix.lower())
    if fn is None:
        raise LoaderError(f"unsupported file type {path.suffix or '(none)'}")
    size = path.stat().st_size
    if size == 0:
        raise LoaderError("empty file")
    if max_bytes is not None and size > max_bytes:
        raise LoaderError(
            f"file is {size / 2**20:.1f} MiB, over KBLOOP_MAX_FILE_MB={max_bytes / 2**20:g}"
        )
    loaded = fn(path)
    if not any(e.text.strip() for e in loaded.elements):
        raise LoaderError("no text: the file holds only whitespace, markup or images")
    return loaded


# -- text decoding -------------------------------------------------------------------------

FALLBACK_ENCODINGS = ("cp1252", "latin-1")
# UTF-32's little-endian mark begins with UTF-16's, so it is tried first.
BYTE_ORDER_MARKS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
TEXT_CONTROLS = frozenset((9, 10, 12, 13, 27))  # tab, newlines, form feed, escape


def read_text(path: Path) -> tuple[str, list[str]]:
    """Decode a text file: by its byte-order mark (UTF-8, UTF-16, UTF-32), else UTF-8, else a
    single-byte fallback with a note."""
    data = read_regular(path)
    binary = LoaderError(f"binary content, not {path.suffix.lstrip('.').upper() or 'text'} (a misnamed file?)")
    for bom, encoding in BYTE_ORDER_MARKS:
        if data.startswith(bom):
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError:
                name = encoding.upper().removesuffix("-SIG")
                raise LoaderError(f"not valid {name} text after its byte-order mark") from None
            if "\x00" in text[:8192] or _mostly_controls([ord(c) for c in text[:8192]]):
                raise binary
            return text, []
    if looks_binary(data):
        raise binary
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        pass
    for encoding in FALLBACK_ENCODINGS:
        try:
            return data.decode(encoding), [f"not UTF-8; decoded as {encoding}"]
        except UnicodeDecodeError:
            continue
    raise LoaderError("cannot decode text")  # latin-1 decodes anything; kept for clarity


def looks_binary(data: bytes) -> bool:
    """NUL bytes, or many control characters, in the first 8 KiB mean this is not text (text with
    a byte-order mark is decoded first, see ``read_text``)."""
    head = data[:8192]
    return b"\x00" in head or _mostly_controls(head)


def _mostly_controls(codes: bytes | list[int]) -> bool:
    controls = sum(1 for code in codes if code < 32 and code not in TEXT_CONTROLS)
    return bool(codes) and controls / len(codes) > 0.10


# -- unstructured, offline -----------------------------------------------------------------

_spacy_ready = False


def _offline_unstructured() -> None:
    """Point unstructured's spaCy hook at a blank pipeline, so it never downloads a model."""
    global _spacy_ready
    if _spacy_ready:
        return
    import spacy
    from unstructured.nlp import tokenize

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    tokenize._get_nlp = lambda: nlp  # private hook; unstructured is pinned <0.28 for it
    _spacy_ready = True


HEADING_MAX_CHARS = 100


def _from_unstructured(elements: list, plain_text: bool) -> Loaded:
    """Turn unstructured elements into kbloop elements, carrying the latest heading as section."""
    out: list[Element] = []
    title: str | None = None
    section: str | None = None
    for el in elements:
        text = (el.text or "").strip()
        if not text:
            continue
        if el.category == "Title" and _is_heading(text, plain_text):
            section = text
            title = title or text
        page = getattr(el.metadata, "page_number", None)
        out.append(Element(text=text, section=section, page=page))
    return Loaded(out, title=title)


def _is_heading(text: str, plain_text: bool) -> bool:
    if len(text) > HEADING_MAX_CHARS or "\n" in text:
        return False
    if plain_text:
        # In plain text unstructured guesses titles from shape; keep only heading-like lines.
        return not text.endswith((".", ",", ":", ";")) and len(text.split()) <= 10
    return True


def _partition(fn_name: str, module: str, plain_text: bool = False, **kwargs) -> Loaded:
    _offline_unstructured()
    import importlib

    fn = getattr(importlib.import_module(module), fn_name)
    try:
        elements = fn(**kwargs)
    except LoaderError:
        raise
    except Exception as exc:  # any parser failure is this file's problem, not the run's
        raise LoaderError(f"cannot parse: {exc.__class__.__name__}: {_short(exc)}") from None
    return _from_unstructured(elements, plain_text)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip()
    return text[:limit] + ("…" if len(text) > limit else "")


def _partition_text_file(path: Path, fn_name: str, module: str, plain_text: bool = False) -> Loaded:
    """Decode a text-based file ourselves (with the encoding note), then partition the text."""
    text, notes = read_text(path)
    loaded = _partition(fn_name, module, plain_text=plain_text, text=text)
    loaded.notes += notes
    return loaded


@loader(".md", ".markdown")
def load_markdown(path: Path) -> Loaded:
    return _partition_text_file(path, "partition_md", "unstructured.partition.md")


@loader(".txt")
def load_text(path: Path) -> Loaded:
    return _partition_text_file(path, "partition_text", "unstructured.partition.text", plain_text=True)


@loader(".html", ".htm")
def load_html(path: Path) -> Loaded:
    return _partition_text_file(path, "partition_html", "unstructured.partition.html")


@loader(".docx")
def load_docx(path: Path) -> Loaded:
    import zipfile

    data = read_regular(path)  # here, so a read error stays an OSError and is not taken for bad content
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise LoaderError("not a valid DOCX (not a zip container)")
    return _partition("partition_docx", "unstructured.partition.docx", file=io.BytesIO(data))


@loader(".pdf")
def load_pdf(path: Path) -> Loaded:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    # Read here, so a read error stays an OSError: pypdf's own OSErrors below mean a corrupt file.
    data = read_regular(path)
    if not data[:1024].lstrip().startswith(b"%PDF"):
        raise LoaderError("not a PDF (no %PDF header)")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise LoaderError("encrypted PDF; decrypt it before adding it")
        elements = []
        for number, page in enumerate(reader.pages, start=1):
            text = (page.extract_text() or "").strip()
            if text:
                elements.append(Element(text=text, page=number))
        title = (reader.metadata.title if reader.metadata else None) or None
    except LoaderError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, AttributeError, IndexError) as exc:
        raise LoaderError(f"corrupt PDF: {exc.__class__.__name__}: {_short(exc)}") from None
    if not elements:
        raise LoaderError("no text layer: a scanned or image-only PDF needs OCR before it can be indexed")
    return Loaded(elements, title=title)
