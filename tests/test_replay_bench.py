"""bench/replay.py: today's model-free checks put over the replies a run of bench/answers.py
recorded, with retrieval repeated on a fresh home of the benchmark's corpus, so that what a new
check would stop is known before a run.

Real parts: the bundled sample manual as a benchmark's corpus, the packaged embedder."""

from __future__ import annotations

import json
import shutil
from importlib import resources

import pytest

from bench_scripts import bench_script


@pytest.fixture(scope="module")
def replay():
    """bench/replay.py as a module."""
    with bench_script("replay") as module:
        yield module


def record(id_: str, question: str, answer: str, expected: str, correct: bool, pipeline: str = "api") -> dict:
    return {"id": id_, "set": "qa_unanswerable" if expected == "NOT_IN_KB" else "qa_initial", "pipeline": pipeline,
            "question": question, "expected": expected, "answer": answer, "correct": correct, "refused": False}


def test_a_recorded_run_shows_what_todays_checks_would_stop(replay, tmp_path, capsys):
    bench = tmp_path / "harbor"
    (bench / "corpus" / "initial").mkdir(parents=True)
    for item in resources.files("kbloop.samples").iterdir():
        if item.name.endswith((".md", ".txt", ".html")):
            with resources.as_file(item) as src:
                shutil.copyfile(src, bench / "corpus" / "initial" / item.name)
    run = tmp_path / "answers-20261204-120000.jsonl"
    records = [
        record("i01", "Which port does Harbor listen on by default?", "Harbor listens on TCP port 8735 by default.",
               "8735", True),
        record("n01", "What is the highest port number Harbor can be told to listen on?",
               "The highest port Harbor accepts is 8735.", "NOT_IN_KB", False),
        record("i02", "Which port does Harbor listen on by default?", "I don't know; the sources do not say.",
               "8735", False, pipeline="plain"),
    ]
    run.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    replay.main([str(run), "--bench", str(bench), "--workdir", str(tmp_path / "work")])
    out = capsys.readouterr().out
    # the right answer stands; the near miss would be refused by the bound check, which its run lacked
    assert "api: 1 of 2 replies stopped (1 wrong answer refused); accuracy 1/1 -> 1/1, refusal 0/1 -> 1/1" in out
    assert "n01  refused" in out and "the question asks for a bound, and no source gives 8735 as one" in out
    assert "i01" not in out
    # a reply that answered nothing would be read again in a real run: its outcome is left open
    assert "plain (no kbloop checks in its run" in out and "i02  read again" in out


def test_a_file_without_a_benchmark_stops_with_one_line(replay, tmp_path):
    run = tmp_path / "answers-20261204-120000.jsonl"
    run.write_text("{}\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="name its benchmark with --bench"):
        replay.main([str(run)])
    run.write_text("not json\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="not a file of bench/answers.py"):
        replay.main([str(run), "--bench", "kbdev"])
    with pytest.raises(SystemExit, match="cannot read it"):
        replay.main([str(tmp_path / "missing.jsonl"), "--bench", "kbdev"])
