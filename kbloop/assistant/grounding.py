"""Grounding checks that need no model: does the knowledge base talk about what was asked,
and which sources does an answer come from.

A question that names an exact technical term (an option, a config key, an environment
variable) or a name in mixed case (a product, a class) that none of the retrieved sources
mentions is about something the knowledge base does not cover, however close the embeddings
look; small models would otherwise invent a value.

Two checks read the reply itself. One that adds no word to the question and keeps all of its
words only restated it (small models copy the question when they cannot find the answer); the
sentence of the sources closest to the question can then be quoted instead. One that states
numbers, none of which the question or a source holds, invented them: on ../shared/kbdev's
unanswerable questions qwen2.5-0.5b answered "The default size of http.postBuffer is 1024."
and "... is 10.".
"""

from __future__ import annotations

import functools
import mimetypes
import re
from typing import NamedTuple

from kbloop.ingest.manifest import Hit
from kbloop.prompt import is_refusal, source_heading
from kbloop.text import (LIST_MARKER, NUMBER, SPACE, SPELLED, STOPWORDS, normalise, numbers, stem, technical_terms,
                         term_text, values, word_stems)

SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
# Words that tell neither one source from another nor an answer from the question, besides the
# stop words: "default", which a manual says of every setting. Each knowledge base adds its own
# common words (``Manifest.common_words``: "git" in git's manual), passed as ``common``.
# The words a reply frames its answer with ("According to the sources, ...", "Based on the
# information provided, ...") say nothing of the answer either.
UNINFORMATIVE = STOPWORDS | {"default", "according", "based", "provided", "information", "source", "sources"}
# A question that offers its own answers: a yes/no question, or one that names the choices ("A or
# B", "which of A and B"). Its answer may add no word to it and leave some of its words out.
OFFERS_CHOICE = re.compile(
    r"^\W*(?:is|are|was|were|do|does|did|can|could|should|will|would|has|have|had|must|may)\b"
    r"|\bor\b|\bwhich\s+of\b|\beither\b", re.IGNORECASE)


# A name written in mixed case, as products, classes and settings are ("PgBouncer", "GzipFile",
# "backupCount", "SQLite"): an exact name, which a knowledge base that covers the thing spells out.
# Not after a dot, where it is part of a technical term ("core.bigFileThreshold"), nor a plural
# of capitals ("IDs").
MIXED_CASE = re.compile(r"(?<![\w.-])(?:[A-Za-z]*[a-z][A-Z]|[A-Z]{2,}[a-z]{2,})[A-Za-z0-9]*(?![\w.-])")


def named_terms(question: str) -> list[str]:
    """The exact names ``question`` gives, lower-cased, each once: its technical terms
    (``technical_terms``) and its names in mixed case (``MIXED_CASE``)."""
    terms = technical_terms(question)
    return terms + sorted({m.lower() for m in MIXED_CASE.findall(question)} - set(terms))


def unmentioned_terms(question: str, hits: list[Hit]) -> list[str]:
    """Exact names of the question (``named_terms``) that no retrieved source contains, except
    file names."""
    return terms_missing_from(question, term_text(" ".join(h.text for h in hits)))


def terms_missing_from(question: str, text: str) -> list[str]:
    """``unmentioned_terms`` for the sources' text as ``term_text`` gives it."""
    return [t for t in named_terms(question) if not mentioned(t, text) and not names_file(t)]


# A name the question quotes as code: `git daemon`, `python -m gzip`.
QUOTED = re.compile(r"`([^`\n]{2,60})`")


def unmentioned_names(question: str, hits: list[Hit]) -> list[str]:
    """What the question names that no retrieved source contains: its technical terms
    (``unmentioned_terms``), and then the names it quotes as code that are no such term, such as a
    command (`git daemon`). A source need not mention a quoted name for the question to be
    answerable, so these only direct a further search, never a refusal."""
    text = term_text(" ".join(h.text for h in hits))
    terms = terms_missing_from(question, text)
    quoted = [SPACE.sub(" ", q.strip().lower()).removesuffix("()") for q in QUOTED.findall(question)]
    return terms + [q for q in dict.fromkeys(quoted) if q not in named_terms(q) and not mentioned(q, text)]


@functools.cache
def file_types() -> mimetypes.MimeTypes:
    """Python's own table of file types, the same on every machine; made on first use, since
    making it also reads the system's tables into the module's global one."""
    return mimetypes.MimeTypes()


