"""kbloop's Qdrant store: vectors under the manifest's integer ids in a Qdrant collection, either
embedded in a folder (qdrant-client's local mode) or on a Qdrant server or cluster by URL.

The commit point stays in the home, as FAISS's does, in ``vector_store/``::

    qdrant.json               {"collection", "generation", "embedder", "dim", "count", ...}
    qdrant.staged.json        a rebuild's store, saved but not yet in use (while a rebuild runs)
    qdrant.collections.json   the collections this home created and has not removed yet

A new store (``create``, ``stage``) gets a collection of its own, ``<name>-<n>``; the alias
``<name>`` (KBLOOP_QDRANT_COLLECTION) names the one in use, for other tools to query.

Each save is the collection's next generation. Its points carry ``{"g": generation}``, the points
it removes get a tombstone ``{"d": generation}``, and only then is the record replaced in one
``os.replace``: the commit. Every read keeps to the committed generation (``g`` at most it, no
tombstone at most it), so readers see one commit whole, and what a killed save wrote stays
invisible until the next save of the collection removes it (``_roll_back``). Tombstoned points
are deleted once the commit is written. A staged store commits to ``qdrant.staged.json``, which
no reader looks at, until ``promote`` renames it to ``qdrant.json``.

Embedded Qdrant locks its folder while a client has it open, so one client per process serves
every store and location (``Connection.shared``), and another process gets a ``Conflict``. A
server that cannot be reached is ``BackendUnavailable``, not damage: `kbloop check` never sets a
store aside because the network failed.

``QdrantStore`` is a ``VectorStore`` and ``QdrantLocation`` its ``StoreLocation``
(``kbloop.vector_store.base``); no other module knows these names.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from kbloop import __version__
from kbloop.config import Home, Settings
from kbloop.errors import BackendUnavailable, ConfigError, Conflict, KbloopError, StoreError
from kbloop.fsutil import atomic_write_bytes, fsync_folder, remove_stale_temporaries
from kbloop.vector_store.base import SetAsideReason, StoreInfo

log = logging.getLogger(__name__)

RECORD = "qdrant.json"
STAGED = "qdrant.staged.json"
CLAIMS = "qdrant.collections.json"
FORMAT = 1
PAGE = 1024  # points per request


@dataclass(frozen=True)
class Endpoint:
    """Where Qdrant runs: embedded in the folder ``path``, or the server at ``url``."""

    path: Path | None = None
    url: str = ""
    api_key: str = field(default="", repr=False)

    @property
    def embedded(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        return f"embedded Qdrant in {self.path}" if self.embedded else f"Qdrant at {self.url}"


@dataclass(frozen=True)
class CollectionOptions:
    """How a new collection is laid out on a cluster; 0 leaves each choice to the server."""

    shards: int = 0
    replication_factor: int = 0
    write_consistency: int = 0


@dataclass(frozen=True)
class QdrantInfo(StoreInfo):
    """``qdrant.json``: the store's info plus its collection and the generation it committed."""

    collection: str
    generation: int
    kbloop_version: str = __version__
    format: int = FORMAT


class Connection:
    """One Qdrant client, shared by every store and location of one endpoint in this process.

    Embedded Qdrant holds a lock on its folder while its client is open and refuses a second
    client, even in the same process; so clients are shared per endpoint, in a registry that has
    to be process-wide for that reason. It holds them weakly: a client closes (and its lock goes)
    when the last store or location using it goes, or at exit. The embedded engine is not
    thread-safe, so its calls take turns; a server's client needs no turns.
    """

    _open: ClassVar[weakref.WeakValueDictionary[Endpoint, Connection]] = weakref.WeakValueDictionary()
    _opening: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.client = _open_client(endpoint)
        self._turns = threading.RLock() if endpoint.embedded else None
        weakref.finalize(self, self.client.close)

    @classmethod
    def shared(cls, endpoint: Endpoint) -> Connection:
        with cls._opening:
            connection = cls._open.get(endpoint)
            if connection is None:
                connection = cls._open[endpoint] = cls(endpoint)
            return connection

    @contextmanager
    def session(self) -> Iterator[QdrantClient]:
        """The client for a few calls in a row; Qdrant's errors come out as kbloop's."""
        with self._turns or nullcontext(), _translated(self.endpoint):
            yield self.client


