"""Which decoding policy the settings ask for: a registered rule, a parallel rule, or the
official sampler's. Imports every policy module; none of them imports this one."""

from __future__ import annotations

from .canvas import Canvas
from .parallel import parallel_policy
from .policies import ConfidencePolicy, DecodingPolicy, DyLLMSamplerPolicy, OriginPolicy
from .rules import build_rule
from .schedules import ConstantSchedule, LinearBlockSchedule, TimestepSchedule


def build_policy(canvas: Canvas, strategy=None) -> DecodingPolicy:
    """The registered rule the settings name (``policy``), else the official sampler's policy.

    ``strategy`` is the forward strategy the rule will decode from (a rule that needs more than
    logits, such as WINO's verification rows, asks it for them)."""
    s = canvas.settings
    if s.policy is not None:
        return build_rule(canvas, strategy)
    parallel = parallel_policy(canvas)
    if parallel is not None:
        return parallel
    if s.sampler == "dyllm":
        return DyLLMSamplerPolicy(ConstantSchedule())
    if s.constant_count:
        return ConfidencePolicy(ConstantSchedule())
    if s.sampler == "llada":
        return ConfidencePolicy(LinearBlockSchedule())
    if s.alg == "origin":
        return OriginPolicy()
    return ConfidencePolicy(TimestepSchedule())
