"""An answer that names a setting where the question asks for a value has that setting's default
looked up, as a question of its own, and added with its source."""

from __future__ import annotations

import pytest

from fake_ollama import FakeOllama
from kbloop import models
from kbloop.assistant.answer import Assistant, Progress
from kbloop.assistant.grounding import named_instead_of_value
from kbloop.config import Settings

QUESTION = "What is the most parallel transfers a Harbor client gets?"
NAMED = "A client gets as many as max_parallel_transfers allows."
LOOK_UP = "What is the default value of max_parallel_transfers?"


@pytest.mark.parametrize("answer,question,name", [
    ("It starts a worker every autovacuum_naptime seconds.", "How often does the launcher start a worker?",
     "autovacuum_naptime"),
    ("It is limited by max_parallel_maintenance_workers.", "What is the most workers a VACUUM can get?",
     "max_parallel_maintenance_workers"),
    ("Git runs gc when gc.auto is exceeded.", "How many loose objects make git gc run?", "gc.auto"),
    ("The default is 60 seconds, set by autovacuum_naptime.", "How often does it run?", None),  # a value of its own
    ("The default is five seconds, set by busy_timeout.", "How long does it wait?", None),  # in words
    ("Enable track_counts.", "Which statistics setting has to be enabled?", None),  # a name is asked for
    ("It is capped by autovacuum_naptime.", "How often does autovacuum_naptime apply?", None),  # the question's own
    ("See e.g. the manual.", "How often does it run?", None),  # no setting
    ("Read it from settings.json.", "Which port does it use?", None),  # a file
    ("Set it in postgresql.conf.", "How often does it run?", None),  # a configuration file
    ("Set it in postgresql.conf as autovacuum_naptime.", "How often does it run?", "autovacuum_naptime"),
    ("It is concatenate, or what GIT_NOTES_REWRITE_MODE says.", "What is the default value of notes.rewriteMode?",
     None),  # a value that may be a word
    ("The method is ZIP_DEFLATED.", "Which method accepts level 0?", None),  # a name is asked for
])
def test_a_setting_named_for_the_value_asked_for_is_found(answer, question, name):
    assert named_instead_of_value(answer, question) == name


def harbor(look_up_reply: str):
    """A generator that names the retention setting, and answers the look-up with ``look_up_reply``."""
    return FakeOllama(models=("qwen3:4b",), reply=lambda body: look_up_reply
                      if body["messages"][-1]["content"].endswith(f"Question: {LOOK_UP}") else NAMED)


def test_the_named_settings_default_is_looked_up_streamed_and_cited(sample_home, open_kb):
    found = "Harbor limits each client to 4 parallel transfers."
    with harbor(found) as server:
        kb = open_kb(sample_home, read_again=False)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        *pieces, final = Assistant(kb, gen, None).stream(QUESTION)
        asked = [body["messages"][-1]["content"] for path, body in server.requests if path == "/api/chat"]
    assert len(asked) == 2 and asked[1].endswith(f"Question: {LOOK_UP}")
    assert Progress("looking up max_parallel_transfers") in pieces
    assert not final.refused and final.answer == f"{NAMED}\n\n{found}"
    # what was streamed is the answer: nothing is taken back
    assert "".join(p for p in pieces if isinstance(p, str)).strip() == final.answer
    assert final.timings["looked_up"]["asked"] == LOOK_UP and not final.timings["looked_up"]["refused"]
    assert "troubleshooting.txt" in {s.path for s in final.sources if s.cited}
    assert [s.n for s in final.sources] == list(range(1, len(final.sources) + 1))


def test_a_look_up_that_is_refused_leaves_the_answer_as_it_was(sample_home, open_kb):
    with harbor("I don't know.") as server:
        kb = open_kb(sample_home, read_again=False)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        final = Assistant(kb, gen, None).ask(QUESTION)
        plain = Assistant(kb, gen, None).stream(QUESTION, look_up=False)
        *_, unlooked = plain
    assert not final.refused and final.answer == NAMED and final.timings["looked_up"]["refused"]
    assert unlooked.answer == NAMED and "looked_up" not in unlooked.timings


def test_the_looked_up_sources_follow_the_answers_own_and_its_marks_with_them():
    from kbloop.assistant.answer import Answer, Source, joined
    from kbloop.ingest.manifest import Hit

    hits = [Hit(1, 0.8, "a.md", "Alpha.", {}), Hit(2, 0.7, "b.md", "Beta.", {})]
    found = Answer("q", "It is 4 [3], as [1] says.", False, None, [
        Source(1, "b.md", "b.md", None, None, 0.9, True, "Beta."),       # the answer has it: [2]
        Source(2, "c.md", "c.md", None, None, 0.8, False, "Gamma."),     # not cited: left out
        Source(3, "d.md", "d.md", None, None, 0.7, True, "Delta.")], "m", None)
    cited = {1}
    added, more = joined(found, hits, cited)
    assert added == "\n\nIt is 4 [3], as [2] says."
    assert [(s.n, s.path) for s in more] == [(3, "d.md")] and cited == {1, 2, 3}
