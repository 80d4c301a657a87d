"""Text helpers shared by the assistant, datasets and evaluation: one copy of each.

Normalisation, stop words, content words, numbers and technical terms live here so that
"the same word" means the same thing to grounding checks, dataset filters and metrics.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

CITATION_MARK = re.compile(r"\[\d{1,2}\]")  # a source mark like [1] is not the number 1
PUNCTUATION = re.compile(r"[`*_\\\"'“”‘’()\[\]{},;:!?]")
SPACE = re.compile(r"\s+")

# Function words: they carry no meaning of their own, so they neither make a reply say more
# than the question nor make a chunk support an answer. Negations ("not", "no") are not among
# them: "X is not enabled" says the opposite of "X is enabled".
STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how if in into is it its of on or than that the their "
    "then there they this to was what when where which who why will with you your".split()
)

# A number as written in prose: 900, 6,700, 2.30.0; not a citation "[2]" nor part of a name
# ("ipv6", "sha256").
NUMBER = re.compile(r"(?<![\w.\[])\d+(?:[.,]\d+)*(?![\w\]])")
LIST_MARKER = re.compile(r"(?m)^\s*\d+[.)]\s")

# Exact technical terms a question can name: an option, a config key or file name, an
# environment variable, a shell variable. Embeddings blur these; keyword evidence does not.
TERM = re.compile(
    r"(?<![\w-])--?[a-z][\w-]+"              # --option, -x
    r"|\b[a-z][\w-]*(?:\.[a-z][\w-]*)+\b"    # config.keys and file.names
    r"|\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b"        # ENV_VARS
    r"|\$[A-Za-z_]\w*",                       # $VARIABLES
    re.IGNORECASE,
)


def normalise(text: str) -> str:
    """Lower case, without citation marks, punctuation or sentence dots, so two texts that say
    the same words compare equal: "The `--timeout` Value!" -> "the --timeout value"."""
    text = CITATION_MARK.sub(" ", unicodedata.normalize("NFKC", text).lower())
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 6,700 -> 6700
    text = PUNCTUATION.sub(" ", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # sentence dots, not decimal points
    return SPACE.sub(" ", text).strip()


def content_words(text: str, stopwords: frozenset[str] = STOPWORDS) -> list[str]:
    """The normalised words of ``text`` that carry meaning, in order: no stop words, no single
    characters."""
    return [w for w in normalise(text).split() if w not in stopwords and len(w) > 1]


def numbers(text: str) -> set[str]:
    """The numbers ``text`` states, "6,700" read as 6700; list markers ("1. ") and citation
    marks ("[2]") are not statements."""
    return {n.replace(",", "") for n in NUMBER.findall(LIST_MARKER.sub(" ", text))}


# Numbers as manuals spell them out ("Default five seconds.", "Twenty rows are sampled."). "one"
# is left out: as often as not it is a pronoun ("the one that ...").
UNITS = "two three four five six seven eight nine".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
SPELLED_VALUES = {"zero": 0, **{w: i for i, w in enumerate(UNITS, start=2)},
                  **{w: i for i, w in enumerate(TEENS, start=10)}, **{w: 10 * i for i, w in enumerate(TENS, start=2)}}
SPELLED = re.compile(r"\b(%s)(?:-(one|%s))?\b" % ("|".join(SPELLED_VALUES), "|".join(UNITS)), re.IGNORECASE)


def value(number: str) -> str:
    """One way to write the value of a number from ``numbers``: "5.0" and "5.00" are 5; a version
    such as "3.10" or "2.30.0" is left as written."""
    whole, dot, fraction = number.partition(".")
    return (whole.lstrip("0") or "0") if dot and not fraction.strip("0") else number


def values(text: str, spelled: bool = False) -> set[str]:
    """The values of the numbers ``text`` states (``value``); with ``spelled``, also those it
    writes as words: "five" is 5 and "twenty-eight" 28. Ask it of sources: an answer's "one" is
    often no number."""
    found = {value(n) for n in numbers(text)}
    if spelled:
        for match in SPELLED.finditer(text):
            tens, unit = match.group(1).lower(), (match.group(2) or "").lower()
            found.add(str(SPELLED_VALUES[tens] + (1 if unit == "one" else SPELLED_VALUES.get(unit, 0))))
    return found


# A qualified name the layout broke after its dot: "sqlite3.⏎⏎connect", where a manual's
# signature was exported as text one element per line. What follows the break starts in lower
# case, as a name does and a sentence does not.
BROKEN_NAME = re.compile(r"(?<=\w)\.[ \t]*\n\s*(?=[a-z_])")


def term_text(text: str) -> str:
    """``text`` as the exact terms it names are looked for in: lower-cased, with the qualified
    names its layout broke over lines joined again."""
    return BROKEN_NAME.sub(".", text).lower()


def technical_terms(text: str) -> list[str]:
    """The exact technical terms ``text`` names, lower-cased, sorted, each once; not an
    abbreviation of single letters ("e.g.", "i.e.", "U.S."), which reads like a config key but
    names nothing a source must mention."""
    terms = {t.lower().rstrip(".") for t in TERM.findall(text)}
    return sorted(t for t in terms if not all(len(part) == 1 for part in t.split(".")))


class StopFilter:
    """Passes streamed text through, holding back what might begin a stop string, and
    reports when one has arrived (the text before it has then all been passed on)."""

    def __init__(self, stops: list[str]):
        self.stops, self.text, self.sent, self.stopped = stops, "", 0, False

    def feed(self, piece: str) -> str:
        self.text += piece
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._send(min(hits))
        held = max((n for s in self.stops for n in range(1, len(s)) if self.text.endswith(s[:n])), default=0)
        return self._send(len(self.text) - held)

    def flush(self) -> str:
        return "" if self.stopped else self._send(len(self.text))

    def _send(self, upto: int) -> str:
        out, self.sent = self.text[self.sent:upto], max(self.sent, upto)
        return out


SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n(?=\s*[-*#|]|\s*\d+[.)]\s)")


def word_stems(text: str, stopwords: frozenset[str] = STOPWORDS) -> set[str]:
    """The content words of ``text``, a plural or third-person "s" dropped ("listens",
    "listen"), so that the same words in another form still count as the same."""
    return {stem(w) for w in content_words(text, stopwords)}


def stem(word: str) -> str:
    """A normalised word without a plural or third-person "s" ("listens" -> "listen")."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def passage(text: str, query: str, limit: int = 240) -> str:
    """The sentences of ``text`` that best match ``query`` (most shared content words; others
    sharing at least half as many, while they fit), in their own order and cut to about
    ``limit`` characters: what a search result shows instead of the chunk's first lines.
    The chunk's start when no sentence shares a word with the query."""
    asked = word_stems(query)
    sentences = [" ".join(s.split()) for s in SENTENCE_BREAK.split(text) if s and s.strip()]
    overlap = [len(asked & word_stems(s)) for s in sentences]
    best = max(overlap, default=0)
    chosen: list[int] = []
    if best:
        size = 0
        for i in sorted(range(len(sentences)), key=lambda i: -overlap[i]):
            if chosen and (2 * overlap[i] < best or size + len(sentences[i]) > limit):
                break
            chosen.append(i)
            size += len(sentences[i]) + 3
    shown = " … ".join(sentences[i] for i in sorted(chosen or range(min(1, len(sentences)))))
    return shown if len(shown) <= limit else shown[:limit - 1].rsplit(" ", 1)[0] + " …"


def _not_finite(text: str) -> float:
    raise ValueError(f"{text} is not a finite number")


def _finite(text: str) -> float:
    number = float(text)
    return number if math.isfinite(number) else _not_finite(text)


def loads_finite(text: str | bytes) -> Any:
    """JSON whose numbers are all finite: Python's reader takes NaN, Infinity and 1e999 (as
    infinity), which no JSON reply can carry back, so a value stored with one breaks every later
    listing of it."""
    return json.loads(text, parse_constant=_not_finite, parse_float=_finite)
