"""The verifier: a second model names the sentence that states the answer and says whether it
is about what was asked; only an answer it confirms is shown."""

from __future__ import annotations

import itertools
import json

import pytest

from fake_ollama import FakeOllama
from kbloop import models
from kbloop.assistant.answer import Assistant, Progress
from kbloop.assistant.grounding import least_sure_word, unsure_values
from kbloop.assistant.verify import Verifier, numbered_sentences, support_sentences
from kbloop.config import Settings
from kbloop.ingest.manifest import Hit
from kbloop.models.jsonout import JsonOutputError
from kbloop.prompt import NOT_IN_KB

GC = [
    Hit(1, 0.7, "git-gc.html", "gc.auto\nWhen there are approximately more than this many loose objects in the "
        "repository, git gc --auto will pack them. The default value is 6700. Setting this to 0 disables "
        "automatic packing.", {}),
    Hit(2, 0.6, "git-gc.html", "gc.autoPackLimit\nWhen there are more than this many packs that are not marked "
        "with *.keep file in the repository, git gc --auto consolidates them into one larger pack. The default "
        "value is 50. Setting this to 0 disables it.", {}),
]


class Scripted:
    """A model whose JSON reply is fixed (None: it gives no valid JSON) and that records what
    it was asked: a judge's verdict here, a teacher's phrasings in test_corrections."""

    spec = "scripted:judge"

    def __init__(self, reply: dict | None):
        self.reply, self.prompts = reply, []

    def complete_json(self, prompt, schema, **kwargs):
        self.prompts.append(prompt)
        if self.reply is None:
            raise JsonOutputError(f"{self.spec} gave no valid JSON")
        return self.reply


def test_the_sentences_are_numbered_across_the_sources():
    sentences = numbered_sentences(GC)
    assert sentences[1] == (1, "The default value is 6700.") and sentences[4] == (2, "The default value is 50.")


def test_a_confirmed_answer_stands_and_cites_the_source_of_its_sentence():
    verdict = Verifier(Scripted({"sentence": 5, "verdict": "stated"})).check(
        "What is the default of gc.autoPackLimit?", "The default is 50.", GC)
    assert verdict.stands and verdict.passage == 2


def test_a_sentence_without_the_answers_value_does_not_confirm_it():
    # The model says "stated" but points at gc.auto's sentences, which do not hold 50.
    verdict = Verifier(Scripted({"sentence": 2, "verdict": "stated"})).check(
        "What is the default value of gc.auto?", "The default value is 50.", GC)
    assert not verdict.stands and verdict.verdict == "not_stated"


def test_an_answer_about_another_subject_is_refused_with_the_reason(sample_home, open_kb):
    question = "Which port does Harbor listen on by default?"
    with FakeOllama(models=("qwen3:4b", "judge:1b"),
                    reply=lambda body: json.dumps({"sentence": 1, "verdict": "other_subject"})
                    if body["model"] == "judge:1b" else "Harbor listens on TCP port 8735 by default.") as server:
        kb = open_kb(sample_home)
        kb.ingest()
        settings = Settings(ollama_url=server.url)
        gen = models.create("generator", "ollama:qwen3:4b", settings)
        judge = models.create("judge", "ollama:judge:1b", settings)
        final = Assistant(kb, gen, Verifier(judge)).ask(question)
        assert final.refused and final.answer == NOT_IN_KB
        assert final.refusal_reason == "the check found the answer stated for something other than what was asked"
        assert final.timings["verdict"] == "other_subject"
        unchecked = Assistant(kb, gen, None).ask(question)
    assert not unchecked.refused and "8735" in unchecked.answer