def names_file(term: str) -> bool:
    """``term`` ends in the extension of a known file type ("archive.tar.xz", "libpq.so"): a
    question names such a file where the manual describes the format or the library without
    naming a file of it ("I create an .tar.xz" against "for mode 'w:xz'"), so its absence
    from the sources says nothing."""
    kind, encoding = file_types().guess_type(term, strict=False)
    return bool(kind or encoding)


def mentioned(term: str, text: str) -> bool:
    """``term`` is in ``text``, or, for a qualified name of three parts or more
    ("pathlib.path.home"), the name without its first part ("path.home"): reference manuals
    document a method under its module without repeating the module's name."""
    if " " in term:  # a quoted command: "git daemon" across a line break is still mentioned
        text = SPACE.sub(" ", text)
    return term in text or (term.count(".") >= 2 and term.split(".", 1)[1] in text)


KEYWORD_COVERAGE = 2 / 3


def keyword_evidence(question: str, hit: Hit, common: frozenset[str] = frozenset()) -> bool:
    """The chunk holds most informative words of the question (two thirds, at least two
    words): strong evidence of relevance, whatever the cosine similarity says. A fact
    appended to a long document is found this way though its chunk's embedding is about
    something else."""
    asked = stems(question, common)
    return len(asked) >= 2 and len(asked & stems(hit.text, common)) >= KEYWORD_COVERAGE * len(asked)


def new_words(answer: str, question: str, common: frozenset[str] = frozenset()) -> list[str]:
    """The words of the answer that are neither in the question (in any form: "writes" is in
    "which does it write?") nor uninformative."""
    asked = {stem(w) for w in normalise(question).split()}
    return [w for w in normalise(answer).split()
            if stem(w) not in asked and w not in UNINFORMATIVE and w not in common]


def restates(answer: str, question: str, common: frozenset[str] = frozenset()) -> bool:
    """The answer only repeats the question: it adds no word to it. An answer to a question
    that offers its answers (``OFFERS_CHOICE``) may add none, and restates it only when it
    also leaves none of its words out: "stash.showStat defaults to true." picks one of the two
    things "Which of stash.showPatch and stash.showStat defaults to true?" names."""
    if not answer.strip():
        return True
    if new_words(answer, question, common):
        return False
    return not OFFERS_CHOICE.search(question) or stems(question, common) <= stems(answer, common)


def stems(text: str, common: frozenset[str] = frozenset()) -> set[str]:
    """The informative words of ``text`` in one form (``word_stems``)."""
    return word_stems(text, UNINFORMATIVE | common)


def closest_sentence(question: str, hits: list[Hit], longest: int = 500,
                     common: frozenset[str] = frozenset()) -> tuple[int, str] | None:
    """The sentence of the sources that shares most words with the question, and its source's
    number (the better-ranked source on a tie); None when none shares half of them."""
    asked = stems(question, common)
    best: tuple[int, int, str] | None = None
    for n, hit in enumerate(hits, start=1):
        for sentence in SENTENCE_END.split(hit.text):
            sentence = " ".join(sentence.split())
            shared = len(asked & stems(sentence, common))
            if len(sentence.split()) >= 4 and (best is None or shared > best[0]):
                best = (shared, n, sentence)
    if best is None or 2 * best[0] < len(asked):
        return None
    sentence = best[2] if len(best[2]) <= longest else best[2][:longest].rsplit(" ", 1)[0] + " …"
    return best[1], sentence


# A question that asks for a count, an amount, a duration or a version: its answer is a number
# ("How many rows ...?", "Since which Python version ...?").
ASKS_FOR_NUMBER = re.compile(
    r"\bhow\s+(?:many|much|long)\b|\b(?:which|what)\s+(?:\w+\s+)?(?:version|year)s?\b", re.IGNORECASE)
# Words that state a number in prose ("five seconds", "twice"), or that there is none to state.
NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million "
    "billion half quarter once twice double dozen unlimited infinite indefinitely forever".split())
NO_LIMIT = re.compile(r"\bno\s+(?:limit|maximum|minimum|timeout|fixed|upper|lower)\b", re.IGNORECASE)


