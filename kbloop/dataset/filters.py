"""Which generated pairs are kept: answers the chunk supports, sane lengths, no near-duplicates."""

from __future__ import annotations

from kbloop.text import content_words, normalise, numbers

MIN_QUESTION_WORDS, MAX_QUESTION_WORDS = 3, 40
MAX_ANSWER_WORDS = 80
SUPPORT_THRESHOLD = 0.8
NEAR_DUPLICATE = 0.8


def supported(answer: str, text: str) -> bool:
    """The chunk states the answer: it holds the answer's words (numbers exactly), or its
    normalised form outright. A teacher's paraphrase of something the chunk never says fails."""
    norm_answer, norm_text = normalise(answer), normalise(text)
    if not norm_answer:
        return False
    if norm_answer in norm_text:
        return True
    words = content_words(answer)
    if not words or not numbers(answer) <= numbers(text):
        return False
    text_words = set(norm_text.split())
    return sum(w in text_words for w in words) / len(words) >= SUPPORT_THRESHOLD


def length_problem(question: str, answer: str) -> str | None:
    """Why a pair is too short or too long to teach anything, or None."""
    q_words, a_words = len(question.split()), len(answer.split())
    if q_words < MIN_QUESTION_WORDS:
        return "question too short"
    if q_words > MAX_QUESTION_WORDS:
        return "question too long"
    if a_words == 0:
        return "empty answer"
    if a_words > MAX_ANSWER_WORDS:
        return "answer too long"
    return None


def question_key(question: str) -> str:
    return " ".join(normalise(question).split())


class Deduplicator:
    """Drops a question already asked anywhere (same words) or one that nearly repeats another
    question about the same chunk (word-set Jaccard ≥ NEAR_DUPLICATE)."""

    def __init__(self, known: set[str] | None = None):
        self.known = set(known or ())

    def admit(self, question: str, siblings: list[frozenset[str]]) -> bool:
        key = question_key(question)
        if key in self.known:
            return False
        words = frozenset(content_words(question))
        for other in siblings:
            union = words | other
            if union and len(words & other) / len(union) >= NEAR_DUPLICATE:
                return False
        self.known.add(key)
        siblings.append(words)
        return True