def test_a_bound_asked_for_and_answered_with_the_default_is_refused_with_the_reason(sample_home, open_kb):
    # The sample manual gives Harbor's port only as a default; a model asked for the highest
    # port answers with it, and no check that reads the value alone can tell.
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: "The highest port Harbor accepts is 8735.") as server:
        kb = open_kb(sample_home)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        assistant = Assistant(kb, gen, None)
        bound = assistant.ask("What is the highest port number Harbor can be told to listen on?")
        default = assistant.ask("Which port does Harbor listen on by default?")
    assert bound.refused and bound.answer == NOT_IN_KB
    assert bound.refusal_reason.startswith("the question asks for a bound, and no source gives 8735 as one")
    assert not default.refused and "8735" in default.answer


def test_a_verifier_that_fails_leaves_the_answer_unchecked(sample_home, open_kb):
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: "Harbor listens on TCP port 8735 by default.") as server:
        kb = open_kb(sample_home)
        kb.ingest()
        settings = Settings(ollama_url=server.url)
        gen = models.create("generator", "ollama:qwen3:4b", settings)
        missing = models.create("judge", "ollama:no-such-judge", settings.model_copy(
            update={"ollama_url": "http://127.0.0.1:9"}))
        final = Assistant(kb, gen, Verifier(missing)).ask("Which port does Harbor listen on by default?")
    assert not final.refused and final.timings["verdict"] is None


@pytest.fixture(scope="module")
def packaged_judge(model_cache):
    return Verifier(models.create("judge", "local:qwen2.5-1.5b", Settings(model_cache=str(model_cache))))


@pytest.mark.slow
def test_the_packaged_judge_rejects_a_neighbouring_settings_value(packaged_judge):
    assert packaged_judge.check("What is the default value of gc.auto?",
                                "The default value of gc.auto is 6700.", GC).stands
    assert not packaged_judge.check("What is the default value of gc.autoDetach?",
                                    "The default value is 6700.", GC).stands
    assert not packaged_judge.check("What is the default value of gc.auto?", "The default value is 50.", GC).stands


def test_the_stream_says_it_is_checking_and_the_page_can_show_it(tmp_path, embedder):
    import httpx
    from test_server import make_home, serving

    def reply(body):
        if body["model"] != "judge:1b":
            return "Harbor listens on TCP port 8735 by default."
        listed = body["messages"][-1]["content"].splitlines()
        number = next(int(line.split(".")[0]) for line in listed if "8735" in line and line[:1].isdigit())
        return json.dumps({"sentence": number, "verdict": "stated"})

    home = make_home(tmp_path / "kb", embedder)
    with FakeOllama(models=("qwen3:4b", "judge:1b"), reply=reply) as server:
        generator = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        with serving(home, embedder, generator, verify_answers=True, judge="ollama:judge:1b",
                     ollama_url=server.url) as (url, _):
            request = {"model": "kbloop", "stream": True,
                       "messages": [{"role": "user", "content": "Which port does Harbor listen on by default?"}]}
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=request, timeout=60) as response:
                events = [json.loads(line[6:]) for line in response.iter_lines()
                          if line.startswith("data: ") and line != "data: [DONE]"]
    stages = [e["kbloop_progress"] for e in events if "kbloop_progress" in e]
    final = events[-1]["kbloop"]
    assert stages == ["checking"] and final["timings"]["verdict"] == "stated" and not final["refused"]
    texts = [e["choices"][0]["delta"].get("content") for e in events if e.get("choices")]
    assert "8735" in "".join(t for t in texts if t)


# -- the second reading of a refusal --------------------------------------------------------

QUESTION = "Which port does Harbor listen on by default?"


def judge_naming(value: str, verdict: str):
    """A judge reply that names the sentence holding ``value`` with ``verdict``."""
    def reply(body):
        listed = body["messages"][-1]["content"].splitlines()
        number = next(int(line.split(".")[0]) for line in listed if value in line and line[:1].isdigit())
        return json.dumps({"sentence": number, "verdict": verdict})
    return reply


