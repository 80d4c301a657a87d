"""A chat's follow-up, rewritten by the judge model to stand alone, is what is searched and
answered; a rewrite that says more than the two questions is not used."""

from __future__ import annotations

import pytest

from fake_ollama import FakeOllama
from kbloop import models
from kbloop.assistant.answer import Assistant, Progress
from kbloop.assistant.followup import accepted, standalone
from kbloop.config import Settings

EARLIER = "Which port does Harbor listen on by default?"
FOLLOW_UP = "Which key of the configuration file changes it?"
REWRITE = "Which key of the configuration file changes the port Harbor listens on?"


@pytest.mark.parametrize("rewrite,taken", [
    (REWRITE, True),
    (FOLLOW_UP, False),                                                      # nothing filled in
    (f"{EARLIER} {FOLLOW_UP}", False),                                       # the two merged
    ("Which key of the configuration file changes port 8735?", False),      # a value of its own
    ("Which port does Harbor listen on?", False),                            # the follow-up dropped
    ("Which key of the configuration file changes the TLS certificate path?", False),  # another subject
])
def test_a_rewrite_is_taken_only_when_it_fills_in_the_earlier_question(rewrite, taken):
    assert accepted(rewrite, FOLLOW_UP, EARLIER) is taken


def rewriting_judge(rewrite: str):
    """An Ollama server whose judge rewrites follow-ups as ``rewrite`` and whose generator
    answers with the configuration key."""
    return FakeOllama(models=("qwen3:4b", "judge:1b"),
                      reply=lambda body: rewrite if body["model"] == "judge:1b" else "The `listen_port` key.")


@pytest.mark.parametrize("rewrite,used", [(REWRITE, True), (f"{EARLIER} {FOLLOW_UP}", False)])
def test_the_model_answers_the_rewritten_follow_up_and_the_user_sees_their_own_question(
        sample_home, open_kb, rewrite, used):
    with rewriting_judge(rewrite) as server:
        kb = open_kb(sample_home, rewrite_follow_ups=True, judge="ollama:judge:1b", ollama_url=server.url,
                     read_again=False)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        history = [(EARLIER, "Harbor listens on TCP port 8735 by default.")]
        *pieces, final = Assistant(kb, gen).stream(FOLLOW_UP, history)
        chats = [body for path, body in server.requests if path == "/api/chat"]
    answering = [body for body in chats if body["model"] == "qwen3:4b"]
    rewriting = [body for body in chats if body["model"] == "judge:1b"]
    prompt = answering[0]["messages"][-1]["content"]
    assert len(rewriting) == 1
    # The judge reads the two questions, never the earlier answer.
    assert EARLIER in rewriting[0]["messages"][-1]["content"] and "8735" not in str(rewriting[0]["messages"])
    assert final.question == FOLLOW_UP and not final.refused and pieces[0] == Progress("reading the follow-up")
    if used:
        assert prompt.endswith(f"Question: {REWRITE}") and final.timings["asked_as"] == REWRITE
    else:
        assert prompt.endswith(f"Question: {FOLLOW_UP}") and "asked_as" not in final.timings
    assert "getting-started.md" in {s.path for s in final.sources}


def test_a_question_that_is_no_follow_up_is_not_sent_to_the_judge(sample_home, open_kb):
    with rewriting_judge(REWRITE) as server:
        kb = open_kb(sample_home, rewrite_follow_ups=True, judge="ollama:judge:1b", ollama_url=server.url)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        final = Assistant(kb, gen).ask("How long is a Harbor invitation valid?", [(EARLIER, "8735.")])
        judged = [body for path, body in server.requests if path == "/api/chat" and body["model"] == "judge:1b"]
    assert not judged and "rewrite_s" not in final.timings


def test_a_question_that_names_its_subject_is_searched_alone_although_it_says_its(sample_home, open_kb):
    """"its" makes a question look like a follow-up; read with the earlier question it finds sources
    less close than alone, so it is a new subject: neither rewritten nor folded with the earlier one."""
    switch = "How many days does Harbor keep its nightly snapshots?"
    with rewriting_judge(REWRITE) as server:
        kb = open_kb(sample_home, rewrite_follow_ups=True, judge="ollama:judge:1b", ollama_url=server.url,
                     read_again=False)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        assistant = Assistant(kb, gen)
        history = [(EARLIER, "Harbor listens on TCP port 8735 by default.")]
        assert assistant.follows_on(FOLLOW_UP, history)
        assert not assistant.follows_on(switch, history)
        assert not assistant.follows_on(switch, None) and not assistant.follows_on(FOLLOW_UP, [])
        final = assistant.ask(switch, history)
        judged = [body for path, body in server.requests if path == "/api/chat" and body["model"] == "judge:1b"]
    assert not judged and "rewrite_s" not in final.timings
    assert final.sources[0].path == "backups.html"


def test_a_judge_that_is_down_leaves_the_follow_up_as_written(sample_home, open_kb, caplog):
    with rewriting_judge(REWRITE) as server:
        generator_url = server.url
        kb = open_kb(sample_home, rewrite_follow_ups=True, judge="ollama:judge:1b",
                     ollama_url="http://127.0.0.1:9", read_again=False)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=generator_url))
        final = Assistant(kb, gen).ask(FOLLOW_UP, [(EARLIER, "8735.")])
    assert not final.refused and "asked_as" not in final.timings
    assert "follow-up not rewritten" in caplog.text


@pytest.mark.slow
def test_the_packaged_judge_fills_in_what_it_refers_to(model_cache):
    judge = models.create("judge", "local:qwen2.5-1.5b", Settings(model_cache=str(model_cache)))
    rewrite = standalone(judge, "Which pickle protocol does it use when none is given?",
                         "Which function of the shelve module opens a persistent dictionary?")
    assert rewrite is not None and "shelve" in rewrite.lower() and "pickle protocol" in rewrite.lower()


def test_the_chat_shows_how_it_read_a_rewritten_follow_up(capsys):
    from kbloop.assistant.answer import Answer
    from kbloop.cli.assistant import print_sources

    print_sources(Answer(FOLLOW_UP, "`listen_port`.", False, None, [], "m", None, {"asked_as": REWRITE}))
    assert f"(read as: {REWRITE})" in capsys.readouterr().out
