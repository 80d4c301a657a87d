"""Adapter versions and evaluation reports as the web page shows them: read-only, and tolerant
of what the files hold, since their fields grow with the training and evaluation code."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from kbloop.evaluate.store import EvaluationRun

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REPORT_FILES = {".json": "application/json", ".md": "text/markdown; charset=utf-8", ".txt": "text/plain; charset=utf-8",
                ".csv": "text/csv; charset=utf-8", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
PLOTS = (".png", ".jpg", ".jpeg")


def _finite(value: Any) -> Any:
    """JSON a browser can parse: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _read_json(path: Path) -> Any:
    try:
        return _finite(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def adapters(data_dir: Path, serving: Any) -> list[dict]:
    """Adapter versions (``data/adapters/<version>/lineage.json``), newest first."""
    serving_name = Path(str(serving)).name if serving else None
    found = []
    for lineage in (data_dir / "adapters").glob("*/lineage.json"):
        info = _read_json(lineage)
        found.append({"version": lineage.parent.name, "modified_at": lineage.stat().st_mtime,
                      "serving": lineage.parent.name == serving_name,
                      "lineage": info if isinstance(info, dict) else None})
    return sorted(found, key=lambda a: -a["modified_at"])


def evals(data_dir: Path, runs: list[EvaluationRun]) -> dict:
    """The evaluation runs that have a report.json, newest report first; the latest with its report.

    Only what ``eval_file`` would send is shown: a run folder, or a file in it, that is a link
    to somewhere outside ``data/evals/`` is left out of the listing as it is refused there.
    """
    reports = {r.run: found[0] for r in runs if (found := eval_file(data_dir, r.run, "report.json"))}
    shown = sorted(reports, key=lambda run: -reports[run].stat().st_mtime)
    listed = [_listing(data_dir, run, reports[run]) for run in shown]
    latest = listed[0] | {"report": _read_json(reports[shown[0]])} if listed else None
    return {"runs": listed, "latest": latest}


def _listing(data_dir: Path, run: str, report: Path) -> dict:
    files = sorted(p.name for p in report.parent.iterdir() if eval_file(data_dir, run, p.name))
    return {"run": run, "modified_at": report.stat().st_mtime, "files": files,
            "plots": [f for f in files if f.lower().endswith(PLOTS)]}


def eval_file(data_dir: Path, run: str, name: str) -> tuple[Path, str] | None:
    """A report file to send and its type, or None: plain names only, a known type, and
    inside ``data/evals/<run>/`` once links are resolved."""
    root = (data_dir / "evals").resolve()
    suffix = Path(name).suffix.lower()
    if SAFE_NAME.match(run) and SAFE_NAME.match(name) and suffix in REPORT_FILES:
        path = (root / run / name).resolve()
        if path.parent.parent == root and path.is_file():
            return path, REPORT_FILES[suffix]
    return None
