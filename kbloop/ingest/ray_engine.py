"""Parse, split and embed on a Ray cluster: the ingest engine of ``KBLOOP_INGEST_ENGINE=ray``.

The indexer decides which files need work, as always, and this process stays the only writer
of the manifest and the vector store. What runs where:

- Ray Data ``map_batches`` over the list of files parses and splits them (``parse_file``, the
  local engine's own function), each read from the docs folder at the same path on its node;
- an actor pool (``map_batches`` with ``_Embedder``, at most KBLOOP_RAY_WORKERS actors, each
  loading the embedding model once) embeds the chunks whose text the file did not have. Ray
  Data may run the parsing in the same actors, one stage after the other;
- this process takes the files back in the order it gave them, then plans, numbers the vectors
  and writes them as the local engine does, batch by batch, vectors first.

Ray retries the work of a worker or node that dies; when it cannot, the ingest stops with one
line. Either way, as when this process itself is killed, what a stopped local ingest leaves is
left: whole batches committed, which the next ingest does not do again, and the rest, which it
does. A chunk whose text another file already has is embedded on a worker anyway (workers do
not read the manifest) and then copied from the store as locally: the counts, vector ids and
vectors are the local engine's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import ray
import ray.data
from ray.exceptions import RayError

from kbloop import models
from kbloop.config import Settings
from kbloop.errors import BackendUnavailable
from kbloop.ingest.chunking import Chunk, make_splitter
from kbloop.ingest.parse import Parsed, parse_file

# Files per Ray Data block, and so per parse task and per embedding call: small blocks bring
# the first results back soon and leave little to redo when a worker is lost.
FILES_PER_BLOCK = 4
# Texts per block when embedding texts alone (chunks a rebuild carries over without parsing).
TEXTS_PER_BLOCK = 256
# Shared memory for the object store of the Ray started for one ingest (no KBLOOP_RAY_ADDRESS).
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
# Seconds to wait for the head node to answer at all: Ray itself keeps trying for many minutes.
CONNECT_SECONDS = 5.0


class RayEngine:
    """One ingest's use of Ray: connected when first needed, let go by ``close``."""

    def __init__(self, settings: Settings, docs_dir: Path):
        self.settings = settings
        self.docs_dir = docs_dir.absolute()
        self._started = False

    def parse_and_embed(self, files: list[tuple[str, set[str]]]) -> Iterator[Parsed]:
        """Each file (its path in the docs folder, the text hashes it has vectors for) parsed,
        split and its other chunks embedded, in the order given, as the results come in."""
        if not files:
            return
        items = [{"path": rel, "have": "\n".join(sorted(have))} for rel, have in files]
        with self._running():
            parsed = self._dataset(items, FILES_PER_BLOCK).map_batches(
                _parse, batch_size=None,
                fn_kwargs={"settings": self.settings, "docs": str(self.docs_dir)})
            for row in self._embedded(parsed).iter_rows():
                yield pickle.loads(row["parsed"])

    def embed(self, texts: list[str]) -> np.ndarray:
        """Vectors for texts that no parse of this run embedded (the chunks a rebuild carries over
        from the manifest), by an actor pool as above."""
        chunks = [Chunk(i, text, {}, text) for i, text in enumerate(texts)]
        items = [{"have": "", "parsed": pickle.dumps(Parsed(chunks[i:i + TEXTS_PER_BLOCK]))}
                 for i in range(0, len(chunks), TEXTS_PER_BLOCK)]
        vectors: dict[str, np.ndarray] = {}
        with self._running():
            for row in self._embedded(self._dataset(items, 1)).iter_rows():
                vectors.update(pickle.loads(row["parsed"]).vectors)
        return np.vstack([vectors[hashlib.sha256(text.encode("utf-8")).hexdigest()] for text in texts])

    def close(self) -> None:
        """Stop the Ray this engine started, or leave the cluster it joined."""
        if self._started:
            ray.shutdown()
            self._started = False

    def _dataset(self, items: list[dict], per_block: int) -> ray.data.Dataset:
        """Rows in blocks of ``per_block``, whose results come back in the same order."""
        dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / per_block))
        dataset.context.execution_options.preserve_order = True
        dataset.context.enable_progress_bars = False
        return dataset

    def _embedded(self, dataset: ray.data.Dataset) -> ray.data.Dataset:
        """Rows embedded by KBLOOP_RAY_WORKERS actors from the start, going on with fewer when
        nodes are lost."""
        workers = self.settings.ray_workers
        pool = ray.data.ActorPoolStrategy(min_size=1, max_size=workers, initial_size=workers)
        return dataset.map_batches(_Embedder, batch_size=None, compute=pool,
                                   fn_constructor_kwargs={"settings": self.settings})

    @contextmanager
    def _running(self) -> Iterator[None]:
        """Connect Ray for the work inside; a failure of Ray's becomes one line."""
        self._connect()
        try:
            yield
        except RayError as exc:
            raise BackendUnavailable(
                f"the Ray run stopped ({_first_line(exc)}); the batches written before are kept: run "
                "`kbloop ingest` again to do the rest"
            ) from None

    def _connect(self) -> None:
        """Join KBLOOP_RAY_ADDRESS, or start a small Ray of this machine's own; a program that
        has connected Ray already keeps its connection."""
        if ray.is_initialized():
            return
        address = self.settings.ray_address
        if address and address != "auto":
            _check_reachable(address)
        # Ray Data's notes on each run (plans, timings) show at kbloop's own log level (-v).
        kbloop_level = logging.getLogger("kbloop").getEffectiveLevel()
        logging.getLogger("ray.data").setLevel(max(logging.WARNING, kbloop_level))
        local = {} if address else {
            "num_cpus": self.settings.ray_workers + 1, "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
            "include_dashboard": False}
        try:
            ray.init(address=address or "local", logging_level=logging.WARNING, log_to_driver=False, **local)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"join the Ray cluster at {address}" if address else "start Ray on this machine"
            raise BackendUnavailable(
                f"cannot {where} ({_first_line(exc)}): check KBLOOP_RAY_ADDRESS (empty starts a Ray for "
                "each ingest; a cluster's head is started with `ray start --head`)"
            ) from None
        self._started = True