@pytest.mark.parametrize("reader", ["judge", "generator"])
@pytest.mark.parametrize("second,verdict,stands,judged", [
    ("Harbor listens on TCP port 8735 by default.", "stated", True, True),
    ("Harbor listens on TCP port 8735 by default.", "other_subject", False, True),
    ("Harbor listens on port 9999.", "stated", False, False),  # an invented number: no judge needed
    ("I don't know.", "stated", False, False),
])
def test_a_refusal_is_read_again_and_the_answer_stands_only_when_the_judge_confirms_it(
        sample_home, open_kb, second, verdict, stands, judged, reader):
    replies = iter(["I don't know.", second])
    judge = judge_naming("8735", verdict)
    with FakeOllama(models=("qwen3:4b", "judge:1b"),
                    reply=lambda body: judge(body) if "JSON" in body["messages"][0]["content"]
                    else next(replies)) as server:
        kb = open_kb(sample_home, read_again=True, read_again_with=reader, judge="ollama:judge:1b",
                     ollama_url=server.url)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        *pieces, final = Assistant(kb, gen).stream(QUESTION)
        chats = [body for path, body in server.requests if path == "/api/chat"]
    answers = [body for body in chats if "JSON" not in body["messages"][0]["content"]]
    assert [body["model"] for body in answers] == ["qwen3:4b", "judge:1b" if reader == "judge" else "qwen3:4b"]
    assert len(chats) - len(answers) == int(judged)
    # The second time the model is not offered the refusal.
    assert "I don't know" in answers[0]["messages"][0]["content"]
    assert "I don't know" not in answers[1]["messages"][0]["content"]
    assert Progress("reading again") in pieces and final.timings["read_again"] is True
    streamed = "".join(p for p in pieces if isinstance(p, str))
    assert streamed == "I don't know." and final.retracts(streamed)
    if stands:
        assert not final.refused and final.answer == second and final.timings["verdict"] == "stated"
        assert [s.path for s in final.sources if s.cited] == ["getting-started.md"]
        # the answer is the model's that wrote it
        assert final.model == ("ollama:judge:1b" if reader == "judge" else "ollama:qwen3:4b")
    else:
        assert final.refused and final.answer == NOT_IN_KB
        assert final.refusal_reason == "the model found no answer in the sources"


def read_twice(sample_home, open_kb, question: str, first: str, second: str, value: str):
    """Ask ``question`` of a generator that replies ``first`` then ``second``, with a judge
    that finds ``value`` stated: the stream's pieces, the final answer, and the models that
    answered."""
    replies = iter([first, second])
    judge = judge_naming(value, "stated")
    with FakeOllama(models=("qwen3:4b", "judge:1b"),
                    reply=lambda body: judge(body) if "JSON" in body["messages"][0]["content"]
                    else next(replies)) as server:
        kb = open_kb(sample_home, read_again=True, judge="ollama:judge:1b", ollama_url=server.url)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        *pieces, final = Assistant(kb, gen).stream(question)
        asked = [body["model"] for path, body in server.requests
                 if path == "/api/chat" and "JSON" not in body["messages"][0]["content"]]
    return pieces, final, asked


@pytest.mark.parametrize("second, stands", [
    ("An invitation expires after 72 hours.", True),
    ("An invitation expires after a while.", False),  # still no number: the first reply is refused
])
def test_a_reply_without_the_number_asked_for_is_read_again(sample_home, open_kb, second, stands):
    question = "How long does a Harbor invitation last before it expires?"
    pieces, final, asked = read_twice(sample_home, open_kb, question,
                                      "A Harbor invitation expires after some time.", second, "72")
    assert asked == ["qwen3:4b", "judge:1b"] and Progress("reading again") in pieces
    if stands:
        assert not final.refused and final.answer == second and final.model == "ollama:judge:1b"
    else:
        assert final.refused and final.answer == NOT_IN_KB
        assert final.refusal_reason == "the answer gives no number, and the question asks for one"