def _open_client(endpoint: Endpoint) -> QdrantClient:
    if not endpoint.embedded:
        # Nothing is sent yet: an unreachable server is reported by the first call that needs it.
        return QdrantClient(url=endpoint.url, api_key=endpoint.api_key or None, check_compatibility=False)
    try:
        return QdrantClient(path=str(endpoint.path))
    except RuntimeError as exc:
        if "already accessed" not in str(exc):
            raise
        raise Conflict(
            f"{endpoint} is open in another process (a running `kbloop daemon` or `kbloop serve`?) and admits "
            "one at a time: stop that process, or run a Qdrant server and set KBLOOP_QDRANT_URL"
        ) from None
    except OSError as exc:
        raise KbloopError(f"{endpoint} cannot be opened ({exc.strerror}): make the folder writable "
                          "or set KBLOOP_QDRANT_PATH") from None


@contextmanager
def _translated(endpoint: Endpoint) -> Iterator[None]:
    """A server's errors as kbloop's: a refused key is a ConfigError, anything else
    BackendUnavailable, never StoreError: what a server fails to answer (a URL of another
    service answers 404 to everything) says nothing of the store, which `kbloop check` would
    otherwise set aside."""
    try:
        yield
    except ResponseHandlingException as exc:
        raise BackendUnavailable(f"cannot reach {endpoint} ({exc.source}): start it, or set "
                                 "KBLOOP_QDRANT_URL to where it runs") from None
    except UnexpectedResponse as exc:
        reason = f"{exc.status_code} {exc.content[:200].decode(errors='replace')}"
        if exc.status_code in (401, 403):
            raise ConfigError(f"{endpoint} refused the request ({reason}): set KBLOOP_QDRANT_API_KEY "
                              "to its API key") from None
        raise BackendUnavailable(f"{endpoint} failed a request ({reason})") from None


def _visible(generation: int) -> models.Filter:
    """The points of the commits up to ``generation`` that none of them removed."""
    return models.Filter(
        must=[models.FieldCondition(key="g", range=models.Range(lte=generation))],
        must_not=[models.FieldCondition(key="d", range=models.Range(lte=generation))],
    )


def _roll_back(client: QdrantClient, collection: str, committed: int) -> None:
    """Undo what a save that never committed left: its points and its tombstones. Points that
    committed tombstones hide (their deletion was cut short) go too."""
    after = models.Range(gt=committed)
    client.delete(collection, models.FilterSelector(filter=models.Filter(should=[
        models.FieldCondition(key="g", range=after),
        models.FieldCondition(key="d", range=models.Range(lte=committed)),
    ])), wait=True)
    client.delete_payload(collection, keys=["d"], points=models.FilterSelector(filter=models.Filter(
        must=[models.FieldCondition(key="d", range=after)])), wait=True)


