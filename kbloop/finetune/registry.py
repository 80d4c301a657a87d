"""The adapter registry: versions under data/adapters/<version>/, and which one answers.

A version folder holds the PEFT adapter (``adapter_model.safetensors``, ``adapter_config.json``),
``training_config.json`` and ``lineage.json`` (parent, dataset versions, record counts, base
model, losses and, later, evaluations and gate decisions). It appears by one rename of a
finished folder, so a crash mid-training never leaves a half-written version.

``current`` is a record in the manifest, not a copy: promoting or rolling back is one row.
A new adapter is a candidate until the evaluation gate or an explicit promote makes it current.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from kbloop.errors import Conflict, NotFound, StoreError
from kbloop.fsutil import atomic_write_bytes

CURRENT_KEY = "adapter_current"
HISTORY_KEY = "adapter_history"
VERSION = re.compile(r"^\d{4}$")
ANY = object()  # ``promote``'s expected_current when the caller did not look at what is current


class CurrentChanged(Conflict):
    """Another process promoted or rolled back while this one decided what to promote."""


ROLLBACK = "rollback from "  # how a rollback's entry in the history begins


def standing_promotion(history: list[dict]) -> dict | None:
    """The latest promotion in ``history`` that no rollback has undone: each rollback undoes
    the latest promotion still standing before it."""
    standing: list[dict] = []
    for entry in history:
        if str(entry.get("reason", "")).startswith(ROLLBACK):
            if standing:
                standing.pop()
        else:
            standing.append(entry)
    return standing[-1] if standing else None


class AdapterRegistry:
    def __init__(self, home, manifest):
        self.dir: Path = home.adapters_dir
        self.manifest = manifest

    # -- versions -------------------------------------------------------------------------

    def versions(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir()
                      if VERSION.match(p.name) and (p / "lineage.json").is_file())

    def next_version(self) -> str:
        taken = [int(v) for v in self.versions()]
        runs = self.dir / ".runs"
        if runs.is_dir():  # a version reserved by an unfinished run stays reserved for --resume
            taken += [int(p.name) for p in runs.iterdir() if VERSION.match(p.name)]
        return f"{max(taken, default=0) + 1:04d}"

    def path(self, version: str) -> Path:
        folder = self.dir / version
        if not (folder / "lineage.json").is_file():
            known = ", ".join(self.versions()) or "none yet (run `kbloop finetune`)"
            raise NotFound(f"no adapter version {version!r}; versions: {known}")
        return folder

    def lineage(self, version: str) -> dict:
        path = self.path(version) / "lineage.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if not isinstance(data, dict):
            raise StoreError(f"{path} is damaged (not a JSON object): restore it from a backup, or delete "
                             f"the folder {path.parent} to drop adapter {version}")
        return data

    def update_lineage(self, version: str, **fields) -> dict:
        """Add fields (evaluations, gate decisions) to a version's lineage, atomically."""
        data = self.lineage(version) | fields
        atomic_write_bytes(self.path(version) / "lineage.json",
                           (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
        return data

    def resolve(self, version: str | None) -> str:
        """A version name, or ``current`` / ``latest``, to a version name."""
        if version in (None, "current"):
            current = self.current()
            if current is None:
                raise NotFound("no adapter is current yet: name a version, or promote one")
            return current
        if version == "latest":
            versions = self.versions()
            if not versions:
                raise NotFound("no adapters yet: run `kbloop finetune`")
            return versions[-1]
        self.path(version)
        return version

    # -- which one answers ------------------------------------------------------------------

    def current(self) -> str | None:
        value = self.manifest.get_meta(CURRENT_KEY)
        return value or None

    def current_path(self) -> Path | None:
        current = self.current()
        return self.dir / current if current and (self.dir / current / "lineage.json").is_file() else None

    def history(self) -> list[dict]:
        return json.loads(self.manifest.get_meta(HISTORY_KEY, "[]"))

    def promote(self, version: str | None, reason: str, expected_current: object = ANY) -> None:
        """Make ``version`` (None: the base model alone) the one that answers. With
        ``expected_current``, only if that is still current: the check and the write are one
        transaction, so a promotion made elsewhere meanwhile is never silently overwritten."""
        if version is not None:
            self.path(version)
        with self.manifest.transaction():
            current = self.current()
            if expected_current is not ANY and current != expected_current:
                raise CurrentChanged(
                    f"adapter {version or 'base'} was not promoted: the current adapter changed from "
                    f"{expected_current or 'base'} to {current or 'base'} meanwhile (another promote or rollback); "
                    f"evaluate it again against {current or 'base'}")
            self._set_current(version, current, reason)

    def rollback(self) -> str | None:
        """Undo the last promotion not yet undone; returns the version now current. Rollbacks
        undo in turn, so promotions of 0001, 0002 and 0003 rolled back twice leave 0001 current
        (a rollback is no promotion to undo). History is read in the transaction that writes, so
        two rollbacks at once never undo one promotion twice."""
        with self.manifest.transaction():
            undone = standing_promotion(self.history())
            if undone is None:
                raise NotFound("nothing to roll back: no promotion is left to undo")
            previous = undone["previous"]
            if previous is not None:
                self.path(previous)
            self._set_current(previous, self.current(), f"{ROLLBACK}{undone['version'] or 'base'}")
        return previous

    def _set_current(self, version: str | None, previous: str | None, reason: str) -> None:
        """The write of a promotion; the caller holds the manifest's transaction."""
        history = self.history() + [{"version": version, "previous": previous, "reason": reason, "at": time.time()}]
        self.manifest.set_meta(CURRENT_KEY, version or "")
        self.manifest.set_meta(HISTORY_KEY, json.dumps(history))

    def listing(self) -> list[dict]:
        current = self.current()
        out = []
        for version in self.versions():
            lineage = self.lineage(version)
            out.append({
                "version": version,
                "current": version == current,
                "parent": lineage.get("parent"),
                "base_model": lineage.get("base_model"),
                "created_at": lineage.get("created_at"),
                "records": lineage.get("records", {}),
                "final_loss": lineage.get("final_probe_loss"),
                "gate": (lineage.get("gate") or {}).get("decision"),
            })
        return out
