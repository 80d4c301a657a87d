"""Users' corrections: the API takes the right answer with a thumbs-down and keeps it; a dataset
build turns each new one into a training record over the retrieval context of that moment; an
evaluation asks it with the correction as the expected answer; the web page has a box for it."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
import test_web as web
from conftest import cli_error, run_cli
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_server import PORT_QUESTION, assert_error, make_home, serving
from test_verify import Scripted
from test_web import browser  # noqa: F401 - the headless Chromium fixture of the page's tests

from kbloop import models
from kbloop.assistant.answer import Assistant
from kbloop.config import Settings
from kbloop.dataset.build import build
from kbloop.dataset.corrections import correction_record_id
from kbloop.dataset.records import CORRECTION
from kbloop.dataset.store import DatasetStore
from kbloop.evaluate.evalset import build_evalset, correction_value, feedback_items
from kbloop.evaluate.feedback import CORRECTION_MAX_CHARS, FeedbackStore
from kbloop.evaluate.gate import decide
from kbloop.evaluate.metrics import matches
from kbloop.evaluate.run import answer_all, side_metrics
from kbloop.finetune.config import TrainConfig
from kbloop.finetune.data import Example
from kbloop.finetune.train import repeated_corrections
from kbloop.ingest.manifest import Manifest
from kbloop.errors import NotFound
from kbloop.kb import KnowledgeBase
from kbloop.schema import MIGRATIONS

DATA_QUESTION = "Where does Harbor keep its data folder?"
CORRECTION_TEXT = "Harbor keeps its data in /srv/harbor/data."
SOURCES = [{"n": 1, "path": "getting-started.md", "location": "getting-started.md", "score": 0.7, "cited": True}]


def rating(correction: object = None, **fields: object) -> dict:
    """A thumbs-down body as the web page sends it, with a correction when given."""
    body = {"rating": "down", "question": DATA_QUESTION, "answer": "In /tmp.", "sources": SOURCES,
            "model": "local:smollm2-135m"} | fields
    return body | ({"correction": correction} if correction is not None else {})


@pytest.fixture(scope="module")
def api(tmp_path_factory, embedder, generator):
    home = make_home(tmp_path_factory.mktemp("corrections") / "kb", embedder)
    with serving(home, embedder, generator) as (url, service), httpx.Client(base_url=url, timeout=120) as http:
        yield http, service


def corrections_of(home) -> list:
    manifest = Manifest(home.manifest_path, MIGRATIONS)
    try:
        return FeedbackStore(manifest.db).corrections()
    finally:
        manifest.close()


def ratings_of(home) -> list:
    manifest = Manifest(home.manifest_path, MIGRATIONS)
    try:
        return FeedbackStore(manifest.db).ratings()
    finally:
        manifest.close()


# -- the API ---------------------------------------------------------------------------------------

def test_the_api_takes_a_correction_with_a_thumbs_down(api):
    client, service = api
    sent = client.post("/api/feedback", json=rating(f"  {CORRECTION_TEXT}\n"))
    assert sent.status_code == 201, sent.text
    assert sent.json() == {"id": sent.json()["id"], "rating": "down", "eval_candidate": True}
    listed = {f["id"]: f for f in client.get("/api/feedback", params={"rating": "down"}).json()["feedback"]}
    assert listed[sent.json()["id"]]["correction"] == CORRECTION_TEXT  # trimmed
    assert [c.correction for c in corrections_of(service.home) if c.id == sent.json()["id"]] == [CORRECTION_TEXT]


@pytest.mark.parametrize("body,says", [
    (rating("   "), "correction: it is empty"),
    (rating("x" * (CORRECTION_MAX_CHARS + 1)), f"at most {CORRECTION_MAX_CHARS}"),
    (rating(CORRECTION_TEXT, rating="up"), "only a thumbs-down takes a correction"),
    (rating(CORRECTION_TEXT, question="   "), "the question is blank"),
])
def test_a_bad_correction_is_one_line_400_and_nothing_is_stored(api, body, says):
    client, service = api
    before = len(client.get("/api/feedback").json()["feedback"])
    message = assert_error(client.post("/api/feedback", json=body), 400)
    assert says in message and "\n" not in message
    assert len(client.get("/api/feedback").json()["feedback"]) == before


def test_a_correction_that_is_not_text_is_refused_like_any_field(api):
    client, _ = api
    assert "correction" in assert_error(client.post("/api/feedback", json=rating(42)), 422)


def test_a_correction_survives_a_restart_with_what_the_user_was_shown(tmp_path, embedder, generator):
    home = make_home(tmp_path / "kb", embedder)
    with serving(home, embedder, generator) as (url, _):
        sent = httpx.post(f"{url}/api/feedback", json=rating(CORRECTION_TEXT), timeout=60)
        assert sent.status_code == 201, sent.text
    with serving(home, embedder, generator) as (url, _):
        [kept] = httpx.get(f"{url}/api/feedback", timeout=60).json()["feedback"]
    assert (kept["question"], kept["answer"], kept["correction"], kept["sources"]) == (
        DATA_QUESTION, "In /tmp.", CORRECTION_TEXT, SOURCES)
    assert kept["rating"] == "down" and kept["created_at"] > 0


def test_ratings_stored_before_corrections_existed_stay_readable(tmp_path):
    path = tmp_path / "kbloop.sqlite"
    before = [m for m in MIGRATIONS if m[0] < "006"]
    old = Manifest(path, before)
    old_id = FeedbackStore(old.db).add("down", "Where is the walrus?", "In the sea.")
    old.close()
    manifest = Manifest(path, MIGRATIONS)
    try:
        store = FeedbackStore(manifest.db)
        new_id = store.add("down", "Where is the walrus?", "In the sea.", correction="On the ice.")
        assert [(f.id, f.correction) for f in store.eval_candidates()] == [(new_id, "On the ice."), (old_id, None)]
        assert [f.id for f in store.corrections()] == [new_id]
    finally:
        manifest.close()


# -- the dataset -----------------------------------------------------------------------------------

@pytest.fixture
def sample_kb(tmp_path, embedder):
    home = make_home(tmp_path / "kb", embedder)
    with KnowledgeBase(home, home.load_settings(environ={}), embedder=embedder) as kb:
        yield kb


def test_a_build_turns_each_new_correction_into_one_record_over_the_retrieval_context(sample_kb):
    kb = sample_kb
    first = build(kb)  # the documents' own records
    assert first.version == "0001" and first.corrections == 0
    correction_id = kb.feedback.add("down", DATA_QUESTION, "In /tmp.", sources=SOURCES, correction=CORRECTION_TEXT)
    kb.feedback.add("down", PORT_QUESTION, "Port 80.")  # no correction: nothing to learn

    counts = build(kb)
    assert (counts.version, counts.chunks_new, counts.corrections, counts.records_train, counts.records_eval,
            counts.records_retired, counts.by_generator) == ("0002", 0, 1, 1, 0, 0, {CORRECTION: 1})
    store = DatasetStore(kb.home, kb.manifest)
    [record] = store.records("0002")
    context = Assistant(kb, verifier=None).retrieve(DATA_QUESTION)
    assert context and [k.text for k in record.knowledge] == [h.text for h in context]
    assert (record.id, record.split, record.generator, record.instruction, record.answer, record.reference) == (
        correction_record_id(correction_id), "train", CORRECTION, DATA_QUESTION, CORRECTION_TEXT, CORRECTION_TEXT)
    assert record.source["feedback_id"] == correction_id and record.source["answer_given"] == "In /tmp."
    assert record.messages()[-1] == {"role": "assistant", "content": CORRECTION_TEXT}
    assert store.stats()["active_by_generator"][CORRECTION] == 1

    # Built once: the next build has nothing new, and keeps the record active.
    again = build(kb)
    assert (again.version, again.corrections, again.records_retired) == (None, 0, 0)
    assert store.status_of()[record.id] == "active"
    # A later correction is built on its own.
    later_id = kb.feedback.add("down", PORT_QUESTION, "Port 80.", correction="Harbor listens on port 8735.")
    latest = build(kb)
    assert latest.corrections == 1
    assert [r.id for r in store.records(latest.version)] == [correction_record_id(later_id)]
    assert [r.id for r in store.active_records("train") if r.generator == CORRECTION] == [
        correction_record_id(correction_id), correction_record_id(later_id)]


def test_a_correction_record_outlives_changes_to_the_documents(sample_kb):
    kb = sample_kb
    correction_id = kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)
    build(kb)
    for doc in (kb.home.root / "docs").iterdir():
        doc.unlink()
    kb.ingest()
    emptied = build(kb)
    assert emptied.chunks_retired > 0 and emptied.corrections == 0
    store = DatasetStore(kb.home, kb.manifest)
    assert [r.id for r in store.active_records()] == [correction_record_id(correction_id)]


GARDEN = {
    "tulips": "# Tulips\n\nPlant tulip bulbs in autumn, 15 cm deep, pointed end up, in well-drained soil.\n",
    "roses": "# Roses\n\nPrune roses in late winter, cutting each cane just above an outward-facing bud.\n",
    "compost": "# Compost\n\nTurn the compost heap every two weeks; it is ready when dark and crumbly.\n",
    "lawns": "# Lawns\n\nMow the lawn no shorter than 4 cm in summer, and water it early in the morning.\n",
    "tomatoes": "# Tomatoes\n\nTomato seedlings go outside after the last frost, 60 cm apart, with a stake each.\n",
}


def test_a_correction_is_trained_in_other_phrasings_that_ask_the_same_thing(sample_kb):
    kb = sample_kb
    for topic, text in GARDEN.items():  # other documents, so retrieval has more than the manual to choose from
        (kb.home.root / "docs" / f"{topic}.md").write_text(text)
    kb.ingest()
    retrieve = Assistant(kb, verifier=None).retrieve
    elsewhere = "How deep should tulip bulbs be planted?"
    best = retrieve(DATA_QUESTION)[0].text
    assert best not in {h.text for h in retrieve(elsewhere)}  # the scripted reply's premise
    same = "In which folder does Harbor store its data?"
    assert best in {h.text for h in retrieve(same)}
    correction_id = kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)
    teacher = Scripted({"questions": [same, f"  {DATA_QUESTION.upper()} ", elsewhere, "Data?",
                                             "Where does Harbor keep its", same]})
    made = []

    def rephraser():
        made.append(teacher)
        return teacher

    kb.settings = kb.settings.model_copy(update={"dataset_correction_phrasings": 3})
    counts = build(kb, rephraser=rephraser)
    assert made == [teacher] and "Write 3 other ways" in teacher.prompts[0] and DATA_QUESTION in teacher.prompts[0]
    # Kept: the phrasing whose sources hold the question's best one. Left out: the question again (case and
    # spacing aside), a question about something else, one too short, one cut off, and a repeat.
    assert (counts.corrections, counts.correction_phrasings, counts.by_generator[CORRECTION]) == (1, 1, 2)
    records = {r.instruction: r for r in DatasetStore(kb.home, kb.manifest).active_records("train")
               if r.generator == CORRECTION}
    assert set(records) == {DATA_QUESTION, same}
    other = records[same]
    assert (other.answer, other.reference, other.split, other.source["phrasing_of"], other.source["feedback_id"]) == (
        CORRECTION_TEXT, CORRECTION_TEXT, "train", DATA_QUESTION, correction_id)
    assert [k.text for k in other.knowledge] == [h.text for h in retrieve(same)]
    assert other.id == correction_record_id(correction_id, same) != correction_record_id(correction_id)
    assert "phrasing_of" not in records[DATA_QUESTION].source
    assert build(kb, rephraser=rephraser).version is None and len(teacher.prompts) == 1  # built once


def test_a_teacher_without_usable_phrasings_costs_only_the_phrasings(sample_kb, caplog):
    kb = sample_kb
    kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)
    counts = build(kb, rephraser=lambda: Scripted(None))
    assert (counts.corrections, counts.correction_phrasings) == (1, 0)
    # An Ollama teacher whose server is down: the correction is built, without phrasings.
    kb.feedback.add("down", "Which user does Harbor run as?", "As root.", correction="As the harbor user.")
    down = models.create("teacher", "ollama:qwen3:4b", Settings(ollama_url="http://127.0.0.1:9"))
    counts = build(kb, rephraser=lambda: down)
    assert (counts.corrections, counts.correction_phrasings) == (1, 0)
    assert caplog.text.count("the teacher wrote no other phrasings of a corrected question") == 2
    # Without a teacher (`--no-teacher`), or with the setting at 0, none is asked for.
    kb.feedback.add("down", PORT_QUESTION, "Port 80.", correction="Harbor listens on port 8735.")
    kb.settings = kb.settings.model_copy(update={"dataset_correction_phrasings": 0})
    asked = Scripted({"questions": ["Which port does Harbor listen on by default?"]})
    assert build(kb, rephraser=lambda: asked).correction_phrasings == 0 and asked.prompts == []


@pytest.mark.slow
def test_the_packaged_teacher_writes_phrasings_of_a_corrected_question(sample_kb, model_cache):
    kb = sample_kb
    kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)
    teacher = models.create("teacher", "local:qwen2.5-1.5b", Settings(model_cache=str(model_cache)))
    counts = build(kb, rephraser=lambda: teacher)
    records = [r for r in DatasetStore(kb.home, kb.manifest).active_records("train") if r.generator == CORRECTION]
    assert counts.correction_phrasings >= 2 and len(records) == 1 + counts.correction_phrasings, records
    best = records[0].knowledge[0].text
    assert len({r.instruction.lower() for r in records}) == len(records)
    assert all(best in {k.text for k in r.knowledge} and r.answer == CORRECTION_TEXT for r in records)


# -- answering -------------------------------------------------------------------------------------

PARAPHRASE = "In which folder does Harbor store its data?"
PORT = "Which port does Harbor listen on by default?"


def test_a_correction_answers_the_questions_that_ask_the_same_from_the_moment_it_is_sent(sample_kb, generator):
    kb = sample_kb
    rid = kb.feedback.add("down", DATA_QUESTION, "In /var/lib/harbor.", correction=CORRECTION_TEXT)
    assistant = Assistant(kb, generator)
    answer = assistant.ask(PARAPHRASE)
    first = answer.sources[0]
    assert (first.n, first.path, first.text) == (1, f"correction #{rid}", CORRECTION_TEXT)
    assert not answer.refused and "/srv/harbor/data" in answer.answer and first.cited
    # The documents' chunks follow, as retrieved; a question about something else gets those alone.
    assert [s.path for s in answer.sources[1:]] == [h.path for h in assistant.retrieve(PARAPHRASE)]
    assert not any(s.path.startswith("correction") for s in assistant.ask(PORT).sources)


def test_of_two_corrections_of_one_question_the_newest_is_given(sample_kb):
    kb = sample_kb
    kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction="Harbor keeps its data in /srv/old.")
    newer = kb.feedback.add("down", DATA_QUESTION, "In /srv/old.", correction=CORRECTION_TEXT)
    hit = kb.corrections.best(DATA_QUESTION, kb.settings.correction_match)
    assert (hit.vector_id, hit.text, hit.score) == (-newer, CORRECTION_TEXT, 1.0)


def test_a_kept_phrasing_lets_a_correction_answer_a_question_worded_far_from_the_one_asked(sample_kb):
    kb = sample_kb
    far = "What is the path of the directory where Harbor's stored data lives?"  # 0.84 from DATA_QUESTION
    phrasing = "Which directory holds the data that Harbor stores?"  # 0.90 from ``far``
    rid = kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)
    threshold = kb.settings.correction_match
    assert kb.corrections.best(far, threshold) is None
    kb.settings = kb.settings.model_copy(update={"dataset_correction_phrasings": 1})
    assert build(kb, rephraser=lambda: Scripted({"questions": [phrasing]})).correction_phrasings == 1
    hit = kb.corrections.best(far, threshold)
    assert (hit.vector_id, hit.text) == (-rid, CORRECTION_TEXT) and threshold <= hit.score < 1
    assert kb.corrections.best(PORT_QUESTION, threshold) is None
    # A withdrawn correction is matched through none of its phrasings either.
    kb.feedback.withdraw(rid)
    assert kb.corrections.best(far, threshold) is None and kb.corrections.best(phrasing, threshold) is None


def test_a_question_is_embedded_once_for_its_search_and_its_correction(sample_kb, monkeypatch):
    kb = sample_kb
    kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)
    question = "Where exactly does Harbor keep the data that it stores?"  # asked by no other test
    embedded: list[str] = []
    embed = kb.embedder.embed
    monkeypatch.setattr(kb.embedder, "embed", lambda texts: embedded.extend(texts) or embed(texts))
    hits = Assistant(kb, verifier=None).sources(question)
    assert hits[0].path.startswith("correction") and embedded.count(question) == 1
    # The kept vector is the query's own: searching again gives the same scores.
    k = kb.settings.retrieve_k
    assert [h.score for h in kb.search(question, k)] == [h.score for h in hits[1:k + 1]]


def test_evaluations_and_the_setting_leave_corrections_out(sample_kb, model_cache):
    kb = sample_kb
    kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)
    assert Assistant(kb, verifier=None).sources(DATA_QUESTION)[0].path.startswith("correction")
    assert not any(h.path.startswith("correction") for h in Assistant(kb, corrections=False).sources(DATA_QUESTION))
    off = KnowledgeBase(kb.home, kb.settings.model_copy(update={"corrections_as_sources": False}),
                        embedder=kb.embedder)
    with off:
        assert not any(h.path.startswith("correction") for h in Assistant(off).sources(DATA_QUESTION))
    # The gate's answers are the model's own: the corrected question is asked without its correction.
    settings = kb.settings.model_copy(update={"generator": "local:smollm2-135m", "model_cache": str(model_cache),
                                              "read_again": False})
    with KnowledgeBase(kb.home, settings, embedder=kb.embedder) as evaluated:
        [item] = build_evalset(evaluated, set(), [], 10, 0.3, with_feedback=False)
        [result] = answer_all(evaluated, None, [item], False, "base").values()
    assert result["source_paths"] and not any(p.startswith("correction") for p in result["source_paths"])


def test_a_correction_sent_through_the_api_answers_the_next_request(api):
    client, _ = api
    sent = client.post("/api/feedback", json=rating(CORRECTION_TEXT)).json()["id"]
    reply = client.post("/v1/chat/completions", json={"model": "kbloop",
                                                      "messages": [{"role": "user", "content": PARAPHRASE}]})
    assert reply.status_code == 200, reply.text
    first = reply.json()["kbloop"]["sources"][0]
    assert (first["path"], first["n"]) == (f"correction #{sent}", 1)  # the newest of this question's


def test_a_withdrawn_correction_is_read_by_no_answer_and_its_records_retire_at_the_next_build(sample_kb):
    kb = sample_kb
    rid = kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)
    built = build(kb)
    assert built.corrections == 1 and DatasetStore(kb.home, kb.manifest).status_of()[correction_record_id(rid)] == \
        "active"
    withdrawn = kb.feedback.withdraw(rid)
    assert withdrawn.withdrawn_at and withdrawn.correction == CORRECTION_TEXT  # taken back, not lost
    assert kb.feedback.withdraw(rid).withdrawn_at == withdrawn.withdrawn_at  # twice is once
    assert not any(h.path.startswith("correction") for h in Assistant(kb, verifier=None).sources(PARAPHRASE))
    [judged] = feedback_items(kb.feedback.eval_candidates())  # a thumbs-down still, with no reference
    assert (judged.question, judged.slice, judged.judge_only) == (DATA_QUESTION, "feedback", True)
    again = build(kb)
    assert (again.corrections_withdrawn, again.records_retired, again.corrections) == (1, 1, 0)
    store = DatasetStore(kb.home, kb.manifest)
    assert store.status_of()[correction_record_id(rid)] == "retired"
    assert build(kb).version is None  # retired once
    with pytest.raises(NotFound, match="has no correction"):
        kb.feedback.withdraw(kb.feedback.add("down", PORT, "8080"))
    with pytest.raises(NotFound, match="no rating 999"):
        kb.feedback.withdraw(999)


def test_a_correction_is_withdrawn_through_the_api_and_the_command_line(api, tmp_path, embedder):
    client, _ = api
    sent = client.post("/api/feedback", json=rating(CORRECTION_TEXT)).json()["id"]
    gone = client.delete(f"/api/feedback/{sent}/correction")
    assert gone.status_code == 200 and gone.json()["id"] == sent and gone.json()["withdrawn_at"]
    listed = {f["id"]: f for f in client.get("/api/feedback", params={"rating": "down"}).json()["feedback"]}
    assert listed[sent]["withdrawn_at"] and listed[sent]["correction"] == CORRECTION_TEXT
    plain = client.post("/api/feedback", json=rating(None)).json()["id"]
    assert assert_error(client.delete(f"/api/feedback/{plain}/correction"), 404).startswith(
        f"rating {plain} has no correction")
    assert assert_error(client.delete("/api/feedback/x/correction"), 422).startswith("id: expected")

    home = make_home(tmp_path / "kb", embedder)
    with KnowledgeBase(home, home.load_settings(environ={}), embedder=embedder) as kb:
        rid = kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)
    env = {"KBLOOP_HOME": str(home.root)}
    listed = run_cli("corrections", "list", env=env)
    assert listed.exit_code == 0 and f"#{rid}" in listed.output and CORRECTION_TEXT in listed.output
    assert run_cli("corrections", "withdraw", str(rid), env=env).exit_code == 0
    assert run_cli("corrections", "list", env=env).output.strip() == "no corrections"
    assert "(withdrawn)" in run_cli("corrections", "list", "--all", env=env).output
    assert cli_error(run_cli("corrections", "withdraw", "999", env=env), 3) == "error: no rating 999"


# -- the training run ------------------------------------------------------------------------------

def test_each_correction_is_trained_again_with_its_sources_in_another_order(sample_kb):
    kb = sample_kb
    kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)
    build(kb)
    records = {r.id: r for r in DatasetStore(kb.home, kb.manifest).active_records("train")}
    [correction] = [r for r in records.values() if r.generator == CORRECTION]
    assert len(correction.knowledge) >= 3
    config = TrainConfig.from_settings(kb.settings.model_copy(update={"finetune_correction_repeats": 5}))

    def orders(cfg: TrainConfig) -> list[tuple[str, ...]]:
        """Each extra copy's sources, in order (the encoder stands in for the tokenizer)."""
        return [tuple(e.record_id.split("|")) for e in repeated_corrections(
            records, list(records), cfg, lambda r: Example("|".join(k.text for k in r.knowledge), [1], [1]))]

    copies = orders(config)
    texts = tuple(k.text for k in correction.knowledge)
    assert len(copies) == 4 and all(sorted(c) == sorted(texts) for c in copies)  # only the correction, 4 more times
    assert len(set(copies) | {texts}) > 1  # not one arrangement of the prompt
    assert orders(config) == copies  # seeded: a resumed run trains the same copies
    assert orders(replace(config, correction_repeats=1)) == []


