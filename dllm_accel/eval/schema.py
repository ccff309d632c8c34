# ruff: noqa: UP045  (OmegaConf 2.3 structured configs need typing.Optional, not X | None)
"""Structured schemas for ``conf/``: a typo or a wrong type fails at composition, naming the key.

Method schemas are built from each method's own ``Config`` dataclass and sampler overrides
from ``SamplerSettings``, so a new method or sampler option is validated without editing
this file. They live under ``schema/<group>`` so ``--help`` and ``glob(*)`` list only real
options.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
_SIMPLE = (int, float, str, bool)


@dataclass
class ModelCfg:
    """A checkpoint. ``path`` is a hub id or a local directory (override it to use a local copy)."""

    name: str = MISSING
    path: str = MISSING
    # null: the checkpoint's own tokenizer; "byte": the byte-level test tokenizer; else a directory
    tokenizer: str | None = None
    instruct: bool = False
    dtype: str = "bfloat16"
    device: str = "auto"
    # LongLLaDA-style NTK extrapolation: RoPE theta is multiplied by this factor (1.0 = off)
    rope_scaling: float = 1.0
    random_weights: bool = False


@dataclass
class TaskCfg:
    """An lm-eval task (or group) from ``dllm_accel/eval/tasks`` and the paper's sampler settings."""

    name: str = MISSING
    lm_eval_task: str = MISSING
    # the lm-eval "<metric>,<filter>" reported as the accuracy of the run
    primary_metric: str = MISSING
    num_fewshot: int | None = None
    limit: int | None = None
    sampler: dict = field(default_factory=dict)
    # settings the task fixes over a method preset's (the tiny model's tasks: answers trained for one
    # generation window); the run's own ``sampler`` still wins
    window: dict = field(default_factory=dict)
    # synthetic long-context tasks: lengths (tokens, chat template included), depths, samples per cell
    lengths: list = field(default_factory=list)
    depths: list = field(default_factory=list)
    samples_per_cell: int = 0
    haystack: str = "noise"


@dataclass
class PromptCfg:
    """How lm-eval's context becomes the model's input.

    ``plain``: the context as is (LLaDA official, Sparse-dLLM LLaDA, Dream Base);
    ``chat``: the whole context as one user message through the chat template (Fast-dLLM,
    DyLLM, Sparse-dLLM Dream-Instruct); ``multiturn``: lm-eval's chat template with few-shot
    examples as turns (dLLM-Cache); ``auto``: chat for instruct models, plain otherwise.
    """

    style: str = "auto"
    add_bos: bool = False
    system: str | None = None
    # DyLLM: HumanEval task ids get the raw prompt even for instruct models
    raw_for_humaneval: bool = False


@dataclass
class DecodeCfg:
    """How generated ids become the answer lm-eval scores (each paper's post-processing)."""

    # cut the generated ids at the first EOS (Dream official/Fast-dLLM) instead of dropping specials
    cut_at_eos: bool = False
    skip_special_tokens: bool = True
    # escape_until in the official wrappers: False keeps lm-eval's stop strings unapplied
    apply_until: bool = True
    extra_until: list = field(default_factory=list)
    strip: bool = False


@dataclass
class MeasureCfg:
    warmup: int = 0
    generation_timeout_s: float | None = None


@dataclass
class RunCfg:
    model: ModelCfg = MISSING
    method: Any = MISSING
    task: TaskCfg = MISSING
    prompt: PromptCfg = field(default_factory=PromptCfg)
    decode: DecodeCfg = field(default_factory=DecodeCfg)
    measure: MeasureCfg = field(default_factory=MeasureCfg)
    # last word on sampler settings (after the task's and the method's)
    sampler: dict = field(default_factory=dict)
    experiment_name: str = "adhoc"
    seed: int = 1234
    batch_size: int = 1
    # torch intra-op threads on CPU (null: torch's default); 1 avoids oversubscription on shared hosts
    cpu_threads: int | None = None
    data_dir: str | None = None
    results_root: str = "results/runs"
    # auto: W&B online with an API key, offline without; offline; online; none
    tracking: str = "auto"
    wandb_project: str = "dllm-accel"
    code_workers: int = 4
    code_timeout_s: float = 10.0
    # how generated code is isolated: auto (bwrap, else unshare, else refuse), bwrap, unshare, or
    # none (no isolation: only on machines without namespaces, and only by choice)
    code_isolation: str = "auto"
    # generate stored oom/error/timeout samples again
    retry_failed: bool = False
    # show the traceback of a rejected input (also DLLM_ACCEL_DEBUG=1)
    debug: bool = False
    # papers: Dream/Fast-dLLM/dLLM-Cache sanitize; lm_eval: prompt + completion unchanged
    humaneval_postprocess: str = "papers"
    print_summary: bool = True


