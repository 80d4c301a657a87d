"""llama.cpp tried on this CPU, in a child process, before a model of it answers anyone.

llama.cpp is built for the CPU it was compiled on (``-march=native``), and its kernels for one
CPU can kill the process on another: the AMX kernels crash on some AMX CPUs (llama.cpp issue
20824), and a wheel that pip cached on a newer CPU stops with an illegal instruction on an older
one. Either would take the server down at its first question. So the first time a model file
is used with a llama-cpp-python build on a CPU, a child process loads it and reads a short
prompt. The verdict is kept in the model cache, keyed by the build, the CPU's features and the
file, so the check runs once:

- ``runs``: the model loads as llama.cpp chooses;
- ``without_repacking``: it crashed with llama.cpp's extra buffer types (repacked weights, AMX)
  and ran without them, so it loads without them;
- ``crashes``: it crashed both ways, so the transformers engine runs it instead.

A check that could not finish (timed out, killed from outside, failed to load the file, could
not start) decides nothing and is not kept: the model loads as before and reports its own error,
if any; only after a crash with the extra buffer types does it load without them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
from contextlib import nullcontext
from functools import cache
from pathlib import Path
from typing import Any

from kbloop.errors import StoreError
from kbloop.fsutil import atomic_write_bytes, exclusive
from kbloop.models.llamacpp import REBUILD, _without_weight_repacking, physical_cores

log = logging.getLogger(__name__)

RUNS, WITHOUT_REPACKING, CRASHES = "runs", "without_repacking", "crashes"
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGILL, signal.SIGBUS, signal.SIGFPE, signal.SIGABRT})
"""Signals of a fault in the engine itself. A SIGKILL (the kernel out of memory, a user) or a
SIGTERM says nothing about llama.cpp and is not taken as a verdict."""
TIMEOUT_S = 300.0
CHILD = [sys.executable, "-m", "kbloop.models.selfcheck"]
"""The child's command line, before the file, the mode and the thread count."""
PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 8)
"""About 80 tokens: enough for llama.cpp to read them as a batch through its matrix kernels."""


def verdict(path: Path, cache_dir: Path, threads: int = 0) -> str:
    """How llama.cpp may load ``path`` on this CPU: ``runs``, ``without_repacking`` or ``crashes``
    (module docstring). Checked in a child process the first time, then read from the cache."""
    import llama_cpp

    marker = _marker(llama_cpp, path, cache_dir)
    if (known := _read(marker)) is not None:
        return known
    version = getattr(llama_cpp, "__version__", "?")
    try:
        with exclusive(marker.with_suffix(".lock"), f"llama.cpp check of {path.name}", wait=True):
            return _read(marker) or _check(path, threads, marker, version)
    except StoreError:  # a model cache this process cannot write to: checked every time, kept never
        return _check(path, threads, None, version)


def known(path: Path, cache_dir: Path) -> str | None:
    """The kept verdict for ``path`` on this CPU and build, or None: not checked (or no such file)."""
    import llama_cpp

    return _read(_marker(llama_cpp, path, cache_dir)) if path.is_file() else None


def _marker(llama_cpp: Any, path: Path, cache_dir: Path) -> Path:
    return cache_dir / "selfcheck" / f"{_key(llama_cpp, path)}.json"


def _check(path: Path, threads: int, marker: Path | None, version: str) -> str:
    log.info("checking that llama.cpp runs %s on this CPU (once)", path.name)
    first = _run(path, "default", threads)
    if first is None:
        return RUNS  # decided nothing: not kept
    second = _run(path, "plain", threads) if first else 0
    if second is None:
        return WITHOUT_REPACKING  # it crashed with them, and without them nothing was decided: not kept
    found = RUNS if first == 0 else WITHOUT_REPACKING if second == 0 else CRASHES
    if marker is not None:
        try:
            atomic_write_bytes(marker, json.dumps({"verdict": found, "file": str(path), "llama_cpp": version,
                                                   "signal": _name(first), "plain_signal": _name(second)}).encode())
        except OSError as exc:
            log.warning("the llama.cpp check's verdict could not be kept in %s (%s); it runs again next time",
                        marker.parent, exc.strerror)
    if found == WITHOUT_REPACKING:
        log.warning("llama.cpp crashed on this CPU (%s) reading %s with repacked weights and ran without them: "
                    "it loads without them from now on", _name(first), path.name)
    elif found == CRASHES:
        log.warning("llama.cpp crashes on this CPU (%s) running %s: the slower transformers engine runs it "
                    "instead; rebuild llama-cpp-python for this CPU (%s)", _name(first), path.name, REBUILD)
    return found


def _name(code: int) -> str | None:
    return signal.Signals(code).name if code else None


def _run(path: Path, mode: str, threads: int) -> int | None:
    """0 when the child read the prompt, the crash signal when it crashed, None when the check
    decides nothing (module docstring)."""
    try:
        done = subprocess.run([*CHILD, str(path), mode, str(threads)], capture_output=True, timeout=TIMEOUT_S,
                              env={**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})
    except subprocess.TimeoutExpired:
        log.warning("the llama.cpp check of %s did not finish in %.0f s; it is tried again next time",
                    path.name, TIMEOUT_S)
        return None
    except OSError as exc:  # no child process could start
        log.warning("the llama.cpp check of %s could not start (%s); it is tried again next time",
                    path.name, exc.strerror or exc)
        return None
    if done.returncode == 0:
        return 0
    if -done.returncode in CRASH_SIGNALS:
        return -done.returncode
    tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
    log.warning("the llama.cpp check of %s could not run (%s); it is tried again next time", path.name, tail[0])
    return None


def _read(marker: Path) -> str | None:
    try:
        found = json.loads(marker.read_text()).get("verdict")
    except (OSError, ValueError, AttributeError):
        return None
    return found if found in (RUNS, WITHOUT_REPACKING, CRASHES) else None


def _key(llama_cpp: Any, path: Path) -> str:
    """What the verdict depends on: the build (version and compiled features), the CPU (its
    feature flags) and the file."""
    stat = path.stat()
    parts = [getattr(llama_cpp, "__version__", "?"), llama_cpp.llama_print_system_info().decode(errors="replace"),
             cpu_features(), str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


@cache
def cpu_features() -> str:
    """The CPU's model and feature flags, as the kernel reports them (the platform's name
    elsewhere); read once a process, since every model made reads it."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags", "Features")
    return "\n".join(sorted({line.split(":", 1)[1].strip() for line in lines
                             if ":" in line and line.split(":", 1)[0].strip() in wanted}))


def _child(path: str, mode: str, threads: int) -> None:
    """Load ``path`` and read the prompt: in the default mode as llama.cpp chooses, in "plain"
    with its extra buffer types off. A crash kills this process, which is the point."""
    import llama_cpp

    threads = threads or physical_cores()
    with _without_weight_repacking(llama_cpp) if mode == "plain" else nullcontext():
        llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    llm(PROMPT, max_tokens=2)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