def _read_record(path: Path) -> QdrantInfo | None:
    try:
        return QdrantInfo(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{path} is unreadable ({exc})") from None


class QdrantStore:
    """Vectors keyed by int64 ids in one collection. Changes wait in memory until ``save()``,
    which commits them as the collection's next generation under ``record``: ``qdrant.json`` for
    the store in use, ``qdrant.staged.json`` for a rebuild's store that readers must not see yet.
    A new store's collection is made at its first save."""

    def __init__(self, location: QdrantLocation, collection: str | None, dim: int, embedder: str,
                 record: str, header: QdrantInfo | None = None):
        self.location = location
        self.collection = collection
        self.embedder = embedder
        self.record = record
        self.header = header
        self._dim = dim
        self._added: dict[int, np.ndarray] = {}
        self._removed: set[int] = set()  # committed ids to remove (a replaced id is also in _added)
        self._committed_ids: set[int] | None = None if header else set()
        # A loaded collection may hold what a killed save left; a new one holds nothing.
        self._settled = header is None

    # -- queries --------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def info(self) -> QdrantInfo | None:
        return self.header

    @property
    def dirty(self) -> bool:
        return self.header is None or bool(self._added or self._removed)

    def __len__(self) -> int:
        committed = self.header.count if self.header else 0
        return committed - len(self._removed) + len(self._added)

    def ids(self) -> np.ndarray:
        live = (self._committed() - self._removed) | self._added.keys()
        return np.fromiter(live, dtype=np.int64, count=len(live))

    def vector(self, vector_id: int) -> np.ndarray | None:
        """The stored vector, or None when the id is not in the store."""
        vector_id = int(vector_id)
        if vector_id in self._added:
            return self._added[vector_id].copy()
        if vector_id in self._removed or self.header is None:
            return None
        with self.location.connection.session() as client:
            points = client.retrieve(self.collection, [vector_id], with_payload=True, with_vectors=True)
        if not points or not self._is_visible(points[0].payload):
            return None
        return np.asarray(points[0].vector, dtype=np.float32)

    def reconstruct(self, vector_id: int) -> np.ndarray:
        vector = self.vector(vector_id)
        if vector is None:
            raise StoreError(f"vector {vector_id} is not in Qdrant collection {self.collection}: "
                             "run `kbloop check` to repair")
        return vector

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to ``k`` (id, cosine similarity) pairs, best first: the committed points less those
        removed since, and the vectors added since."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        hits: list[tuple[int, float]] = []
        if self.header is not None and self.header.count:
            with self.location.connection.session() as client:
                found = client.query_points(self.collection, query=query.tolist(), limit=k + len(self._removed),
                                            query_filter=_visible(self.header.generation)).points
            hits = [(int(p.id), float(p.score)) for p in found if int(p.id) not in self._removed]
        if self._added:
            ids = list(self._added)
            rows = np.vstack([self._added[i] for i in ids])
            norms = np.maximum(np.linalg.norm(rows, axis=1) * np.linalg.norm(query), 1e-12)
            hits += zip(ids, (rows @ query / norms).tolist())
        return sorted(hits, key=lambda hit: -hit[1])[:k]

    # -- mutations ------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(ids) == 0:
            return
        if vectors.shape != (len(ids), self.dim):
            raise StoreError(f"expected {len(ids)} vectors of dim {self.dim}, got {vectors.shape}")
        self._added.update(zip(ids.tolist(), vectors.copy()))

    def remove(self, ids: Iterable[int]) -> int:
        wanted = {int(i) for i in ids}
        pending = wanted & self._added.keys()
        for vector_id in pending:
            del self._added[vector_id]
        committed = self._committed_of(wanted - pending - self._removed)
        self._removed |= committed
        return len(pending) + len(committed)

    def save(self) -> QdrantInfo:
        """Write this generation's points and tombstones, then commit it by replacing the record.

        A new store's first save makes its collection and, committed, puts it in place of the
        collection the record named before; that one is removed at the next tidy-up, so readers
        that still search it are not cut off mid-search."""
        generation = (self.header.generation if self.header else 0) + 1
        fresh = list(self._added.items())
        tombstones = sorted(self._removed - self._added.keys())
        replacing = self.header is None  # a new store's first commit replaces the store in use
        session = self.location.connection.session  # one per request: searches of this process go between
        with session() as client:
            if self.collection is None:
                self.collection = self.location.new_collection(client, self.dim)
            elif not self._settled:
                _roll_back(client, self.collection, generation - 1)
        self._settled = False  # until the commit, this generation's writes are a killed save's
        for start in range(0, len(fresh), PAGE):
            page = fresh[start:start + PAGE]
            with session() as client:
                client.upsert(self.collection, models.Batch(
                    ids=[i for i, _ in page], vectors=[v.tolist() for _, v in page],
                    payloads=[{"g": generation}] * len(page)), wait=True)
        for start in range(0, len(tombstones), PAGE):
            with session() as client:
                client.set_payload(self.collection, {"d": generation}, points=tombstones[start:start + PAGE],
                                   wait=True)
        previous = self.location.collection_named(self.record)
        info = QdrantInfo(embedder=self.embedder, dim=self.dim, count=len(self), saved_at=time.time(),
                          collection=self.collection, generation=generation)
        self.location.commit(self.record, info)
        self._settled = True
        if self._committed_ids is not None:
            self._committed_ids = (self._committed_ids - self._removed) | self._added.keys()
        self.header, self._added, self._removed = info, {}, set()
        for start in range(0, len(tombstones), PAGE):
            with session() as client:
                client.delete(self.collection, tombstones[start:start + PAGE], wait=True)
        if replacing:
            self.location.tidy(keep={previous} - {None})
        return info

    def size_bytes(self) -> int:
        """The collection's files for embedded Qdrant; 0 for a server's, which is not on this disk."""
        endpoint = self.location.endpoint
        if self.header is None or not endpoint.embedded:
            return 0
        folder = endpoint.path / "collection" / self.collection
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    # -- helpers --------------------------------------------------------------------------

    def _is_visible(self, payload: dict | None) -> bool:
        generation = self.header.generation
        payload = payload or {}
        return payload.get("g", generation + 1) <= generation and not payload.get("d", generation + 1) <= generation

    def _committed(self) -> set[int]:
        """Every committed id: read once, then kept up to date by this store's saves."""
        if self._committed_ids is None:
            ids: set[int] = set()
            offset = None
            with self.location.connection.session() as client:
                while True:
                    points, offset = client.scroll(self.collection, _visible(self.header.generation), limit=PAGE * 8,
                                                   offset=offset, with_payload=False, with_vectors=False)
                    ids.update(int(p.id) for p in points)
                    if offset is None:
                        break
            self._committed_ids = ids
        return self._committed_ids

    def _committed_of(self, ids: set[int]) -> set[int]:
        """Those of ``ids`` that are committed; asks the collection unless every id was read."""
        if not ids or self.header is None:
            return set()
        if self._committed_ids is not None:
            return ids & self._committed_ids
        found: set[int] = set()
        wanted = sorted(ids)
        with self.location.connection.session() as client:
            for start in range(0, len(wanted), PAGE):
                points = client.retrieve(self.collection, wanted[start:start + PAGE], with_payload=True)
                found.update(int(p.id) for p in points if self._is_visible(p.payload))
        return found


class QdrantLocation:
    """A home's Qdrant collections and their records in its ``vector_store/`` folder: the
    ``StoreLocation`` of a ``QdrantStore``. Nothing connects to Qdrant until a store is needed."""

    def __init__(self, folder: Path, endpoint: Endpoint, name: str = "kbloop",
                 options: CollectionOptions = CollectionOptions()):
        self.folder = Path(folder)
        self.endpoint = endpoint
        self.name = name
        self.options = options
        self._connection: Connection | None = None

    @classmethod
    def configured(cls, settings: Settings, home: Home) -> QdrantLocation:
        """The location KBLOOP_QDRANT_* settings describe, with the records in the home's vector_store/."""
        endpoint = (Endpoint(url=settings.qdrant_url, api_key=settings.qdrant_api_key) if settings.qdrant_url
                    else Endpoint(path=home.qdrant_dir(settings).resolve()))
        options = CollectionOptions(settings.qdrant_shards, settings.qdrant_replication_factor,
                                    settings.qdrant_write_consistency)
        return cls(home.vector_store_dir, endpoint, settings.qdrant_collection, options)

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = Connection.shared(self.endpoint)
        return self._connection

    # -- the protocol ---------------------------------------------------------------------

    def load(self) -> QdrantStore | None:
        return self._load(RECORD)

    def create(self, dim: int, embedder: str) -> QdrantStore:
        return QdrantStore(self, None, dim, embedder, RECORD)

    def info(self) -> QdrantInfo | None:
        return _read_record(self.folder / RECORD)

    def revision(self) -> tuple[int, int, int] | None:
        """The record's inode, mtime and size: every commit replaces it with a new file."""
        try:
            st = os.stat(self.folder / RECORD)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def stage(self, dim: int, embedder: str) -> QdrantStore:
        return QdrantStore(self, None, dim, embedder, STAGED)

    def load_staged(self) -> QdrantStore | None:
        return self._load(STAGED)

    def promote(self) -> None:
        """Rename the staged record to ``qdrant.json``: one atomic step. The collection it
        replaces is removed at the next tidy-up, after readers have moved on."""
        previous = self.collection_named(RECORD)
        try:
            os.replace(self.folder / STAGED, self.folder / RECORD)
        except FileNotFoundError:
            raise StoreError(f"no staged store in {self.folder} to put in use") from None
        fsync_folder(self.folder)
        self.tidy(keep={previous} - {None})

    def clean(self) -> list[str]:
        """Remove a staged store that was never promoted (a rebuild that did not finish), the
        temporary files of record writes that were killed, and collections no record names (a
        first save or a migration that was killed; a store set aside keeps its collection until
        the next save)."""
        done = []
        staged = self.folder / STAGED
        if staged.is_file():
            collection = self.collection_named(STAGED)  # None when unreadable: tidy removes it
            staged.unlink()
            if collection is not None:
                self._drop([collection])
            done.append("removed the index of a rebuild that did not finish; the index before it stays in use")
        stale = remove_stale_temporaries(self.folder) if self.folder.is_dir() else []
        if stale:
            done.append(f"removed {len(stale)} temporary files of index saves that were killed ({stale[0].name})")
        set_aside = {_read_collection(path) for path in self.folder.glob(f"{RECORD}.*")} - {None}
        if self._unused(set_aside):
            removed = self.tidy(keep=set_aside)
            done.append(f"removed {removed} Qdrant collections that no store uses (left by a save that was killed)")
        return done

    def set_aside(self, reason: SetAsideReason, at: float) -> None:
        """Rename the record, the commit point: its collection stays until the next save clears
        unused ones, and ``load`` finds no store."""
        record = self.folder / RECORD
        try:
            record.replace(record.with_name(f"{RECORD}.{reason}-{int(at)}"))
        except FileNotFoundError:
            pass  # nothing committed, nothing to set aside

    # -- for QdrantStore ------------------------------------------------------------------

    def commit(self, record: str, info: QdrantInfo) -> None:
        atomic_write_bytes(self.folder / record, json.dumps(asdict(info), indent=2, sort_keys=True).encode())

    def collection_named(self, record: str) -> str | None:
        """The collection a record names; None when there is no record, or it is unreadable."""
        return _read_collection(self.folder / record)

    def new_collection(self, client: QdrantClient, dim: int) -> str:
        """Make a collection for a new store, under a name never used before; it is claimed first,
        so that a crash right after leaves nothing that ``tidy`` does not know of."""
        claims = self._claims()
        number = claims["next"]
        while client.collection_exists(f"{self.name}-{number}"):  # another's, on a shared server
            number += 1
        name = f"{self.name}-{number}"
        self._write_claims({"next": number + 1, "collections": [*claims["collections"], name]})
        options = self.options
        client.create_collection(
            name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
            shard_number=options.shards or None, replication_factor=options.replication_factor or None,
            write_consistency_factor=options.write_consistency or None)
        if not self.endpoint.embedded:  # the embedded engine filters without indexes
            for key in ("g", "d"):
                client.create_payload_index(name, key, models.PayloadSchemaType.INTEGER, wait=True)
        return name

    def tidy(self, keep: Iterable[str] = ()) -> int:
        """Point the alias at the collection in use, then remove the collections this home made
        that neither record (nor ``keep``) names. Returns how many went."""
        in_use = self.collection_named(RECORD)
        unused = self._unused(keep)
        with self.connection.session() as client:
            if in_use is not None:
                self._alias(client, in_use)
        self._drop(unused)
        return len(unused)

    # -- helpers --------------------------------------------------------------------------

    def _load(self, record: str) -> QdrantStore | None:
        """The store a record names, checked: its collection exists with the record's dim and
        holds the record's count of visible points. Raises StoreError if not."""
        info = _read_record(self.folder / record)
        if info is None:
            return None
        where = f"Qdrant collection {info.collection} ({self.endpoint}), named in {self.folder / record},"
        with self.connection.session() as client:
            if not client.collection_exists(info.collection):
                raise StoreError(f"{where} does not exist")
            vectors = client.get_collection(info.collection).config.params.vectors
            count = client.count(info.collection, _visible(info.generation), exact=True).count
        size = getattr(vectors, "size", None)
        if size != info.dim or count != info.count:
            raise StoreError(f"{where} holds {count}x{size}, the record says {info.count}x{info.dim}")
        return QdrantStore(self, info.collection, info.dim, info.embedder, record, info)

    def _claims(self) -> dict:
        path = self.folder / CLAIMS
        try:
            claims = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"next": 1, "collections": []}
        except ValueError as exc:
            raise StoreError(f"{path} is unreadable ({exc}): delete it and run `kbloop check`") from None
        return claims

    def _write_claims(self, claims: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / CLAIMS, json.dumps(claims, indent=2, sort_keys=True).encode())

    def _unused(self, keep: Iterable[str]) -> list[str]:
        used = {self.collection_named(RECORD), self.collection_named(STAGED), *keep}
        return [name for name in self._claims()["collections"] if name not in used]

    def _drop(self, names: list[str]) -> None:
        """Delete collections, then forget them; a crash in between leaves them to the next tidy."""
        if not names:
            return
        with self.connection.session() as client:
            for name in names:
                if client.collection_exists(name):
                    client.delete_collection(name)
        claims = self._claims()
        self._write_claims({**claims, "collections": [c for c in claims["collections"] if c not in names]})

    def _alias(self, client: QdrantClient, collection: str) -> None:
        """Make the alias ``name`` point at ``collection``, unless a collection has that name."""
        current = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
        if current.get(self.name) == collection:
            return
        if self.name not in current and client.collection_exists(self.name):
            log.warning("a collection is named %s in %s, so no alias of that name points at %s",
                        self.name, self.endpoint, collection)
            return
        operations: list = [models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=collection, alias_name=self.name))]
        if self.name in current:
            operations.insert(0, models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.name)))
        client.update_collection_aliases(operations)


def _read_collection(path: Path) -> str | None:
    try:
        info = _read_record(path)
    except StoreError:
        return None
    return info.collection if info else None
