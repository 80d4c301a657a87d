"""KBLOOP_PASSAGE_CHARS: the answering model reads each long source cut to its first line and
the sentences closest to the question; users and checks see the whole chunk."""

from __future__ import annotations

from fake_ollama import FakeOllama
from kbloop import models
from kbloop.assistant.answer import Assistant
from kbloop.assistant.passages import GAP, narrowed
from kbloop.config import Settings
from kbloop.ingest.manifest import Hit

SYNC = Hit(7, 0.6, "sync.md", (
    "sync options\n\n"
    "The sync.interval key sets how often a client looks for changes. "
    "Its value is in seconds and defaults to 300. "
    "Clients on battery power wait twice as long between looks. "
    "The sync.conflicts key decides what happens when two machines change the same file. "
    "With the default, keep-both, the later copy is renamed with the machine's name. "
    "Large files are sent in blocks of 4 MiB so that an interrupted transfer can resume. "
    "Transfers are encrypted with TLS 1.3 and cannot be sent unencrypted."), {"section": "sync"})


def test_a_long_source_is_cut_to_its_first_line_and_the_sentences_nearest_the_question(embedder):
    [cut] = narrowed("What happens when two machines change the same file?", [SYNC], 240, embedder)
    assert cut.text.startswith("sync options" + GAP)
    assert "The sync.conflicts key decides what happens when two machines change the same file." in cut.text
    assert "TLS 1.3" not in cut.text and len(cut.text) <= 240
    assert (cut.path, cut.vector_id, cut.metadata) == (SYNC.path, SYNC.vector_id, SYNC.metadata)


def test_whole_chunks_are_read_by_default_and_short_ones_always(embedder):
    assert narrowed("What happens when two machines change the same file?", [SYNC], 0, embedder) == [SYNC]
    assert narrowed("How often?", [SYNC], 5000, embedder) == [SYNC]


def test_the_best_sentence_is_kept_even_when_it_alone_is_longer_than_the_limit(embedder):
    [cut] = narrowed("How large are the blocks large files are sent in?", [SYNC], 20, embedder)
    assert cut.text == "sync options" + GAP + "Large files are sent in blocks of 4 MiB so that an interrupted " \
                                                "transfer can resume."


def test_the_model_reads_the_cut_sources_and_the_user_is_shown_whole_ones(sample_home, open_kb):
    with FakeOllama(models=("qwen3:4b",), reply=lambda body: "Harbor listens on TCP port 8735.") as server:
        kb = open_kb(sample_home, passage_chars=160, read_again=False)
        kb.ingest()
        gen = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        final = Assistant(kb, gen).ask("Which port does Harbor listen on by default?")
        [prompt] = [body["messages"][-1]["content"] for path, body in server.requests if path == "/api/chat"]
    assert not final.refused and "8735" in prompt and GAP in prompt
    for source in final.sources:
        assert source.text not in prompt or len(source.text) <= 160
    assert any(len(source.text) > 160 for source in final.sources)
