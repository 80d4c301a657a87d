"""Embedder backends: the packaged model, and Ollama over its real HTTP API on loopback."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from docs_factory import write_corpus
from fake_ollama import FakeOllama
from kbloop import models
from kbloop.config import Settings
from kbloop.errors import BackendUnavailable, ConfigError
from kbloop.kb import KnowledgeBase


def test_packaged_embedder_gives_unit_vectors_that_rank_meaning(embedder):
    vectors = embedder.embed(["The cat sat on the mat.", "A kitten rested on a rug.", "Stock prices fell sharply."])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_unknown_provider_and_preset_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown embedder provider 'nope'.*hf, local, ollama"):
        models.create("embedder", "nope:x", Settings())
    with pytest.raises(ConfigError, match="unknown packaged embedder local:tiny"):
        models.create("embedder", "local:tiny", Settings())


def test_ollama_embedder_indexes_and_searches_through_the_http_api(home):
    write_corpus(home.root / "docs")
    with FakeOllama() as server:
        settings = Settings(embedder="ollama:nomic-embed-text", ollama_url=server.url)
        with KnowledgeBase(home, settings) as kb:
            counts = kb.ingest()
            assert counts.files_added == 5 and counts.chunks_embedded > 0
            assert kb.search("songbirds navigate polarised light evening sky", 1)[0].path == "report.docx"
        assert {path for path, _ in server.requests} == {"/api/embed"}
        assert all(body["model"] == "nomic-embed-text" for _, body in server.requests)


def test_ollama_down_is_one_clear_error():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(embedder="ollama:nomic-embed-text", ollama_url=f"http://127.0.0.1:{port}")
    emb = models.create("embedder", settings.embedder, settings)
    with pytest.raises(BackendUnavailable, match=r"cannot reach Ollama at http://127.0.0.1:\d+.*ollama serve"):
        emb.embed(["hello"])


def test_ollama_missing_model_says_to_pull_it():
    with FakeOllama(models=()) as server:
        settings = Settings(embedder="ollama:nomic-embed-text", ollama_url=server.url)
        emb = models.create("embedder", settings.embedder, settings)
        with pytest.raises(BackendUnavailable, match="ollama pull nomic-embed-text"):
            emb.embed(["hello"])
