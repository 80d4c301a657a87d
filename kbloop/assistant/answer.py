"""Ask a question: retrieve, build the grounded prompt, stream the answer, list the sources.

``Assistant.stream`` is the one core: it yields answer text as it is generated, a ``Progress``
while the answer is checked, and finally an ``Answer`` with sources, refusal and timings. ``ask`` consumes it for callers that do not stream.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Generator, Iterator

from kbloop.assistant.followup import standalone
from kbloop.assistant.grounding import (FOUND_NO_ANSWER, NO_NUMBER, PASTED, RESTATED, Unsure, attribute,
                                       closest_sentence, keyword_evidence, least_sure_word, mentioned,
                                       named_instead_of_value, new_words, reply_problem, restates,
                                       unmentioned_names, unmentioned_terms, unsure_values)
from kbloop.assistant.verify import Verdict, Verifier
from kbloop.ingest.manifest import Hit
from kbloop.prompt import (NOT_IN_KB, STOP_STRINGS, build_messages, cited_numbers, clean_answer,
                           is_refusal)
from kbloop.text import StopFilter, term_text

# The problems a second reading may solve: the model gave no answer to what was asked.
UNANSWERED = (FOUND_NO_ANSWER, NO_NUMBER, PASTED)
# When the model can only restate the question, though a source holds most of its words.
QUOTE = 'Closest passage in the sources [{n}]: "{sentence}"'
# The question asked of its own when an answer names a setting instead of giving the value asked for.
LOOK_UP = "What is the default value of {name}?"
CITATION = re.compile(r"\[(\d{1,2})\]")


def finish(steps: Generator) -> Any:
    """Run a generator to its end, unshown, and return what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def finish_answer(stream: Iterator) -> "Answer":
    """The ``Answer`` an ``Assistant.stream`` ends with, the rest of it unshown."""
    for item in stream:
        if isinstance(item, Answer):
            return item
    raise RuntimeError("stream ended without an answer")  # unreachable by construction


def joined(found: "Answer", hits: list[Hit], cited: set[int]) -> tuple[str, list["Source"]]:
    """What a looked-up answer adds to an answer with sources ``hits``: its text as a paragraph
    of its own, and its cited sources numbered after ``hits``, its citation marks with them. A
    source the answer already has is not listed twice; its number is added to ``cited``."""
    had = {(h.path, h.text): n for n, h in enumerate(hits, start=1)}
    renumbered: dict[int, int] = {}
    more = []
    for source in (s for s in found.sources if s.cited):
        if (source.path, source.text) in had:
            renumbered[source.n] = had[source.path, source.text]
        else:
            renumbered[source.n] = len(hits) + len(more) + 1
            more.append(replace(source, n=renumbered[source.n]))
        cited.add(renumbered[source.n])
    text = CITATION.sub(lambda mark: f"[{renumbered.get(int(mark[1]), mark[1])}]", found.answer)
    return f"\n\n{text}", more


@dataclass
class Source:
    n: int
    path: str
    location: str
    page: int | None
    section: str | None
    score: float
    cited: bool
    text: str


@dataclass(frozen=True)
class Progress:
    """What the assistant is doing while no text comes: streams show it, and it keeps them alive."""

    stage: str


@dataclass
class Answer:
    question: str
    answer: str
    refused: bool
    refusal_reason: str | None
    sources: list[Source]
    model: str
    adapter: str | None
    timings: dict = field(default_factory=dict)

    def retracts(self, streamed: str) -> bool:
        """The text streamed before this answer was not taken: a refusal replaced it, or a
        second reading replaced the refusal streamed first, and the reader must be shown this
        answer after it."""
        return (self.refused or bool(self.timings.get("read_again"))) and streamed.strip() != self.answer

    def as_dict(self, with_text: bool = False) -> dict:
        data = asdict(self)
        if not with_text:
            for source in data["sources"]:
                source.pop("text")
        return data


FOLLOW_UP = re.compile(
    r"^\s*(and|but|also|so|then|what about|how about)\b|\b(it|its|that|this|they|them|those|these|there|one)\b",
    re.IGNORECASE,
)


