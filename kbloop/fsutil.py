"""File helpers shared across kbloop: content hashes, atomic writes and file locks."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from kbloop.errors import Conflict, StoreError

log = logging.getLogger(__name__)


def open_regular(path: Path) -> IO[bytes]:
    """Open ``path`` for reading only if it is a regular file. The scan skips pipes and devices,
    but a path can be swapped for one after the scan: opening a FIFO waits for a writer forever,
    holding the write lock. So it is opened without blocking, and what was opened (not the path,
    which may change again) is checked; anything else is an OSError, reported as unreadable."""
    fh = open(path, "rb", opener=_open_nonblocking)
    try:
        mode = os.fstat(fh.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file (a pipe, socket or device)", str(path))
        os.set_blocking(fh.fileno(), True)
    except BaseException:
        fh.close()
        raise
    return fh


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def read_regular(path: Path) -> bytes:
    """The bytes of ``path``, a regular file (see ``open_regular``)."""
    with open_regular(path) as fh:
        return fh.read()


def sha256_file(path: Path, block_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        for block in iter(lambda: fh.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never a part."""
    # Named by thread as well as process (the daemon's job thread and its server's threads may
    # write one file), with the process id last, where remove_stale_temporaries reads it.
    tmp = path.with_name(f".{path.name}.t{threading.get_ident()}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files ``atomic_write_bytes`` left in ``folder`` when its writer was
    killed mid-write: those named after a process that no longer runs. Returns what went."""
    removed = []
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (ours, or another user's, counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def try_lock(fh: IO, *, shared: bool = False) -> bool:
    """Take an ``flock`` on an open file without waiting: True when taken, False when another
    process holds it. The kernel drops the lock when its holder dies, however it dies, so a
    lock is never left behind by a crash."""
    try:
        fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def exclusive(path: Path, what: str, *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the body: one process at a time runs ``what``.

    By default a second one fails at once: two runs of one long job (a dataset build, a
    training run) must not interleave, and the second has nothing to add. With ``wait`` it
    waits its turn instead, for work that every caller needs done (writing the index,
    assembling a model file).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "w")
    except OSError as exc:
        raise StoreError(f"{path.parent} is not writable ({exc.strerror}), so no {what} can run in this home: "
                         "make the folder writable (or run as its owner) and try again") from None
    with fh:
        if not try_lock(fh):
            if not wait:
                raise Conflict(f"another {what} is running in this home (lock {path}); wait for it to finish")
            log.debug("waiting for another %s to finish (lock %s)", what, path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