def _parse(batch: dict[str, np.ndarray], settings: Settings, docs: str) -> dict[str, np.ndarray]:
    """Ray task: parse and split each file of the batch, with the settings of the local engine."""
    splitter = make_splitter(settings.chunk_size, settings.chunk_overlap)
    max_bytes = int(settings.max_file_mb * 2**20)
    parsed = [parse_file(Path(docs), str(rel), max_bytes, splitter) for rel in batch["path"]]
    return {"have": batch["have"], "parsed": _pickled(parsed)}


class _Embedder:
    """Ray actor: loads the embedding model once, then embeds the chunks of each batch of files
    whose text the file did not have, each text once."""

    def __init__(self, settings: Settings):
        self.embedder = models.configured("embedder", settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parsed = [pickle.loads(item) for item in batch["parsed"]]
        texts: dict[str, str] = {}
        for item, have in zip(parsed, batch["have"]):
            known = set(str(have).split("\n"))
            texts.update((c.text_hash, c.embed_text) for c in item.chunks if c.text_hash not in known)
        vectors = dict(zip(texts, self.embedder.embed(list(texts.values())))) if texts else {}
        for item in parsed:
            item.vectors = {c.text_hash: vectors[c.text_hash] for c in item.chunks if c.text_hash in vectors}
        return {"parsed": _pickled(parsed)}


def _pickled(items: list[Parsed]) -> np.ndarray:
    """A column of pickled results: Ray Data carries bytes without looking into them."""
    column = np.empty(len(items), dtype=object)
    column[:] = [pickle.dumps(item) for item in items]
    return column


def _check_reachable(address: str) -> None:
    """Fail at once when nothing listens at the head node's address."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise BackendUnavailable(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): start its head node with "
            "`ray start --head`, or fix KBLOOP_RAY_ADDRESS (empty starts a Ray for each ingest)"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else exc.__class__.__name__
