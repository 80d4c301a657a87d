"""The scratch folder a benchmark works in: a temporary one removed afterwards (unless kept),
or an empty one the user names and keeps."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def bench_workdir(workdir: Path | None, keep: bool, prefix: str) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise SystemExit(f"--workdir {workdir} is not empty")
        yield workdir.resolve()
        return
    temporary = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield temporary
    finally:
        if keep:
            print(f"\nkept {temporary}")
        else:
            shutil.rmtree(temporary, ignore_errors=True)
