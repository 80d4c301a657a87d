"""Model backends behind four roles (embedder, generator, teacher, judge), chosen by spec strings."""

from kbloop.models.registry import create, providers, register

__all__ = ["create", "providers", "register"]
