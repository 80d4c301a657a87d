"""Question/answer pairs read straight out of a chunk, with no language model.

Reference documents state their facts in a few regular shapes; each shape becomes a question:

- option and flag entries (``--tags  Use any tag…``; in PDFs the flag sits on its own line),
  and configuration keys (``gc.auto  When there are…``) → "What does the --tags option do in
  git-describe?" (or one of a few other phrasings of that question);
- "default is …" / "defaults to …" / "(Default: …)" statements → "What is the default for
  gc.auto in git-gc?";
- definitions at the start of a paragraph ("A bundle is a file that…") → "What is a bundle?".

The answer is short and begins with its subject the way a person answers ("The default for
gc.auto in git-gc is 6700."), because the model learns the shape of its answers from these records:
answers that were whole passages taught it to copy passages, source headings included. Each
pair keeps the sentence it was read from as its ``evidence``, and the support filter checks that
sentence against the chunk. So a build always yields data offline, and every answer rests on
the document's own words.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(\-])")
FLAG = r"--?[A-Za-z0-9][\w.-]*(?:\[?=[^\s,]*\]?| <[\w.-]+>)?"  # --depth=<n>, --retries <count>
FLAGS_ONLY = re.compile(rf"^\s*({FLAG}(?:,?\s+{FLAG})*)\s*$")
FLAG_AND_TEXT = re.compile(rf"^\s*({FLAG}(?:,\s*{FLAG})*)\s+([A-Z][^\n]+)$")
CONFIG_KEY = r"[a-z][a-zA-Z0-9-]*(?:\.[a-zA-Z0-9<>*_-]+)+"
KEY_ONLY = re.compile(rf"^\s*({CONFIG_KEY})\s*$")
KEY_AND_TEXT = re.compile(rf"^\s*({CONFIG_KEY})\s+([A-Z][^\n]+)$")
DEFAULT = re.compile(r"\b(?:default(?: value)? (?:is|of)|defaults to|by default)\b|\bdefault:", re.IGNORECASE)
DEFAULT_VALUE = re.compile(
    r"\b(?:default(?: value)? is|defaults to|default of|default:)\s*(?!the\b|to\b|that\b|set\b|used\b|on\b|if\b)"
    r"(`[^`]+`|\"[^\"]+\"|[^\s,;:()]+(?:\s+(?:seconds|minutes|hours|days|weeks|months|years|bytes|"
    r"characters|commits|objects|files|revisions|percent|KiB|MiB|GiB))?)(?=[\s.,;:()]|$)",
    re.IGNORECASE,
)
DEFINITION = re.compile(
    r"^(?:(?:The|A|An)\s+)?(`?[a-z<`-][\w.'`<>-]*(?:\s+[a-z][\w.'`<>-]*)?`?)\s+(is|are)\s+(?:a|an|the|used|one)\b"
)
# Leading words that are not an instruction to conjugate ("Prepend" → "prepends").
NOT_VERBS = {"the", "a", "an", "this", "these", "that", "if", "when", "with", "without", "instead",
             "only", "by", "in", "for", "as", "on", "see", "note", "it", "unless", "same", "like",
             "defaults", "default", "can", "may", "deprecated", "synonym", "alias", "equivalent",
             "there", "each", "all", "any", "no", "not", "both", "either", "used", "implies", "which",
             "what", "where", "whether", "before", "after", "during", "to", "also", "every", "some",
             "one", "progress", "path", "format", "timeout", "maximum", "minimum", "short", "legacy",
             "password", "username", "number", "seconds", "names", "notes", "synonyms", "boolean",
             "integer", "name", "list", "value", "time", "size", "output", "mode", "files", "file"}
IRREGULAR = {"be": "is", "have": "has", "do": "does"}
TITLE_SUFFIX = re.compile(r"\s*\(\d\)(?:\s+Manual Page)?\s*$|\s+Manual Page\s*$")
ESCAPE = re.compile(r"\\([<>*_`\[\]#])")
MAX_ANSWER_WORDS = 70


@dataclass(frozen=True)
class Pair:
    question: str
    answer: str
    generator: str  # e.g. "extractive:option" or "teacher:local:qwen2.5-0.5b"
    evidence: str = ""  # the chunk's own sentence the answer was read from; "" for a teacher's pair
    value: str = ""     # the bare value a default question asks for

    @property
    def accept(self) -> tuple[str, ...]:
        """Other forms that state the answer, for grading: the bare value, the document's sentence."""
        return tuple(f for f in (self.value, self.evidence) if f and f != self.answer)

    @property
    def support(self) -> str:
        """What the chunk must state for the pair to be kept."""
        return self.evidence or self.answer


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
    """``--listen=<host>, -l`` and ``-l, --listen`` are both asked about as ``--listen``: people
    name an option by its long form."""
    flags = [part for part in re.split(r"[\s,/=\[]+", name.strip()) if part.startswith("-")]
    return next((f for f in flags if f.startswith("--")), flags[0] if flags else name.strip())


