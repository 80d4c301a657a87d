"""Question/answer pairs read straight out of a chunk, with no language model.

Reference documents state their facts in a few regular shapes; each shape becomes a question:

- option and flag entries (``--tags  Use any tag…``; in PDFs the flag sits on its own line),
  and configuration keys (``gc.auto  When there are…``) → "What does the --tags option do in
  git-describe?" (or one of a few other phrasings of that question);
- "default is …" / "defaults to …" / "(Default: …)" statements → "What is the default for
  gc.auto in git-gc?";
- definitions at the start of a paragraph ("A bundle is a file that…") → "What is a bundle?";
- API entries, a signature on a line of its own with its description below (``bz2.open(filename,
  mode='rb')¶`` then "Open a bzip2-compressed file…") → "What does bz2.open() do?";
- definition-list lines that name something the way code does (``FORMAT_XZ: The .xz container
  format.``) → "What is FORMAT_XZ in lzma?";
- defaults stated with their subject anywhere in a sentence ("restkey (which defaults to None)",
  "When allow_no_value is True (default: False)", "If buffer_size is omitted, it defaults to …")
  → "What does restkey default to in csv?". A plain word is taken as a subject only as a
  parameter of the API entry above it ("the mode argument of bz2.open()"), since on its own it
  could be anything; otherwise the question names the section, as before.

Tables are left alone: the loaders flatten their rows into one line of text.

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
NOT_A_VALUE = r"(?!the\b|to\b|that\b|set\b|used\b|on\b|if\b)"
VALUE = (r"(`[^`]+`|\"[^\"]+\"|[^\s,;:()]+(?:\s+(?:seconds|minutes|hours|days|weeks|months|years|bytes|"
         r"characters|commits|objects|files|revisions|percent|KiB|MiB|GiB))?)(?=[\s.,;:()]|$)")
DEFAULT_VALUE = re.compile(rf"\b(?:default(?: value)? is|defaults to|default of|default:)\s*{NOT_A_VALUE}{VALUE}",
                           re.IGNORECASE)
# A default stated with its subject, in the shapes reference text of any layout uses; the
# first that matches names the subject.
SUBJECT = r"`?(--?[A-Za-z0-9][\w.-]*\w|[A-Za-z_][\w.]*\w)`?"
PARAMETER = r"(?:\s+(?:argument|parameter|option|setting|field|attribute|key))?"
STATED_DEFAULT = [re.compile(pattern, re.IGNORECASE) for pattern in (
    # When allow_no_value is True (default: False)
    rf"\b(?:if|when|while|unless)\s+(?:the\s+)?{SUBJECT}\s+(?:is|are)\s+\S+\s*\((?:the\s+)?default:?\s*"
    rf"(?:is\s+)?{NOT_A_VALUE}{VALUE}\s*\)",
    # restkey (which defaults to None); restval (default: "")
    rf"\b{SUBJECT}\s*\((?:which\s+|that\s+)?(?:defaults\s+to|default:?|default\s+is)\s*{NOT_A_VALUE}{VALUE}\s*\)",
    # If the buffer_size is not given, it defaults to DEFAULT_BUFFER_SIZE
    rf"\b(?:if|when)\s+(?:the\s+)?{SUBJECT}{PARAMETER}\s+is\s+(?:not\s+given|omitted|not\s+specified|"
    rf"not\s+provided|not\s+set|absent)\b[^,.;]*,\s*it\s+defaults\s+to\s+{NOT_A_VALUE}{VALUE}",
    # the default value of gc.auto is 6700
    rf"\bthe\s+default(?:\s+value)?\s+(?:of|for)\s+(?:the\s+)?{SUBJECT}{PARAMETER}\s+is\s+{NOT_A_VALUE}{VALUE}",
    # The pack.window setting defaults to 10
    rf"^(?:the\s+)?{SUBJECT}{PARAMETER}\s+defaults\s+to\s+{NOT_A_VALUE}{VALUE}",
)]
# "The default is 9." names no subject; the paragraph's first sentence may ("The compresslevel
# argument is an integer…", "compresslevel, if given, …").
BARE_DEFAULT = re.compile(r"^(?:the\s+default(?:\s+value)?\s+is|it\s+defaults\s+to|defaults\s+to|default:)\s",
                          re.IGNORECASE)
LEAD_SUBJECT = re.compile(
    rf"^(?:the\s+)?(?:optional\s+)?{SUBJECT}(?:\s+(?:argument|parameter|keyword\s+argument)\b|,\s+if\s+"
    rf"(?:given|specified|present|provided)\b)",
    re.IGNORECASE,
)
# What a stated default's value looks like, so that "SMTP (which defaults to port 25)" does not
# give SMTP the value "port": a number, something quoted, a constant, a literal.
VALUE_LIKE = re.compile(r"\d|[`'\"]|^[A-Z][A-Z0-9_.]+$|\w[._]\w|^(?:true|false|none|null|yes|no|on|off|auto|always|"
                        r"never|unlimited|empty)$", re.IGNORECASE)
NOUN_PHRASE = re.compile(r"^(?:The|A|An)\s")
FINITE_VERB = re.compile(r"\b(?:is|are|was|were|can|cannot|will|may|must|should|does|do|has|have)\b")
NOT_SUBJECTS = {"it", "this", "that", "which", "value", "values", "default", "there", "they", "these", "those",
                "true", "false", "none", "one", "each", "all", "both", "either"}
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
             "since", "how", "example", "you", "we", "here", "although", "because", "however", "new",
             "integer", "name", "list", "value", "time", "size", "output", "mode", "files", "file"}
IRREGULAR = {"be": "is", "have": "has", "do": "does"}
# An API entry's signature on a line of its own, as API references print it (Sphinx adds "¶",
# reStructuredText sources a directive): ``bz2.open(filename, mode='rb')¶``,
# ``class lzma.LZMAFile(filename=None)``. A man page's "git(1)" is a reference, not a signature.
SIGNATURE = re.compile(
    r"^\s*(?:\.\.\s+(?:py:)?(\w+)::\s+)?(class\s+)?([A-Za-z_][\w.]*\w)\s*\((?!\s*\d+\s*\))([^()\n]*)\)\s*¶?\s*$"
)
PARAM = re.compile(r"^(?:[A-Za-z_]\w*(?:\s*=.*)?|\.\.\.)$")  # a signature's parameter: name, name=default, ...
# A definition-list line whose term is named the way code names things: ``FORMAT_XZ: The .xz
# container format.`` ("Note: …" or "nickname: Two Sheds" are not).
TERM_AND_TEXT = re.compile(r"^\s*([A-Za-z_][\w.-]*\w)\s*:\s+([A-Z][^\n]+)$")
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
    """A described name in a reference list: a flag, a configuration key, an API entry or a
    defined term."""

    kind: str  # option | config | function | class | term
    name: str
    lines: list[str]

    @property
    def description(self) -> str:
        return " ".join(self.lines)


def entries(text: str) -> list[Entry]:
    """Flags, configuration keys, API entries and defined terms with their descriptions, in both
    layouts: name and text on one line (Markdown, HTML) or the name alone with the text below
    it (PDF, and API signatures everywhere)."""
    found: list[Entry] = []
    current: Entry | None = None
    pending: list[tuple[str, str]] = []  # names on lines of their own, awaiting text
    after_blank = True
    for raw in text.splitlines():
        line = raw.strip()
        opens_paragraph, after_blank = after_blank, not line
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
        if opens_paragraph and (entry := signature(line)):
            pending = [entry]
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
        if (m := TERM_AND_TEXT.match(line)) and re.search(r"\w[._]\w", m.group(1)):
            current = Entry("term", m.group(1), [m.group(2)])
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


def signature(line: str) -> tuple[str, str] | None:
    """("function" or "class", name) when ``line`` is an API entry's signature: its parameters
    are names (``PurePosixPath('foo/bar')`` is a value an example printed), and one with none
    is marked as a signature (a list of ``hash.copy()`` is a table of contents)."""
    if not (m := SIGNATURE.match(line)):
        return None
    directive, prefix, name, args = m.groups()
    marked = bool(directive or prefix or line.rstrip().endswith("¶"))
    params = [a.strip(" []*/") for a in args.split(",")]
    if not (marked or any(params)) or not all(PARAM.match(a) for a in params if a):
        return None
    return ("class" if prefix or directive == "class" else "function"), name


def named_like_code(name: str) -> bool:
    """``rest_key``, ``csv.reader``, ``QUOTE_ALL``, ``--depth`` and ``maxBytes`` name something;
    ``restkey`` could be any word."""
    return bool(re.search(r"\w[._-]\w|[a-z][A-Z]|^--?\w", name)) or (name.isupper() and len(name) > 1)


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
    # {doc} is where an API entry is: "" when its name says (bz2.open()), else " in bz2"
    "function": ("What does {name} do{doc}?", "What is {name}{doc} for?", "What happens when you call {name}{doc}?",
                 "How is {name} used{doc}?"),
    "class": ("What is the {name} class{doc} for?", "What does the {name} class do{doc}?", "What is {name}{doc}?",
              "How is the {name} class used{doc}?"),
    "term": ("What is {name} in {doc}?", "What does {name} mean in {doc}?", "In {doc}, what is {name}?",
             "What does {doc} mean by {name}?"),
}
ASK_DEFAULT = {
    "option": ("What is the default for {name} in {doc}?", "What does {name} default to in {doc}?",
               "If {name} is not given, what value does {doc} use?", "By default, what is {name} in {doc}?"),
    "setting": ("What is the default for {name} in {doc}?", "What does {name} default to in {doc}?",
                "If {name} is not set, what value does {doc} use?", "By default, what is {name} in {doc}?"),
    # {doc} is the API entry here: "bz2.open()", or "peek() in bz2"
    "argument": ("What is the default for the {name} argument of {doc}?",
                 "What does the {name} argument of {doc} default to?",
                 "If {name} is not given to {doc}, what value is used?",
                 "By default, what is the {name} argument of {doc}?"),
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


def api_answer(kind: str, name: str, where: str, sentence: str) -> str | None:
    """A one-sentence answer to "What does NAME do?" about an API entry that begins with its
    subject, when its description opens with an instruction ("Open a file…"); else None."""
    rest = third_person(sentence)
    if rest is None:
        return None
    return f"The {name} class{where} {rest}" if kind == "class" else f"{name}{where} {rest}"


def term_answer(name: str, doc: str, sentence: str) -> str | None:
    """A one-sentence answer to "What is NAME?" when the definition is a noun phrase ("The .xz
    container format."), the shape that reads right after "NAME is"; else None."""
    if NOUN_PHRASE.match(sentence) and not FINITE_VERB.search(sentence):
        return f"{name} in {doc} is {sentence[0].lower()}{sentence[1:]}"
    return None


def entry_pairs(entry: Entry, doc: str) -> list[Pair]:
    """What an entry's first sentence answers: what the flag, key, API entry or term does, and,
    for a flag or key, its default."""
    lead = short_answer(entry.description, 1)
    if len(lead.split()) < 4:
        return []
    if entry.kind == "term":
        answer = term_answer(entry.name, doc, lead)
        return [Pair(ask(ASK_WHAT_IT_DOES, "term", entry.name, doc), answer, "extractive:term", evidence=lead)
                ] if answer else []
    if entry.kind in ("function", "class"):
        # A qualified name says where it is (bz2.open); a bare one is placed by its document.
        name = f"{entry.name}()" if entry.kind == "function" else entry.name
        where = "" if "." in entry.name else f" in {doc}"
        answer = api_answer(entry.kind, name, where, lead)
        return [Pair(ask(ASK_WHAT_IT_DOES, entry.kind, name, where), answer, "extractive:api", evidence=lead)
                ] if answer else []
    name = first_flag(entry.name) if entry.kind == "option" else entry.name
    noun = "option" if entry.kind == "option" else "setting"
    pairs = [Pair(ask(ASK_WHAT_IT_DOES, noun, name, doc), describe(name, noun, doc, lead),
                  f"extractive:{entry.kind}", evidence=lead)]
    for sentence in sentences(entry.description):
        if DEFAULT.search(sentence):
            value = default_value(sentence)
            answer = f"The default for {name} in {doc} is {value}." if value else sentence
            pairs.append(Pair(ask(ASK_DEFAULT, noun, name, doc), answer, "extractive:default",
                              evidence=sentence, value=value))
            break
    return pairs


Api = tuple[str, set[str]]  # an API entry's name and its parameters' names


def stated_default(sentence: str, lead: str, api: Api | None, doc: str) -> Pair | None:
    """The default the sentence states, asked about by its subject: one the sentence names, or,
    for "The default is 9.", the one its paragraph's first sentence names. None when there is
    none, or it is a plain word that is no parameter of the API entry above."""
    for pattern in STATED_DEFAULT:
        if m := pattern.search(sentence):
            subject, value = m.group(1), m.group(2).rstrip(".")
            break
    else:
        if not (BARE_DEFAULT.match(sentence) and (m := LEAD_SUBJECT.match(lead))):
            return None
        subject, value = m.group(1), default_value(sentence)
    if (not value or len(value.split()) > 4 or not VALUE_LIKE.search(value) or subject.lower() in NOT_SUBJECTS
            or subject[0].isdigit()):
        return None
    if api is not None and subject in api[1]:
        where = f"{api[0]}()" if "." in api[0] else f"{api[0]}() in {doc}"
        return Pair(ask(ASK_DEFAULT, "argument", subject, where),
                    f"The default for the {subject} argument of {where} is {value}.", "extractive:default",
                    evidence=sentence, value=value)
    if not named_like_code(subject):
        return None
    noun = "option" if subject.startswith("-") else "setting"
    return Pair(ask(ASK_DEFAULT, noun, subject, doc), f"The default for {subject} in {doc} is {value}.",
                "extractive:default", evidence=sentence, value=value)


def api_above(paragraph: str, api: Api | None) -> Api | None:
    """The API entry the text after ``paragraph`` belongs to: the one it declares, none after a
    heading or a signature split over several lines (a few words, or Sphinx's "¶"), else the
    one before."""
    flat = " ".join(paragraph.split())
    if signature(flat) and (m := SIGNATURE.match(flat)):
        return m.group(3), set(re.findall(r"[A-Za-z_]\w*", m.group(4)))
    if "¶" in flat or len(flat.split()) <= 3:
        return None
    return api


def extract_pairs(text: str, metadata: dict, path: str) -> list[Pair]:
    """Every question the chunk's regular shapes give, each resting on one of the chunk's sentences."""
    text = ESCAPE.sub(r"\1", text)
    doc = document_name(metadata, path)
    pairs: list[Pair] = []
    found = entries(text)
    for entry in found:
        pairs += entry_pairs(entry, doc)
    described = " ".join(e.description for e in found if e.kind in ("option", "config"))
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    api: Api | None = None
    for paragraph in paragraphs:
        api = api_above(paragraph, api)
        lead = sentences(paragraph)[:1]
        for sentence in sentences(paragraph):
            # A statement of a default outside a flag's or key's entry: asked about by its subject
            # when it names one, else by its section, when it names a concrete value.
            if sentence in described:
                continue
            if pair := stated_default(sentence, lead[0], api, doc):
                pairs.append(pair)
            elif DEFAULT_VALUE.search(sentence):
                subject = metadata.get("section") or doc
                pairs.append(Pair(f"What is the default stated under {subject} in {doc}?", sentence,
                                  "extractive:default", evidence=sentence))
        if lead and (m := DEFINITION.match(lead[0])) and 6 <= len(lead[0].split()) <= MAX_ANSWER_WORDS:
            term = m.group(1).strip("`")
            if term.lower() not in {"this", "it", "that", "there", "these", "they", "which"}:
                verb = "are" if m.group(2) == "are" else "is"
                pairs.append(Pair(f"What {verb} {term}, according to {doc}?", lead[0],
                                  "extractive:definition", evidence=lead[0]))
    return pairs