def gives_no_number(answer: str, question: str) -> bool:
    """The question asks for a number (``ASKS_FOR_NUMBER``) and the answer states none besides
    the question's own, in digits, in words or as "no limit": "Starting with which Python
    version is protocol 4 the default?" is not answered by "The default protocol is 4."."""
    if not ASKS_FOR_NUMBER.search(question):
        return False
    said = set(normalise(LIST_MARKER.sub(" ", answer)).split()) - set(normalise(question).split())
    return not NO_LIMIT.search(answer) and not any(w in NUMBER_WORDS or any(c.isdigit() for c in w) for w in said)


# A line that begins as the prompt's source headings do: "[4] filecmp.html (Navigation > …)".
HEADING_LINE = re.compile(r"^[\s>*_`-]*\[\d{1,2}\]\s+(\S+)", re.MULTILINE)


def pastes_heading(answer: str, hits: list[Hit]) -> bool:
    """The answer copies a source's heading line from the prompt (its number and file): the model
    pasted a source block instead of answering, as it does when no source holds the answer
    ("The directory names listed in filecmp.DEFAULT_IGNORES are:\n\n[4] filecmp.html (…)")."""
    paths = {h.path for h in hits}
    return any(match.group(1) in paths for match in HEADING_LINE.finditer(answer))


def invented_numbers(answer: str, question: str, hits: list[Hit]) -> list[str]:
    """The numbers the answer states when not one of them is in the question or a source
    (heading included), compared by value ("5.0" is in "timeout=5"). Empty when the answer states
    none, or any of them is grounded (``grounding_values``), so "900 seconds (15 minutes)"
    stands on its 900."""
    stated = values(answer) - values(question)
    grounded = set().union(*(grounding_values(f"{source_heading(n, h)}\n{h.text}")
                             for n, h in enumerate(hits, start=1)))
    return [] if stated & grounded else sorted(stated)


# A number spelled out as a count of a larger unit: "three million", "two thousand".
SPELLED_SCALE = re.compile(rf"({SPELLED.pattern})\s+(?:hundred|thousand|million|billion|trillion)\b", re.IGNORECASE)


def grounding_values(text: str) -> set[str]:
    """The values a source holds for an answer's numbers: those in digits, and those spelled out
    that are as rare in prose as digits: of two digits or more ("twenty" holds 20) or a count of a
    larger unit ("three million" holds the 3 of "3 million"). A single digit spelled out by itself
    is in most passages ("the two readers") and once held an invented "2" on pydev."""
    spelled = {v for v in values(text, spelled=True) if len(v) > 1}
    scaled = values(" ".join(match.group(1) for match in SPELLED_SCALE.finditer(text)), spelled=True)
    return values(text) | spelled | scaled


# A question that asks for a bound of what it names, the largest or smallest value it may take, in
# the sentence that asks it ("What is the largest value work_mem can be set to?"), and not for a
# default: "A table can go unvacuumed for at most ... What is that cutoff age by default?" asks a
# default, and "the default maximum number of clients" a default that is itself a maximum.
ASKS_BOUND = re.compile(
    r"\b(?:max(?:imum|imal)?|min(?:imum|imal)?|largest|highest|greatest|longest|smallest|lowest|shortest"
    r"|fewest|limit|at\s+most|at\s+least)\b", re.IGNORECASE)
ASKS_DEFAULT = re.compile(r"\bdefault(?:s|ed)?\b", re.IGNORECASE)
# How a sentence states a bound: a word of the kind the question asks with, a range, or a name
# built with one ("maxsize of 32768", "max_identifier_length is 63 bytes").
STATES_BOUND = re.compile(
    r"(?<![a-z])(?:max(?:imum|imal|size)?|min(?:imum|imal|size)?|largest|highest|greatest|longest|smallest"
    r"|lowest|shortest|fewest|most|least|upper|lower|limit(?:s|ed)?|up\s+to|exceed(?:s|ed|ing)?|range"
    r"|between|cap(?:s|ped)?|bound(?:s|ed)?|ceiling|floor)(?![a-z])", re.IGNORECASE)


def asks_bound(question: str) -> bool:
    """The sentence of ``question`` that asks (its last, up to the question mark) asks for a bound
    of a value, not a default (``ASKS_BOUND``)."""
    asking = SENTENCE_END.split(question.strip())[-1]
    return bool(ASKS_BOUND.search(asking)) and not ASKS_DEFAULT.search(asking)