@pytest.mark.parametrize("second, stands", [
    ("Harbor listens on TCP port 8735 by default.", True),
    ("[1] getting-started.md\nHarbor listens on TCP port 8735.", False),  # pasted again: refused
])
def test_a_reply_that_pastes_a_source_block_is_read_again(sample_home, open_kb, second, stands):
    pieces, final, asked = read_twice(sample_home, open_kb, QUESTION,
                                      "The port is:\n\n[1] getting-started.md\nHarbor listens", second, "8735")
    assert asked == ["qwen3:4b", "judge:1b"] and Progress("reading again") in pieces
    assert final.timings["read_again"] is True and final.retracts("".join(p for p in pieces if isinstance(p, str)))
    if stands:
        assert not final.refused and final.answer == second
    else:
        assert final.refused and final.answer == NOT_IN_KB
        assert final.refusal_reason == "the answer pastes a source block instead of answering"


def test_an_answer_whose_number_no_source_holds_is_refused_without_a_second_reading(sample_home, open_kb):
    with FakeOllama(models=("qwen3:4b", "judge:1b"), reply=lambda body: "Harbor listens on port 9999.") as server:
        kb = open_kb(sample_home, read_again=True, judge="ollama:judge:1b", ollama_url=server.url)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        final = Assistant(kb, gen).ask(QUESTION)
        asked = [body["model"] for path, body in server.requests if path == "/api/chat"]
    assert asked == ["qwen3:4b"] and "read_again" not in final.timings
    assert final.refused and final.refusal_reason == "the answer states 9999, which no source contains"


def test_without_the_second_reading_a_refusal_is_final(sample_home, open_kb):
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: "I don't know.") as server:
        kb = open_kb(sample_home, read_again=False)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        final = Assistant(kb, gen).ask(QUESTION)
        assert len([1 for path, _ in server.requests if path == "/api/chat"]) == 1
    assert final.refused and "read_again" not in final.timings


def test_a_streamed_refusal_that_the_second_reading_answers_is_replaced(tmp_path, embedder):
    import httpx
    from test_server import make_home, serving

    replies = itertools.cycle(["I don't know.", "Harbor listens on TCP port 8735 by default."])
    judge = judge_naming("8735", "stated")
    home = make_home(tmp_path / "kb", embedder)
    with FakeOllama(models=("qwen3:4b", "judge:1b"),
                    reply=lambda body: judge(body) if body["model"] == "judge:1b" else next(replies)) as server:
        generator = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        with serving(home, embedder, generator, read_again=True, read_again_with="generator", judge="ollama:judge:1b",
                     ollama_url=server.url) as (url, _):
            request = {"model": "kbloop", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=request, timeout=60) as response:
                events = [json.loads(line[6:]) for line in response.iter_lines()
                          if line.startswith("data: ") and line != "data: [DONE]"]
            whole = httpx.post(f"{url}/v1/chat/completions", json=request | {"stream": False}, timeout=60).json()
    assert [e["kbloop_progress"] for e in events if "kbloop_progress" in e] == ["reading again"]
    retraction = [e for e in events if e.get("kbloop_retraction")]
    assert len(retraction) == 1 and "8735" in retraction[0]["choices"][0]["delta"]["content"]
    assert not events[-1]["kbloop"]["refused"]
    # Not streamed, only the final answer appears.
    assert whole["choices"][0]["message"]["content"] == "Harbor listens on TCP port 8735 by default."


# -- values the model was unsure of -------------------------------------------------------------

def test_only_the_answers_own_values_given_with_little_confidence_are_unsure():
    reply = "1. The limit is 50 [2].\n2. It was 6700 in version 2.3, see [1]."
    at = {value: reply.index(value) for value in ("50", "6700", "2.3")}
    probabilities = [(0, 1, 0.2), (at["50"], 2, 0.45), (at["6700"], 2, 0.99), (at["2.3"], 1, 0.3),
                     (reply.index("[2]") + 1, 1, 0.1), (reply.index("[1]") + 1, 1, 0.1)]
    # the list markers and citation marks are not values; 2.3 is in the question; 6700 was read with confidence
    [unsure] = unsure_values(reply, "What did version 2.3 set?", probabilities, 0.6)
    assert (unsure.value, unsure.probability, reply[unsure.start:unsure.end]) == ("50", 0.45, "50")
    assert unsure_values(reply, "What did version 2.3 set?", probabilities, 0.4) == []


