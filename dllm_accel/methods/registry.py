"""Methods by name. A method module registers its strategy class with ``@register``."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import fields
from typing import Any

from .base import ForwardStrategy

_REGISTRY: dict[str, type[ForwardStrategy]] = {}


def register(cls: type[ForwardStrategy]) -> type[ForwardStrategy]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in {"base", "registry"}:
            importlib.import_module(f"{__package__}.{info.name}")


def available_methods() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[ForwardStrategy]:
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r} (accepted: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def config_fields(name: str) -> set[str]:
    return {f.name for f in fields(method_class(name).Config)}


def build_method(name: str, **options: Any) -> ForwardStrategy:
    """A fresh strategy (with its own caches) from its name and config fields."""
    cls = method_class(name)
    accepted = config_fields(name)
    unknown = sorted(set(options) - accepted)
    if unknown:
        listed = ", ".join(sorted(accepted)) or "none"
        raise ValueError(f"method {name!r} has no setting {unknown[0]!r} (accepted: {listed})")
    return cls(cls.Config(**options))
