"""complete_json (repair, retry, clear failure) and the Ollama chat path over its real HTTP API."""

from __future__ import annotations

import json
import socket

import pytest

from fake_ollama import FakeOllama
from kbloop import models
from kbloop.assistant.answer import NOT_IN_KB, Assistant
from kbloop.config import Settings
from kbloop.errors import BackendUnavailable
from kbloop.models.jsonout import JsonOutputError, parse_json, schema_instructions
from kbloop.prompt import ANSWER_NOT_QUESTION

SCHEMA = {
    "type": "object",
    "required": ["score", "reason"],
    "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}, "reason": {"type": "string"}},
}


@pytest.mark.parametrize("text", [
    '{"score": 4, "reason": "ok"}',
    '```json\n{"score": 4, "reason": "ok"}\n```',
    'Sure! Here is the JSON: {"score": 4, "reason": "ok",} Hope this helps.',
    '{"score": 4, "reason": "ok",\n}',
    '{"score": 4, "reason": "ok',  # cut off by the token limit inside the last string
])
def test_parse_json_repairs_fences_prose_and_trailing_commas(text):
    assert parse_json(text, SCHEMA) == {"score": 4, "reason": "ok"}


@pytest.mark.parametrize("text,problem", [
    ("I think it is a 4.", "no JSON object"),
    ('{"score": 4}', "missing required key 'reason'"),
    ('{"score": 9, "reason": "x"}', r"\$.score should be <= 5"),
    ('{"score": "four", "reason": "x"}', r"\$.score should be integer"),
    ('{"score": 4, "reason": }', "not valid JSON"),
    ('{"reason": "cut off before the sco', "missing required key 'score'"),
])
def test_parse_json_names_what_is_wrong(text, problem):
    with pytest.raises(JsonOutputError, match=problem):
        parse_json(text, SCHEMA)


def ollama_settings(server, **kw):
    return Settings(ollama_url=server.url, **kw)


def test_json_instructions_show_the_shape_to_fill_in_not_the_schema():
    # Local models shown a JSON schema echo it back ({"properties": ...}); a shape they fill in.
    schema = {"type": "object", "required": ["score", "winner", "reason", "tags"],
              "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5},
                             "winner": {"type": "string", "enum": ["A", "B", "tie"]},
                             "reason": {"type": "string"},
                             "tags": {"type": "array", "items": {"type": "string"}}}}
    text = schema_instructions(schema)
    assert text.endswith('{"score": <integer 1 to 5>, "winner": "A" or "B" or "tie", "reason": "<text>", '
                         '"tags": ["<text>", ...]}')
    assert "properties" not in text and "minimum" not in text


def test_complete_json_sends_the_schema_and_retries_once():
    replies = iter(['{"score": 7, "reason": "too high"}', '{"score": 5, "reason": "correct"}'])
    with FakeOllama(models=("judge",), reply=lambda body: next(replies)) as server:
        judge = models.create("judge", "ollama:judge", ollama_settings(server))
        assert judge.complete_json("Grade this.", SCHEMA) == {"score": 5, "reason": "correct"}
        chats = [body for path, body in server.requests if path == "/api/chat"]
        assert len(chats) == 2 and all(body["format"] == SCHEMA for body in chats)
        assert "should be <= 5" in chats[1]["messages"][-1]["content"]


def test_complete_json_gives_up_with_a_clear_error():
    with FakeOllama(models=("judge",), reply=lambda body: "no json here") as server:
        judge = models.create("judge", "ollama:judge", ollama_settings(server))
        with pytest.raises(JsonOutputError, match="ollama:judge gave no valid JSON after a retry"):
            judge.complete_json("Grade this.", SCHEMA)
        assert len(server.requests) == 2


def test_local_model_json_failure_is_an_error_not_a_crash(generator):
    schema = {"type": "object", "required": ["verdict"], "properties": {"verdict": {"enum": ["zebra-7"]}}}
    try:
        result = generator.complete_json("Say anything at all.", schema, max_new_tokens=24)
    except JsonOutputError as exc:
        assert "local:smollm2-135m gave no valid JSON after a retry" in str(exc)
    else:
        assert result == {"verdict": "zebra-7"}


