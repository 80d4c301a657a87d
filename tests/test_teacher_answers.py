"""Teacher-written answers (RAFT): built from retrieved context, citing [n], checked; phrasings;
the build's yield and its split by generator; the plan and progress a build prints up front."""

from __future__ import annotations

import json
import re

import pytest
from conftest import run_cli
from fake_ollama import FakeOllama
from test_dataset import manual_kb, write_manuals  # noqa: F401 (manual_kb is a fixture)

from kbloop import models
from kbloop.dataset.answers import answer_checker, cite, retrieved_context, uncited, write_answer
from kbloop.dataset.build import build, indexed_chunks
from kbloop.dataset.extractive import Pair, extract_pairs
from kbloop.dataset.plan import ASSUMED_EXTRACTIVE_S, assumed_rate
from kbloop.dataset.store import DatasetStore
from kbloop.dataset.teacher import teacher_pairs
from kbloop.prompt import CITATION, build_messages

MODEL = "teacher-model"
TEACHER = f"teacher:ollama:{MODEL}"
FACT = {
    "question": "How far ahead does tide schedule departures by default?",
    "answer": "45 minutes",
    "rephrasings": ["What is the default scheduling window of tide?",
                    "If --window is not given, how many minutes ahead does tide plan?"],
}
QUESTIONS = [FACT["question"], *FACT["rephrasings"]]


class Teacher:
    """A fake Ollama teacher and judge: it asks about tide's window, answers from the sources
    it is shown, and checks answers; ``answers`` and ``verdicts`` override its replies by
    question."""

    def __init__(self, answers: dict[str, str] | None = None, verdicts: dict[str, str] | None = None,
                 fact: dict = FACT):
        self.answers, self.verdicts, self.fact = answers or {}, verdicts or {}, fact
        self.asked: dict[str, list[tuple[str, str]]] = {}  # question -> the messages its answer was written from

    def __call__(self, body: dict) -> str:
        required = body.get("format", {}).get("required") if isinstance(body.get("format"), dict) else None
        prompt = body["messages"][-1]["content"]
        if required == ["pairs"]:
            return json.dumps({"pairs": [self.fact] if "tide" in prompt.split('"""')[1] else []})
        if required == ["sentence", "verdict"]:
            question = re.search(r"\nQuestion: (.*)\n", prompt).group(1)
            numbered = re.findall(r"^(\d+)\. (.*)$", prompt.split("\n\nQuestion:")[0], re.MULTILINE)
            sentence = next((int(n) for n, text in numbered if "45 minutes" in text), 0)
            verdict = self.verdicts.get(question, "stated")
            return "no JSON here" if verdict == "garbage" else json.dumps({"sentence": sentence, "verdict": verdict})
        question = prompt.rsplit("Question: ", 1)[1]
        self.asked[question] = [(m["role"], m["content"]) for m in body["messages"]]
        return self.answers.get(question, "By default tide schedules departures within 45 minutes [3].")


@pytest.fixture
def tide_kb(home, open_kb):
    write_manuals(home.root / "docs")
    kb = open_kb(dataset_eval_fraction=0.0, dataset_oracle_p=1.0, dataset_distractors=2,
                 dataset_teacher_pairs=1, dataset_teacher_phrasings=3)
    kb.ingest()
    return kb


def teacher_build(kb, fake: Teacher):
    with FakeOllama(models=[MODEL], reply=fake) as server:
        settings = kb.settings.model_copy(update={"ollama_url": server.url, "judge": f"ollama:{MODEL}"})
        teacher = models.create("teacher", f"ollama:{MODEL}", settings)
        kb.settings = settings
        return build(kb, teacher, verifier=answer_checker(kb, teacher))


def teacher_records(kb):
    return [r for r in DatasetStore(kb.home, kb.manifest).active_records() if r.generator == TEACHER]


