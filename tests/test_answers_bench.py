"""bench/answers.py's ``api`` pipeline: kbloop through ``kbloop serve``'s OpenAI-compatible API
answers as the in-process pipeline does, so that a measurement made through the API (as a chat
client meets kbloop) and one made in process can be compared question by question.

Real parts: the bundled sample manual, the packaged embedder, the smallest packaged chat model,
and a real HTTP server on a loopback port."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench_scripts import bench_script
from kbloop.kb import KnowledgeBase

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def answers():
    """bench/answers.py as a module."""
    with bench_script("answers") as module:
        yield module


@pytest.fixture
def sample_kb(sample_home, embedder):
    """The bundled sample manual (conftest's ``sample_home``), ingested."""
    with KnowledgeBase(sample_home, sample_home.load_settings(), embedder=embedder) as kb:
        kb.ingest()
    return sample_home


def test_the_api_pipeline_answers_as_the_in_process_pipeline(answers, sample_kb, embedder, generator):
    settings = sample_kb.load_settings().model_copy(update={"generator": generator.spec, "max_new_tokens": 40})
    question = "Which port does Harbor listen on by default?"
    follow_up = [(question, "8080")]
    replies = {}
    for cls in (answers.KbloopPipeline, answers.ApiPipeline):
        pipeline = cls(sample_kb, embedder, generator, settings)
        try:
            replies[pipeline.name] = (pipeline.top_files(question), pipeline.answer(question),
                                      pipeline.answer("And how do I change it?", follow_up))
        finally:
            pipeline.close()
    in_process, api = replies["kbloop"], replies["api"]
    assert api[0] == in_process[0] and api[0], "/api/search ranks the files as kb.search does"
    for got, expected in zip(api[1:], in_process[1:]):
        assert got.answer == expected.answer and got.answer.strip()
        assert (got.refused, got.refusal_reason, got.steps) == (expected.refused, expected.refusal_reason, expected.steps)
        assert got.sources == expected.sources and got.sources
        assert got.prompt_tokens == expected.prompt_tokens > 0


def test_the_api_pipeline_is_offered_and_unknown_pipelines_are_refused(answers, capsys):
    assert answers.parse_args(["--pipelines", "api"]).pipelines == ["api"]
    assert answers.parse_args([]).pipelines == ["kbloop", "plain"]
    with pytest.raises(SystemExit):
        answers.parse_args(["--pipelines", "kbloop,served"])
    assert "expected some of kbloop, plain, api" in capsys.readouterr().err


def test_several_benchmarks_are_named_and_reported_side_by_side(answers, tmp_path):
    args = answers.parse_args(["--bench", f"pydev,pgdev,{tmp_path}"])
    assert args.benches == [REPO / "bench" / "pydev", REPO / "bench" / "pgdev", tmp_path.resolve()]
    assert answers.parse_args([]).benches == [answers.DEFAULT_BENCH.resolve()]
    half = {"rate": 0.5, "n": 1, "of": 2}
    summary = {"hit1": half, "hit5": half, "accuracy": half, "refusal": half, "false_refusal": half,
               "cited_gold": half, "multi_hop_accuracy": {"rate": None}, "median_first_token_s": 1.5,
               "median_tokens_per_s": 20.0, "seconds": 9}
    rows = [{"model": "m", "pipeline": "kbloop", "summary": summary, "corpus": name} for name in ("pydev", "pgdev")]
    table = answers.summary_table(rows).splitlines()
    assert table[0].startswith("| corpus | model | pipeline |")
    assert [line.split(" | ")[0] for line in table[2:]] == ["| pydev", "| pgdev"]
    assert not answers.summary_table([{k: v for k, v in rows[0].items() if k != "corpus"}]).startswith("| corpus")
    # the chat scenarios side by side, as a run of --chat-only over several benchmarks ends
    chat = {k: half for k in ("turns", "first", "follow-up", "switch", "carried_over")}
    chats = answers.chat_table([{**row, "chat": chat} for row in rows]).splitlines()
    assert chats[0].startswith("| corpus | model | pipeline | all turns |")
    assert [line.split(" | ")[0] for line in chats[2:]] == ["| pydev", "| pgdev"]


def test_a_folder_that_is_no_benchmark_stops_the_run_before_any_is_run(answers, tmp_path, capsys):
    with pytest.raises(SystemExit, match="is not a benchmark folder"):
        answers.main(["--bench", f"pgdev,{tmp_path}", "--pipelines", "plain"])
    assert "# pgdev" not in capsys.readouterr().out


def test_every_chat_scenario_reuses_its_benchmarks_items(answers):
    scenarios = sorted(answers.CHAT_DIR.glob("*.jsonl"))
    assert {p.stem for p in scenarios} >= {"pydev", "pgdev"}
    for path in scenarios:
        bench = answers.CORPORA[path.stem]
        if not (bench / "qa_initial.jsonl").is_file():
            continue  # kbdev lives beside the repository, not in it
        chats = answers.load_chats(bench, [])
        assert chats, path
        items = {i["id"]: i for i in answers.read_jsonl(bench / "qa_initial.jsonl", None)}
        for chat in chats:
            kinds = [t["kind"] for t in chat["turns"]]
            assert kinds[0] == "first" and sorted(kinds) == ["first", "follow-up", "switch"], (path.stem, chat["id"])
            for turn in chat["turns"]:
                # a follow-up is a rewording that leans on the turn before; the others are the items as written
                as_written = turn["question"] == items[turn["id"]]["question"]
                assert as_written == (turn["kind"] != "follow-up"), (path.stem, chat["id"], turn["id"])


def test_ids_ask_only_the_items_they_name(answers, capsys):
    pydev = REPO / "bench" / "pydev"
    items = answers.load_items(pydev, None, answers.parse_args(["--ids", "i03,n02"]).ids)
    assert [(i["id"], i["set"]) for i in items] == [("i03", "qa_initial"), ("n02", "qa_unanswerable")]
    assert len(answers.load_items(pydev, None)) == 50
    with pytest.raises(SystemExit):
        answers.parse_args(["--ids", ","])
    assert "--ids: name at least one item" in capsys.readouterr().err
