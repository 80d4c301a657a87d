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


def corpus_files(corpus: Path) -> list[Path]:
    """The documents directly in ``corpus``, by name."""
    return sorted(p for p in corpus.iterdir() if p.is_file())


def add_documents(home, files: list[Path]) -> None:
    """Copies of ``files`` in the home's docs/: content only, so a fresh mtime and default
    permissions, as a user's new documents have."""
    docs = home.docs_dir(home.load_settings())
    for src in files:
        shutil.copyfile(src, docs / src.name)


def corpus_home(root: Path, documents: Path | list[Path], settings: dict[str, str] | None = None):
    """A new kbloop home at ``root``: ``settings`` added to its .env, and its docs/ holding
    copies of ``documents`` (a list of files, or every file directly in a folder)."""
    from kbloop.config import init_home

    home = init_home(root)
    if settings:
        with open(home.env_file, "a", encoding="utf-8") as fh:
            fh.writelines(f"{k}={v}\n" for k, v in settings.items())
    add_documents(home, corpus_files(documents) if isinstance(documents, Path) else documents)
    return home
