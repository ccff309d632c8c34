"""LLaDA2.x block diffusion: block-causal passes over an exact prefix KV cache.

Blocks are laid on absolute positions, so the prompt's last partial block is the first block
denoised, as in ``LLaDA2MoeModelLM.generate``. Under block-causal attention a finished block's
keys and values never change, so each block's first pass also runs the previous block's final
tokens and stores their K/V; every other pass runs only the block's rows. The logits are the
official full-window passes' up to float rounding, with a fraction of the work.

Decoding follows the official threshold rule (commit every mask whose probability exceeds
``threshold``, else the schedule's count of the most confident); with ``editing_threshold``
(LLaDA2.1's token-to-token editing) a step may also rewrite committed non-prompt tokens of the
block whose new prediction is confident enough, and a finished block gets up to
``max_post_steps`` more passes while edits keep coming.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..models.core import DiffusionTransformer
from .loop import GenerationOutput
from .settings import SamplerSettings, SettingsError

_AUTO = "auto"


@dataclass(frozen=True)
class BlockDiffusionSettings:
    """The official ``generate`` arguments (same names and defaults) plus ``output_history``.

    ``editing_threshold='auto'`` edits on LLaDA2.1 checkpoints (0.9, the official default) and not
    on LLaDA2.0; a number switches editing on, ``None`` off.
    """

    gen_length: int = 2048
    block_length: int = 32
    steps: int = 32
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    threshold: float = 0.95
    minimal_topk: int = 1
    eos_early_stop: bool = False
    editing_threshold: float | str | None = _AUTO
    max_post_steps: int = 16
    num_to_transfer: int = 1
    mask_id: int | None = None
    eos_id: int | None = None
    output_history: bool = False

    @classmethod
    def from_options(cls, options: dict) -> BlockDiffusionSettings:
        """Settings from ``generate``'s keywords. Other samplers' options left at their defaults
        (the evaluator passes every one) are dropped; any other name is an error."""
        accepted = {f.name for f in fields(cls)}
        if options.get("max_new_tokens") is not None:
            options = {**options, "gen_length": options["max_new_tokens"]}
        untouched = {f.name for f in fields(SamplerSettings) if options.get(f.name, f.default) == f.default}
        options = {k: v for k, v in options.items() if k in accepted or k not in untouched}
        options.pop("max_new_tokens", None)
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise SettingsError(
                f"unknown block-diffusion setting {unknown[0]!r} (accepted: {', '.join(sorted(accepted))})"
            )
        settings = cls(**options)
        settings.check()
        return settings

    def check(self) -> None:
        for name in ("gen_length", "block_length", "steps", "minimal_topk", "num_to_transfer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"{name}={value!r} must be a positive integer")
        if self.max_post_steps < 0:
            raise SettingsError(f"max_post_steps={self.max_post_steps} must be >= 0")
        if self.temperature < 0:
            raise SettingsError(f"temperature={self.temperature} must be >= 0")
        if not 0 <= self.threshold <= 1:
            raise SettingsError(f"threshold={self.threshold} must be in [0, 1]")
        editing = self.editing_threshold
        if editing not in (None, _AUTO) and not (isinstance(editing, (int, float)) and 0 <= editing <= 1):
            raise SettingsError(f"editing_threshold={editing!r} must be in [0, 1], None or 'auto'")


class _PrefixCache:
    """Rotated K/V of every layer over the whole canvas, written block by block (exact prefix)."""

    def __init__(self, model: DiffusionTransformer, batch: int, length: int, block: int) -> None:
        spec = model.spec
        shape = (spec.n_layers, batch, spec.n_kv_heads, length, spec.head_dim)
        self.keys = torch.zeros(shape, dtype=model.dtype, device=model.device)
        self.values = torch.zeros_like(self.keys)
        blocks = torch.arange(length, device=model.device) // block
        self.allowed = blocks[:, None] >= blocks[None, :]  # [L, L]: query block >= key block
        self.rope = model.rope_table(torch.arange(length, device=model.device))

    def run(self, model: DiffusionTransformer, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Hidden states of rows [start, start + T) against keys [0, start + T); stores their K/V."""
        stop = start + tokens.shape[1]
        rows = self.rope.select(slice(start, stop))
        mask = self.allowed[start:stop, :stop][None, None]
        x = model.embed(tokens)
        for layer, block in enumerate(model.blocks):
            q, k, v = block.qkv(block.attn_norm(x))
            self.keys[layer, :, :, start:stop] = block.rope(k, rows)
            self.values[layer, :, :, start:stop] = v
            keys, values = self.keys[layer, :, :, :stop], self.values[layer, :, :, :stop]
            x = x + block.attn_out(block.attend(block.rope(q, rows), keys, values, mask))
            x = x + block.mlp(block.mlp_norm(x))
        return x


def _filter(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, top_k)[0][..., -1, None]
        logits = torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)
    if top_p is not None and top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        beyond = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1) > top_p
        beyond[..., 1:] = beyond[..., :-1].clone()
        beyond[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(beyond).scatter(-1, order, beyond), float("-inf"))
    return logits