def test_a_corrections_repeats_are_spread_over_its_phrasings(sample_kb):
    kb = sample_kb
    kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)
    phrasings = ["In which folder does Harbor store its data?", "What is the path of Harbor's data folder?"]
    build(kb, rephraser=lambda: Scripted({"questions": phrasings}))
    records = {r.id: r for r in DatasetStore(kb.home, kb.manifest).active_records("train")}
    group = [r for r in records.values() if r.generator == CORRECTION]
    assert len(group) == 3
    config = TrainConfig.from_settings(kb.settings.model_copy(update={"finetune_correction_repeats": 7}))
    extra = repeated_corrections(records, list(records), config, lambda r: Example(r.instruction, [1], [1]))
    # 7 in all: the three records once each, then 4 copies in turn, the question as asked first.
    assert [e.record_id for e in extra] == [DATA_QUESTION, *phrasings, DATA_QUESTION]
    assert repeated_corrections(records, list(records), replace(config, correction_repeats=2),
                                lambda r: Example(r.instruction, [1], [1])) == []


# -- the evaluation --------------------------------------------------------------------------------

@pytest.fixture
def kb(home):
    with KnowledgeBase(home) as opened:
        yield opened


def test_a_correction_is_one_of_the_homes_own_questions_with_the_expected_answer(kb):
    kb.feedback.add("down", DATA_QUESTION, "In /tmp.")  # the page's thumbs-down first,
    kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)  # then the right answer
    kb.feedback.add("down", "Which user does Harbor run as?", "As root.")  # no correction

    # Without a judge only the corrected question is asked: it has a reference.
    [item] = build_evalset(kb, set(), [], 10, 0.3, with_feedback=False)
    assert (item.question, item.reference, item.slice, item.judge_only) == (
        DATA_QUESTION, CORRECTION_TEXT, "user", False)
    # With one, the thumbs-down without a correction is a judge-only item.
    items = build_evalset(kb, set(), [], 10, 0.3, with_feedback=True)
    by_question = {i.question: i for i in items}
    assert len(items) == 2 and by_question[DATA_QUESTION] == item
    judged = by_question["Which user does Harbor run as?"]
    assert (judged.slice, judged.reference, judged.judge_only) == ("feedback", "", True)


