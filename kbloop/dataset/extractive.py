"""Question/answer pairs read straight out of a chunk, with no language model.

Reference documents state their facts in a few regular shapes; each shape becomes a question
whose answer is the document's own sentence:

- option and flag entries (``--tags  Use any tag…``; in PDFs the flag sits on its own line),
  and configuration keys (``gc.auto  When there are…``) → "What does --tags do in git-describe?";
- "default is …" / "defaults to …" statements → "What is the default for gc.auto in git-gc?";
- definitions at the start of a paragraph ("A bundle is a file that…") → "What is a bundle?";
- a section heading with the section's first sentence → "What does the DESCRIPTION section … say?".

So a build always yields data offline, and every answer quotes its source verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(\-])")
FLAG = r"--?[A-Za-z0-9][\w.-]*(?:\[?=[^\s,]*\]?)?"
FLAGS_ONLY = re.compile(rf"^\s*({FLAG}(?:,?\s+{FLAG})*)\s*$")
FLAG_AND_TEXT = re.compile(rf"^\s*({FLAG}(?:,\s*{FLAG})*)\s+([A-Z][^\n]+)$")
CONFIG_KEY = r"[a-z][a-zA-Z0-9-]*(?:\.[a-zA-Z0-9<>*_-]+)+"
KEY_ONLY = re.compile(rf"^\s*({CONFIG_KEY})\s*$")
KEY_AND_TEXT = re.compile(rf"^\s*({CONFIG_KEY})\s+([A-Z][^\n]+)$")
DEFAULT = re.compile(r"\b(?:default(?: value)? (?:is|of)|defaults to|by default)\b", re.IGNORECASE)
HEADING = re.compile(r"^[A-Za-z][\w .,'()-]{1,60}$")  # a title, not a command line or a value
DEFINITION = re.compile(
    r"^(?:(?:The|A|An)\s+)?(`?[\w.'`<>-]+(?:\s+[\w.'`<>-]+){0,3}`?)\s+(is|are)\s+(?:a|an|the|used|one)\b"
)
TITLE_SUFFIX = re.compile(r"\s*\(\d\)(?:\s+Manual Page)?\s*$|\s+Manual Page\s*$")
ESCAPE = re.compile(r"\\([<>*_`\[\]#])")
# Headings that introduce lists or boilerplate rather than a statement worth asking about.
DULL_SECTIONS = {"options", "see also", "git", "synopsis", "name", "examples", "configuration",
                 "author", "authors", "documentation", "reporting bugs", "notes"}
MAX_ANSWER_WORDS = 70


@dataclass(frozen=True)
class Pair:
    question: str
    answer: str
    generator: str  # e.g. "extractive:option" or "teacher:local:qwen2.5-0.5b"


def document_name(metadata: dict, path: str) -> str:
    """What a question calls the document: its title without man-page decoration, else the file stem."""
    title = TITLE_SUFFIX.sub("", (metadata.get("title") or "").strip())
    if title:
        return title
    stem = path.rsplit("/", 1)[-1]
    return stem.rsplit(".", 1)[0] if "." in stem else stem


def sentences(text: str) -> list[str]:
    flat = " ".join(text.split())
    return [s.strip() for s in SENTENCE_END.split(flat) if s.strip()]


def short_answer(text: str, max_sentences: int = 2) -> str:
    """The first sentences of a description, cut at a word limit."""
    picked = " ".join(sentences(text)[:max_sentences])
    words = picked.split()
    return " ".join(words[:MAX_ANSWER_WORDS]) if len(words) > MAX_ANSWER_WORDS else picked


@dataclass
class Entry:
    """A described name in a reference list: a flag or a configuration key."""

    kind: str  # option | config
    name: str
    lines: list[str]

    @property
    def description(self) -> str:
        return " ".join(self.lines)


def entries(text: str) -> list[Entry]:
    """Flags and configuration keys with their descriptions, in both layouts: name and text on
    one line (Markdown, HTML) or the name alone with the text below it (PDF)."""
    found: list[Entry] = []
    current: Entry | None = None
    pending: list[tuple[str, str]] = []  # names on lines of their own, awaiting text
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            current = None
            continue
        if m := FLAGS_ONLY.match(line):
            pending.append(("option", m.group(1)))
            current = None
            continue
        if m := KEY_ONLY.match(line):
            pending.append(("config", m.group(1)))
            current = None
            continue
        if m := FLAG_AND_TEXT.match(line):
            current = Entry("option", m.group(1), [m.group(2)])
            found.append(current)
            pending = []
            continue
        if m := KEY_AND_TEXT.match(line):
            current = Entry("config", m.group(1), [m.group(2)])
            found.append(current)
            pending = []
            continue
        if pending and line[:1].isupper():
            kind, _ = pending[0]
            current = Entry(kind, " / ".join(name for _, name in pending), [line])
            found.append(current)
            pending = []
            continue
        pending = []
        if current is not None:
            current.lines.append(line)
    return found


def first_flag(name: str) -> str:
    """``--listen=<host>, -l`` is asked about as ``--listen``."""
    return re.split(r"[\s,/=\[]+", name.strip())[0]


def extract_pairs(text: str, metadata: dict, path: str) -> list[Pair]:
    """Every question the chunk's regular shapes give, each answered by the chunk's own words."""
    text = ESCAPE.sub(r"\1", text)
    doc = document_name(metadata, path)
    pairs: list[Pair] = []
    for entry in entries(text):
        answer = short_answer(entry.description)
        if len(answer.split()) < 4:
            continue
        name = first_flag(entry.name) if entry.kind == "option" else entry.name
        noun = "option" if entry.kind == "option" else "setting"
        pairs.append(Pair(f"What does the {name} {noun} do in {doc}?", answer, f"extractive:{entry.kind}"))
        for sentence in sentences(entry.description):
            if DEFAULT.search(sentence):
                pairs.append(Pair(f"What is the default for {name} in {doc}?", sentence, "extractive:default"))
                break
    described = " ".join(e.description for e in entries(text))
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    for paragraph in paragraphs:
        for sentence in sentences(paragraph):
            if DEFAULT.search(sentence) and sentence not in described:
                subject = metadata.get("section") or doc
                pairs.append(Pair(f"What is the default stated under {subject} in {doc}?", sentence,
                                  "extractive:default"))
        lead = sentences(paragraph)[:1]
        if lead and (m := DEFINITION.match(lead[0])) and len(lead[0].split()) >= 6:
            term = m.group(1).strip("`")
            if term.lower() not in {"this", "it", "that", "there", "these", "they", "which"}:
                verb = "are" if m.group(2) == "are" else "is"
                pairs.append(Pair(f"What {verb} {term}, according to {doc}?", short_answer(paragraph, 1),
                                  "extractive:definition"))
    section = (metadata.get("section") or "").strip()
    if (section and section.lower() not in DULL_SECTIONS and section != metadata.get("title")
            and HEADING.match(section) and len(section.split()) <= 8):
        body = text.strip()
        if body.lower().startswith(section.lower()):
            body = body[len(section):]
            lead = short_answer(body, 2)
            if len(lead.split()) >= 6:
                pairs.append(Pair(f"What does the {section} section of {doc} say?", lead, "extractive:heading"))
    return pairs
