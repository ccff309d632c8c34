"""Compute-reuse strategies; each is one module registered by name."""

from .base import ForwardStrategy, MethodConfig, dense_pass
from .registry import available_methods, build_method, method_class, register

__all__ = [
    "ForwardStrategy",
    "MethodConfig",
    "available_methods",
    "build_method",
    "dense_pass",
    "method_class",
    "register",
]
