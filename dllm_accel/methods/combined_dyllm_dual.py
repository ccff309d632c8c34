"""DyLLM's saliency inside Fast-dLLM's dual cache: salient recomputation on the block only.

Per block ``[s, e)``:

- the first ``refresh_steps`` passes (1: Fast-dLLM's single refresh) are dense over all L rows
  and refill DyLLM's per-layer caches (post-RoPE K and V, attention context, FFN output) of every
  row. Their prefix ``[0, s)`` and suffix ``[e, L)`` K/V are the dual cache: nothing rewrites
  them until the next block's refresh;
- every later pass queries the block rows only, against the cached K/V of all L rows, as a
  DyLLM sparse step narrowed to the block: the salient block rows (at layer 0 the positions the
  previous pass committed, then those whose context cosine fell below ``saliency_threshold``)
  recompute K/V into the cache and get exact attention, the other block rows get
  ``C_old + softmax(q K^T / sqrt(d)) dV``, and the FFN runs for the salient rows only. Logits
  come back for the block.

The per-block refresh replaces DyLLM's global dense warm-up and its query pruning. Checks and
decoding are Fast-dLLM's dual mode (LLaDA: passes until the block is full, at most
``steps_per_block`` with ``dual_step_cap``; Dream: the cached block sampler, whose refresh
commits the block's first position). Padded batches follow DyLLM (left padding, each row's
positions from its first token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..generation.canvas import Canvas, Commit
from ..generation.policies import DecodingPolicy
from ..generation.settings import SettingsError
from ..models.core import DiffusionTransformer
from .base import ForwardStrategy, MethodConfig
from .dyllm import FULL, DyLLM, DyLLMConfig, StepRecord, step_kind
from .fast_dllm import FastDLLM, FastDLLMConfig
from .registry import register


@dataclass
class DyLLMDualConfig(MethodConfig):
    """Options of both parents, each checked by its parent's own config.

    saliency_threshold: DyLLM's tau (its ``threshold``, renamed so that it never meets the
        sampler's decoding ``threshold`` when settings are passed flat).
    refresh_steps: dense passes at the start of every block (>= 1).
    kernel, engine_rope, record_salient: as DyLLM.
    dual_step_cap, dream_entropy: as Fast-dLLM.
    """

    saliency_threshold: float = 0.99
    refresh_steps: int = 1
    kernel: str = "fixed"
    engine_rope: bool = True
    record_salient: bool = False
    dual_step_cap: bool = True
    dream_entropy: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.refresh_steps, bool) or not isinstance(self.refresh_steps, int) or self.refresh_steps < 1:
            raise SettingsError(
                f"refresh_steps={self.refresh_steps!r} must be an integer >= 1 (dense passes per block)"
            )
        self.saliency()
        self.dual_cache()

    def saliency(self) -> DyLLMConfig:
        """DyLLM's settings for the passes; pruning and the packed Dream shift have no role here."""
        return DyLLMConfig(
            threshold=self.saliency_threshold,
            num_full_steps=self.refresh_steps,
            prune_period=1,
            kernel=self.kernel,
            dream_packed_shift=False,
            engine_rope=self.engine_rope,
            record_salient=self.record_salient,
        )

    def dual_cache(self) -> FastDLLMConfig:
        return FastDLLMConfig(mode="dual", dual_step_cap=self.dual_step_cap, dream_entropy=self.dream_entropy)


class BlockSaliency(DyLLM):
    """DyLLM's passes on Fast-dLLM's schedule: dense at the start of each block, then the block only."""

    def plan(self, canvas: Canvas) -> tuple[str, slice]:
        kind = self.kind_ahead(canvas)
        return kind, slice(0, canvas.length) if kind == FULL else canvas.block_slice

    def kind_ahead(self, canvas: Canvas, ahead: int = 0) -> str:
        """Counted within the block (a dense refresh that ends its block refills caches nobody reads: harmless)."""
        return step_kind(canvas.block_step + 1 + ahead, self.config.num_full_steps, period=1)


@register
class DyLLMDualCache(ForwardStrategy):
    name = "combined_dyllm_dual"
    Config = DyLLMDualConfig
    config: DyLLMDualConfig

    def __init__(self, config: DyLLMDualConfig | None = None) -> None:
        super().__init__(config)
        self.saliency = BlockSaliency(self.config.saliency())
        self.dual = FastDLLM(self.config.dual_cache())

    def check(self, canvas: Canvas) -> None:
        self.dual.check(canvas)
        self.saliency.check(canvas)

    def decoding_policy(self, policy: DecodingPolicy, canvas: Canvas) -> DecodingPolicy:
        return self.dual.decoding_policy(policy, canvas)

    def begin(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        self.saliency.begin(model, canvas)

    def forward(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        return self.saliency.forward(model, canvas)

    def after_commit(self, canvas: Canvas, commit: Commit) -> None:
        self.saliency.after_commit(canvas, commit)

    def finish(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        self.saliency.finish(model, canvas)

    @property
    def trace(self) -> list[StepRecord]:
        """DyLLM's per-pass records: kind ``full`` for refreshes, ``sparse`` for block passes."""
        return self.saliency.trace
