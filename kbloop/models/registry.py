"""The backend registry: a spec string such as ``local:all-minilm-l6-v2`` or
``ollama:qwen3:4b`` names a provider and a model; the provider is looked up here.

Backends register themselves with ``@register(role, provider)``; the modules that hold them
are imported on first lookup, so importing kbloop loads no model code. ``create`` is the one
place a spec string is parsed: a backend receives the parsed ``ModelSpec``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Literal

from kbloop.errors import ConfigError

Role = Literal["embedder", "generator", "teacher", "judge"]

# Modules whose import registers the backends of a role.
_BACKEND_MODULES: dict[str, tuple[str, ...]] = {
    "embedder": ("kbloop.models.embedders",),
    "generator": ("kbloop.models.generators", "kbloop.models.local"),
    "teacher": ("kbloop.models.generators", "kbloop.models.local"),
    "judge": ("kbloop.models.generators", "kbloop.models.local"),
}

_REGISTRY: dict[tuple[str, str], Callable[..., Any]] = {}


@dataclass(frozen=True)
class ModelSpec:
    """A model named as ``provider:name``; the name may itself hold colons (``ollama:qwen3:4b``)."""

    provider: str
    name: str

    @classmethod
    def parse(cls, spec: str) -> "ModelSpec":
        provider, sep, name = spec.partition(":")
        if not sep or not provider or not name:
            raise ConfigError(f"model spec {spec!r} must look like provider:name, e.g. local:all-minilm-l6-v2")
        return cls(provider, name)

    def __str__(self) -> str:
        return f"{self.provider}:{self.name}"


def register(role: Role, provider: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``factory(spec: ModelSpec, settings)`` as the ``provider`` backend of ``role``."""

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


def create(role: Role, spec: str | ModelSpec, settings: Any) -> Any:
    """Build the backend for ``role`` named by ``spec``; nothing heavy loads until first use."""
    parsed = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    _load_backends(role)
    factory = _REGISTRY.get((role, parsed.provider))
    if factory is None:
        raise ConfigError(
            f"unknown {role} provider {parsed.provider!r} in {str(parsed)!r}; "
            f"choose one of: {', '.join(providers(role))}"
        )
    return factory(parsed, settings)


def configured(role: Role, settings: Any) -> Any:
    """The backend the settings choose for ``role``: KBLOOP_EMBEDDER, _GENERATOR, _TEACHER or _JUDGE."""
    specs = {"embedder": settings.embedder, "generator": settings.generator,
             "teacher": settings.teacher, "judge": settings.judge}
    return create(role, specs[role], settings)