def test_ollama_generator_answers_through_the_assistant(sample_home, open_kb):
    seen = []

    def reply(body):
        seen.append(body)
        return "Harbor listens on TCP port 8735 by default."

    with FakeOllama(models=("qwen3:4b",), reply=reply) as server:
        kb = open_kb(sample_home)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", ollama_settings(server))
        pieces = list(Assistant(kb, gen).stream("Which port does Harbor listen on by default?"))
        final = pieces[-1]
        assert len(pieces) > 3  # streamed, one NDJSON line per token
        assert final.answer == "Harbor listens on TCP port 8735 by default." and not final.refused
        assert final.model == "ollama:qwen3:4b" and final.timings["completion_tokens"] == 8
        assert [s.path for s in final.sources if s.cited] == ["getting-started.md"]
        assert seen[0]["stream"] is True and seen[0]["messages"][-1]["content"].endswith(
            "Question: Which port does Harbor listen on by default?")


def test_ollama_saying_it_does_not_know_is_a_refusal(sample_home, open_kb):
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: "I don't know.") as server:
        kb = open_kb(sample_home)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", ollama_settings(server))
        answer = Assistant(kb, gen).ask("Which port does Harbor listen on by default?")
        assert answer.refused and answer.answer == NOT_IN_KB
        assert answer.refusal_reason == "the model found no answer in the sources"


def test_a_reply_that_only_restates_the_question_is_asked_again_unshown(sample_home, open_kb):
    question = "Which port does Harbor listen on by default?"
    replies = iter([question, "Harbor listens on TCP port 8735 by default."])
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: next(replies)) as server:
        kb = open_kb(sample_home)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", ollama_settings(server))
        *pieces, final = Assistant(kb, gen).stream(question)
        chats = [body["messages"][-1]["content"] for path, body in server.requests if path == "/api/chat"]
    assert len(chats) == 2 and chats[1].endswith(ANSWER_NOT_QUESTION) and ANSWER_NOT_QUESTION not in chats[0]
    assert "".join(pieces) == final.answer == "Harbor listens on TCP port 8735 by default."
    assert not final.refused and final.timings["asked_again"] is True
    assert final.timings["completion_tokens"] == 8 + 8  # both replies, one NDJSON line per word


@pytest.mark.parametrize("judge_reads", [True, False])
def test_with_second_readings_on_the_judge_model_answers_a_question_the_generator_only_restated(
        sample_home, open_kb, judge_reads):
    question = "Which port does Harbor listen on by default?"
    answer = "Harbor listens on TCP port 8735 by default."
    turns = iter([question, answer])  # the generator's, when it is asked again itself (an evaluation)
    replies = {"qwen3:4b": lambda: next(turns), "judge:1b": lambda: answer}
    with FakeOllama(models=("qwen3:4b", "judge:1b"), reply=lambda body: replies[body["model"]]()) as server:
        kb = open_kb(sample_home, read_again=True, read_again_with="judge", judge="ollama:judge:1b",
                     ollama_url=server.url)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", ollama_settings(server))
        *pieces, final = Assistant(kb, gen, judge_reads=judge_reads).stream(question)
        asked = [body["model"] for path, body in server.requests if path == "/api/chat"]
    reader = "judge:1b" if judge_reads else "qwen3:4b"
    assert asked == ["qwen3:4b", reader]
    assert "".join(pieces) == final.answer == answer and not final.refused
    assert final.timings["asked_again"] is True and final.model == f"ollama:{reader}"


@pytest.mark.parametrize("second", ["I don't know.", "Which port does Harbor listen on by default?"])
def test_when_asked_again_it_cannot_answer_the_closest_passage_is_quoted(sample_home, open_kb, second):
    question = "Which port does Harbor listen on by default?"
    replies = iter([question, second])
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: next(replies)) as server:
        kb = open_kb(sample_home)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", ollama_settings(server))
        *pieces, final = Assistant(kb, gen).stream(question)
    assert pieces == [final.answer] and not final.refused and final.timings["quoted"] is True
    assert final.answer == 'Closest passage in the sources [1]: "Harbor listens on TCP port 8735 by default."'
    assert [s.path for s in final.sources if s.cited] == ["getting-started.md"]