def _plain_type(annotation: Any) -> Any:
    """The OmegaConf-typed form of an annotation (``int | None`` -> ``Optional[int]``), else Any."""
    if annotation in _SIMPLE:
        return annotation
    args = typing.get_args(annotation)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and rest[0] in _SIMPLE:
            return Optional[rest[0]]
    return Any


def typed_fields(source: type, all_optional: bool) -> list[tuple[str, Any, Any]]:
    """(name, type, field) triples mirroring a dataclass, for ``make_dataclass``.

    ``all_optional`` turns every field into an unset-by-default override (``None``).
    """
    hints = typing.get_type_hints(source)
    out = []
    for f in dataclasses.fields(source):
        kind = _plain_type(hints.get(f.name, Any))
        if all_optional:
            kind = kind if kind is Any else Optional[kind]
            out.append((f.name, kind, field(default=None)))
        elif f.default is not dataclasses.MISSING:
            out.append((f.name, kind, field(default=f.default)))
        elif f.default_factory is not dataclasses.MISSING:
            out.append((f.name, Any, field(default_factory=f.default_factory)))
        else:
            out.append((f.name, kind, field(default=MISSING)))
    return out


def _importable(cls: type) -> type:
    """Make a generated schema a module attribute, so it pickles by name (submitit, joblib) and the
    receiving process, which rebuilds the same schemas when it imports this module, finds it."""
    cls.__module__ = __name__
    cls.__qualname__ = cls.__name__
    globals()[cls.__name__] = cls
    return cls


def sampler_overrides_schema() -> type:
    if "SamplerOverrides" not in globals():
        from ..generation.settings import SamplerSettings

        _importable(make_dataclass("SamplerOverrides", typed_fields(SamplerSettings, all_optional=True)))
    return globals()["SamplerOverrides"]


@dataclass
class MethodCfg:
    """``conf/method/*.yaml``: a registered strategy ``name``, its ``options`` and ``sampler`` overrides."""

    name: str = MISSING
    options: Any = field(default_factory=dict)
    sampler: Any = field(default_factory=dict)
    # how a preset was published (model, task, shots...): documentation the runner does not read
    published: Any = None


def _options_schema(method_name: str) -> type:
    from ..methods import method_class

    name = f"Options_{method_name}"
    if name not in globals():
        fields = typed_fields(method_class(method_name).Config, all_optional=False)
        _importable(make_dataclass(name, fields))
    return globals()[name]


def method_schema(config_name: str, method_name: str | None) -> type:
    """Schema for one method file: options typed by the method's ``Config`` when it is registered."""
    from ..methods import available_methods

    if f"Method_{config_name}" in globals():
        return globals()[f"Method_{config_name}"]
    sampler = sampler_overrides_schema()
    if method_name in available_methods():
        options = _options_schema(method_name)
        option_field = (options, field(default_factory=options))
    else:  # an unknown name is reported by the runner with the list of registered methods
        option_field = (Any, field(default_factory=dict))
    fields = [("options", *option_field), ("sampler", sampler, field(default_factory=sampler))]
    return _importable(make_dataclass(f"Method_{config_name}", fields, bases=(MethodCfg,)))


def run_schema() -> type:
    """``RunCfg`` with the task's and the run's sampler overrides typed like ``SamplerSettings``."""
    if "TypedRunCfg" not in globals():
        sampler = sampler_overrides_schema()
        task = _importable(
            make_dataclass("TypedTaskCfg", [("sampler", sampler, field(default_factory=sampler))], bases=(TaskCfg,))
        )
        fields = [("task", task, field(default=MISSING)), ("sampler", sampler, field(default_factory=sampler))]
        _importable(make_dataclass("TypedRunCfg", fields, bases=(RunCfg,)))
    return globals()["TypedRunCfg"]


def method_files(conf_dir: Path = CONF_DIR) -> dict[str, tuple[str, str, str | None]]:
    """Every method file: identifier -> (schema group, option name, registered method name)."""
    method_dir = conf_dir / "method"
    out = {}
    for path in sorted(method_dir.rglob("*.yaml")):
        relative = path.relative_to(method_dir).with_suffix("")
        group = "/".join(("schema", "method", *relative.parts[:-1]))
        out["__".join(relative.parts)] = (group, relative.name, OmegaConf.load(path).get("name"))
    return out


def register(conf_dir: Path = CONF_DIR) -> None:
    """Fill Hydra's ConfigStore; call before ``@hydra.main`` runs or ``compose`` in tests."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="run_schema", node=run_schema())
    for identifier, (group, option, method_name) in method_files(conf_dir).items():
        store.store(group=group, name=option, node=method_schema(identifier, method_name))


def build_schemas(conf_dir: Path = CONF_DIR) -> None:
    """Create every generated schema; runs at import so a process unpickling a config finds them."""
    run_schema()
    for identifier, (_, _, method_name) in method_files(conf_dir).items():
        method_schema(identifier, method_name)


build_schemas()
