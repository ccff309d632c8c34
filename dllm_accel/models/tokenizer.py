"""Tokenizers from the checkpoint's own files, never with remote code."""

from __future__ import annotations

import json
import os

from .families import CheckpointError
from .loading import resolve_checkpoint_dir

# Dream's hub class is Qwen2's byte-level BPE under another name.
_QWEN2_ALIASES = {"DreamTokenizer", "Qwen2Tokenizer", "Qwen2TokenizerFast"}


def load_tokenizer(name_or_path: str | os.PathLike):
    """Load the tokenizer stored with a checkpoint (local directory or hub id)."""
    import transformers
    from transformers import Qwen2TokenizerFast

    directory = resolve_checkpoint_dir(name_or_path)
    config_path = directory / "tokenizer_config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: no tokenizer_config.json, so no tokenizer can be loaded from it")
    tokenizer_class = json.loads(config_path.read_text()).get("tokenizer_class")
    if tokenizer_class in _QWEN2_ALIASES:
        for needed in ("vocab.json", "merges.txt"):
            if not (directory / needed).is_file():
                raise CheckpointError(f"{directory}: {tokenizer_class} needs {needed}, which is missing")
        return Qwen2TokenizerFast.from_pretrained(str(directory))
    if not (directory / "tokenizer.json").is_file():
        raise CheckpointError(f"{directory}: {tokenizer_class or 'the tokenizer'} needs tokenizer.json, which is missing")
    # The class named in tokenizer_config.json, built directly: AutoTokenizer would also read config.json
    # and warn on every load that it does not know the model type (llada).
    cls = getattr(transformers, tokenizer_class or "", None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedTokenizerBase)):
        cls = transformers.PreTrainedTokenizerFast
    return cls.from_pretrained(str(directory))
