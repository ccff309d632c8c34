"""The routed feed-forward of MoE families (LLaDA-MoE, LLaDA2), batched over experts.

Tokens are routed, sorted by expert and run through grouped matmuls (one call per
projection for all experts), so there is no Python loop over experts and no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import MoESpec


def route(scores: torch.Tensor, bias: torch.Tensor | None, moe: MoESpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert ids [N, k] and weights [N, k] (fp32) from router scores [N, E] (fp32).

    The bias only steers the choice unless ``bias_in_weights``; with groups, the k experts come
    from the ``topk_group`` groups whose two best biased scores sum highest.
    """
    biased = scores if bias is None else scores + bias.float()
    choice = biased
    if moe.n_group > 1:
        n = scores.shape[0]
        grouped = biased.view(n, moe.n_group, -1)
        group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
        picked = group_scores.topk(moe.topk_group, dim=-1, sorted=False)[1]
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, picked, True)
        choice = biased.masked_fill(~keep.repeat_interleave(grouped.shape[-1], dim=1), float("-inf"))
    top, ids = choice.topk(moe.top_k, dim=-1)
    weights = top if moe.bias_in_weights else scores.gather(1, ids)
    if moe.normalize and moe.top_k > 1:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return ids, weights * moe.scaling


class MoEFeedForward(nn.Module):
    """Router, stacked SwiGLU experts [E, F, D] and an optional shared expert."""

    def __init__(self, d_model: int, moe: MoESpec) -> None:
        super().__init__()
        self.spec = moe
        e, f = moe.n_experts, moe.expert_hidden
        self.router = nn.Linear(d_model, e, bias=False)
        self.expert_bias = nn.Parameter(torch.zeros(e), requires_grad=False) if moe.expert_bias else None
        self.experts_gate = nn.Parameter(torch.empty(e, f, d_model))
        self.experts_up = nn.Parameter(torch.empty(e, f, d_model))
        self.experts_down = nn.Parameter(torch.empty(e, d_model, f))
        if moe.shared_hidden:
            self.shared_gate = nn.Linear(d_model, moe.shared_hidden, bias=False)
            self.shared_up = nn.Linear(d_model, moe.shared_hidden, bias=False)
            self.shared_down = nn.Linear(moe.shared_hidden, d_model, bias=False)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Router scores [N, E] in fp32."""
        if self.spec.router_in_fp32:
            logits = F.linear(x.float(), self.router.weight.float())
        else:
            logits = self.router(x).float()
        return torch.softmax(logits, dim=-1) if self.spec.score == "softmax" else torch.sigmoid(logits)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        shape = h.shape
        x = h.reshape(-1, shape[-1])
        ids, weights = route(self.scores(x), self.expert_bias, self.spec)
        routed = self._experts(x, ids)  # [N, k, D]
        if self.spec.combine_in_fp32:
            out = (routed.float() * weights.unsqueeze(-1)).sum(dim=1).to(x.dtype)
        else:
            out = (routed * weights.to(x.dtype).unsqueeze(-1)).sum(dim=1)
        if self.spec.shared_hidden:
            out = out + self.shared_down(F.silu(self.shared_gate(x)) * self.shared_up(x))
        return out.view(shape)

    def _experts(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Each token through each of its k experts: [N, k, D], via tokens sorted by expert."""
        k = ids.shape[1]
        flat = ids.reshape(-1)
        order = flat.argsort(stable=True)
        offsets = torch.bincount(flat, minlength=self.spec.n_experts).cumsum(0).to(torch.int32)
        sorted_x = x[order // k]
        gate = F.grouped_mm(sorted_x, self.experts_gate.transpose(-2, -1), offs=offsets)
        up = F.grouped_mm(sorted_x, self.experts_up.transpose(-2, -1), offs=offsets)
        out = F.grouped_mm(F.silu(gate) * up, self.experts_down.transpose(-2, -1), offs=offsets)
        routed = torch.empty_like(out)
        routed[order] = out
        return routed.view(x.shape[0], k, -1)