def test_a_short_answer_that_states_the_corrections_value_counts_as_right(kb):
    kb.feedback.add("down", PORT_QUESTION, "Port 80.", correction="Harbor listens on port 8735 by default.")
    [item] = build_evalset(kb, set(), [], 10, 0.3)
    assert item.accept == ("8735",)
    assert matches("8735", [item.reference, *item.accept]) and not matches("Port 80.", [item.reference, *item.accept])
    # Only a single number the question does not already hold is a value; else the sentence alone.
    assert correction_value("Is the timeout 300 seconds?", "No: 600 seconds, not 300.") == ("600",)
    assert correction_value("Which exit codes mark a bad commit?", "Any from 1 to 127, except 125.") == ()
    assert correction_value("Which user does Harbor run as?", "As the harbor user.") == ()


def test_the_gate_checks_that_a_candidate_states_the_correction(kb):
    kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)
    [item] = build_evalset(kb, set(), [], 10, 0.3)

    def answered(correct: bool) -> dict:
        return {item.id: {"correct": correct, "f1": float(correct), "refused": False}}

    better = decide(side_metrics([item], answered(True), {}, 5), side_metrics([item], answered(False), {}, 5), 0.02)
    worse = decide(side_metrics([item], answered(False), {}, 5), side_metrics([item], answered(True), {}, 5), 0.02)
    assert better.decision == "accept" and worse.decision == "reject"
    assert any(r.startswith("your questions: accuracy 0.000 is worse") for r in worse.reasons)