def unbounded_values(answer: str, question: str, hits: list[Hit]) -> list[str]:
    """The values an answer gives for a question that asks for a bound (``asks_bound``) when every
    sentence of the sources that holds one of them, in digits or words, states no bound of any
    kind (``STATES_BOUND``): the value is then another attribute of the same thing, most often its
    default ("The default is typically 100 connections" for the largest value max_connections may
    take). Empty when the question asks for no bound, the answer gives no value, a bound sentence
    holds one of them, or no sentence holds any (``invented_numbers`` judges those)."""
    stated = values(answer) - values(question)
    if not stated or not asks_bound(question):
        return []
    holding = [sentence for hit in hits for sentence in SENTENCE_END.split(hit.text)
               if stated & values(sentence, spelled=True)]
    if not holding or any(STATES_BOUND.search(sentence) for sentence in holding):
        return []
    return sorted(stated)


# A question that asks for a quantity: what asks for a number (``ASKS_FOR_NUMBER``), and also how
# often or how large something is, a size, level or interval it names, or the most or least of
# something ("What is the most parallel workers a VACUUM can get?"). Its answer is a number, where
# "What is the default value of notes.rewriteMode?" may be answered with a word.
ASKS_FOR_QUANTITY = re.compile(
    ASKS_FOR_NUMBER.pattern + r"|\bhow\s+(?:often|large|big|high|low|old)\b"
    r"|\b(?:which|what)\s+(?:[\w-]+\s+)?(?:version|year|size|limit|level|interval|timeout|port|number"
    r"|amount|age)s?\b"
    r"|\bwhat\s+is\s+the\s+(?:\w+\s+)?(?:most|least|max(?:imum)?|min(?:imum)?|largest|smallest|highest|lowest)\b",
    re.IGNORECASE)
# The name of a setting or a qualified name: words joined by underscores ("autovacuum_naptime")
# or dots ("gc.auto"), each dotted part two characters or more, so "e.g." is none.
SETTING_NAME = re.compile(
    r"(?<![\w.$/-])(?:[a-z][a-z0-9]*(?:_[a-z0-9]+)+|[a-z][a-z0-9_]+(?:\.[a-z_]\w+)+)(?![\w-])", re.IGNORECASE)
# Configuration and data files, which Python's table of file types does not know ("postgresql.conf",
# "pyproject.toml"): where an answer says a setting is set, not a setting.
SETTINGS_FILE = re.compile(r"\.(?:conf|cfg|ini|toml|ya?ml|env|properties|lock|db|sqlite3?)$", re.IGNORECASE)


def named_instead_of_value(answer: str, question: str) -> str | None:
    """The setting an answer names where the question asks for a quantity, the quantity being
    that setting's value ("every autovacuum_naptime seconds" for "How often, by default, ...?"):
    the first name of the answer (``SETTING_NAME``) that the question does not give and that
    names no file (``names_file``, ``SETTINGS_FILE``). None when the question asks for no
    quantity (``ASKS_FOR_QUANTITY``) or the answer states a number of its own, in digits or words."""
    if not ASKS_FOR_QUANTITY.search(question) or values(answer, spelled=True) - values(question, spelled=True):
        return None
    asked = question.lower()
    return next((name for name in SETTING_NAME.findall(answer)
                 if name.lower() not in asked and not names_file(name) and not SETTINGS_FILE.search(name)), None)


# Why a reply is not an answer. The first three are read again: the model answered nothing.
FOUND_NO_ANSWER = "the model found no answer in the sources"
NO_NUMBER = "the answer gives no number, and the question asks for one"
PASTED = "the answer pastes a source block instead of answering"
RESTATED = "the model only restated the question"


def reply_problem(reply: str, question: str, hits: list[Hit], common: frozenset[str] = frozenset()) -> str | None:
    """Why a model's reply cannot stand as an answer, whichever model wrote it (the generator,
    a second reading, the teacher), or None: it says the sources do not answer, only restates
    the question, pastes a source block, gives no number for a question that asks for one,
    states a number no source holds, or answers a question about a bound with a value the sources
    give only as another attribute (``unbounded_values``)."""
    if is_refusal(reply, question):
        return FOUND_NO_ANSWER
    if restates(reply, question, common):
        return RESTATED
    if pastes_heading(reply, hits):
        return PASTED
    if gives_no_number(reply, question):
        return NO_NUMBER
    if invented := invented_numbers(reply, question, hits):
        return f"the answer states {', '.join(invented)}, which no source contains"
    if unbounded := unbounded_values(reply, question, hits):
        return (f"the question asks for a bound, and no source gives {', '.join(unbounded)} as one "
                f"(only as another value)")
    return None