def test_teacher_answers_are_written_from_the_retrieved_context_and_cite_the_source(tide_kb):
    fake = Teacher()
    counts = teacher_build(tide_kb, fake)
    records = teacher_records(tide_kb)
    assert sorted(r.instruction for r in records) == sorted(QUESTIONS)
    for record in records:
        # The record's knowledge is the context the teacher answered from: the source chunk among
        # the distractors retrieval ranks highest, rendered by the assistant's own prompt builder.
        assert fake.asked[record.instruction] == [(m["role"], m["content"]) for m in record.messages()[:-1]]
        assert record.messages()[:-1] == build_messages(record.instruction, [k.as_hit() for k in record.knowledge])
        assert len(record.knowledge) == 3 and sum(k.oracle for k in record.knowledge) == 1
        source = next(n for n, k in enumerate(record.knowledge, start=1) if k.oracle)
        assert record.knowledge[source - 1].path == "tide.md"
        assert {k.path for k in record.knowledge if not k.oracle} <= {"ferry.md", "dock.md"}
        # The assistant's answer shape, citing the source by its number (the teacher's own "[3]"
        # is replaced by the source the check found).
        assert record.answer == f"By default tide schedules departures within 45 minutes [{source}]."
        assert CITATION.findall(record.answer) == [str(source)]
        assert record.reference == "By default tide schedules departures within 45 minutes."
        assert record.accept == ["45 minutes"]
    assert (counts.answers_written, counts.answers_rejected, counts.answers_unchecked) == (3, 0, 0)


def test_answers_the_check_rejects_are_dropped_and_counted(tide_kb):
    refused, wrong, unreadable = QUESTIONS
    fake = Teacher(answers={refused: "I don't know."}, verdicts={wrong: "other_subject", unreadable: "garbage"})
    counts = teacher_build(tide_kb, fake)
    assert teacher_records(tide_kb) == []
    assert (counts.answers_written, counts.answers_rejected, counts.answers_unchecked) == (3, 2, 1)
    assert counts.by_generator.get(TEACHER, 0) == 0 and counts.by_family == {"extractive": counts.records_train}
    info = DatasetStore(tide_kb.home, tide_kb.manifest).versions()[-1]
    assert (info["counts"]["answers_rejected"], info["counts"]["answers_unchecked"]) == (2, 1)


def test_each_fact_is_asked_in_several_phrasings(tide_kb):
    counts = teacher_build(tide_kb, Teacher())
    records = teacher_records(tide_kb)
    assert len(records) == 3 and len({r.instruction for r in records}) == 3
    assert {r.source["text_hash"] for r in records} == {records[0].source["text_hash"]}
    assert counts.by_generator[TEACHER] == 3


def test_a_phrasing_too_close_to_another_is_dropped_as_a_duplicate(home, open_kb):
    write_manuals(home.root / "docs")
    kb = open_kb(dataset_eval_fraction=0.0, dataset_teacher_pairs=1, dataset_teacher_phrasings=2)
    kb.ingest()
    fact = dict(FACT, rephrasings=["How far ahead does tide schedule departures, by default?"])
    counts = teacher_build(kb, Teacher(fact=fact))
    assert [r.instruction for r in teacher_records(kb)] == [FACT["question"]]
    assert counts.pairs_duplicate >= 1


def test_the_summary_reports_records_per_100_chunks_and_the_split_by_generator(tide_kb):
    counts = teacher_build(tide_kb, Teacher())
    records = counts.records_train + counts.records_eval
    assert counts.by_family == {"extractive": records - 3, "teacher": 3}
    assert counts.records_per_100_chunks == round(100 * records / counts.chunks_new, 1)
    info = DatasetStore(tide_kb.home, tide_kb.manifest).versions()[-1]
    assert info["counts"]["by_family"] == counts.by_family
    assert info["counts"]["records_per_100_chunks"] == counts.records_per_100_chunks
    assert info["checker"] == f"ollama:{MODEL}" and info["seconds_per_chunk"] > 0