def test_the_least_sure_word_is_one_the_answer_adds_to_the_question():
    reply = "The default value of gc.auto is `6700`, see [1]."
    at = {word: reply.index(word) for word in ("The", "default", "gc.auto", "6700", "see")}
    probabilities = [(at["The"], 3, 0.1), (at["default"] - 1, 8, 0.2), (at["gc.auto"] - 1, 3, 0.3),
                     (at["6700"], 2, 0.6), (at["see"] - 1, 4, 0.9)]
    # "The" and "default" add nothing, gc.auto is the question's own: 6700 (from its backtick on) is least sure
    assert least_sure_word(reply, "What is the default value of gc.auto?", probabilities) == ("`6700`,", 0.6)
    assert least_sure_word(reply, "What is the default value of gc.auto?", []) is None


def test_an_answer_that_picks_one_of_the_questions_options_counts_by_its_least_sure_token():
    question = "Which of stash.showPatch and stash.showStat defaults to true?"
    reply = "stash.showPatch defaults to true."
    at = reply.index("Patch")
    # stash . show | Patch (the choice, 0.45) | defaults | to | true .
    probabilities = [(0, 5, 0.99), (5, 1, 0.99), (6, 4, 0.99), (at, 5, 0.45), (at + 5, 9, 0.95),
                     (at + 14, 3, 0.98), (at + 17, 5, 0.8), (at + 22, 1, 0.99)]
    assert least_sure_word(reply, question, probabilities) == ("stash.showPatch", 0.45)
    # an answer that adds a word still counts by the first token of the words it adds
    added = "stash.showPatch defaults to false; stash.showStat defaults to true."
    probabilities = [(added.index("false"), 5, 0.9), (added.index("Patch"), 5, 0.1)]
    assert least_sure_word(added, question, probabilities) == ("false;", 0.9)


def test_the_judge_is_shown_the_sentences_where_the_answer_would_be_stated():
    sentences = support_sentences("What is the default of gc.autoPackLimit?", "The default is 50.", GC, count=4)
    # the sentence holding the answer's value, after the one before it, which names its setting
    assert sentences[0].startswith("gc.autoPackLimit When") and sentences[0].endswith("The default value is 50.")
    assert len(sentences) == 4 and sentences[0].count("The default value") == 1


def test_a_judge_that_only_says_yes_or_no_gives_a_certain_support(sample_home, open_kb):
    # Ollama gives no probabilities, so the judge says whether the sources state the value
    question = "What is the default of gc.autoPackLimit?"
    with FakeOllama(models=("judge:1b",), reply=lambda body: json.dumps({"answer": "no"})) as server:
        judge = models.create("judge", "ollama:judge:1b", Settings(ollama_url=server.url))
        assert judge.continuation_probability([{"role": "user", "content": question}], "It is ", "6700") is None
        assert Verifier(judge).support(question, "It is 6700.", GC, ("It is ", "6700")) == 0.0
    with FakeOllama(models=("judge:1b",), reply=lambda body: json.dumps({"answer": "yes"})) as server:
        judge = models.create("judge", "ollama:judge:1b", Settings(ollama_url=server.url))
        assert Verifier(judge).support(question, "It is 50.", GC, ("It is ", "50")) == 1.0
    missing = models.create("judge", "ollama:judge:1b", Settings(ollama_url="http://127.0.0.1:9"))
    assert Verifier(missing).support(question, "It is 50.", GC, ("It is ", "50")) is None