def test_a_question_only_restated_and_unlike_any_sentence_is_refused(sample_home, open_kb):
    question = "How long should sourdough bread rest before baking?"
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: question) as server:
        kb = open_kb(sample_home, min_score=-1.0)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", ollama_settings(server))
        *pieces, final = Assistant(kb, gen).stream(question)
    assert pieces == [NOT_IN_KB] and final.refused
    assert final.refusal_reason == "the model only restated the question"


def test_an_answer_that_restates_the_question_first_streams_once_it_says_more(sample_home, open_kb):
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: "Harbor listens on port 8735 by default.") as server:
        kb = open_kb(sample_home)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", ollama_settings(server))
        *pieces, final = Assistant(kb, gen).stream("Harbor listens on which port by default?")
    assert pieces[0] == "Harbor listens on port 8735 " and "".join(pieces) == final.answer
    assert "asked_again" not in final.timings and len(server.requests) == 1


def test_an_answer_that_picks_one_of_the_named_things_is_shown_though_it_adds_no_word(sample_home, open_kb):
    question = "Does Harbor keep snapshots for 30 days or for 90 days?"
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: "Harbor keeps snapshots for 30 days.") as server:
        kb = open_kb(sample_home)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", ollama_settings(server))
        *pieces, final = Assistant(kb, gen).stream(question)
    assert "".join(pieces) == final.answer == "Harbor keeps snapshots for 30 days." and not final.refused
    assert "asked_again" not in final.timings and len(server.requests) == 1


def test_an_answer_whose_numbers_no_source_holds_is_refused(sample_home, open_kb, capsys):
    from kbloop.cli.assistant import print_sources, stream_answer

    with FakeOllama(models=("qwen3:4b",), reply=lambda body: "Harbor listens on TCP port 9000 by default.") as server:
        kb = open_kb(sample_home)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", ollama_settings(server))
        print_sources(stream_answer(Assistant(kb, gen), "Which port does Harbor listen on by default?"))
    # Not a terminal: only the checked answer is printed, never the value it replaced.
    shown = capsys.readouterr().out.splitlines()
    assert shown == [NOT_IN_KB, "", "(the answer states 9000, which no source contains)"]


def test_on_a_terminal_the_provisional_reply_is_dimmed_then_erased(sample_home, open_kb, capsys, monkeypatch):
    import click

    from kbloop.cli.assistant import stream_answer

    stdout = click.get_text_stream("stdout")
    monkeypatch.setattr(type(stdout), "isatty", lambda self: True)
    monkeypatch.setattr(click.utils, "should_strip_ansi", lambda stream=None, color=None: False)
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: "Harbor listens on TCP port 9000 by default.") as server:
        kb = open_kb(sample_home)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", ollama_settings(server))
        stream_answer(Assistant(kb, gen), "Which port does Harbor listen on by default?")
    out = capsys.readouterr().out
    provisional, _, final = out.partition("\r\x1b[J")
    assert "\x1b[2m" in provisional and "9000" in provisional  # shown dimmed while it was unchecked
    assert final == NOT_IN_KB + "\n" and "9000" not in final  # then erased and replaced


def test_ollama_down_is_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gen = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=f"http://127.0.0.1:{port}"))
    with pytest.raises(BackendUnavailable, match="cannot reach Ollama"):
        gen.generate([{"role": "user", "content": "hi"}])


def test_chat_history_shapes_retrieval_only(sample_home, open_kb):
    """A follow-up is searched with the question before it, but the model sees only the current
    question and its sources: no value of an earlier answer reaches a later one. (With a
    follow-up rewritten to stand alone, test_followup.)"""
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: "Harbor listens on TCP port 8735 by default.") as server:
        kb = open_kb(sample_home, rewrite_follow_ups=False)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", ollama_settings(server))
        history = [("How long are snapshots kept?", "Snapshots are kept for 900 seconds.")]
        assistant = Assistant(kb, gen)
        assistant.ask("and which port does it listen on?", history)
    sent = server.requests[-1][1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]
    assert "900 seconds" not in json.dumps(sent) and sent[-1]["content"].endswith("and which port does it listen on?")
    # the retrieval query did use the history: the snapshot question's words found its source
    assert "snapshot" in " ".join(h.text for h in assistant.retrieve("and which port does it listen on?", history)).lower()
