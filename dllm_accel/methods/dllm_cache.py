"""dLLM-Cache (maomaocun/dLLM-cache): adaptive reuse of per-layer features across steps.

Every layer caches K/V (pre-RoPE), its attention output and its FFN output for the prompt
and for the response. The prompt is recomputed every ``prompt_interval_steps`` steps and
the response every ``gen_interval_steps`` steps, on one step counter that runs over the
whole generation (it does not restart at block boundaries). In between, the
``transfer_ratio`` share of response rows whose V changed most (lowest cosine similarity
to the cached V) is recomputed. Residual adds always use the live layer input.

Settings follow the official names; the per-task settings of the published scripts are
under ``conf/method/dllm_cache_presets/``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..generation.canvas import Canvas
from ..generation.settings import SettingsError
from ..models.compiled import compiled_pass
from ..models.core import DiffusionTransformer
from .base import ForwardStrategy, MethodConfig, scored_rows
from .dllm_cache_layer import LayerCache, LayerRecord, PassContext, Refresh, run_layer
from .registry import register

LAYER0_REFRESH = ("head", "paper")
DREAM_K_SCATTER = ("kv_width", "literal_hidden_div_7")


@dataclass
class DLLMCacheConfig(MethodConfig):
    """dLLM-Cache settings; the defaults are the official ``dLLMCacheConfig`` and HEAD hooks.

    - ``prompt_interval_steps`` (Kp) / ``gen_interval_steps`` (Kr): refresh the prompt /
      response features when ``step % K == 0`` (0-based, global); -1 refreshes every step,
      as Python's ``step % -1 == 0`` makes it in the official code.
    - ``transfer_ratio`` (rho): in steps that do not refresh the response, recompute the
      ``int(gen_length * rho)`` response rows with the lowest V cosine similarity; 0 reuses
      the response features unchanged.
    - ``layer0_refresh``: ``head`` recomputes layer 0 fully at every step (the official
      hooks since 6 Jul 2025, ``1ef9d03``/``105ae18``); ``paper`` lets layer 0 be stale like
      the others (the code of the paper's experiments, dLLM-cache issue #6).
    - ``dream_k_scatter``: ``kv_width`` writes the whole K row of a picked position;
      ``literal_hidden_div_7`` reproduces the official Dream hook, which writes only the
      first ``hidden_size // 7`` K channels (equal to the K width on Dream-7B only).
    - ``honour_padding_mask``: the official hooks attend to padded keys of left-padded
      batches (False); True hides them as the vanilla models do.
    """

    prompt_interval_steps: int = 1
    gen_interval_steps: int = 1
    transfer_ratio: float = 0.0
    layer0_refresh: str = "head"
    dream_k_scatter: str = "kv_width"
    honour_padding_mask: bool = False

    def __post_init__(self) -> None:
        for name in ("prompt_interval_steps", "gen_interval_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
                raise SettingsError(f"{name}={value!r} must be a positive integer or -1 (refresh every step)")
        if isinstance(self.transfer_ratio, bool) or not 0 <= self.transfer_ratio <= 1:
            raise SettingsError(f"transfer_ratio={self.transfer_ratio!r} must be in [0, 1]")
        if self.layer0_refresh not in LAYER0_REFRESH:
            raise SettingsError(
                f"unknown layer0_refresh {self.layer0_refresh!r} (accepted: {', '.join(LAYER0_REFRESH)})"
            )
        if self.dream_k_scatter not in DREAM_K_SCATTER:
            raise SettingsError(
                f"unknown dream_k_scatter {self.dream_k_scatter!r} (accepted: {', '.join(DREAM_K_SCATTER)})"
            )


@register
class DLLMCache(ForwardStrategy):
    name = "dllm_cache"
    Config = DLLMCacheConfig

    def __init__(self, config: DLLMCacheConfig | None = None) -> None:
        super().__init__(config)
        # Set to a list to record, per step, what every layer did (tests and analysis).
        self.trace: list[list[LayerRecord]] | None = None

    def check(self, canvas: Canvas) -> None:
        super().check(canvas)
        if canvas.prompt_length < 1:
            raise SettingsError("dllm_cache needs a prompt of at least one token (its prompt cache would be empty)")
        if self.config.dream_k_scatter == "literal_hidden_div_7":
            spec = canvas.spec
            if spec.family != "dream":
                raise SettingsError(
                    f"dream_k_scatter='literal_hidden_div_7' applies to Dream only, not {spec.family!r}"
                )
            if spec.d_model // 7 > spec.kv_dim:
                raise SettingsError(
                    f"dream_k_scatter='literal_hidden_div_7' needs hidden_size // 7 = {spec.d_model // 7} "
                    f"<= the K width {spec.kv_dim} (the official scatter fails otherwise)"
                )

    def begin(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        spec, cfg = model.spec, self.config
        batch, length = canvas.x.shape
        self.caches = [LayerCache.allocate(batch, length, spec, model.dtype, model.device) for _ in model.blocks]
        gen_length = length - canvas.prompt_length
        transfer = cfg.transfer_ratio > 0
        literal = cfg.dream_k_scatter == "literal_hidden_div_7"
        self.context = PassContext(
            prompt_length=canvas.prompt_length,
            rope=model.rope_table(canvas.positions),
            key_mask=canvas.key_mask if cfg.honour_padding_mask else None,
            num_selected=int(gen_length * cfg.transfer_ratio) if transfer else None,
            k_scatter_width=spec.d_model // 7 if literal else spec.kv_dim,
        )
        self.step = 0
        if self.trace is not None:
            self.trace.clear()
        canvas.stats.update(rows_recomputed=0.0, rows_total=0.0, recompute_fraction=0.0)

    def branch(self, layer: int) -> Refresh:
        """The refresh branch of ``layer`` at the current step."""
        cfg = self.config
        forced = layer == 0 and cfg.layer0_refresh == "head"
        prompt = forced or self.step % cfg.prompt_interval_steps == 0
        gen = forced or self.step % cfg.gen_interval_steps == 0
        return Refresh.of(prompt, gen)

    def forward(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        layer = compiled_pass(run_layer)
        x = model.embed(canvas.x)
        records, rows = [], 0
        for i, (block, cache) in enumerate(zip(model.blocks, self.caches, strict=True)):
            x, record, computed = layer(block, cache, x, self.branch(i), self.context)
            records.append(record)
            rows += computed
        self.step += 1
        canvas.nfe += 1
        if self.trace is not None:
            self.trace.append(records)
        self._count(canvas, rows, x.shape[1] * len(self.caches))
        # the response rows [P, L) are the pass's rows; the head runs over those the policy reads
        # (Dream predicts position i from hidden state i - 1)
        canvas.pass_rows = slice(canvas.prompt_length, canvas.length)
        scored = scored_rows(canvas, canvas.pass_rows)
        return model.logits_for(x, scored.start, scored.stop), scored

    @staticmethod
    def _count(canvas: Canvas, recomputed: int, total: int) -> None:
        """Rows that went through attention and FFN, summed over layers and steps."""
        stats = canvas.stats
        stats["rows_recomputed"] += recomputed
        stats["rows_total"] += total
        stats["recompute_fraction"] = stats["rows_recomputed"] / stats["rows_total"]
