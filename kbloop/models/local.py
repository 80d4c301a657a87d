"""``local:`` chat models: the GGUF files that ship in PyPI packages, run by llama.cpp when it
loads and by transformers otherwise (KBLOOP_ENGINE chooses; training always uses transformers)."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any

from kbloop.errors import ConfigError
from kbloop.models import llamacpp
from kbloop.models.generators import Generator, PackagedGenerator
from kbloop.models.packaged import PRESETS, converted_dir, gguf_file
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
        return llamacpp.LlamaCppGenerator(
            spec, lambda: gguf_file(preset, cache_dir), threads=settings.torch_threads,
            base_model_dir=lambda: converted_dir(preset, cache_dir), ollama_base=lambda: gguf_file(preset, cache_dir),
        )
    return PackagedGenerator(spec, preset, cache_dir, settings.torch_threads)


for _role in ("generator", "teacher", "judge"):
    register(_role, "local")(local_generator)
