"""kbloop's FAISS store: vectors under the manifest's integer ids, saved atomically, no pickle.

On disk, in ``vector_store/``::

    header.json            {"index_file", "embedder", "dim", "count", "sha256", ...}
    index.<generation>.faiss
    header.staged.json     a rebuild's store, saved but not yet in use (while a rebuild runs)

``header.json`` is the commit point. A save writes the next generation's index file, then
replaces the header in one ``os.replace``; a crash at any moment leaves either the old pair or
the new pair, both complete. Loading verifies the index file against the header's checksum.
A staged store (``FaissLocation.stage``) saves under ``header.staged.json`` instead, which no
reader looks at, until ``promote`` renames it to ``header.json``. A save's temporary file
carries its writer's pid, so one left by a killed writer is known and removed later.
The index is an ``IndexIDMap2`` over ``IndexFlatIP``: exact inner-product search on
normalised vectors (cosine), with ``reconstruct`` so unchanged text never needs re-embedding.

``FaissStore`` is a ``VectorStore`` and ``FaissLocation`` its ``StoreLocation``
(``kbloop.vector_store.base``); no other module knows these file names.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from kbloop import __version__
from kbloop.errors import StoreError
from kbloop.fsutil import atomic_write_bytes, fsync_folder, remove_stale_temporaries
from kbloop.vector_store.base import SetAsideReason, StoreInfo

LOAD_ATTEMPTS = 5  # header re-reads when saves keep landing while a reader loads
HEADER = "header.json"
STAGED = "header.staged.json"
FORMAT = 1


@dataclass(frozen=True)
class StoreHeader(StoreInfo):
    """``header.json``: the store's info plus which index file holds it and that file's checksum."""

    index_file: str
    sha256: str
    generation: int
    kbloop_version: str = __version__
    format: int = FORMAT


class FaissStore:
    """Vectors keyed by int64 ids. Mutations are in memory until ``save()``, which commits them
    under ``header_name``: ``header.json`` for the store in use, ``header.staged.json`` for a
    rebuild's store that readers must not see yet."""

    def __init__(self, directory: Path, index: faiss.Index, embedder: str, header: StoreHeader | None = None,
                 header_name: str = HEADER):
        self.directory = Path(directory)
        self.index = index
        self.embedder = embedder
        self.header = header
        self.header_name = header_name
        self.dirty = header is None

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, dim: int, embedder: str, header_name: str = HEADER) -> "FaissStore":
        Path(directory).mkdir(parents=True, exist_ok=True)
        return cls(directory, faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), embedder, header_name=header_name)

    @classmethod
    def read_header(cls, directory: Path, header_name: str = HEADER) -> StoreHeader | None:
        path = Path(directory) / header_name
        if not path.is_file():
            return None
        try:
            return StoreHeader(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{path} is unreadable ({exc})") from None

    @classmethod
    def load(cls, directory: Path, header_name: str = HEADER) -> "FaissStore | None":
        """The saved store, or None when nothing was ever saved. Raises StoreError if damaged."""
        header = cls.read_header(directory, header_name)
        if header is None:
            return None
        data, header = cls._read_index(Path(directory), header, header_name)
        path = Path(directory) / header.index_file
        if hashlib.sha256(data).hexdigest() != header.sha256:
            raise StoreError(f"{path} does not match its checksum in {header_name}")
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if index.d != header.dim or index.ntotal != header.count:
            raise StoreError(f"{path} holds {index.ntotal}x{index.d}, header says {header.count}x{header.dim}")
        return cls(directory, index, header.embedder, header, header_name)

    @classmethod
    def _read_index(cls, directory: Path, header: StoreHeader, header_name: str,
                    attempts: int = LOAD_ATTEMPTS) -> tuple[bytes, StoreHeader]:
        """The bytes of the index file ``header`` names, and the header they belong to. A writer's
        save can land between reading the header and reading its file, and the save removes the
        file the old header named: when the header has changed since, the new one is read again.
        Only a file missing under an unchanged header is damage."""
        for _ in range(attempts):
            path = directory / header.index_file
            try:
                return path.read_bytes(), header
            except OSError as exc:
                error = exc
            current = cls.read_header(directory, header_name)
            if current is None or current == header:
                break
            header = current
        raise StoreError(f"{path} is missing or unreadable ({error.strerror})")

    # -- queries --------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def info(self) -> StoreHeader | None:
        return self.header

    def __len__(self) -> int:
        return self.index.ntotal

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def vector(self, vector_id: int) -> np.ndarray | None:
        """The stored vector, or None when the id is not in the index."""
        try:
            return self.index.reconstruct(int(vector_id))
        except RuntimeError:
            return None

    def reconstruct(self, vector_id: int) -> np.ndarray:
        vector = self.vector(vector_id)
        if vector is None:
            raise StoreError(f"vector {vector_id} is not in {self.directory}: run `kbloop check` to repair")
        return vector

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to ``k`` (id, cosine similarity) pairs, best first."""
        if self.index.ntotal == 0:
            return []
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        scores, ids = self.index.search(query, min(k, self.index.ntotal))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i != -1]

    # -- mutations ------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(ids) == 0:
            return
        if vectors.shape != (len(ids), self.dim):
            raise StoreError(f"expected {len(ids)} vectors of dim {self.dim}, got {vectors.shape}")
        self.index.add_with_ids(vectors, ids)
        self.dirty = True

    def remove(self, ids: Iterable[int]) -> int:
        ids = np.asarray(sorted(set(int(i) for i in ids)), dtype=np.int64)
        if len(ids) == 0:
            return 0
        removed = self.index.remove_ids(ids)
        self.dirty = self.dirty or removed > 0
        return int(removed)

    def save(self) -> StoreHeader:
        """Write the next generation atomically; the old files go only after the new header.

        The generation is new to the folder, so a staged store and the one in use never write
        the same file. What a staged save replaces is only its own previous file: the store in
        use stays whole until ``promote``."""
        if not os.access(self.directory, os.W_OK):  # checked first: a read-only store still loads and searches
            raise StoreError(f"{self.directory} is not writable, so the index cannot be saved: "
                             "make the folder writable (or run as its owner) and try again")
        data = faiss.serialize_index(self.index).tobytes()
        generation = max([self.header.generation if self.header else 0, *_generations(self.directory)]) + 1
        index_file = f"index.{generation}.faiss"
        atomic_write_bytes(self.directory / index_file, data)
        header = StoreHeader(
            index_file=index_file, embedder=self.embedder, dim=self.dim, count=self.index.ntotal,
            sha256=hashlib.sha256(data).hexdigest(), generation=generation, saved_at=time.time(),
        )
        previous = self.header
        atomic_write_bytes(self.directory / self.header_name,
                           json.dumps(asdict(header), indent=2, sort_keys=True).encode())
        self.header, self.dirty = header, False
        if self.header_name == HEADER:
            _remove_unused(self.directory)
        elif previous is not None:
            (self.directory / previous.index_file).unlink(missing_ok=True)
        return header

    def size_bytes(self) -> int:
        if self.header is None:
            return 0
        path = self.directory / self.header.index_file
        return path.stat().st_size if path.exists() else 0


@dataclass(frozen=True)
class FaissLocation:
    """A home's ``vector_store/`` folder: the ``StoreLocation`` of a ``FaissStore``."""

    directory: Path

    def load(self) -> FaissStore | None:
        return FaissStore.load(self.directory)

    def create(self, dim: int, embedder: str) -> FaissStore:
        return FaissStore.create(self.directory, dim, embedder)

    def info(self) -> StoreHeader | None:
        return FaissStore.read_header(self.directory)

    def revision(self) -> tuple[int, int, int] | None:
        """The header's inode, mtime and size: every save replaces it with a new file."""
        try:
            st = os.stat(self.directory / HEADER)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def stage(self, dim: int, embedder: str) -> FaissStore:
        return FaissStore.create(self.directory, dim, embedder, header_name=STAGED)

    def load_staged(self) -> FaissStore | None:
        return FaissStore.load(self.directory, STAGED)

    def promote(self) -> None:
        """Rename the staged header to ``header.json``: one atomic step, then the files of the
        store it replaces go."""
        try:
            os.replace(self.directory / STAGED, self.directory / HEADER)
        except FileNotFoundError:
            raise StoreError(f"no staged store in {self.directory} to put in use") from None
        fsync_folder(self.directory)
        _remove_unused(self.directory)

    def clean(self) -> list[str]:
        """Remove a staged store that was never promoted (a rebuild that did not finish) and the
        temporary files of saves whose process was killed."""
        done = []
        staged = self.directory / STAGED
        if staged.is_file():
            try:
                header = FaissStore.read_header(self.directory, STAGED)
            except StoreError:
                header = None  # unreadable: the file it names goes at the next save
            if header is not None:
                (self.directory / header.index_file).unlink(missing_ok=True)
            staged.unlink()
            done.append("removed the index of a rebuild that did not finish; the index before it stays in use")
        stale = remove_stale_temporaries(self.directory) if self.directory.is_dir() else []
        if stale:
            done.append(f"removed {len(stale)} temporary files of index saves that were killed ({stale[0].name})")
        return done

    def set_aside(self, reason: SetAsideReason, at: float) -> None:
        """Rename the header, the commit point: the index file it names stays until the next
        save clears old generations, and ``load`` finds no store."""
        header = self.directory / HEADER
        try:
            header.replace(header.with_name(f"{HEADER}.{reason}-{int(at)}"))
        except FileNotFoundError:
            pass  # nothing committed, nothing to set aside


def _generations(directory: Path) -> list[int]:
    """The generation numbers of the index files in ``directory``."""
    return [int(p.name.split(".")[1]) for p in directory.glob("index.*.faiss") if p.name.split(".")[1].isdigit()]


def _remove_unused(directory: Path) -> None:
    """Remove the index files that neither ``header.json`` nor a staged header names (older
    generations, and the files of stores set aside), and temporaries of killed saves."""
    used = set()
    for name in (HEADER, STAGED):
        try:
            header = FaissStore.read_header(directory, name)
        except StoreError:
            continue
        if header is not None:
            used.add(header.index_file)
    for old in directory.glob("index.*.faiss"):
        if old.name not in used:
            old.unlink(missing_ok=True)
    remove_stale_temporaries(directory)