def test_a_question_the_homes_file_asks_is_not_asked_twice(kb, tmp_path):
    own = tmp_path / "questions.jsonl"
    own.write_text('{"question": "where does harbor keep its data folder", "answer": "/var/lib/harbor"}\n')
    kb.feedback.add("down", DATA_QUESTION, "In /tmp.", correction=CORRECTION_TEXT)
    [item] = build_evalset(kb, set(), [own], 10, 0.3)
    assert item.reference == "/var/lib/harbor"


# -- the command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("dataset", "--help"), ("dataset", "build", "--help")])
def test_the_dataset_help_says_how_corrections_enter_the_data(args):
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "correction" in text.lower() and "training record" in text


# -- the web page ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(web.MISSING is not None and not web.UNDER_CI, reason=str(web.MISSING))
def test_pressing_wrong_opens_a_box_that_sends_the_right_answer(tmp_path, embedder, generator, browser):
    home = make_home(tmp_path / "kb", embedder)
    with serving(home, embedder, generator) as (url, _):
        browser.get(url)
        wait = WebDriverWait(browser, 90)
        browser.find_element(By.ID, "question").send_keys(PORT_QUESTION)
        browser.find_element(By.ID, "ask-button").click()
        answer = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".turn .answer"))
        wait.until(lambda d: answer.get_attribute("data-state") == "done")
        box = browser.find_element(By.CSS_SELECTOR, ".turn .correction")
        wrong = browser.find_element(By.CSS_SELECTOR, ".turn .thumb[data-rating='down']")
        assert not box.is_displayed() and wrong.get_attribute("aria-expanded") == "false"

        wrong.click()
        wait.until(lambda d: box.is_displayed())
        text = box.find_element(By.TAG_NAME, "textarea")
        assert wrong.get_attribute("aria-expanded") == "true"
        assert browser.switch_to.active_element == text
        assert box.find_element(By.TAG_NAME, "label").text.startswith("The right answer")
        send = box.find_element(By.CSS_SELECTOR, "button[type='submit']")
        send.click()  # nothing typed: nothing sent
        wait.until(lambda d: web.text_of(d, ".turn .correction-state"))
        assert "Type the right answer" in web.text_of(browser, ".turn .correction-state")

        text.send_keys("Harbor listens on port 8735 unless harbor.toml says otherwise.")
        send.click()
        wait.until(lambda d: "Thanks" in web.text_of(d, ".turn .correction-state"))
        assert not send.is_enabled()
        [kept] = corrections_of(home)
        assert (kept.question, kept.answer, kept.correction) == (
            PORT_QUESTION, answer.text, "Harbor listens on port 8735 unless harbor.toml says otherwise.")
        assert kept.sources and kept.sources[0]["path"] == "getting-started.md"
        assert len(ratings_of(home)) == 2  # the thumbs-down, then the correction

        # Asked again, the answer reads the correction, which its source offers to withdraw.
        question = browser.find_element(By.ID, "question")
        question.clear()
        question.send_keys(PORT_QUESTION)
        browser.find_element(By.ID, "ask-button").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".turn")) == 2)
        newest = browser.find_element(By.CSS_SELECTOR, ".turn")  # the page puts the newest first
        wait.until(lambda d: newest.find_element(By.CSS_SELECTOR, ".answer").get_attribute("data-state") == "done")
        first = newest.find_element(By.CSS_SELECTOR, ".sources li")
        assert first.find_element(By.TAG_NAME, "button").text.startswith(f"[1] correction #{kept.id}")
        first.find_element(By.CSS_SELECTOR, "button.withdraw").click()
        wait.until(lambda d: "Withdrawn" in first.find_element(By.CSS_SELECTOR, ".withdraw-state").text)
        assert corrections_of(home) == [] and [r.id for r in ratings_of(home) if r.withdrawn_at] == [kept.id]

        # The first turn's "Take it back" is the same withdrawal, and repeating it is harmless.
        earlier = browser.find_elements(By.CSS_SELECTOR, ".turn")[1]
        earlier.find_element(By.CSS_SELECTOR, ".correction button.withdraw").click()
        wait.until(lambda d: "Withdrawn" in earlier.find_element(By.CSS_SELECTOR, ".correction .withdraw-state").text)
        assert web.page_errors(browser) == []
