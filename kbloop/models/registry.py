"""The backend registry: a spec string such as ``local:all-minilm-l6-v2`` or
``ollama:qwen3:4b`` names a provider and a model; the provider is looked up here.

Backends register themselves with ``@register(role, provider)``; the modules that hold them
are imported on first lookup, so importing kbloop loads no model code.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Literal

from kbloop.errors import ConfigError

Role = Literal["embedder", "generator", "teacher", "judge"]

# Modules whose import registers the backends of a role.
_BACKEND_MODULES: dict[str, tuple[str, ...]] = {
    "embedder": ("kbloop.models.embedders",),
    "generator": ("kbloop.models.generators",),
    "teacher": ("kbloop.models.generators",),
    "judge": ("kbloop.models.generators",),
}

_REGISTRY: dict[tuple[str, str], Callable[..., Any]] = {}


def register(role: Role, provider: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[(role, provider)] = factory
        return factory

    return decorate


def _load_backends(role: str) -> None:
    for module in _BACKEND_MODULES.get(role, ()):
        importlib.import_module(module)


def providers(role: Role) -> list[str]:
    _load_backends(role)
    return sorted(provider for r, provider in _REGISTRY if r == role)


def parse_spec(spec: str) -> tuple[str, str]:
    provider, sep, name = spec.partition(":")
    if not sep or not provider or not name:
        raise ConfigError(f"model spec {spec!r} must look like provider:name, e.g. local:all-minilm-l6-v2")
    return provider, name


def create(role: Role, spec: str, settings: Any) -> Any:
    """Build the backend for ``role`` named by ``spec``; nothing heavy loads until first use."""
    provider, name = parse_spec(spec)
    _load_backends(role)
    factory = _REGISTRY.get((role, provider))
    if factory is None:
        raise ConfigError(
            f"unknown {role} provider {provider!r} in {spec!r}; choose one of: {', '.join(providers(role))}"
        )
    return factory(name, settings)