def test_cli_build_says_what_it_will_do_shows_progress_and_reports_its_yield(manual_kb):
    env = {"KBLOOP_HOME": str(manual_kb.home.root)}
    result = run_cli("dataset", "build", "--no-teacher", env=env)
    assert result.exit_code == 0, result.output
    chunks = len(indexed_chunks(manual_kb.manifest))
    # Up front, on stderr: what it reads, with which model, and a time that says it is an estimate.
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"plan: read {chunks} new chunks with no teacher (extractive pairs only); about ")
    assert f"(estimate: {ASSUMED_EXTRACTIVE_S:g} s per chunk assumed" in first
    # Not a terminal: a line of progress, not a redrawn bar.
    assert re.search(rf"^dataset: {chunks}/{chunks} chunks \(100%\), .*elapsed$", result.stderr, re.MULTILINE)
    assert "\r" not in result.stderr
    counts = DatasetStore(manual_kb.home, manual_kb.manifest).versions()[-1]["counts"]
    assert (f"yield: {counts['records_per_100_chunks']:g} records per 100 chunks read; "
            f"extractive {counts['records_train']} (100%)") in result.stdout
    # The next build estimates from the rate this one measured.
    (manual_kb.home.root / "docs" / "extra.md").write_text("# extra\n\nA berth is a place where a ferry moors.\n")
    assert run_cli("ingest", env=env).exit_code == 0
    again = run_cli("dataset", "build", "--no-teacher", "--json", env=env)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["chunks_new"] == 1
    assert re.match(r"plan: read 1 new chunk with no teacher .*s per chunk, measured by dataset 0001\)",
                    again.stderr)


def test_cli_build_with_a_teacher_names_it_and_its_checker(home, open_kb):
    write_manuals(home.root / "docs", ["tide.md"])
    open_kb().ingest()
    with FakeOllama(models=[MODEL], reply=Teacher()) as server:
        env = {"KBLOOP_HOME": str(home.root), "KBLOOP_OLLAMA_URL": server.url, "KBLOOP_TEACHER": f"ollama:{MODEL}",
               "KBLOOP_JUDGE": f"ollama:{MODEL}", "KBLOOP_DATASET_TEACHER_PAIRS": "1"}
        result = run_cli("dataset", "build", "--limit", "1", env=env)
    assert result.exit_code == 0, result.output
    assert re.match(rf"plan: read 1 new chunk with teacher ollama:{MODEL} \(2 questions per chunk, each answered "
                    rf"and checked by ollama:{MODEL}\); about \S+ \(estimate: ", result.stderr)
    assert "teacher answers: 2 written, 2 kept, 0 rejected, 0 not checked" in result.stdout
    assert re.search(r"yield: [\d.]+ records per 100 chunks read; extractive \d+ \(\d+%\), teacher 2 \(\d+%\)",
                     result.stdout)


def test_the_assumed_rate_counts_every_model_call():
    assert assumed_rate(None, None, 0) == 0.1
    assert assumed_rate("local:qwen2.5-0.5b", "local:qwen2.5-1.5b", 4) == 0.1 + 30 + 4 * (10 + 15)
    assert assumed_rate("local:qwen2.5-0.5b", None, 4) == 0.1 + 30  # no checker: no answers written


def test_the_plan_counts_what_limit_leaves_for_later(tide_kb):
    chunks = len(indexed_chunks(tide_kb.manifest))
    plans = []
    build(tide_kb, limit=1, announce=plans.append)
    build(tide_kb, limit=1, announce=plans.append)
    assert [(p.chunks, p.later, p.unchanged) for p in plans] == [(1, chunks - 1, 0), (1, chunks - 2, 1)]
    assert plans[0].describe().startswith(f"plan: read 1 new chunk ({chunks - 1} left for a later build) with no")
    assert plans[1].measured_in == "0001"


def test_citations_are_placed_before_the_full_stop():
    assert cite("The default is 45 minutes.", 2) == "The default is 45 minutes [2]."
    assert cite("It is 45 minutes", 1) == "It is 45 minutes [1]"
    assert uncited("It is 45 minutes [3]. See [1], too [2].") == "It is 45 minutes. See, too."