def third_person(sentence: str) -> str | None:
    """``Prepend <prefix>/ to paths.`` → ``prepends <prefix>/ to paths.``; None when the
    sentence does not open with an instruction."""
    first, _, rest = sentence.partition(" ")
    word = first.lower()
    if (not first[:1].isupper() or not first.isalpha() or word in NOT_VERBS or not rest
            or word.endswith(("ly", "ing", "ed"))):
        return None
    if word in IRREGULAR:
        verb = IRREGULAR[word]
    elif word.endswith("s") and not word.endswith("ss"):
        verb = word  # already "Specifies", "Sets"
    elif word.endswith("y") and word[-2:-1] not in "aeiou":
        verb = word[:-1] + "ies"
    elif word.endswith(("ss", "sh", "ch", "x", "z", "o")):
        verb = word + "es"
    else:
        verb = word + "s"
    return f"{verb} {rest}"


def describe(name: str, noun: str, doc: str, sentence: str) -> str:
    """A one-sentence answer to "What does NAME do in DOC?" that begins with its subject."""
    if (rest := third_person(sentence)) is not None:
        return f"The {name} {noun} of {doc} {rest}"
    return f"The {name} {noun} of {doc}: {sentence}"


# People ask about the same fact in many ways; one fixed phrasing per shape taught the model to
# answer that phrasing only. Each fact gets one of these, chosen by its name (reproducible).
ASK_WHAT_IT_DOES = {
    "option": ("What does the {name} option do in {doc}?", "What is the {name} option of {doc} for?",
               "What happens when you pass {name} to {doc}?", "How does {name} change what {doc} does?"),
    "setting": ("What does the {name} setting do in {doc}?", "What is {name} for, according to {doc}?",
                "What does setting {name} change in {doc}?", "How is {name} used by {doc}?"),
}
ASK_DEFAULT = {
    "option": ("What is the default for {name} in {doc}?", "What does {name} default to in {doc}?",
               "If {name} is not given, what value does {doc} use?", "By default, what is {name} in {doc}?"),
    "setting": ("What is the default for {name} in {doc}?", "What does {name} default to in {doc}?",
                "If {name} is not set, what value does {doc} use?", "By default, what is {name} in {doc}?"),
}


def ask(templates: dict[str, tuple[str, ...]], noun: str, name: str, doc: str) -> str:
    """One of the phrasings, chosen by a hash of the subject, so a build is reproducible."""
    choices = templates[noun]
    return choices[zlib.crc32(f"{name}\n{doc}".encode()) % len(choices)].format(name=name, doc=doc)


def default_value(sentence: str) -> str:
    """The value a default sentence names, when it names one and says nothing after it (no
    "…, but true for tgz"); else ""."""
    if m := DEFAULT_VALUE.search(sentence):
        value = m.group(1).rstrip(".")
        if value and len(value.split()) <= 4 and not sentence[m.end():].strip(" .)"):
            return value
    return ""


def extract_pairs(text: str, metadata: dict, path: str) -> list[Pair]:
    """Every question the chunk's regular shapes give, each resting on one of the chunk's sentences."""
    text = ESCAPE.sub(r"\1", text)
    doc = document_name(metadata, path)
    pairs: list[Pair] = []
    found = entries(text)
    for entry in found:
        lead = short_answer(entry.description, 1)
        if len(lead.split()) < 4:
            continue
        name = first_flag(entry.name) if entry.kind == "option" else entry.name
        noun = "option" if entry.kind == "option" else "setting"
        pairs.append(Pair(ask(ASK_WHAT_IT_DOES, noun, name, doc), describe(name, noun, doc, lead),
                          f"extractive:{entry.kind}", evidence=lead))
        for sentence in sentences(entry.description):
            if DEFAULT.search(sentence):
                value = default_value(sentence)
                answer = f"The default for {name} in {doc} is {value}." if value else sentence
                pairs.append(Pair(ask(ASK_DEFAULT, noun, name, doc), answer, "extractive:default",
                                  evidence=sentence, value=value))
                break
    described = " ".join(e.description for e in found)
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    for paragraph in paragraphs:
        for sentence in sentences(paragraph):
            # A statement of a default outside an entry, kept when it names a concrete value.
            if DEFAULT_VALUE.search(sentence) and sentence not in described:
                subject = metadata.get("section") or doc
                pairs.append(Pair(f"What is the default stated under {subject} in {doc}?", sentence,
                                  "extractive:default", evidence=sentence))
        lead = sentences(paragraph)[:1]
        if lead and (m := DEFINITION.match(lead[0])) and 6 <= len(lead[0].split()) <= MAX_ANSWER_WORDS:
            term = m.group(1).strip("`")
            if term.lower() not in {"this", "it", "that", "there", "these", "they", "which"}:
                verb = "are" if m.group(2) == "are" else "is"
                pairs.append(Pair(f"What {verb} {term}, according to {doc}?", lead[0],
                                  "extractive:definition", evidence=lead[0]))
    return pairs
