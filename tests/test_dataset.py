"""Datasets: extractive pairs, RAFT records, versions, retirement, splits, export, the teacher."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import cli_env, cli_error, run_cli
from fake_ollama import FakeOllama

from kbloop import models
from kbloop.dataset.build import build, indexed_chunks
from kbloop.dataset.extractive import entries, extract_pairs
from kbloop.dataset.filters import supported
from kbloop.dataset.store import DatasetStore
from kbloop.prompt import DONT_KNOW

TOOLS = {
    "ferry.md": """
        # ferry(1) Manual Page

        ## DESCRIPTION

        Ferry copies archives between harbours. A harbour is a directory that ferry keeps in step with a remote one.

        ## OPTIONS

        --depth=<n> Copy only the last n revisions of each archive. The default is 12 revisions.

        --quiet Print nothing but errors.

        --retries <count> Try a failed transfer again this many times. Defaults to 4.

        ## CONFIGURATION

        ferry.timeout Seconds to wait for a harbour to answer before giving up. The default value is 90.

        ferry.compress Compress archives in transit with zstd level 3 when set to true.
        """,
    "dock.md": """
        # dock(1) Manual Page

        ## DESCRIPTION

        Dock moors a ferry at a harbour and unloads its archives. A mooring is a lock file that dock holds while it unloads.

        ## OPTIONS

        --berth <name> Moor at the named berth instead of the first free one.

        --keep Keep the archives on the ferry after unloading them. By default dock removes them.

        --wait=<seconds> Wait this long for a free berth. The default is 300 seconds.
        """,
    "tide.md": """
        # tide(1) Manual Page

        ## DESCRIPTION

        Tide schedules ferries. A timetable is a text file with one departure per line.

        ## OPTIONS

        --window=<minutes> Only schedule departures within this many minutes. The default is 45 minutes.

        --dry-run Show the schedule without sending any ferry.
        """,
}


def write_manuals(docs: Path, names=None) -> None:
    for name, text in TOOLS.items():
        if names is None or name in names:
            (docs / name).write_text(textwrap.dedent(text).strip() + "\n", encoding="utf-8")


@pytest.fixture
def manual_kb(home, open_kb):
    write_manuals(home.root / "docs")
    kb = open_kb(dataset_eval_fraction=0.0)
    kb.ingest()
    return kb


def active(kb, split=None):
    return DatasetStore(kb.home, kb.manifest).active_records(split)


# -- extractive pairs and the support filter -------------------------------------------------


def test_extractive_pairs_read_options_defaults_and_definitions():
    text = textwrap.dedent(TOOLS["ferry.md"]).split("## OPTIONS")[1]
    first = extract_pairs(text, {"title": "ferry(1) Manual Page", "section": "OPTIONS"}, "ferry.md")
    pairs = {p.question: p for p in first}
    # Answers are one sentence that begins with its subject; the evidence is the document's own words.
    depth = pairs["What does the --depth option do in ferry?"]
    assert depth.answer == "The --depth option of ferry copies only the last n revisions of each archive."
    assert depth.evidence == "Copy only the last n revisions of each archive."
    assert pairs["What is the default for --depth in ferry?"].answer == "The default for --depth in ferry is 12 revisions."
    assert pairs["By default, what is --retries in ferry?"].answer == "The default for --retries in ferry is 4."
    timeout = pairs["By default, what is ferry.timeout in ferry?"]
    assert (timeout.answer, timeout.evidence) == ("The default for ferry.timeout in ferry is 90.", "The default value is 90.")
    # A description that does not open with an instruction is quoted after the subject.
    assert pairs["How is ferry.timeout used by ferry?"].answer == (
        "The ferry.timeout setting of ferry: Seconds to wait for a harbour to answer before giving up.")
    assert pairs["How is ferry.compress used by ferry?"].generator == "extractive:config"
    assert pairs["What does the --quiet option do in ferry?"].answer == "The --quiet option of ferry prints nothing but errors."
    # Questions come in several phrasings, the same ones in every build.
    assert "How does --retries change what ferry does?" in pairs
    again = extract_pairs(text, {"title": "ferry(1) Manual Page", "section": "OPTIONS"}, "ferry.md")
    assert [p.question for p in again] == [p.question for p in first]
    # "(Default: …)" states a default too; an option is named by its long form.
    listed = {p.generator: p for p in extract_pairs(
        "-p\n--port\nThe port number to bind the httpd to.  (Default: 1234)\n", {}, "dock.html")}
    assert listed["extractive:option"].answer == "The --port option of dock: The port number to bind the httpd to."
    assert (listed["extractive:default"].answer, listed["extractive:default"].evidence) == (
        "The default for --port in dock is 1234.", "(Default: 1234)")
    definition = extract_pairs("A harbour is a directory that ferry keeps in step with a remote one.", {}, "x.md")
    assert [p.question for p in definition] == ["What is harbour, according to x?"]


def test_pdf_layout_puts_the_flag_on_its_own_line():
    pdf_text = "--signoff\n--no-signoff\nAdd a Signed-off-by trailer at the end of the\ncommit log message.\n--quiet\nBe quiet."
    found = entries(pdf_text)
    assert [(e.name, e.description) for e in found] == [
        ("--signoff / --no-signoff", "Add a Signed-off-by trailer at the end of the commit log message."),
        ("--quiet", "Be quiet."),
    ]


def test_support_filter():
    chunk = "The server listens on port 8735 by default. Change it with listen_port."
    assert supported("port 8735", chunk)
    assert supported("It listens on port 8735 by default", chunk)
    assert not supported("port 8080", chunk)  # a number the chunk never states
    assert not supported("It uses mDNS discovery over IPv6", chunk)


# -- builds ------------------------------------------------------------------------------------


def test_unchanged_knowledge_base_yields_no_new_records(manual_kb):
    first = build(manual_kb)
    assert first.version == "0001" and first.records_train > 10
    assert first.documents_read == sorted(p.name for p in (manual_kb.home.root / "docs").iterdir())
    assert first.changes(limit=1)["read"] == first.documents_read[:1]
    assert first.pairs_unsupported == 0  # extractive answers are the chunk's own words
    again = build(manual_kb)
    assert again.version is None
    assert (again.records_train, again.records_eval, again.records_retired, again.chunks_new) == (0, 0, 0, 0)
    assert DatasetStore(manual_kb.home, manual_kb.manifest).versions()[-1]["version"] == "0001"


def test_editing_a_file_builds_only_its_changed_chunks_and_retires_the_old(manual_kb, home):
    build(manual_kb)
    before = {r.id: r for r in active(manual_kb)}
    docs = home.root / "docs"
    text = (docs / "dock.md").read_text().replace("The default is 300 seconds.", "The default is 600 seconds.")
    (docs / "dock.md").write_text(text)
    manual_kb.ingest()

    counts = build(manual_kb)
    assert counts.version == "0002"
    now = {r.id: r for r in active(manual_kb)}
    added = [r for rid, r in now.items() if rid not in before]
    gone = [r for rid, r in before.items() if rid not in now]
    dock_hashes = {h for h, c in indexed_chunks(manual_kb.manifest).items() if c.path == "dock.md"}
    assert added and all(r.source["path"] == "dock.md" and r.source["text_hash"] in dock_hashes for r in added)
    assert gone and all(r.source["path"] == "dock.md" for r in gone)
    assert counts.records_retired == len(gone)
    assert (counts.documents_read, counts.documents_retired) == (["dock.md"], {"dock.md": "changed"})
    assert counts.summary()["changed"] == {"read": ["dock.md"], "read_total": 1,
                                           "retired": {"dock.md": "changed"}, "retired_total": 1}
    assert any("600 seconds" in r.reference for r in added)
    assert not any("300 seconds" in r.reference for r in now.values())
    rows = manual_kb.manifest.db.execute(
        "SELECT DISTINCT retired_reason, retired_in FROM dataset_records WHERE status = 'retired'").fetchall()
    assert [tuple(r) for r in rows] == [("changed", "0002")]
    # The old version's file is never edited: the retired records are still in it.
    old = {r.id for r in DatasetStore(manual_kb.home, manual_kb.manifest).records("0001")}
    assert {r.id for r in gone} <= old


def test_deleting_a_file_retires_its_records(manual_kb, home):
    build(manual_kb)
    assert any(r.source["path"] == "tide.md" for r in active(manual_kb))
    (home.root / "docs" / "tide.md").unlink()
    manual_kb.ingest()
    counts = build(manual_kb)
    assert counts.records_retired > 0 and counts.records_train == 0
    assert counts.changes() == {"read": [], "read_total": 0, "retired": {"tide.md": "deleted"}, "retired_total": 1}
    assert not any(r.source["path"] == "tide.md" for r in active(manual_kb))
    reasons = {r[0] for r in manual_kb.manifest.db.execute(
        "SELECT retired_reason FROM dataset_records WHERE status = 'retired'")}
    assert reasons == {"deleted"}


def test_oracle_and_distractor_proportions_follow_the_settings(home, open_kb):
    write_manuals(home.root / "docs")
    kb = open_kb(dataset_eval_fraction=0.0, dataset_oracle_p=0.5, dataset_distractors=2)
    kb.ingest()
    build(kb)
    records = active(kb)
    assert len(records) >= 15
    with_source = [r for r in records if r.oracle]
    share = len(with_source) / len(records)
    # Each record's coin is seeded by its id, so this is reproducible; for p = 0.5 and n >= 15
    # a share outside [0.2, 0.8] would be a < 2% event for a fair coin.
    assert 0.2 <= share <= 0.8, share
    for r in records:
        oracles = [k for k in r.knowledge if k.oracle]
        assert len(oracles) == (1 if r.oracle else 0)
        assert len(r.knowledge) - len(oracles) == 2
        assert r.answer == (r.reference if r.oracle else DONT_KNOW)
        assert all(not supported(r.reference, k.text) for k in r.knowledge if not k.oracle)
    p_one = open_kb(dataset_eval_fraction=0.0, dataset_oracle_p=1.0)
    assert p_one.settings.dataset_oracle_p == 1.0


def test_train_and_eval_never_share_a_chunk(home, open_kb):
    write_manuals(home.root / "docs", ["ferry.md", "dock.md"])
    kb = open_kb(dataset_eval_fraction=0.4, chunk_size=200, chunk_overlap=20)  # many small chunks
    kb.ingest()
    build(kb)
    write_manuals(home.root / "docs")  # tide.md arrives later
    kb.ingest()
    build(kb)
    train = {r.source["text_hash"] for r in active(kb, "train")}
    held_out = {r.source["text_hash"] for r in active(kb, "eval")}
    assert train and held_out
    assert not train & held_out
    assert all(r.oracle for r in active(kb, "eval"))


def test_export_formats_load_with_datasets(manual_kb, tmp_path):
    build(manual_kb)
    n = len(active(manual_kb, "train"))
    env = {"KBLOOP_HOME": str(manual_kb.home.root)}
    for fmt in ("chat", "alpaca"):
        out = tmp_path / f"{fmt}.jsonl"
        result = run_cli("dataset", "export", "--format", fmt, "-o", str(out), env=env)
        assert result.exit_code == 0, result.output
        import datasets

        loaded = datasets.load_dataset("json", data_files=str(out), split="train")
        assert len(loaded) == n
        row = loaded[0]
        if fmt == "chat":
            assert [m["role"] for m in row["messages"]][-2:] == ["user", "assistant"]
            assert "Sources:" in row["messages"][-2]["content"]
        else:
            assert set(row) >= {"system", "instruction", "input", "output"}
            assert row["input"].startswith("Sources:")


def test_cli_build_stats_show(manual_kb):
    env = {"KBLOOP_HOME": str(manual_kb.home.root)}
    result = run_cli("dataset", "build", "--no-teacher", env=env)
    assert result.exit_code == 0, result.output
    assert "dataset 0001:" in result.output
    result = run_cli("dataset", "build", "--no-teacher", env=env)
    assert "nothing new" in result.output
    stats = json.loads(run_cli("dataset", "stats", "--json", env=env).output)
    assert stats["latest"] == "0001" and set(stats["active_by_source"]) == set(TOOLS)
    shown = run_cli("dataset", "show", "-n", "2", "--json", env=env).output.strip().splitlines()
    assert len(shown) == 2 and json.loads(shown[0])["status"] == "active"
    missing = DatasetStore(manual_kb.home, manual_kb.manifest).records_file("0099")
    result = run_cli("dataset", "show", "0099", env=env)
    assert cli_error(result, 3) == f"error: dataset version 0099 has no records file at {missing}"


# -- the teacher -------------------------------------------------------------------------------


def test_teacher_pairs_are_filtered_for_support_and_bad_json_is_skipped(home, open_kb):
    write_manuals(home.root / "docs", ["tide.md"])
    kb = open_kb(dataset_eval_fraction=0.0, dataset_teacher_pairs=2)
    kb.ingest()
    calls = []

    def reply(body):
        calls.append(body)
        assert body.get("format", {}).get("required") == ["pairs"]  # the schema goes out as format=
        if len(calls) == 1:
            return "this is not JSON"
        return json.dumps({"pairs": [
            {"question": "How far ahead does tide schedule departures by default?", "answer": "45 minutes"},
            {"question": "Which port does tide listen on?", "answer": "port 9999"},
        ]})

    with FakeOllama(models=["teacher-model"], reply=reply) as fake:
        settings = kb.settings.model_copy(update={"ollama_url": fake.url})
        teacher = models.create("teacher", "ollama:teacher-model", settings)
        counts = build(kb, teacher)
    questions = {r.instruction for r in active(kb)}
    assert "How far ahead does tide schedule departures by default?" in questions
    assert "Which port does tide listen on?" not in questions
    assert counts.pairs_unsupported >= 1
    assert counts.by_generator.get("teacher:ollama:teacher-model", 0) >= 1
    assert counts.version == "0001"  # a teacher that failed on one chunk did not stop the build


@pytest.mark.slow
def test_build_works_offline_with_no_language_model(tmp_path):
    """A build from the command line with sockets blocked: extractive pairs only, no attempt."""
    script = textwrap.dedent("""
        import json, socket, sys
        attempts = []
        def refuse(*args, **kwargs):
            attempts.append(str(args[1:]))
            raise OSError("network blocked in test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        sys.path.insert(0, sys.argv[2])
        from test_dataset import write_manuals
        from kbloop.cli.main import main
        from kbloop.config import init_home
        home = init_home(sys.argv[1])
        write_manuals(home.root / "docs")
        import contextlib, io
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["--home", sys.argv[1], "ingest"]) == 0
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown):
            code = main(["--home", sys.argv[1], "dataset", "build", "--no-teacher", "--json"])
        print(json.dumps({"code": code, "attempts": attempts, "counts": json.loads(shown.getvalue())}))
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "kb"), str(Path(__file__).parent)],
                         env=cli_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["code"], result["attempts"]) == (0, [])
    assert result["counts"]["records_train"] + result["counts"]["records_eval"] > 10
