"""The denoising loop, its state, and the decoding policies."""

from .canvas import Canvas, Commit
from .loop import GenerationOutput, denoise
from .policies import ConfidencePolicy, DecodingPolicy, OriginPolicy, top_k_commit
from .policy_choice import build_policy
from .schedules import LinearBlockSchedule, Schedule, TimestepSchedule
from .settings import SamplerSettings, SettingsError

__all__ = [
    "Canvas",
    "Commit",
    "ConfidencePolicy",
    "DecodingPolicy",
    "GenerationOutput",
    "LinearBlockSchedule",
    "OriginPolicy",
    "SamplerSettings",
    "Schedule",
    "SettingsError",
    "TimestepSchedule",
    "build_policy",
    "denoise",
    "top_k_commit",
]
