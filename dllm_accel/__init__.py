"""dllm-accel: training-free acceleration of diffusion LLMs, on one core, measured one way.

The public names load on first use, so tools that need only part of the package (``--help``,
the analysis scripts) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import generate
    from .generation import GenerationOutput, SamplerSettings
    from .methods import available_methods, build_method
    from .models import load_model, load_tokenizer

_HOME = {
    "generate": ".api",
    "GenerationOutput": ".generation",
    "SamplerSettings": ".generation",
    "available_methods": ".methods",
    "build_method": ".methods",
    "load_model": ".models",
    "load_tokenizer": ".models",
}
__all__ = [
    "GenerationOutput",
    "SamplerSettings",
    "available_methods",
    "build_method",
    "generate",
    "load_model",
    "load_tokenizer",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name], __name__), name)
