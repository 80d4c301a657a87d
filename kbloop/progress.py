"""Progress bars for long runs started from a terminal (ingest, dataset build, training,
evaluation); the daemon and the HTTP API run the same code without them. A run that reports
to a stream that is not a terminal (a log file, a CI job) can print a line now and then instead."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence, TextIO

ProgressMode = Literal["bar", "lines", "off"]


def progress_bar(items: Iterable | None = None, *, show: bool, desc: str, unit: str, **options: Any) -> Any:
    """``items`` in a tqdm bar on stderr when ``show``, else ``items`` unchanged. Without
    ``items``, a bar to advance by hand (``total=``, ``update()``), or None when not shown.
    tqdm is imported only when a bar is shown."""
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, dynamic_ncols=True, **options)


def progress_mode(show: bool, stream: TextIO) -> ProgressMode:
    """A bar on a terminal, lines elsewhere, nothing when not ``show``."""
    if not show:
        return "off"
    return "bar" if stream.isatty() else "lines"


def format_seconds(seconds: float) -> str:
    """``1h05m``, ``4m09s`` or ``12s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class LineProgress:
    """What a run uses of a tqdm bar (``update``, ``set_postfix``, ``close``) as one line at most
    every ``every`` seconds, and one at the end: position, the postfix values, elapsed time and
    the time left at the rate since the start. A redrawn bar would fill a log with carriage
    returns."""

    def __init__(self, *, total: int, initial: int = 0, desc: str, unit: str, every: float = 30.0,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.n, self.desc, self.unit, self.every = total, initial, desc, unit, every
        self.stream = stream or sys.stderr
        self.clock = clock
        self.started = self.printed = clock()
        self.initial = self.printed_n = initial
        self.postfix: dict[str, Any] = {}

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.printed >= self.every:
            self._print()

    def close(self) -> None:
        if self.n != self.printed_n:
            self._print()

    def _print(self) -> None:
        now = self.printed = self.clock()
        self.printed_n = self.n
        elapsed = now - self.started
        done = self.n - self.initial
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100 * self.n / max(self.total, 1):.0f}%)"]
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        parts.append(f"{format_seconds(elapsed)} elapsed")
        if 0 < done and self.n < self.total:
            parts.append(f"about {format_seconds(elapsed / done * (self.total - self.n))} left")
        print(", ".join(parts), file=self.stream, flush=True)


def step_progress(mode: ProgressMode, *, total: int, initial: int, desc: str, unit: str) -> Any:
    """A bar or a line printer to advance by hand, or None for ``off``."""
    if mode == "lines":
        return LineProgress(total=total, initial=initial, desc=desc, unit=unit)
    return progress_bar(show=mode == "bar", total=total, initial=initial, desc=desc, unit=unit)


def tracked(items: Sequence, mode: ProgressMode, *, desc: str, unit: str) -> Iterator:
    """``items`` one at a time, each counted done (on a ``step_progress``) when the next is
    asked for, and the bar or the lines closed at the end."""
    progress = step_progress(mode, total=len(items), initial=0, desc=desc, unit=unit)
    try:
        for item in items:
            yield item
            if progress is not None:
                progress.update()
    finally:
        if progress is not None:
            progress.close()
