"""lm-eval's ``--model_args`` for the ``dllm_accel`` model: checkpoint, method preset, options.

    python -m dllm_accel.lm_eval --model dllm_accel \\
        --model_args pretrained=GSAI-ML/LLaDA-8B-Instruct,method=sparse_dllm,keep_ratio=0.25,gen_length=256 \\
        --tasks gsm8k

``method`` is a preset file of ``conf/method/`` (``fast_dllm_dual``, ``dllm_cache_paper``, a
published ``dllm_cache_presets`` entry, ...) or a registered method name with its defaults.
Every other key is one of: a field of the method's config, a sampler option (official names:
``gen_length``, ``steps``, ``block_length``, ``threshold``, ...), or a likelihood option
(``mc_num``, ``mc_batch_size``, ``is_check_greedy``); they override the preset. A name both
the method and the sampler know goes to the method, as in ``generate``; ``sampler.<name>`` or
``method.<name>`` says which. Without a length, each request's ``max_gen_toks`` is used.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from ..generation.settings import SamplerSettings
from ..methods import available_methods
from ..methods.registry import config_fields
from ..paths import REPO_ROOT
from .likelihood import LikelihoodSettings
from .prompting import PromptFormat, resolve_style

METHOD_DIR = REPO_ROOT / "conf" / "method"


def preset_files() -> dict[str, Path]:
    """Every method preset by file stem (``conf/method/**/<stem>.yaml``)."""
    return {path.stem: path for path in sorted(METHOD_DIR.rglob("*.yaml"))}


def method_preset(name: str) -> tuple[str, dict, dict]:
    """(registered method, its options, its sampler overrides) for a preset or a bare method name."""
    presets = preset_files()
    if name in presets:
        raw = yaml.safe_load(presets[name].read_text()) or {}
        return raw["name"], dict(raw.get("options") or {}), dict(raw.get("sampler") or {})
    if name in available_methods():
        return name, {}, {}
    raise ValueError(f"unknown method {name!r} (accepted: {', '.join(sorted(set(presets) | set(available_methods())))})")


def split_settings(method: str, settings: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Route each model_arg to the method's options, the sampler or the likelihood estimator."""
    method_names = config_fields(method)
    sampler_names = SamplerSettings.names()
    likelihood_names = {f.name for f in fields(LikelihoodSettings)}
    options: dict = {}
    sampler: dict = {}
    likelihood: dict = {}
    for key, value in settings.items():
        scope, _, name = key.rpartition(".")
        if scope == "method" or (not scope and name in method_names):
            options[name] = value
        elif scope == "sampler" or (not scope and name in sampler_names):
            sampler[name] = value
        elif not scope and name in likelihood_names:
            likelihood[name] = value
        else:
            accepted = sorted(method_names | sampler_names | likelihood_names)
            raise ValueError(f"unknown model_arg {key!r} for method {method!r} (accepted: {', '.join(accepted)})")
    return options, sampler, likelihood


def _batch_size(value: Any) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    raise ValueError(f"batch_size={value!r} is not supported (give a whole number, e.g. --batch_size 4)")


def from_model_args(
    cls,
    pretrained: str | None = None,
    method: str = "vanilla",
    tokenizer: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    batch_size: int | str = 1,
    max_batch_size: int | None = None,
    prompt_style: str = "plain",
    add_bos: bool = False,
    system: str | None = None,
    seed: int = 1234,
    random_weights: bool = False,
    **settings: Any,
):
    """Load the checkpoint and build ``cls`` (``DiffusionLM``); bad names fail before any weight is read.

    ``tokenizer``: a directory, or ``byte`` for the tiny parity checkpoints (default: the
    checkpoint's own). ``prompt_style``: ``plain`` (lm-eval's context as is; use lm-eval's
    ``--apply_chat_template`` for chat turns) or ``chat`` (the whole context as one user message).
    ``max_batch_size`` is lm-eval's and unused.
    """
    import torch

    from ..models import load_model, load_spec
    from .byte_tokenizer import build_tokenizer

    if not pretrained:
        raise ValueError("model_args needs pretrained=<hub id or local checkpoint directory>")
    name, options, sampler = method_preset(method)
    extra_options, extra_sampler, likelihood = split_settings(name, settings)
    options, sampler = options | extra_options, sampler | extra_sampler
    style = resolve_style(prompt_style, instruct=False)
    if device in (None, "auto") or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        # lm-eval's CLI passes cuda:0 unless told otherwise; like its HF model, use what exists
        device = "cuda" if torch.cuda.is_available() else "cpu"
    spec, _, _ = load_spec(pretrained)
    checked = SamplerSettings(**sampler)
    if checked.gen_length or checked.max_new_tokens:  # else each request's max_gen_toks decides
        checked.resolve(spec, prompt_length=0)
    likelihood_settings = LikelihoodSettings(**likelihood)
    model = load_model(pretrained, dtype=dtype, device=device, random_weights=random_weights)
    lm = cls(
        model,
        build_tokenizer(tokenizer, pretrained, model.spec),
        name,
        options=options,
        sampler=sampler,
        prompt=PromptFormat(style=style, add_bos=add_bos, system=system),
        batch_size=_batch_size(batch_size),
        seed=seed,
        likelihood=likelihood_settings,
    )
    lm.pretrained, lm.preset = str(pretrained), method
    return lm
