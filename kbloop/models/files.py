"""Locating model files that ship inside installed packages, without importing those packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kbloop.errors import BackendUnavailable


def package_dir(name: str, pip_name: str | None = None) -> Path:
    """The folder of an installed package, found without running its __init__."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(
            f"the model package {pip_name or name} is not installed: pip install {pip_name or name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))