@pytest.mark.parametrize("verdict", ["yes", "no"])
def test_a_value_the_model_was_unsure_of_stands_only_when_the_judge_supports_it(
        sample_home, open_kb, generator, verdict):
    # Every value counts as unsure at a confidence threshold of 1, so the real model's answer
    # goes to the judge, which says yes or no.
    kb = open_kb(sample_home, value_confidence=1.0)
    kb.ingest()
    with FakeOllama(models=("judge:1b",), reply=lambda body: json.dumps({"answer": verdict})) as server:
        judge = Verifier(models.create("judge", "ollama:judge:1b", Settings(ollama_url=server.url)))
        *pieces, final = Assistant(kb, generator, None, second_checker=judge, corrections=False).stream(
            "Which TCP port does Harbor listen on by default?")
    assert Progress("checking") in pieces
    assert 0.0 < final.timings["value_confidence"] < 1.0 and final.timings["support"] == (verdict == "yes")
    if verdict == "yes":
        assert not final.refused
    else:
        assert final.refused and final.answer == NOT_IN_KB and "unsure of" in final.refusal_reason


def test_a_value_read_with_confidence_is_not_sent_to_the_judge(sample_home, open_kb, generator):
    kb = open_kb(sample_home, value_confidence=0.0)  # the check is off
    kb.ingest()
    missing = Verifier(models.create("judge", "ollama:judge:1b", Settings(ollama_url="http://127.0.0.1:9")))
    final = Assistant(kb, generator, None, second_checker=missing, corrections=False).ask(
        "Which TCP port does Harbor listen on by default?")
    assert "support" not in final.timings


@pytest.mark.slow
def test_the_packaged_judge_doubts_a_neighbouring_settings_value(packaged_judge):
    # The judge reads the sentences and would write the value itself: the value of the setting
    # asked about gets nearly all its probability, the neighbour's almost none, and a setting
    # the sources do not describe gets neither.
    support = {}
    for setting in ("gc.autoPackLimit", "gc.auto", "gc.autoDetach"):
        question = f"What is the default value of {setting}?"
        for value in ("50", "6700"):
            answer = f"The default value of {setting} is {value}."
            support[setting, value] = packaged_judge.support(question, answer, GC, (answer[:-len(value) - 1], value))
    assert min(support["gc.autoPackLimit", "50"], support["gc.auto", "6700"]) > 0.9
    assert max(support["gc.autoPackLimit", "6700"], support["gc.auto", "50"]) < 0.05
    assert max(support["gc.autoDetach", "50"], support["gc.autoDetach", "6700"]) < 0.5


# -- answers the generator was unsure of, read by the judge model ------------------------------

@pytest.mark.parametrize("second", ["Harbor listens on TCP port 8735 by default.", "I don't know."])
def test_an_answer_the_generator_was_unsure_of_is_replaced_by_the_judge_models(
        sample_home, open_kb, generator, second):
    # At a threshold of 1 every answer of the real model counts as unsure, so the judge model
    # answers the same prompt, and its reply goes through the checks of a first answer.
    kb = open_kb(sample_home, answer_confidence=1.0, value_confidence=0.0, read_again=True,
                 read_again_with="judge")
    kb.ingest()
    with FakeOllama(models=("judge:1b",), reply=lambda body: second) as server:
        judge = Verifier(models.create("judge", "ollama:judge:1b", Settings(ollama_url=server.url)))
        *pieces, final = Assistant(kb, generator, None, second_checker=judge, corrections=False).stream(QUESTION)
        chats = [body for path, body in server.requests if path == "/api/chat"]
    # one reading by the judge, given the prompt the generator was given, refusal allowed; after a
    # refusal the judge is asked to check the generator's answer (and asked once more, since it
    # gives no verdict here), so the refusal stands
    readings = [body for body in chats if "JSON" not in body["messages"][0]["content"]]
    assert len(readings) == 1 and "I don't know" in readings[0]["messages"][0]["content"]
    assert len(chats) - len(readings) == (0 if second.startswith("Harbor") else 2)
    assert Progress("reading again") in pieces
    assert final.timings["reread_unsure"] is True and 0.0 < final.timings["word_confidence"] < 1.0
    streamed = "".join(p for p in pieces if isinstance(p, str))
    assert streamed and final.retracts(streamed)
    if second.startswith("Harbor"):
        assert not final.refused and final.answer == second and final.model == "ollama:judge:1b"
    else:
        assert final.refused and final.answer == NOT_IN_KB
        assert final.refusal_reason == "the model found no answer in the sources"