def is_follow_up(question: str, history: list[tuple[str, str]] | None) -> bool:
    """The question follows on from the one before it ("and how do I change it?"): it begins
    or refers back like a follow-up, or is three words or fewer."""
    return bool(history) and (bool(FOLLOW_UP.search(question)) or len(question.split()) <= 3)


def fold_query(question: str, history: list[tuple[str, str]] | None) -> str:
    """The retrieval query: a follow-up is read together with the question before it; a
    question that stands on its own is searched alone."""
    return f"{history[-1][0]} {question}" if is_follow_up(question, history) else question


class Assistant:
    def __init__(self, kb, generator=None, verifier: Verifier | None | bool = True,
                 second_checker: Verifier | None = None, corrections: bool = True, judge_reads: bool = True):
        """``verifier`` True takes the knowledge base's (None when KBLOOP_VERIFY_ANSWERS is off);
        None or False answers unchecked. A second reading (KBLOOP_READ_AGAIN) is checked by
        ``second_checker`` (a server passes one for all its requests), else by the verifier, else
        by a judge of this assistant's own, made on the first refusal that needs it. Users'
        corrections are among the sources (KBLOOP_CORRECTIONS_AS_SOURCES) unless ``corrections``
        is False, as in evaluations, which measure what the model knows; for the same reason
        ``judge_reads`` False has the generator, not the judge, read again."""
        self.kb = kb
        self.corrections = corrections and kb.settings.corrections_as_sources
        self.judge_reads = judge_reads
        self._generator = generator
        self.verifier = kb.verifier if verifier is True else verifier or None
        self._second_checker = second_checker or self.verifier

    @property
    def second_checker(self) -> Verifier:
        if self._second_checker is None:
            self._second_checker = Verifier(self.kb.model("judge"))
        return self._second_checker

    @property
    def generator(self):
        if self._generator is None:
            self._generator = self.kb.generator
        return self._generator

    def retrieve(self, question: str, history: list[tuple[str, str]] | None = None) -> list[Hit]:
        """The best chunks for the question; then, for each exact term or quoted name the question
        names that none of them mentions (a question that needs two facts from two places), the
        best chunk that does, searched for that term alone."""
        hits = self.kb.search(fold_query(question, history), self.kb.settings.retrieve_k)
        for term in unmentioned_names(question, hits):
            seen = {h.vector_id for h in hits}
            found = [h for h in self.kb.search(term, 3) if h.vector_id not in seen and mentioned(term, term_text(h.text))]
            hits += found[:1]
        return hits

    def follows_on(self, question: str, history: list[tuple[str, str]] | None) -> bool:
        """The question is read as a follow-up: it looks like one (``is_follow_up``), and the
        sources found for it together with the earlier question are closer to the query than
        those found for it alone. "How many commands does psql keep in its command history?"
        says "its" but names what it asks about; read with an earlier question about COPY it
        finds sources of both, less close than psql's alone, while "And how do I change it?"
        alone finds nothing close."""
        if not is_follow_up(question, history):
            return False
        k = self.kb.settings.retrieve_k
        closest = [max((h.score for h in self.kb.search(query, k)), default=0.0)
                   for query in (fold_query(question, history), question)]
        return closest[0] > closest[1]

    def sources(self, question: str, history: list[tuple[str, str]] | None = None) -> list[Hit]:
        """What the model reads for the question: the retrieved chunks, after the correction of
        a question that asks the same, when a user sent one (``kbloop.assistant.corrections``)."""
        hits = self.retrieve(question, history)
        if self.corrections and (corrected := self.kb.corrections.best(question, self.kb.settings.correction_match)):
            hits.insert(0, corrected)
        return hits

    def follow_up(self, question: str, earlier: str, timings: dict) -> str | None:
        """The follow-up ``question`` rewritten by the judge model to stand without ``earlier``
        (``kbloop.assistant.followup``); None when the rewrite is not accepted."""
        started = time.perf_counter()
        rewrite = standalone(self.second_checker.model, question, earlier)
        timings["rewrite_s"] = round(time.perf_counter() - started, 4)
        if rewrite:
            timings["asked_as"] = rewrite
        return rewrite

    def stream(self, question: str, history: list[tuple[str, str]] | None = None, look_up: bool = True
               ) -> Iterator[str | Progress | Answer]:
        """``look_up`` False: an answer that names a setting for the value asked for is given as
        it is, its setting not looked up (``_look_up``)."""
        started = time.perf_counter()
        timings: dict = {}
        user_question = question  # what the answer is shown under; ``question`` is what is answered
        if not self.follows_on(question, history):
            history = None  # it stands alone: searched as written
        elif self.kb.settings.rewrite_follow_ups:
            yield Progress("reading the follow-up")
            if (rewrite := self.follow_up(question, history[-1][0], timings)) is not None:
                question, history = rewrite, None  # it stands alone now: searched and answered as written
        searching = time.perf_counter()
        hits = self.sources(question, history)
        retrieved = time.perf_counter()
        timings["retrieve_s"] = round(retrieved - searching, 4)
        model, adapter = self.generator.spec, self.generator.adapter

        def answer(text: str, refusal_reason: str | None, cited: list[int], more: list[Source] = ()) -> Answer:
            # an answer of the second reading is the judge model's when it read (KBLOOP_READ_AGAIN_WITH)
            by, with_adapter = (timings["read_again_by"], None) if "read_again_by" in timings else (model, adapter)
            timings["total_s"] = round(time.perf_counter() - started, 4)
            return Answer(user_question, NOT_IN_KB if refusal_reason else text, refusal_reason is not None,
                          refusal_reason, self._sources(hits, cited) + list(more), by,
                          Path(with_adapter).name if with_adapter else None, timings)

        common = self.kb.manifest.common_words()
        reason = self.refuse_before_generating(question, hits, common)
        if reason:
            yield NOT_IN_KB
            yield answer(NOT_IN_KB, reason, [])
            return

        stats: dict = {"prompt_tokens": 0, "completion_tokens": 0}
        first_token: list[float] = []
        # History chose the sources (fold_query); the model sees this question alone, so that
        # nothing of an earlier answer is carried into this one.
        text = yield from self._reply(build_messages(question, hits), stats, first_token, question, common)
        if restates(text, question, common):  # held back, unshown
            text = self._ask_again(question, hits, stats, first_token, timings, common)
            yield text or NOT_IN_KB
        done = time.perf_counter()
        first = first_token[0] if first_token else None
        tokens = stats["completion_tokens"]
        timings.update({
            "first_token_s": round((first or done) - retrieved, 4),
            "generate_s": round(done - retrieved, 4),
            "prompt_tokens": stats["prompt_tokens"],
            "completion_tokens": tokens,
            "tokens_per_s": round(max(tokens - 1, 0) / (done - first), 2) if first and done > first else None,
        })
        problem = yield from self._problem(question, text, hits, stats, timings)
        verdict = None
        # An answer that passed the checks but that the generator was unsure of is answered by the
        # judge model instead. A value the check refused stays refused: on an unanswerable question
        # the larger model answers a neighbouring setting's value with confidence (docs/benchmarks.md).
        if problem is None and self._unsure_of_answer(question, text, hits, stats, timings, common):
            yield Progress("reading again")
            unsure = text
            text = self._read_unsure(question, hits, stats, first_token, timings, common)
            for key in ("value_confidence", "support", "support_s"):  # they described the first answer
                timings.pop(key, None)
            problem = yield from self._problem(question, text, hits, stats, timings)
            # One model's "no answer" does not refuse another's answer that passed the checks: where
            # the judge model found none, the generator's answer stands if the judge, checking it
            # against the sources, finds it stated for exactly what was asked.
            if problem in (FOUND_NO_ANSWER, RESTATED):
                yield Progress("checking")
                verdict = self._verify(question, unsure, hits, timings, self.second_checker)
                if verdict is not None and verdict.stands:
                    text, problem = unsure, None
                    for key in ("read_again", "read_again_by"):  # the answer is the generator's, as streamed
                        timings.pop(key, None)
                    timings["judge_found_no_answer"] = True
        # Only a reply that answered nothing is read again. Read again, answers whose value failed a
        # check (no source holds it, or the judge doubts it) became invented answers to unanswerable
        # questions on both development corpora (docs/benchmarks.md). A reply the judge model
        # already wrote (``_read_unsure``) is not read a second time.
        if problem in UNANSWERED and self.kb.settings.read_again and not timings.get("read_again"):
            yield Progress("reading again")
            if again := self._read_again(question, hits, stats, first_token, timings, common):
                (text, verdict), problem = again, None
        if problem:
            yield answer(text or "", problem, [])
            return
        if self.verifier is not None and verdict is None:
            yield Progress("checking")
            verdict = self._verify(question, text, hits, timings)
        if verdict is not None and not verdict.stands:
            yield answer(text, verdict.reason, [])
        else:
            cited = set(cited_numbers(text, len(hits))) | set(attribute(text, question, hits, common))
            if verdict is not None and verdict.passage:
                cited.add(verdict.passage)
            more: list[Source] = []
            if look_up and (name := named_instead_of_value(text, question)):
                yield Progress(f"looking up {name}")
                if found := self._look_up(name, timings):
                    added, more = joined(found, hits, cited)
                    text += added
                    yield added
            yield answer(text, None, sorted(cited), more)

    def _look_up(self, name: str, timings: dict) -> Answer | None:
        """The answer to the default value of ``name`` (``LOOK_UP``), asked as a question of its
        own: retrieved, answered and checked like any, its setting not looked up again. None when
        it is refused. A question that asks for a value, answered with the setting that holds
        it, needs a second fact the first sources rarely hold ("every autovacuum_naptime
        seconds" for how often the launcher starts a worker)."""
        started = time.perf_counter()
        asked = LOOK_UP.format(name=name)
        found = finish_answer(self.stream(asked, look_up=False))
        timings["looked_up"] = {"asked": asked, "refused": found.refused,
                                "seconds": round(time.perf_counter() - started, 4)}
        return None if found.refused else found

    def _problem(self, question: str, text: str | None, hits: list[Hit], stats: dict,
                 timings: dict) -> Generator[Progress, None, str | None]:
        """Why the reply cannot be shown as the answer, or None: a problem of any model's reply
        (``reply_problem``), or a value the model was unsure of that the judge doubts.
        Yields the progress of that last check."""
        if text is None:
            return RESTATED
        if problem := reply_problem(text, question, hits):
            return problem
        if unsure := self._unsure_values(question, text, stats):
            yield Progress("checking")
            return self._doubt(question, text, hits, unsure, stats, timings)
        return None

    def _unsure_of_answer(self, question: str, text: str | None, hits: list[Hit], stats: dict, timings: dict,
                          common: frozenset[str]) -> bool:
        """The generator answered, but wrote a word that its answer adds to the question with a
        probability under KBLOOP_ANSWER_CONFIDENCE: a guess among candidates, not a word read off a
        source. The word and its probability are kept in ``timings`` for every answer that passed
        the checks of ``_problem``."""
        written = self._as_written(text, stats)
        if written is None or reply_problem(text, question, hits, common):
            return False
        if "read_again_by" in timings:  # the judge wrote it, asked again after a restated question
            return False
        reply, probabilities = written
        least = least_sure_word(reply, question, probabilities, common)
        if least is None:
            return False
        timings["least_sure_word"], timings["word_confidence"] = least[0], round(least[1], 4)
        threshold = self.kb.settings.answer_confidence
        return bool(threshold) and least[1] < threshold and self._reader() is not self.generator

    def _read_unsure(self, question: str, hits: list[Hit], stats: dict, first_token: list[float], timings: dict,
                     common: frozenset[str]) -> str | None:
        """The judge model's reply to the same prompt, which replaces an answer the generator was
        unsure of (``_unsure_of_answer``) and goes through every check of a first answer; it may say
        that the sources hold no answer. None when it only restated the question."""
        timings["read_again"] = timings["reread_unsure"] = True
        started = time.perf_counter()
        reader = self._reader()
        again = finish(self._reply(build_messages(question, hits), stats, first_token, question, common, reader))
        timings["read_again_by"] = reader.spec
        timings["read_again_s"] = round(time.perf_counter() - started, 4)
        return None if restates(again, question, common) else again

    def _read_again(self, question: str, hits: list[Hit], stats: dict, first_token: list[float], timings: dict,
                    common: frozenset[str]) -> tuple[str, Verdict] | None:
        """The answer of a second reading, after a reply that said the sources do not answer
        although they passed the relevance checks: the judge model (or the generator again,
        KBLOOP_READ_AGAIN_WITH), not offered the refusal, answers, and the answer and the judge's
        verdict on it are returned only when it is an answer (not a refusal, not the question
        restated, no pasted source block, no invented number) that the judge finds stated for
        exactly what was asked.
        None keeps the refusal."""
        timings["read_again"] = True
        started = time.perf_counter()
        reader = self._reader()
        again = finish(self._reply(build_messages(question, hits, may_refuse=False), stats, first_token,
                                   question, common, reader))
        verdict = None
        if again and reply_problem(again, question, hits, common) is None:
            verdict = self._verify(question, again, hits, timings, self.second_checker)
        timings["read_again_s"] = round(time.perf_counter() - started, 4)
        if verdict is None or not verdict.stands:
            return None
        if reader is not self.generator:
            timings["read_again_by"] = reader.spec
        return again, verdict

    def _reader(self) -> Any:
        """The model that reads the sources again when the generator gave no answer: the judge
        model, unless second readings are off or KBLOOP_READ_AGAIN_WITH says the generator."""
        settings = self.kb.settings
        judge = self.judge_reads and settings.read_again and settings.read_again_with == "judge"
        return self.second_checker.model if judge else self.generator

    def _unsure_values(self, question: str, text: str | None, stats: dict) -> list[Unsure]:
        """The values of the answer the model gave with little confidence (KBLOOP_VALUE_CONFIDENCE),
        when ``text`` is the model's last reply as it wrote it (not a quoted sentence)."""
        threshold = self.kb.settings.value_confidence
        written = self._as_written(text, stats)
        if not threshold or written is None or is_refusal(text, question):
            return []
        reply, probabilities = written
        return unsure_values(reply, question, probabilities, threshold)

    @staticmethod
    def _as_written(text: str | None, stats: dict) -> tuple[str, list[tuple[int, int, float]]] | None:
        """The model's last reply as it wrote it, and the probabilities of its tokens, when ``text``
        is that reply cleaned (not a quoted sentence, not another model's); None otherwise."""
        last = stats.get("last_reply")
        return (last[1], last[2]) if text and last is not None and last[0] == text else None

    def _doubt(self, question: str, text: str, hits: list[Hit], unsure: list[Unsure], stats: dict,
               timings: dict) -> str | None:
        """Why an answer with a value the model was unsure of is refused: the judge, reading the
        sources, would hardly write that value there itself (KBLOOP_VALUE_SUPPORT). None lets it
        stand, also when the judge gave no answer."""
        started = time.perf_counter()
        doubted = min(unsure, key=lambda u: u.probability)
        written = stats["last_reply"][1]
        value = (written[:doubted.start], written[doubted.start:doubted.end])
        support = self.second_checker.support(question, text, hits, value)
        timings.update({"value_confidence": round(doubted.probability, 4), "support": support and round(support, 4),
                        "support_s": round(time.perf_counter() - started, 4)})
        if support is None or support >= self.kb.settings.value_support:
            return None
        return (f"the model was unsure of {doubted.value} (probability {doubted.probability:.2f}) and the check found "
                f"it unlikely that a source states it for what was asked ({support:.2f})")

    def _verify(self, question: str, text: str, hits: list[Hit], timings: dict,
                verifier: Verifier | None = None) -> Verdict | None:
        verifier = verifier or self.verifier
        if verifier is None:
            return None
        started = time.perf_counter()
        verdict = verifier.check(question, text, hits)
        timings["verify_s"] = round(time.perf_counter() - started, 4)
        timings["verdict"] = verdict.verdict if verdict else None
        return verdict

    def _ask_again(self, question: str, hits: list[Hit], stats: dict, first_token: list[float],
                   timings: dict, common: frozenset[str]) -> str | None:
        """The answer when the first reply only restated the question: the reply to asking once
        more, told not to, by the model that reads again (KBLOOP_READ_AGAIN_WITH); failing
        that, the sentence of the sources closest to the question; the refusal, or None, when no
        sentence is close. The answer goes through every check of a first answer."""
        timings["asked_again"] = True
        reader = self._reader()
        again = finish(self._reply(build_messages(question, hits, again=True), stats, first_token,
                                   question, common, reader))
        if not restates(again, question, common) and not is_refusal(again, question):
            if reader is not self.generator:
                timings["read_again_by"] = reader.spec
            return again
        if closest := closest_sentence(question, hits, common=common):
            timings["quoted"] = True
            return QUOTE.format(n=closest[0], sentence=closest[1])
        return again if is_refusal(again, question) else None

    def _reply(self, messages: list[dict], stats: dict, first_token: list[float],
               question: str | None = None, common: frozenset[str] = frozenset(),
               model: Any = None) -> Generator[str, None, str]:
        """Stream the reply of ``model`` (the generator unless given) and return it cleaned. Given
        the question, text that so far adds nothing to it is held back, and a reply that only
        restates it is not shown."""
        call: dict = {}
        shown, held = StopFilter(STOP_STRINGS), ""
        holding = question is not None
        for piece in (model or self.generator).stream(messages, stop=STOP_STRINGS,
                                                      max_new_tokens=self.kb.settings.max_new_tokens, stats=call):
            if not first_token:
                first_token.append(time.perf_counter())
            text = shown.feed(piece)
            if holding:
                held += text
                # the last word may still be growing ("99" of "998"): judge the finished ones
                text, held = (held, "") if new_words(re.sub(r"\S+$", "", held), question, common) else ("", held)
                holding = not text
            if text:
                yield text
            if shown.stopped:
                break
        held += shown.flush()
        stats["prompt_tokens"] += call.get("prompt_tokens") or 0
        stats["completion_tokens"] += call.get("completion_tokens") or 0
        reply = clean_answer(shown.text)
        stats["last_reply"] = (reply, shown.text, call.get("token_probabilities") or [])
        if held and not (holding and restates(reply, question, common)):
            yield held
        return reply

    def refuse_before_generating(self, question: str, hits: list[Hit], common: frozenset[str]) -> str | None:
        """Why the knowledge base cannot answer, when that is clear without asking the model."""
        threshold = self.kb.settings.min_score
        best = max((h.score for h in hits), default=None)
        if best is not None and best < threshold and any(keyword_evidence(question, h, common) for h in hits):
            best = threshold  # the words say it is relevant where the embedding is unsure
        if best is None or best < threshold:
            shown = "none" if best is None else f"{best:.2f}"
            return f"no source is relevant enough (best score {shown} < KBLOOP_MIN_SCORE {threshold})"
        missing = unmentioned_terms(question, hits)
        if missing:
            return f"no source mentions {', '.join(missing)}"
        return None

    def ask(self, question: str, history: list[tuple[str, str]] | None = None) -> Answer:
        return finish_answer(self.stream(question, history))

    @staticmethod
    def _sources(hits: list[Hit], cited: list[int]) -> list[Source]:
        return [Source(n, h.path, h.location, h.metadata.get("page"), h.metadata.get("section"),
                       round(h.score, 4), n in set(cited), h.text)
                for n, h in enumerate(hits, start=1)]
