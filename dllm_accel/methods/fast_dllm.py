"""Fast-dLLM (NVlabs/Fast-dLLM v1): block-wise KV cache, prefix or dual.

Per block, a refresh pass runs the whole sequence and fills the cache (``BlockKVCache``);
later passes of the block run only ``x[:, s:]`` against the cached prefix (prefix mode)
or only the block ``x[:, s:e]`` against the cached prefix and the refresh's stale suffix
(dual mode), writing their own K/V into the cache in place. ``mode='none'`` runs full
passes: Fast-dLLM's plain ``generate`` / ``_sample``, where only the decoding differs
from vanilla.

Parallel decoding is a policy (``generation/parallel.py``), chosen by sampler settings:
``threshold`` / ``factor`` for LLaDA, ``alg='confidence_threshold'`` (+ ``threshold``) for
Dream. The official runs also use ``block_length=32`` and, for LLaDA, float64 confidence
(``confidence_dtype='float64'``); the ``conf/method/fast_dllm*.yaml`` presets set both.

Official behaviours kept, each with its option (``FastDLLMConfig``):

- LLaDA passes (``sampler='llada'``) loop until the block has no masks, even with a fixed
  schedule (``while True``), so steps whose quota is 0 never run.
- LLaDA dual mode makes at most ``steps_per_block`` passes per block, refresh included,
  also under threshold/factor (``dual_step_cap``); when that budget is short it leaves
  masks, which the next refresh may still fill (its candidates reach back to them).
- LLaDA prefix mode at temperature > 0 draws one unused Gumbel noise tensor per cached
  pass before the one it uses (``prefix_noise_draw``); only seeded sampling sees it.
- Dream with a cache decodes with Fast-dLLM's block sampler (``DreamBlockPolicy``): the
  refresh commits the block's first position unconditionally (Fast-dLLM issue #61), and
  every alg but ``confidence_threshold`` ranks by neg-entropy (``dream_entropy``).

Beyond the official code: padded batches (left padding, ``attention_mask``) work in
every mode, each row giving its batch-1 result (the official batched dual cache is
broken, Fast-dLLM PR #17/#57); Dream takes the padding-aware positions of its vanilla
sampler, where Fast-dLLM's Dream model ignores ``position_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..generation.canvas import Canvas, Commit
from ..generation.parallel import DreamBlockPolicy
from ..generation.policies import DecodingPolicy
from ..generation.rules import DecodingRule
from ..models.compiled import compiled_pass
from ..models.core import DiffusionTransformer
from .base import ForwardStrategy, MethodConfig, dense_pass, pass_logits
from .fast_dllm_cache import BlockKVCache
from .registry import register

MODES = ("prefix", "dual", "none")


@dataclass
class FastDLLMConfig(MethodConfig):
    # "prefix" (the paper's +Cache), "dual" (+DualCache) or "none" (no cache)
    mode: str = "prefix"
    # LLaDA dual mode: at most steps_per_block passes per block, even under threshold/factor
    dual_step_cap: bool = True
    # LLaDA prefix mode: the official loop's extra, unused Gumbel draw per cached pass
    prefix_noise_draw: bool = True
    # Dream block sampler: neg-entropy ranking for every alg but confidence_threshold
    dream_entropy: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fast_dllm mode {self.mode!r} (accepted: {', '.join(MODES)})")
        for name in ("dual_step_cap", "prefix_noise_draw", "dream_entropy"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"fast_dllm {name}={getattr(self, name)!r} must be true or false")


@dataclass(frozen=True)
class PassRecord:
    kind: str  # "full" (refresh or no-cache pass), "prefix" or "dual"
    start: int
    stop: int


@register
class FastDLLM(ForwardStrategy):
    name = "fast_dllm"
    Config = FastDLLMConfig
    config: FastDLLMConfig
    supports_cfg: ClassVar[bool] = False
    block_causal_reason: ClassVar[str] = (
        "the block-diffusion sampler (method='vanilla') already keeps the exact prefix cache that Fast-dLLM's "
        "prefix mode approximates, and block-causal attention leaves the block no suffix for the dual cache"
    )

    @property
    def cached(self) -> bool:
        return self.config.mode != "none"

    def check(self, canvas: Canvas) -> None:
        s = canvas.settings
        if s.cfg_scale > 0 and self.cached:
            raise ValueError(f"fast_dllm mode {self.config.mode!r} does not support cfg_scale > 0 (mode 'none' does)")
        if self.cached and s.sampler not in ("llada", "dream"):
            raise ValueError(
                f"fast_dllm mode {self.config.mode!r} decodes with sampler 'llada' or 'dream', got {s.sampler!r}"
            )
        if self.cached and canvas.spec.logit_shift and s.sampler != "dream":
            raise ValueError(
                f"fast_dllm mode {self.config.mode!r} on {canvas.spec.family} needs sampler 'dream' (got {s.sampler!r}): "
                "cached passes start at the block, so only Dream's block sampler, which commits the block's first "
                "position in the refresh pass, can decode from them"
            )
        if self.cached and s.sampler == "dream" and s.constant_count:
            raise ValueError(
                f"fast_dllm mode {self.config.mode!r} on Dream decodes with Fast-dLLM's block sampler, which has its own "
                "count rule (the refresh commits the block's first position): transfer_schedule='constant' cannot apply"
            )
        if self.cached and s.sampler == "dream" and not self.config.dream_entropy and s.alg == "origin":
            raise ValueError("fast_dllm dream_entropy=false ranks by alg, which alg='origin' does not do")

    def decoding_policy(self, policy: DecodingPolicy, canvas: Canvas) -> DecodingPolicy:
        s = canvas.settings
        if self.cached and s.sampler == "dream":
            if isinstance(policy, DecodingRule):
                return policy.for_dream_block_passes()
            return DreamBlockPolicy(hardcoded_entropy=self.config.dream_entropy)
        if s.sampler == "llada":
            cap = self.config.mode == "dual" and self.config.dual_step_cap
            return UntilBlockDone(policy, step_cap=s.steps_per_block if cap else None)
        return policy

    def begin(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        self.passes: list[PassRecord] = []
        for key in ("dense_passes", "cached_passes", "rows_computed", "rows_dense"):
            canvas.stats[key] = 0.0
        if self.cached:
            self.cache = BlockKVCache(model, canvas.x.shape[0], canvas.length)
            self.rope = model.rope_table(canvas.positions)
            s = canvas.settings
            self.block_starts = torch.arange(canvas.prompt_length, canvas.length, s.block_length, device=model.device)

    def forward(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        rows, kind = self._rows(canvas)
        if self.cached:
            graphs = kind == "dual" and canvas.x.is_cuda and canvas.settings.compile
            # a CUDA graph replays device memory only: the block start as a device index
            start = self.block_starts[canvas.block] if graphs else rows.start
            run = compiled_pass(BlockKVCache.run, graphs=graphs)
            hidden = run(self.cache, model, canvas.x[:, rows], start, self.rope, canvas.key_mask)
            logits, scored = pass_logits(model, hidden, rows, canvas)
            canvas.nfe += 1
        else:
            logits, scored = dense_pass(model, canvas)
        s = canvas.settings
        if kind == "prefix" and self.config.prefix_noise_draw and s.sampler == "llada" and s.temperature > 0:
            # the official draw is over the pass's logits [B, R, V]; only its RNG use matters
            torch.rand((logits.shape[0], rows.stop - rows.start, logits.shape[-1]), dtype=torch.float64, device=logits.device)
        self._record(canvas, kind, rows)
        return logits, scored

    def _rows(self, canvas: Canvas) -> tuple[slice, str]:
        if not self.cached or canvas.block_step == 0:
            return slice(0, canvas.length), "full"
        if self.config.mode == "prefix":
            return slice(canvas.block_start, canvas.length), "prefix"
        return canvas.block_slice, "dual"

    def _record(self, canvas: Canvas, kind: str, rows: slice) -> None:
        self.passes.append(PassRecord(kind, rows.start, rows.stop))
        stats = canvas.stats
        stats["dense_passes" if kind == "full" else "cached_passes"] += 1
        stats["rows_computed"] += rows.stop - rows.start
        stats["rows_dense"] += canvas.length


class UntilBlockDone(DecodingPolicy):
    """Fast-dLLM's LLaDA loops around any policy: a block ends as soon as it has no masks,
    or, in dual mode, after ``step_cap`` passes."""

    def __init__(self, inner: DecodingPolicy, step_cap: int | None) -> None:
        self.inner = inner
        self.step_cap = step_cap

    def begin_block(self, canvas: Canvas) -> None:
        self.inner.begin_block(canvas)

    def reads(self, canvas: Canvas) -> slice:
        return self.inner.reads(canvas)

    def block_finished(self, canvas: Canvas) -> bool:
        if self.step_cap is not None and canvas.block_step >= self.step_cap:
            return True
        return canvas.block_done() or self.inner.block_finished(canvas)

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        return self.inner.select(logits, rows, canvas)