@pytest.mark.parametrize("verdict", ["stated", "other_subject"])
def test_where_the_judge_model_finds_no_answer_it_checks_the_generators(sample_home, open_kb, generator, verdict):
    # The judge model, reading an answer the generator was unsure of, says the sources do not
    # answer. That alone does not refuse: the judge then checks the generator's answer against the
    # sources, and the answer stands when the judge finds it stated for what was asked.
    kb = open_kb(sample_home, answer_confidence=1.0, value_confidence=0.0, read_again=True,
                 read_again_with="judge")
    kb.ingest()
    check = judge_naming("8735", verdict)
    with FakeOllama(models=("judge:1b",), reply=lambda body: check(body) if "JSON" in body["messages"][0]["content"]
                    else "I don't know.") as server:
        judge = Verifier(models.create("judge", "ollama:judge:1b", Settings(ollama_url=server.url)))
        *pieces, final = Assistant(kb, generator, None, second_checker=judge, corrections=False).stream(
            "Which TCP port does Harbor listen on by default?")
        chats = [body for path, body in server.requests if path == "/api/chat"]
    # it read, then checked; the stream said so
    assert ["JSON" in body["messages"][0]["content"] for body in chats] == [False, True]
    assert Progress("reading again") in pieces and Progress("checking") in pieces
    assert final.timings["verdict"] == verdict
    streamed = "".join(p for p in pieces if isinstance(p, str))
    assert "8735" in streamed
    if verdict == "stated":
        assert not final.refused and "8735" in final.answer and final.answer in streamed
        assert final.timings["judge_found_no_answer"] is True and not final.retracts(streamed)
        assert final.model == generator.spec and "read_again_by" not in final.timings
        assert [s.path for s in final.sources if s.cited] == ["getting-started.md"]
    else:
        assert final.refused and final.answer == NOT_IN_KB and final.retracts(streamed)
        assert final.refusal_reason == "the model found no answer in the sources"
        assert "judge_found_no_answer" not in final.timings


def test_an_answer_written_with_confidence_is_not_read_again(sample_home, open_kb, generator):
    kb = open_kb(sample_home, answer_confidence=0.0, value_confidence=0.0)  # the reading is off
    kb.ingest()
    missing = Verifier(models.create("judge", "ollama:judge:1b", Settings(ollama_url="http://127.0.0.1:9")))
    final = Assistant(kb, generator, None, second_checker=missing, corrections=False).ask(QUESTION)
    assert "reread_unsure" not in final.timings and final.timings["word_confidence"] > 0.0


def test_a_value_the_check_refused_is_not_read_again_by_the_judge(sample_home, open_kb, generator):
    # Every word and every value counts as unsure at thresholds of 1. The judge doubts the value,
    # so the answer is refused, and the judge is not asked to answer instead: on an unanswerable
    # question it would give a neighbouring setting's value with confidence.
    kb = open_kb(sample_home, answer_confidence=1.0, value_confidence=1.0, read_again=True, read_again_with="judge")
    kb.ingest()
    with FakeOllama(models=("judge:1b",), reply=lambda body: json.dumps({"answer": "no"})) as server:
        judge = Verifier(models.create("judge", "ollama:judge:1b", Settings(ollama_url=server.url)))
        final = Assistant(kb, generator, None, second_checker=judge, corrections=False).ask(
            "Which TCP port does Harbor listen on by default?")
        chats = [body for path, body in server.requests if path == "/api/chat"]
    assert final.refused and "unsure of" in final.refusal_reason
    assert len(chats) == 1 and "Reply Yes or No" in chats[0]["messages"][-1]["content"]
    assert "reread_unsure" not in final.timings
