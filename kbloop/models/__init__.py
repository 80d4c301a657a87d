"""Model backends behind four roles (embedder, generator, teacher, judge), chosen by spec strings."""

from kbloop.models.registry import ModelSpec, configured, create, providers, register

__all__ = ["ModelSpec", "configured", "create", "providers", "register"]
