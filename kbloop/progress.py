"""Progress bars for long runs started from a terminal (ingest, dataset build, training,
evaluation); the daemon and the HTTP API run the same code without them."""

from __future__ import annotations

from typing import Any, Iterable


def progress_bar(items: Iterable | None = None, *, show: bool, desc: str, unit: str, **options: Any) -> Any:
    """``items`` in a tqdm bar on stderr when ``show``, else ``items`` unchanged. Without
    ``items``, a bar to advance by hand (``total=``, ``update()``), or None when not shown.
    tqdm is imported only when a bar is shown."""
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, dynamic_ncols=True, **options)