def sample(logits: torch.Tensor, s: BlockDiffusionSettings, argmax_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and their probabilities [B, T] from float logits, as the official sampler draws them."""
    shape, vocab = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    if s.temperature == 0:
        probs = F.softmax(flat, dim=-1)
        token = torch.argmax(flat if argmax_logits else probs, dim=-1, keepdim=True)
    else:
        scaled = flat / s.temperature if s.temperature != 1.0 else flat
        probs = F.softmax(_filter(scaled, s.top_k, s.top_p), dim=-1)
        token = torch.multinomial(probs, num_samples=1)
    return token.view(shape), torch.gather(probs, -1, token).view(shape)


def _schedule(block: int, steps: int) -> list[int]:
    base, extra = divmod(block, steps)
    return [base + 1 if i < extra else base for i in range(steps)]


def _threshold_commit(confidence: torch.Tensor, active: torch.Tensor, threshold: float, count: int) -> torch.Tensor:
    """The official rule per row: every mask above ``threshold`` if there are at least ``count``,
    else the ``count`` most confident masks (all that are left if fewer)."""
    high = (confidence > threshold) & active
    ranked = torch.where(active, confidence, float("-inf"))
    order = torch.argsort(ranked, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    best = (rank < count) & active
    enough = high.sum(dim=1, keepdim=True) >= count
    return torch.where(enough, high, best)


def _eos_settled(generated: torch.Tensor, wrote_eos: torch.Tensor, eos_id: int, mask_id: int) -> torch.Tensor:
    """[B] rows that just committed an EOS and have no mask before their first EOS (LLaDA2.0's early stop)."""
    is_eos = generated == eos_id
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), generated.shape[1])
    before = torch.arange(generated.shape[1], device=generated.device) < first[:, None]
    return wrote_eos.any(dim=1) & is_eos.any(dim=1) & ~((generated == mask_id) & before).any(dim=1)


@torch.no_grad()
def block_diffusion_generate(
    model: DiffusionTransformer, input_ids: torch.Tensor, settings: BlockDiffusionSettings
) -> GenerationOutput:
    """Fill ``gen_length`` masks after the prompt block by block; ``sequences`` is [B, prompt + gen_length].

    Rows are independent (the official code is batch-1); positions after a row's stop stay masked.
    """
    spec = model.spec
    s = settings
    mask_id = spec.tokens.mask if s.mask_id is None else s.mask_id
    eos_id = spec.tokens.eos if s.eos_id is None else s.eos_id
    editing = s.editing_threshold
    if editing == _AUTO:
        editing = 0.9 if spec.token_editing else None
    batch, prompt_length = input_ids.shape
    block = s.block_length
    num_blocks = (prompt_length + s.gen_length + block - 1) // block
    total = num_blocks * block
    if total > spec.max_seq_len:
        raise SettingsError(
            f"prompt ({prompt_length}) + generation ({s.gen_length}) padded to blocks of {block} = {total} tokens exceeds the model's context of {spec.max_seq_len}"
        )
    device = model.device
    x = torch.full((batch, total), mask_id, dtype=torch.long, device=device)
    x[:, :prompt_length] = input_ids.to(device)
    cache = _PrefixCache(model, batch, total, block)
    schedule = _schedule(block, min(s.steps, s.gen_length // s.minimal_topk))
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)
    history: list[torch.Tensor] | None = [] if s.output_history else None
    nfe, cached = 0, 0  # cached: positions whose K/V are final and stored
    first = prompt_length // block
    for index in range(first, num_blocks):
        start = index * block
        in_prompt = torch.arange(start, start + block, device=device) < prompt_length
        settled = stopped.clone()  # rows whose block takes no more commits (each row as if run alone)
        post_steps = torch.zeros(batch, dtype=torch.long, device=device)
        step = 0
        while True:
            current = x[:, start : start + block]
            has_masks = (current == mask_id).any(dim=1)
            if editing is None:
                settled |= ~has_masks
            else:
                post_steps += ~has_masks & ~settled
                settled |= post_steps > s.max_post_steps
            if bool(settled.all()) or (editing is None and step >= len(schedule)):  # the one host read of the step
                break
            live = ~settled[:, None]
            active = (current == mask_id) & live
            hidden = cache.run(model, x[:, cached : start + block], cached)
            cached = start
            nfe += 1
            logits = model.logits(hidden[:, -block:]).float()
            tokens, probs = sample(logits, s, argmax_logits=editing is not None)
            count = s.num_to_transfer if editing is not None else schedule[step]
            commit = _threshold_commit(probs, active, s.threshold, count)
            if editing is not None:
                edits = (probs > editing) & (current != mask_id) & ~in_prompt & (tokens != current) & live
                commit = commit | edits
                settled |= ~has_masks & ~edits.any(dim=1)
            x[:, start : start + block] = torch.where(commit, tokens, current)
            if editing is None and s.eos_early_stop:
                stopped |= _eos_settled(x[:, prompt_length:], commit & (tokens == eos_id), eos_id, mask_id)
                settled |= stopped
            step += 1
            if history is not None:
                history.append(x[:, : prompt_length + s.gen_length].clone())
        generated = x[:, prompt_length : start + block]
        if editing is None or s.eos_early_stop:
            done = (generated == eos_id).any(dim=1)
            if editing is not None:
                done &= ~(generated == mask_id).any(dim=1)
            stopped |= done
            if bool(stopped.all()):
                break
    return GenerationOutput(x[:, : prompt_length + s.gen_length], nfe, history, None)
