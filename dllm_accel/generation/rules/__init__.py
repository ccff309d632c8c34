"""Decoding rules beyond the official samplers' own (WINO, KLASS, Fast-dLLM++, PC-Sampler).

Each rule is one module here that registers a ``DecodingRule`` subclass by name. A run picks
one with the sampler setting ``policy=<name>`` and passes its knobs as ``policy_options``
(fields of the rule's ``Config``). Tests and sweeps find every rule through
``available_rules``, never through a hand-kept list.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import fields
from typing import Any, ClassVar

import torch

from ..canvas import Canvas, Commit
from ..parallel import DreamBlockPolicy, _LLaDAParallelPolicy
from ..policies import DecodingPolicy
from ..settings import SettingsError


class DecodingRule(DecodingPolicy):
    """A registered policy: its ``name``, a ``Config`` dataclass of options, the samplers
    (``llada``/``dream``) it is defined for, and the strategies it can decode from."""

    name: ClassVar[str]
    Config: ClassVar[type]
    samplers: ClassVar[tuple[str, ...]] = ("llada", "dream")
    # the strategies (registered method names) it can decode from, None = all; and why not others
    strategies: ClassVar[tuple[str, ...] | None] = None
    strategies_reason: ClassVar[str] = ""
    # "official" or what the rule was written from when no official code exists
    provenance: ClassVar[str] = "official"
    # True: even at temperature 0 it commits by random draws made for the whole batch at once, so a
    # row's answer depends on the batch it runs in (a padded batch cannot repeat the batch-1 answers)
    draws_per_batch: ClassVar[bool] = False

    def __init__(self, config: Any, canvas: Canvas, strategy: Any) -> None:
        name = getattr(strategy, "name", None)
        if self.strategies is not None and name not in self.strategies:
            raise ValueError(f"policy {self.name!r} cannot decode from method {name!r}: {self.strategies_reason}")
        self.config = config

    def for_dream_block_passes(self) -> DecodingPolicy:
        """The policy under strategies whose Dream passes start at the block (Fast-dLLM's cache):
        they cannot score the block's first position, so the refresh pass commits it, as there."""
        return FirstPositionFirst(self)


class ParallelRule(_LLaDAParallelPolicy, DecodingRule):
    """A parallel-decoding rule on both samplers: LLaDA keeps Fast-dLLM's block bookkeeping; on
    Dream the official loops score every mask from the block start to the end of the pass."""

    def __init__(self, config: Any, canvas: Canvas, strategy: Any) -> None:
        DecodingRule.__init__(self, config, canvas, strategy)
        self.dream = canvas.settings.sampler == "dream"

    def begin_block(self, canvas: Canvas) -> None:
        if self.dream:
            self.first_candidate = canvas.block_start
        else:
            super().begin_block(canvas)

    def reads(self, canvas: Canvas) -> slice:
        return slice(canvas.block_start, None) if self.dream else super().reads(canvas)

    def block_finished(self, canvas: Canvas) -> bool:
        return canvas.block_done()


class FirstPositionFirst(DreamBlockPolicy):
    """Fast-dLLM's cached Dream loop around a rule: a block's first pass commits the block's first
    position with its ``sample_tokens`` token, whatever its confidence; later passes follow the rule."""

    def __init__(self, inner: DecodingRule) -> None:
        super().__init__()
        self.inner = inner

    def begin_block(self, canvas: Canvas) -> None:
        self.inner.begin_block(canvas)

    def reads(self, canvas: Canvas) -> slice:
        """The first pass reads the block's first position; later passes what the rule reads (a rule
        that samples every mask of the pass, as the official cached samplers do, needs them all)."""
        return super().reads(canvas) if canvas.block_step == 0 else self.inner.reads(canvas)

    def block_finished(self, canvas: Canvas) -> bool:
        return self.inner.block_finished(canvas)

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        if canvas.block_step == 0:
            return self._first_position(logits, rows, canvas)
        return self.inner.select(logits, rows, canvas)


_REGISTRY: dict[str, type[DecodingRule]] = {}


def register_rule(cls: type[DecodingRule]) -> type[DecodingRule]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"decoding rule {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def available_rules() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def rule_class(name: str) -> type[DecodingRule]:
    _discover()
    if name not in _REGISTRY:
        raise SettingsError(f"unknown policy {name!r} (accepted: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def rule_config(name: str, options: dict | None) -> Any:
    """The rule's ``Config`` from ``policy_options``, naming an unknown option."""
    cls = rule_class(name)
    accepted = {f.name for f in fields(cls.Config)}
    unknown = sorted(set(options or {}) - accepted)
    if unknown:
        raise SettingsError(f"policy {name!r} has no option {unknown[0]!r} (accepted: {', '.join(sorted(accepted))})")
    return cls.Config(**(options or {}))


def check_rule(name: str, options: dict | None, sampler: str) -> None:
    """Reject a rule for a sampler it is not defined for, or bad options, before any forward."""
    cls = rule_class(name)
    if sampler not in cls.samplers:
        raise SettingsError(f"policy {name!r} is defined for sampler {' / '.join(cls.samplers)}, got {sampler!r}")
    rule_config(name, options)


def build_rule(canvas: Canvas, strategy: Any) -> DecodingRule:
    s = canvas.settings
    return rule_class(s.policy)(rule_config(s.policy, s.policy_options), canvas, strategy)
