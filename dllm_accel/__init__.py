"""dllm-accel: training-free acceleration of diffusion LLMs, on one core, measured one way."""

from .api import generate
from .generation import GenerationOutput, SamplerSettings
from .methods import available_methods, build_method
from .models import load_model, load_tokenizer

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
