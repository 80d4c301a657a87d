"""The scan: which documents the docs folder holds, and what it could not see.

A scan is only trusted to say a document is gone where it could look. A folder or file it cannot
read is reported as unreadable, and whatever the index holds under it is kept as it was: a
transient permission or disk error must never read as "everything was deleted". The docs folder
itself being unreadable stops the run (``DocsUnreadable``) before anything changes.

Symbolic links are followed only where they resolve inside the docs folder, unless
``KBLOOP_FOLLOW_EXTERNAL_LINKS`` allows the rest; a link to a folder that contains it (a loop)
is never followed. A link whose target cannot be reached for another reason (it lies in a folder
that cannot be read) is unreadable, not gone. A name that is not valid UTF-8 is skipped: paths
are stored as UTF-8 text.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from kbloop.errors import DocsUnreadable

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = ("~", ".tmp", ".temp", ".swp", ".swo", ".swx", ".part", ".crdownload", ".bak")


def is_ignored_name(name: str) -> bool:
    """Hidden files, editor backups and partial downloads are never documents."""
    return (name.startswith((".", "~$", "#")) or name.endswith(IGNORED_SUFFIXES)
            or name.lower().endswith(IGNORED_SUFFIXES))


def unreadable_reason(exc: OSError, *, folder: bool = False) -> str:
    """The reason reported for a path that could not be read. It is never recorded as the file's
    fault: the manifest keeps what it knew, and the next ingest tries again."""
    why = exc.strerror or f"{exc.__class__.__name__}: {exc}"
    if folder:
        return f"cannot read folder: {why}; what the index holds under it is kept (tried again next ingest)"
    return f"cannot read: {why} (tried again next ingest)"


def is_under(rel: str, folder: str) -> bool:
    """``rel`` is ``folder`` or inside it; the empty folder is the whole docs folder."""
    return not folder or rel == folder or rel.startswith(folder + "/")


@dataclass
class Scan:
    """What a scan found: documents (path relative to the docs folder -> stat), how many names it
    skipped as never documents, and the folders and files it could not read (path -> reason)."""

    files: dict[str, os.stat_result] = field(default_factory=dict)
    ignored: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)
    scopes: list[str] = field(default_factory=lambda: [""])

    def accounts_for(self, rel: str) -> bool:
        """Whether this scan can tell that ``rel`` is gone: it is inside what was scanned and not
        under anything the scan could not read."""
        return (any(is_under(rel, scope) for scope in self.scopes)
                and not any(is_under(rel, gone) for gone in self.unreadable))


def link_refusal(path: Path, docs: Path, follow_external: bool) -> str | None:
    """Why the symbolic link at ``path`` is not followed, or None when it is.

    Only a target that is certainly not there (missing, or a loop of links) is a refusal. Any
    other error (a folder on the way that cannot be read) says nothing of whether the target
    exists, so it is raised as the OSError it is and the caller keeps the link as unreadable."""
    try:
        target = path.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        return "broken link (its target does not exist)"
    except RuntimeError as exc:  # a loop of links, before Python 3.13
        return f"link cannot be followed: {exc}"
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a loop of links, from Python 3.13
            return f"link cannot be followed: {exc}"
        raise
    if follow_external or target == docs or docs in target.parents:
        return None
    return f"link to {target}, outside the docs folder (KBLOOP_FOLLOW_EXTERNAL_LINKS=true follows such links)"


def undecodable_name(name: str) -> bool:
    """Whether a file name is not valid UTF-8 (Python holds its bad bytes as surrogates): the
    manifest, the API and the answers all store paths as UTF-8 text, so such a file is skipped
    rather than let one name stop the whole ingest."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def scan_folder(scan: Scan, docs: Path, rel: str = "", *, follow_external: bool) -> None:
    """Add the documents under the folder ``rel`` of ``docs`` ("" for all of it) to ``scan``.

    Hidden folders are not entered and count once each in ``ignored``, like ignored file names
    and links that are not followed. Raises ``DocsUnreadable`` when ``docs`` itself cannot be read.
    """
    parts = Path(rel).parts
    try:
        # The folders from docs down to rel, as a link would reach them: a link back to one is a loop.
        ancestors = frozenset(_identity(docs.joinpath(*parts[:depth])) for depth in range(len(parts) + 1))
    except OSError as exc:
        _unreadable_folder(scan, rel, docs, exc)
        return
    stack = [(docs.joinpath(*parts), rel, ancestors)]
    while stack:
        folder, folder_rel, ancestors = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            _unreadable_folder(scan, folder_rel, docs, exc)
            continue
        subfolders = []
        for entry in entries:
            name = entry.name
            entry_rel = f"{folder_rel}/{name}" if folder_rel else name
            if name.startswith("."):
                scan.ignored += 1
                continue
            if undecodable_name(name):
                log.warning("skipped %r: the name is not valid UTF-8; rename it to index it", entry.path)
                scan.ignored += 1
                continue
            path = Path(entry.path)
            try:
                refusal = entry.is_symlink() and link_refusal(path, docs, follow_external)
            except OSError as exc:  # the link's target cannot be reached now: keep what it held
                scan.unreadable[entry_rel] = unreadable_reason(exc)
                continue
            if refusal:
                log.warning("skipped %s: %s", entry_rel, refusal)
                scan.ignored += 1
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # vanished between listing and stat: it is gone
            except OSError as exc:
                scan.unreadable[entry_rel] = unreadable_reason(exc)
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in ancestors:
                    log.warning("skipped %s: link to a folder that contains it (a loop)", entry_rel)
                    scan.ignored += 1
                else:
                    subfolders.append((path, entry_rel, ancestors | {(st.st_dev, st.st_ino)}))
            elif stat.S_ISREG(st.st_mode) and not is_ignored_name(name):
                scan.files[entry_rel] = st
            else:  # an ignored name, or a pipe, socket or device: reading one could block forever
                scan.ignored += 1
        stack.extend(reversed(subfolders))


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _unreadable_folder(scan: Scan, rel: str, docs: Path, exc: OSError) -> None:
    if not rel:
        raise DocsUnreadable(
            f"cannot read the docs folder {docs}: {exc.strerror or exc}; nothing was changed. "
            "Give kbloop read access to it, or set KBLOOP_DOCS_DIR"
        ) from None
    scan.unreadable[rel] = unreadable_reason(exc, folder=True)
