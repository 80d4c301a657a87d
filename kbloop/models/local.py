"""``local:`` chat models: the GGUF files that ship in PyPI packages, run by llama.cpp when it
loads and runs on this CPU (``kbloop.models.selfcheck``) and by transformers otherwise
(KBLOOP_ENGINE chooses; training always uses transformers)."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any

from kbloop.errors import BackendUnavailable, ConfigError
from kbloop.models import llamacpp, selfcheck
from kbloop.models.generators import Generator, PackagedGenerator
from kbloop.models.packaged import PRESETS, PackagedGGUF, converted_dir, gguf_file, gguf_path
from kbloop.models.registry import ModelSpec, register

log = logging.getLogger(__name__)


@cache
def llamacpp_loads() -> bool:
    """Whether the llama.cpp engine can run here; says once why not."""
    if llamacpp.available():
        return True
    log.warning("llama-cpp-python does not load: local models run on the slower transformers engine "
                "(reinstall with `pip install -r requirements.txt` to build it)")
    return False


def local_generator(spec: ModelSpec, settings: Any) -> Generator:
    preset = PRESETS.get(spec.name)
    if preset is None:
        raise ConfigError(
            f"unknown packaged model {spec}; packaged: {', '.join('local:' + n for n in PRESETS)} "
            "(or use hf:<folder> / ollama:<model>)"
        )
    cache_dir = Path(settings.model_cache).expanduser()
    if settings.engine == "llamacpp" and llamacpp_loads():
        path = run_file(preset, cache_dir, settings.llamacpp_weights)
        found = selfcheck.verdict(path, cache_dir, settings.torch_threads)
        if found != selfcheck.CRASHES:
            return llamacpp.LlamaCppGenerator(
                spec, lambda: path, threads=settings.torch_threads, repack=found == selfcheck.RUNS,
                base_model_dir=lambda: converted_dir(preset, cache_dir), ollama_base=lambda: gguf_file(preset, cache_dir),
            )
        _say_once(f"llama.cpp crashes on this CPU running {path.name}: local:{preset.name} runs on the slower "
                  f"transformers engine (delete {cache_dir / 'selfcheck'} to check again)")
    return PackagedGenerator(spec, preset, cache_dir, settings.torch_threads)


@cache
def _say_once(message: str) -> None:
    log.warning(message)


def run_file(preset: PackagedGGUF, cache_dir: Path, weights: str) -> Path:
    """The GGUF file llama.cpp runs: the packaged one, or with ``weights`` "fast" the preset's
    faster re-quantisation, made once beside it in the cache."""
    packaged = gguf_file(preset, cache_dir)
    target = run_path(preset, cache_dir, weights)
    if target == packaged:
        return packaged
    target.parent.mkdir(parents=True, exist_ok=True)
    return llamacpp.requantize(packaged, target, preset.fast_weights)


def run_path(preset: PackagedGGUF, cache_dir: Path, weights: str) -> Path:
    """Where ``run_file`` is, made or not."""
    if weights != "fast" or preset.fast_weights is None:
        return gguf_path(preset, cache_dir)
    return cache_dir / "gguf" / f"{preset.name}-{preset.sha256[:12]}.{preset.fast_weights}.gguf"


def engine_status(spec: str, settings: Any) -> dict:
    """What runs the chat model ``spec`` here, for ``kbloop status``: its engine and, for a
    packaged model on llama.cpp, the verdict of the check on this CPU (``kbloop.models.selfcheck``;
    None until the model is first used). Read from the settings and the model cache: nothing is
    loaded, assembled or checked."""
    parsed = ModelSpec.parse(spec)
    if parsed.provider != "local":
        return {"model": spec, "engine": "ollama" if parsed.provider == "ollama" else "transformers", "check": None}
    preset = PRESETS.get(parsed.name)
    if preset is None or settings.engine != "llamacpp" or not llamacpp_loads():
        return {"model": spec, "engine": "transformers", "check": None}
    cache_dir = Path(settings.model_cache).expanduser()
    try:
        found = selfcheck.known(run_path(preset, cache_dir, settings.llamacpp_weights), cache_dir)
    except BackendUnavailable:  # its package is not installed: the error comes at first use
        found = None
    return {"model": spec, "engine": "transformers" if found == selfcheck.CRASHES else "llama.cpp", "check": found}


for _role in ("generator", "teacher", "judge"):
    register(_role, "local")(local_generator)