class Unsure(NamedTuple):
    """A number of a reply that the model gave with little confidence."""

    value: str
    probability: float
    """The probability of its first token."""
    start: int
    end: int
    """Where it stands in the reply, as written."""


def unsure_values(reply: str, question: str, token_probabilities: list[tuple[int, int, float]],
                  threshold: float) -> list[Unsure]:
    """The numbers of ``reply`` (the model's text as generated) that the question does not hold
    and whose first token the model gave with a probability under ``threshold``. ``token_probabilities``
    are (offset, length, probability) of its tokens. A value read from a
    source comes with a probability near 1; one chosen for a setting the sources do not
    describe is often a guess between candidates."""
    asked = numbers(question)
    text = LIST_MARKER.sub(lambda m: " " * len(m.group()), reply)
    unsure = []
    for match in NUMBER.finditer(text):
        value = match.group().replace(",", "")
        start = match.start()
        probability = at(token_probabilities, start)
        if value not in asked and probability is not None and probability < threshold:
            unsure.append(Unsure(value, probability, start, match.end()))
    return unsure


def at(token_probabilities: list[tuple[int, int, float]], offset: int) -> float | None:
    """The probability of the token that holds the character at ``offset``, when one does."""
    return next((p for start, length, p in token_probabilities if start <= offset < start + length), None)


def least_sure_word(reply: str, question: str, token_probabilities: list[tuple[int, int, float]],
                    common: frozenset[str] = frozenset()) -> tuple[str, float] | None:
    """The word of ``reply`` (the model's text as generated) that adds to the question and whose
    first token the model gave with the least probability, with that probability; None when
    no probabilities were recorded or the reply is empty.

    A reply that adds no word to the question picks one of the things it names (``restates``):
    the choice is made at the token where the options part, often inside a word
    (stash.show|Stat against stash.show|Patch), so each of its words counts by its least sure
    token."""
    added = set(new_words(reply, question, common))
    least = None
    for match in re.finditer(r"\S+", reply):
        word = match.group()
        if added:
            if not added & set(normalise(word).split()):
                continue
            start = match.start() + next((i for i, ch in enumerate(word) if ch.isalnum()), 0)
            probability = at(token_probabilities, start)
        else:
            probability = min((p for start, length, p in token_probabilities
                               if start < match.end() and start + length > match.start()), default=None)
        if probability is not None and (least is None or probability < least[1]):
            least = (word, probability)
    return least


def attribute(answer: str, question: str, hits: list[Hit], common: frozenset[str] = frozenset()) -> list[int]:
    """Numbers (1-based) of the sources that contain what the answer adds to the question: those
    that hold the most of its words, and those that state one of its values (``stated_values``).
    The words alone pick the source that shares the answer's phrasing: "The two default ages are
    30 days and 90 days." shares more words with git-reflog's page than with git-gc's, which
    states both ages."""
    content = new_words(answer, question, common)
    if not content:
        return [1] if hits else []
    overlaps = [sum(w in words for w in content) for words in (set(normalise(h.text).split()) for h in hits)]
    best = max(overlaps, default=0)
    stated = stated_values(answer, question)
    return [n for n, (o, hit) in enumerate(zip(overlaps, hits), start=1)
            if (best and o == best) or states_one_of(hit.text, stated)]


def stated_values(answer: str, question: str) -> set[str]:
    """The values the answer gives that the question does not: its numbers of two digits or more
    (a single digit is in almost every source) and its exact terms (``technical_terms``)."""
    numbers_ = {v for v in values(answer) - values(question) if len(v.replace(".", "")) > 1}
    return numbers_ | (set(technical_terms(answer)) - set(technical_terms(question)))


def states_one_of(text: str, stated: set[str]) -> bool:
    """``text`` states one of ``stated`` (from ``stated_values``): a number in any form ("thirty"
    for 30), a term as written."""
    if not stated:
        return False
    found, lower = values(text, spelled=True), term_text(text)
    return any(v in found if v.replace(".", "").isdigit() else v in lower for v in stated)
