"""Grounded answers with citations and refusal, with the real small packaged model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import cli_env
from kbloop.assistant.answer import NOT_IN_KB, Assistant, fold_query
from kbloop.ingest.manifest import Hit
from kbloop.prompt import build_messages, cited_numbers, is_refusal
from kbloop.text import technical_terms


@pytest.fixture
def assistant(sample_home, open_kb, generator):
    kb = open_kb(sample_home)
    kb.ingest()
    return Assistant(kb, generator)


def test_answers_from_the_documents_and_lists_sources(assistant):
    answer = assistant.ask("Which port does Harbor listen on by default?")
    assert not answer.refused
    assert "8735" in answer.answer
    assert answer.sources[0].path == "getting-started.md"
    assert answer.model == "local:smollm2-135m"
    assert answer.timings["first_token_s"] > 0 and answer.timings["completion_tokens"] > 0


def test_stream_yields_text_then_the_answer(assistant):
    items = list(assistant.stream("What port does the Harbor server use unless configured otherwise?"))
    *pieces, final = items
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)
    assert "8735" in "".join(pieces) and "8735" in final.answer
    assert "Question:" not in "".join(pieces)
    cited = [s.path for s in final.sources if s.cited]
    assert cited == ["getting-started.md"]


def test_question_about_a_term_no_source_mentions_is_refused(sample_home, open_kb, generator):
    kb = open_kb(sample_home, min_score=-1.0)  # past the score threshold, so the term check decides
    kb.ingest()
    answer = Assistant(kb, generator).ask("What is the default value of harbor.compressionLevel for snapshots?")
    assert answer.refused and answer.refusal_reason == "no source mentions harbor.compressionlevel"


def test_stop_filter_holds_back_an_invented_next_turn():
    from kbloop.prompt import STOP_STRINGS, clean_answer
    from kbloop.text import StopFilter

    stream = StopFilter(STOP_STRINGS)
    shown = [stream.feed(p) for p in ["The port", " is 8735.", "\n", "Ques", "tion: what", " else"]]
    assert "".join(shown) == "The port is 8735." and stream.stopped
    assert clean_answer("It is 8735.\nIt is 8735.\nQuestion: more") == "It is 8735."


def test_unrelated_question_is_refused_without_asking_the_model(sample_home, open_kb, generator, monkeypatch):
    kb = open_kb(sample_home)
    kb.ingest()
    calls = []
    monkeypatch.setattr(generator, "stream", lambda *a, **k: calls.append(a) or iter(()))
    answer = Assistant(kb, generator).ask("What is the capital of Peru?")
    assert answer.refused and answer.answer == NOT_IN_KB
    assert "KBLOOP_MIN_SCORE" in answer.refusal_reason
    assert calls == []


def test_prompt_numbers_sources_and_cites(assistant):
    hits = assistant.retrieve("Which port does Harbor listen on by default?")
    messages = build_messages("Which port?", hits)
    user = messages[-1]["content"]
    assert user.startswith("Sources:\n\n[") and user.endswith("Question: Which port?")
    # best source last, nearest the question
    assert user.index("[1] getting-started.md") > user.index("[2] ")
    assert cited_numbers("It is 8735 [1], see also [2] and [9].", 3) == [1, 2]


@pytest.mark.parametrize("text,refused", [
    ("I don't know.", True),
    ("The sources do not contain this information.", True),
    ("This is not mentioned in the sources.", True),
    ("", True),
    ("The default port is 8735 [1].", False),
    ("Run harbor restore --snapshot <id>. It does not delete newer files [2].", False),
    # a hedged refusal is a refusal, whatever follows it
    ("The default port is not explicitly stated in the sources. However, it may be 8080.", True),
    ("The sources do not directly mention the port.", True),
    ("The sources doesn't specifically say.", True),
])
def test_refusal_detection(text, refused):
    assert is_refusal(text) is refused


def test_refusal_words_copied_from_the_question_are_not_a_refusal():
    question = "Which plist format does plistlib.dump() write when fmt is not given?"
    assert not is_refusal("plistlib.dump() writes XML when fmt is not given.", question)
    assert is_refusal("plistlib.dump() writes XML when fmt is not given.")
    assert is_refusal("The format is not given in the sources.", question)
    assert is_refusal("The sources do not mention it when fmt is not given.", question)


def test_follow_up_questions_fold_the_history_into_retrieval():
    assert fold_query("And how do I change it?", [("Which port does Harbor use?", "8735")]) == \
        "Which port does Harbor use? And how do I change it?"
    assert fold_query("Which port?", None) == "Which port?"
    assert fold_query("What is the capital of Peru?", [("Which port does Harbor use?", "8735")]) == \
        "What is the capital of Peru?"


@pytest.mark.slow
def test_ask_json_and_chat_from_the_command_line(sample_home, open_kb, model_cache):
    env = cli_env(sample_home.root, KBLOOP_GENERATOR="local:smollm2-135m", KBLOOP_MODEL_CACHE=str(model_cache))
    run = lambda *args, **kw: subprocess.run([sys.executable, "-m", "kbloop.cli.main", *args], env=env,
                                             capture_output=True, text=True, timeout=600, **kw)
    open_kb(sample_home).ingest()  # in process: what runs as a user runs it here is ask and chat
    out = run("ask", "Which port does Harbor listen on by default?", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == {"question", "answer", "refused", "refusal_reason", "sources", "model", "adapter", "timings"}
    assert "8735" in data["answer"] and data["sources"][0]["path"] == "getting-started.md"
    assert {"retrieve_s", "first_token_s", "tokens_per_s"} <= set(data["timings"])

    out = run("ask", "Which port does Harbor listen on by default?")
    assert "8735" in out.stdout and "Sources:" in out.stdout and "getting-started.md" in out.stdout

    out = run("chat", input="Which port does Harbor listen on by default?\nWhat is the capital of Peru?\n\n")
    assert out.returncode == 0, out.stderr
    assert "8735" in out.stdout and NOT_IN_KB in out.stdout


def hit(text: str, path: str = "gitfaq.txt", **metadata) -> Hit:
    return Hit(0, 0.7, path, text, metadata)


POST_BUFFER = hit("What does http.postBuffer really do?\n\nThis option changes the size of the buffer that Git "
                  "uses when pushing data to a remote over HTTP or HTTPS. Leaving this value at the default "
                  "size is fine unless you know that the remote server does not support HTTP/1.1.")


@pytest.mark.parametrize("reply, invented", [
    # kbdev's unanswerable questions, as qwen2.5-0.5b answered them
    ("The default size of http.postBuffer is 1024.", ["1024"]),
    ("In Git 2.30.0, the git switch command was introduced.", ["2.30.0"]),
    # a grounded number saves the answer, even beside one worked out from it
    ("Leaving it at the default is fine unless the server lacks HTTP/1.1 (released 1997).", []),
    ("The default size of http.postBuffer is 1,024 bytes.", ["1024"]),
    # list markers, citations and the question's own numbers are not claims
    ("1. Leave the default.\n2. Check the proxy [2].", []),
    ("What does it do in HTTP/2? It sets the buffer size.", []),
    ("It sets the size of the buffer.", []),
])
def test_numbers_that_no_source_holds_are_invented(reply, invented):
    from kbloop.assistant.grounding import invented_numbers

    question = "What is the default size of http.postBuffer in HTTP/2?"
    assert invented_numbers(reply, question, [POST_BUFFER]) == invented


def test_numbers_compare_by_value_and_the_named_sentence_may_spell_them_out():
    from kbloop.assistant.grounding import invented_numbers
    from kbloop.assistant.verify import carries_values

    question = "How long does sqlite3.connect() wait for a lock by default?"
    signature = hit("sqlite3.connect(database, timeout=5, detect_types=0)", "sqlite3.txt")
    for reply in ("It waits 5.0 seconds.", "It waits 5 seconds [1].", "It waits five seconds."):
        assert invented_numbers(reply, question, [signature]) == []
    assert invented_numbers("It waits 50 seconds.", question, [signature]) == ["50"]
    # the sentence the judge names holds the value, spelled out or not
    sentence = "timeout (float) - How many seconds the connection waits for a lock. Default five seconds."
    for reply in ("It waits 5.0 seconds.", "It waits 5 seconds [1].", "It waits five seconds."):
        assert carries_values(reply, sentence, question)
    assert not carries_values("It waits 15 seconds.", sentence, question)
    assert carries_values("It samples 28 rows.", "Twenty-eight rows are sampled.", "How many rows?")
    # but a single digit spelled out anywhere in the sources grounds no answer: "two" is in most
    # passages; a number of two digits spelled out is as rare as one in digits
    prose = hit("The two readers sample twenty rows; version 3.10 added it.", "csv.md")
    assert invented_numbers("It samples 2 rows.", "How many rows?", [prose]) == ["2"]
    assert invented_numbers("It samples 20 rows.", "How many rows?", [prose]) == []
    assert invented_numbers("It samples 30 rows.", "How many rows?", [prose]) == ["30"]
    # and so is a count of a larger unit: "three million" holds the 3 of "3 million"
    stop = hit("The system stops assigning new XIDs once fewer than three million transactions are left.", "m.txt")
    assert invented_numbers("It stops 3 million transactions before.", "How many?", [stop]) == []
    assert invented_numbers("It stops 2 million transactions before.", "How many?", [stop]) == ["2"]
    assert invented_numbers("Since 3.1.", "Since when?", [prose]) == ["3.1"]  # a version is no decimal


MAX_CONNECTIONS = hit("max_connections (integer) Determines the maximum number of concurrent connections to the "
                      "database server. The default is typically 100 connections, but might be less if your kernel "
                      "settings will not support it.", "runtime-config-connection.html")
REPACK = hit("The default value for --window is 10 and --depth is 50. The maximum depth is 4095.", "git-repack.md")
FREEZE = hit("vacuum_freeze_min_age (integer) Specifies the cutoff age (in transactions) that VACUUM should use. "
             "The default is 50 million transactions.", "runtime-config-client.txt")


@pytest.mark.parametrize("question, reply, source, unbounded", [
    # a near miss: the largest value is asked, and the sources give 100 only as the default
    ("What is the largest value max_connections can be set to?",
     "The largest value max_connections can be set to is 100 connections.", MAX_CONNECTIONS, ["100"]),
    ("What is the smallest value max_connections accepts?", "It accepts at least 100.", MAX_CONNECTIONS, ["100"]),
    # the sentence holding the value states a bound
    ("What is the maximum --depth accepted by `git repack`?", "The maximum depth is 4095.", REPACK, []),
    ("What is the maximum --depth accepted by `git repack`?", "It is 4095; the default is 50.", REPACK, []),
    # the question asks for a default, though it speaks of a bound
    ("What is the default maximum number of connections?", "The default is 100.", MAX_CONNECTIONS, []),
    ("A table can go unvacuumed for at most two billion transactions minus the freeze cutoff age. "
     "What is that cutoff age by default?", "It is 50 million transactions.", FREEZE, []),
    # a question that asks for no bound, a value no source holds, or an answer without a value
    ("How many connections does the server allow by default?", "100 connections.", MAX_CONNECTIONS, []),
    ("What is the largest value max_connections can be set to?", "It is 262143.", MAX_CONNECTIONS, []),
    ("What is the largest value max_connections can be set to?", "There is no fixed limit.", MAX_CONNECTIONS, []),
    ("Since which version are option names turned to lower case?", "Since version 3.2.",
     hit("Changed in version 3.2: option names are turned to lower case.", "configparser.txt"), []),
])
def test_a_bound_asked_for_is_not_answered_with_another_value_of_the_setting(question, reply, source, unbounded):
    from kbloop.assistant.grounding import reply_problem, unbounded_values

    assert unbounded_values(reply, question, [source]) == unbounded
    problem = reply_problem(reply, question, [source])
    assert (problem is not None and "asks for a bound" in problem) == bool(unbounded)


def test_a_page_number_in_the_source_heading_counts_as_grounded():
    from kbloop.assistant.grounding import invented_numbers

    source = hit("The helper stores credentials in memory.", "gitcredentials.pdf", page=6)
    assert invented_numbers("See page 6 of gitcredentials.pdf.", "Where is it?", [source]) == []
    assert invented_numbers("See page 7 of gitcredentials.pdf.", "Where is it?", [source]) == ["7"]


def test_a_reply_that_copies_a_source_heading_pasted_a_source_block():
    from kbloop.assistant.grounding import pastes_heading

    sources = [POST_BUFFER, hit("filecmp.DEFAULT_IGNORES lists the directories ignored by dircmp.", "filecmp.html")]
    # replies of qwen2.5-0.5b to pydev's unanswerable questions: the prompt's heading, then a passage
    assert pastes_heading("The directory names listed in filecmp.DEFAULT_IGNORES are:\n\n"
                          "[2] filecmp.html (Navigation > filecmp)\ndircmp.common_dirs", sources)
    assert pastes_heading("> [1] gitfaq.txt\nhttp.postBuffer ...", sources)
    # a citation, or a numbered line that names no source file, is an answer
    assert not pastes_heading("It ignores RCS and CVS [2].", sources)
    assert not pastes_heading("[1] Run git config http.postBuffer 524288000.", sources)
    assert not pastes_heading("[3] other.txt holds it.", sources)


def test_every_reader_of_the_sources_is_held_to_the_same_reply_checks():
    from kbloop.assistant import grounding
    from kbloop.dataset.answers import answer_problem

    sources = [hit("The default value of gc.autoPackLimit is 50.", "git-gc.html")]
    question = "How many packs does gc.autoPackLimit allow by default?"
    replies = {
        "The knowledge base does not contain the answer to this question.": grounding.FOUND_NO_ANSWER,
        "How many packs does gc.autoPackLimit allow by default?": grounding.RESTATED,
        "The packs are:\n\n[1] git-gc.html\nThe default value": grounding.PASTED,
        "It allows packs up to the limit set by gc.autoPackLimit.": grounding.NO_NUMBER,
        "It allows 60 packs by default.": "the answer states 60, which no source contains",
        "It allows 50 packs by default [1].": None,
    }
    for reply, reason in replies.items():
        # the assistant (the generator and a second reading) and the teacher share one list
        assert grounding.reply_problem(reply, question, sources) == reason
        assert answer_problem(reply, question, sources) == reason
    assert "too long" in answer_problem("It allows 50 packs by default. " * 60, question, sources)


LS_REMOTE = "With --exit-code, which exit status does `git ls-remote` use when no matching refs are found?"
SHELL = ("With git-shell, which command in ~/git-shell-commands is run (and the interactive shell aborted) "
         "to refuse interactive logins?")


STASH = "Which of stash.showPatch and stash.showStat defaults to true?"
YES_NO = 'Does `git cherry-pick -x` add the "(cherry picked from commit …)" line when the cherry-pick had conflicts?'
CACHE = ("How many SQL statements does a sqlite3 connection keep in its internal statement cache unless you "
         "pass cached_statements?")
PLIST = "Which plist format does plistlib.dump() write when fmt is not given?"


@pytest.mark.parametrize("question, reply, restated", [
    # kbdev replies of qwen2.5-0.5b that copied the question
    (LS_REMOTE, LS_REMOTE, True),
    (SHELL, SHELL.replace("which command", "the command").replace("?", "."), True),
    (LS_REMOTE, "", True),
    (LS_REMOTE, 'With --exit-code, `git ls-remote` uses status "2" when no matching refs are found.', False),
    (SHELL, "If a no-interactive-login command exists, it is run and the interactive shell is aborted.", False),
    (LS_REMOTE, "I don't know.", False),
    # an answer that picks one of the things the question names adds no word, but leaves some out
    (STASH, "stash.showStat defaults to true.", False),
    (YES_NO, "No, git cherry-pick -x does not add the line when the cherry-pick had conflicts.", False),
    # pydev replies: to a question that offers no choice, a reply that adds nothing but
    # framing, or the question's own words in another form, restates it though it leaves words out
    (CACHE, "According to the sources, a sqlite3 connection keeps in its internal statement cache "
            "unless you pass cached_statements.", True),
    (PLIST, "plistlib.dump() writes when fmt is not given.", True),
    (PLIST, "plistlib.dump() writes XML when fmt is not given.", False),
])
def test_a_reply_that_adds_no_word_to_the_question_restates_it(question, reply, restated):
    from kbloop.assistant.grounding import restates

    assert restates(reply, question) is restated


PICKLE = "Starting with which Python version is pickle protocol 4 the default?"


@pytest.mark.parametrize("question, reply, unanswered", [
    # replies of qwen2.5-0.5b that state no number, or only the question's own
    (CACHE, "According to the sources, a sqlite3 connection keeps them in its internal statement cache.", True),
    (PICKLE, "The default protocol version used for pickling is 4.", True),
    ("Which version of the TOML specification does tomllib implement?",
     "tomllib implements the well-specified format for application configuration files.", True),
    (PICKLE, "1. Open the file.\n2. Call pickle.dump().", True),  # list markers state no number
    # a number in digits, in words, in a version, or that there is no limit
    (CACHE, "It keeps 128 statements [1].", False),
    (CACHE, "It keeps a hundred and twenty-eight statements.", False),
    (CACHE, "There is no limit on the statements it keeps.", False),
    (PICKLE, "Since Python 3.8 [2].", False),
    ("Which version of the TOML specification does tomllib implement?", "It implements TOML v1.0.0.", False),
    ("How long does connect() wait for a lock?", "It waits five seconds.", False),
    # a question that asks for no number may be answered without one
    ("Which shelve.open() parameter caches the entries?", "The writeback parameter.", False),
])
def test_a_reply_without_a_number_does_not_answer_a_question_that_asks_for_one(question, reply, unanswered):
    from kbloop.assistant.grounding import gives_no_number

    assert gives_no_number(reply, question) is unanswered


def test_the_closest_sentence_is_the_one_sharing_most_words_with_the_question():
    from kbloop.assistant.grounding import closest_sentence

    # kbdev's git-shell question, which qwen2.5-0.5b could only restate
    shell = hit("Generally this mode is used as an administrative interface to allow users to list "
                "repositories they have access to.\n\nIf a no-interactive-login command exists, then it is run "
                "and the interactive shell is aborted.", "git-shell.txt")
    assert closest_sentence(SHELL, [POST_BUFFER, shell]) == (
        2, "If a no-interactive-login command exists, then it is run and the interactive shell is aborted.")
    assert closest_sentence("Which port does Harbor listen on?", [POST_BUFFER, shell]) is None


def test_a_fact_appended_to_a_long_document_is_answerable_after_ingest(sample_home, open_kb, generator):
    """Its chunk's embedding is about the rest of the document, so the cosine similarity stays
    under KBLOOP_MIN_SCORE; that the chunk holds the question's words is evidence enough."""
    guide = sample_home.root / "docs" / "getting-started.md"
    guide.write_text(guide.read_text() + "\n\nThe zephyr relay of Harbor retries a failed upload 17 times.\n")
    kb = open_kb(sample_home)
    kb.ingest()
    question = "How many times does the zephyr relay retry a failed upload?"
    hits = Assistant(kb, generator).retrieve(question)
    assert "zephyr relay" in hits[0].text and hits[0].score < kb.settings.min_score  # the embedding alone would refuse
    answer = Assistant(kb, generator, None).ask(question)
    assert "KBLOOP_MIN_SCORE" not in (answer.refusal_reason or "")
    assert not answer.refused and "17" in answer.answer


def test_a_term_the_first_retrieval_missed_is_searched_for_alone(sample_home, open_kb, generator):
    """A question that needs two facts from two documents: with room for one source, the
    second term's source is retrieved by a search for that term."""
    kb = open_kb(sample_home, retrieve_k=1)
    kb.ingest()
    question = "Which port does listen_port set by default, and what does max_parallel_transfers limit?"
    hits = Assistant(kb, generator).retrieve(question)
    assert len(hits) == 2
    assert {"listen_port", "max_parallel_transfers"} <= {t for h in hits for t in technical_terms(h.text)}


def test_a_command_the_question_quotes_that_the_first_retrieval_missed_is_searched_for_alone(
        sample_home, open_kb, generator):
    """A quoted command is no exact term (no dot, no dash), but names what the question is about
    as surely: with room for one source, the other command's source is found by its name."""
    kb = open_kb(sample_home, retrieve_k=1)
    kb.ingest()
    question = "What does `harbor setup` create, and what does `harbor snapshots list` show?"
    hits = Assistant(kb, generator).retrieve(question)
    assert len(hits) == 2
    text = " ".join(h.text for h in hits)
    assert "harbor setup" in text and "harbor snapshots list" in text