@pytest.mark.slow
def test_a_packaged_teacher_asks_and_answers_on_llama_cpp(home, open_kb, model_cache):
    """The real path: the question schema (with its optional rephrasings) under llama.cpp's
    grammar, an answer from the assistant's prompt, the check. A 135M model's questions and
    answers are often unusable, so only the shapes are asserted."""
    write_manuals(home.root / "docs")
    kb = open_kb(dataset_distractors=2, model_cache=str(model_cache), judge="local:smollm2-135m")
    kb.ingest()
    teacher = models.create("teacher", "local:smollm2-135m", kb.settings)
    checker = answer_checker(kb, teacher)
    assert checker.model is teacher  # one model for both roles loads once
    chunks = indexed_chunks(kb.manifest)
    tide = next(c for c in chunks.values() if c.path == "tide.md")
    pairs = teacher_pairs(teacher, tide.text, tide.metadata, tide.path, 1, 2)
    assert len(pairs) <= 2 and all(p.generator == "teacher:local:smollm2-135m" for p in pairs)
    pair = Pair(FACT["question"], FACT["answer"], "teacher:local:smollm2-135m")
    context = retrieved_context(kb, pair, tide, {c.vector_id: c for c in chunks.values()}, 2, "seed")
    assert len(context) == 3 and [k.path for k in context if k.oracle] == ["tide.md"]
    written = write_answer(teacher, checker, pair.question, context, 60)
    assert written.outcome in ("kept", "rejected", "unchecked")
    assert bool(written.answer) == (written.outcome == "kept") and bool(written.reason) != bool(written.answer)
    if written.answer:
        source = next(n for n, k in enumerate(context, start=1) if k.oracle)
        assert CITATION.findall(written.answer) == [str(source)]


# -- extractive pairs beyond one manual's layout ---------------------------------------------------

API_PAGE = """bz2.open(filename, mode='rb', compresslevel=9)¶

Open a bzip2-compressed file in binary or text mode, returning a file object.

The compresslevel argument is an integer from 1 to 9. The default is 9.

When allow_no_value is True (default: False), options without values are accepted.

The mode argument can be "r" or "w". It is read with restkey (which defaults to None).

FORMAT_XZ: The .xz container format.

peek(n)

Return buffered data without advancing the file position.
"""


def test_api_entries_terms_and_defaults_stated_with_their_subject():
    pairs = extract_pairs(API_PAGE, {}, "bz2.html")
    assert {p.answer: p.generator for p in pairs if p.generator != "extractive:definition"} == {
        "bz2.open() opens a bzip2-compressed file in binary or text mode, returning a file object.": "extractive:api",
        "peek() in bz2 returns buffered data without advancing the file position.": "extractive:api",
        "FORMAT_XZ in bz2 is the .xz container format.": "extractive:term",
        # "The default is 9." under "The compresslevel argument …", below the signature that has it
        "The default for the compresslevel argument of bz2.open() is 9.": "extractive:default",
        "The default for allow_no_value in bz2 is False.": "extractive:default",
        # restkey is a plain word and no parameter of bz2.open(): asked about by its section, as before
        "It is read with restkey (which defaults to None).": "extractive:default",
    }
    by_answer = {p.answer: p for p in pairs}
    compresslevel = by_answer["The default for the compresslevel argument of bz2.open() is 9."]
    assert (compresslevel.evidence, compresslevel.value) == ("The default is 9.", "9")
    assert "bz2.open()" in compresslevel.question
    assert by_answer["It is read with restkey (which defaults to None)."].question == (
        "What is the default stated under bz2 in bz2?")


@pytest.mark.parametrize("text", [
    "import csv\nwriter = csv.writer(f)\nwriter.writerows(rows)\n\nSince open() is used, the file is decoded.",
    ">>> PurePath('foo')\n\nPurePosixPath('foo/bar')\n\nReturn a new path.",
    "hash.copy()\n\nShake variable length digests for every hash.",
    "Any other value reverts to plain SMTP (which defaults to port 25).",
    "Signed-off-by: Bob <bob@example.com> wrote it.",
    "The level argument sets the speed. The default is 6.",
])
def test_code_lines_tables_of_contents_and_unplaced_words_give_no_pairs(text):
    assert [p for p in extract_pairs(text, {}, "doc.md") if p.generator in ("extractive:api", "extractive:term")
            or p.value] == []
