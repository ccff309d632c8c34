"""One transformer core, its family adapters and checkpoint loading."""

from .core import Block, DiffusionTransformer, RMSNorm
from .families import FAMILIES, CheckpointError, FamilyAdapter, adapter_named
from .loading import load_model, load_spec, resolve_checkpoint_dir, resolve_dtype
from .rope import RopeTable
from .spec import ModelSpec, SpecialTokens
from .tokenizer import load_tokenizer

__all__ = [
    "FAMILIES",
    "Block",
    "CheckpointError",
    "DiffusionTransformer",
    "FamilyAdapter",
    "ModelSpec",
    "RMSNorm",
    "RopeTable",
    "SpecialTokens",
    "adapter_named",
    "load_model",
    "load_spec",
    "load_tokenizer",
    "resolve_checkpoint_dir",
    "resolve_dtype",
]
