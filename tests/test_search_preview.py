"""Search results show the sentences of each chunk that match the query, not its first lines."""

from __future__ import annotations

import json

from conftest import run_cli

from kbloop.text import passage

CHUNK = """Harbor is a small self-hosted server. It keeps folders in sync between machines.

Harbor listens on TCP port 8735 by default. Change it with the listen_port key.
Logs are written to /var/log/harbor."""


def test_the_passage_is_the_best_matching_sentences_in_order():
    assert passage(CHUNK, "which port does harbor listen on") == (
        "Harbor listens on TCP port 8735 by default. … Change it with the listen_port key.")
    assert passage(CHUNK, "where are logs written").startswith("Logs are written to /var/log/harbor.")


def test_without_a_shared_word_the_passage_is_the_start_and_stays_short():
    assert passage(CHUNK, "zebra") == "Harbor is a small self-hosted server."
    assert passage("word " * 400, "word").endswith(" …") and len(passage("word " * 400, "word")) <= 240
    assert passage("", "anything") == ""


def test_kbloop_search_shows_the_matching_sentence(sample_home, open_kb):
    open_kb(sample_home).ingest()
    env = {"KBLOOP_HOME": str(sample_home.root)}
    question = "how long are snapshots kept"
    printed = run_cli("search", question, "-k", "3", "--local", env=env)
    assert printed.exit_code == 0, printed.output
    hits = json.loads(run_cli("search", question, "-k", "3", "--local", "--json", env=env).output)
    best = hits[0]
    assert best["preview"] == passage(best["text"], question) and "snapshot" in best["preview"].lower()
    assert f"    {best['preview']}" in printed.output.splitlines()
