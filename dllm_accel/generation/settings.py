"""Sampler settings under the official parameter names, checked before any forward."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..models.spec import ModelSpec

SAMPLERS = ("llada", "dream", "dyllm")
REMASKING = ("low_confidence", "random")
# confidence_threshold: Fast-dLLM's parallel Dream decoding (generation/parallel.py)
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy", "confidence_threshold")
CONFIDENCE_DTYPES = ("model", "float32", "float64")
GUMBEL_VARIANTS = ("llada", "dllm_cache")
# "sampler": the sampler family's own count rule; "constant": gen_length // steps per step (DyLLM)
TRANSFER_SCHEDULES = ("sampler", "constant")
# block_length for one block (the whole generation) that a config layer can state: a null there
# only means "not set here", so a task's blocks of 32 would show through it
ONE_BLOCK = "gen_length"


class SettingsError(ValueError):
    """A sampler or method setting outside what is accepted."""


@dataclass
class SamplerSettings:
    """Every option of the official LLaDA ``generate`` and Dream ``diffusion_generate``.

    ``sampler`` picks the rule family (default: the model's own). ``max_new_tokens`` is
    Dream's name for ``gen_length``. ``block_length=None`` means one block (Dream's and
    LLaDA's pure-diffusion mode), and so does ``ONE_BLOCK``, which a preset or command line
    writes to ask for one block over a task's blocks. ``alg`` defaults to ``entropy``, the choice of every
    official Dream evaluation (the hub generation_config says ``origin``).
    """

    gen_length: int | None = None
    max_new_tokens: int | None = None
    steps: int | None = None
    block_length: int | str | None = None
    temperature: float = 0.0
    sampler: str | None = None
    # LLaDA
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    # float64 = Mar-May 2025 LLaDA and Fast-dLLM; model = LLaDA since Jun 2025 and dLLM-Cache
    confidence_dtype: str = "model"
    # llada = generate.py (float64 noise; logits as they are at temperature 0); dllm_cache = its copy in
    # dLLM-Cache (noise and exp in the model dtype, argmax over exp(logits) even at temperature 0)
    gumbel_variant: str = "llada"
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    # Dream
    alg: str = "entropy"
    alg_temp: float | None = None
    eps: float = 1e-3
    top_p: float | None = None
    top_k: int | None = None
    # both
    mask_id: int | None = None
    legacy_ignore_attention_mask: bool = False
    output_history: bool = False
    # DyLLM engine: ``sampler="dyllm"`` (its own count rule is "constant"); a row stops once it
    # commits EOS with no mask before it (the remaining masks stay masks)
    transfer_schedule: str = "sampler"
    eos_early_exit: bool = False
    # Fast-dLLM parallel decoding (generation/parallel.py). LLaDA: commit every candidate with
    # confidence >= threshold plus the best one; or, with factor (which wins over threshold, as
    # there), the ranks before the first r with c_r < 1 - factor/(r+1), and all ranks when that
    # r is the last (factor_last_rank_quirk, the official off-by-one). Dream: the tau of
    # alg="confidence_threshold" (None = 0.9, diffusion_generate's default).
    threshold: float | None = None
    factor: float | None = None
    factor_last_rank_quirk: bool = True
    # DyLLM engine (sampler="dyllm"), its SamplingParams name: each step commits its best candidate
    # and every one whose score reaches this (LLaDA: max probability; Dream: negative entropy, <= 0),
    # until the block is full; steps then no longer bound the run (generation/parallel.py)
    confidence_threshold: float | None = None
    # a registered decoding rule (generation/rules: wino, klass, frechet, pc_sampler) that replaces
    # the sampler's count and ranking rule, with its Config fields as options
    policy: str | None = None
    policy_options: dict | None = None
    # engine: run the passes through torch.compile (CUDA graphs for fixed-shape block passes on
    # CUDA); outputs stay token-identical to eager (models/compiled.py)
    compile: bool = False

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def resolve(self, spec: ModelSpec, prompt_length: int) -> ResolvedSettings:
        """Fill family defaults and reject anything impossible, naming the value."""
        if self.gen_length is not None and self.max_new_tokens is not None and self.gen_length != self.max_new_tokens:
            raise SettingsError(
                f"gen_length={self.gen_length} and max_new_tokens={self.max_new_tokens} disagree (they are one setting)"
            )
        gen = self.gen_length if self.gen_length is not None else self.max_new_tokens
        if gen is None:
            raise SettingsError("gen_length (or max_new_tokens) is required")
        _positive_int("gen_length", gen)
        steps = gen if self.steps is None else self.steps
        _positive_int("steps", steps)
        block = block_size(self.block_length, gen)
        if gen % block:
            raise SettingsError(f"gen_length={gen} is not a multiple of block_length={block}")
        num_blocks = gen // block
        _one_of("transfer_schedule", self.transfer_schedule, TRANSFER_SCHEDULES)
        constant = self.sampler == "dyllm" or self.transfer_schedule == "constant"
        if constant and gen % steps and self.confidence_threshold is None:
            raise SettingsError(
                f"gen_length={gen} is not a multiple of steps={steps} (the constant schedule commits gen_length // steps per step)"
            )
        if not constant and steps % num_blocks:
            raise SettingsError(
                f"steps={steps} is not divisible by the number of blocks {num_blocks} (gen_length {gen} / block_length {block})"
            )
        if prompt_length + gen > spec.max_seq_len:
            raise SettingsError(
                f"prompt ({prompt_length}) + generation ({gen}) = {prompt_length + gen} tokens exceeds the model's context of {spec.max_seq_len}"
            )
        sampler = self.sampler or spec.family
        _one_of("sampler", sampler, SAMPLERS)
        _one_of("remasking", self.remasking, REMASKING)
        _one_of("alg", self.alg, DREAM_ALGS)
        _one_of("confidence_dtype", self.confidence_dtype, CONFIDENCE_DTYPES)
        _one_of("gumbel_variant", self.gumbel_variant, GUMBEL_VARIANTS)
        if self.temperature < 0:
            raise SettingsError(f"temperature={self.temperature} must be >= 0")
        if self.cfg_scale < 0:
            raise SettingsError(f"cfg_scale={self.cfg_scale} must be >= 0")
        if not 0 < self.eps < 1:
            raise SettingsError(f"eps={self.eps} must be in (0, 1)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SettingsError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k is not None and self.top_k < 1:
            raise SettingsError(f"top_k={self.top_k} must be >= 1")
        if self.alg_temp is not None and self.alg_temp < 0:
            raise SettingsError(f"alg_temp={self.alg_temp} must be >= 0")
        if constant and sampler == "dream" and self.alg == "origin":
            raise SettingsError("alg='origin' commits each mask by chance and cannot follow transfer_schedule='constant'")
        _check_parallel(self, sampler, constant)
        _check_rule(self, sampler, constant)
        if not isinstance(self.compile, bool):
            raise SettingsError(f"compile={self.compile!r} must be true or false")
        return ResolvedSettings(
            raw=self,
            sampler=sampler,
            gen_length=gen,
            steps=steps,
            block_length=block,
            num_blocks=num_blocks,
            steps_per_block=steps // num_blocks,
            mask_id=spec.tokens.mask if self.mask_id is None else self.mask_id,
        )


@dataclass(frozen=True)
class ResolvedSettings:
    raw: SamplerSettings
    sampler: str
    gen_length: int
    steps: int
    block_length: int
    num_blocks: int
    steps_per_block: int
    mask_id: int

    def __getattr__(self, name: str):
        return getattr(self.raw, name)

    @property
    def constant_count(self) -> bool:
        """Commit ``gen_length // steps`` every step (the DyLLM engine) instead of the sampler's schedule."""
        return self.sampler == "dyllm" or self.raw.transfer_schedule == "constant"


def _check_parallel(settings: SamplerSettings, sampler: str, constant: bool) -> None:
    """Fast-dLLM's threshold and factor rules: ranges, and the samplers that have them."""
    threshold, factor = settings.threshold, settings.factor
    if threshold is not None and not 0 <= threshold <= 1:
        raise SettingsError(f"threshold={threshold} must be in [0, 1]")
    if factor is not None and not factor > 0:
        raise SettingsError(f"factor={factor} must be > 0")
    dream_threshold = sampler == "dream" and settings.alg == "confidence_threshold"
    if constant and (threshold is not None or factor is not None or dream_threshold):
        raise SettingsError("threshold / factor / alg='confidence_threshold' replace the count schedule and cannot follow the constant one")
    if sampler == "dream" and factor is not None:
        raise SettingsError(f"factor={factor} is a LLaDA rule; Dream's parallel decoding is alg='confidence_threshold'")
    if sampler == "dream" and threshold is not None and not dream_threshold:
        raise SettingsError(f"threshold={threshold} is read by Dream only with alg='confidence_threshold' (got alg={settings.alg!r})")
    confidence = settings.confidence_threshold
    if confidence is not None and sampler != "dyllm":
        raise SettingsError(
            f"confidence_threshold={confidence} is the DyLLM engine's rule (sampler='dyllm', got {sampler!r}); "
            "the Fast-dLLM rule of the other samplers is threshold"
        )
    if confidence is not None and (not _is_number(confidence) or not math.isfinite(confidence)):
        raise SettingsError(f"confidence_threshold={confidence!r} must be a finite number")


def _check_rule(settings: SamplerSettings, sampler: str, constant: bool) -> None:
    """A registered rule replaces the count rule: no other count rule may be set beside it."""
    if settings.policy is None:
        if settings.policy_options:
            raise SettingsError(f"policy_options={settings.policy_options!r} given without a policy")
        return
    from .rules import check_rule

    check_rule(settings.policy, settings.policy_options, sampler)
    others = {"threshold": settings.threshold, "factor": settings.factor, "confidence_threshold": settings.confidence_threshold}
    for name, value in others.items():
        if value is not None:
            raise SettingsError(f"policy={settings.policy!r} replaces the count rule; {name}={value} cannot be set beside it")
    if constant:
        raise SettingsError(f"policy={settings.policy!r} replaces the count rule; transfer_schedule='constant' cannot follow it")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def block_size(block_length: int | str | None, gen_length: int) -> int:
    """The block length a setting means: ``None`` and ``ONE_BLOCK`` are one block of ``gen_length``."""
    if block_length is None or block_length == ONE_BLOCK:
        return gen_length
    if not isinstance(block_length, int) or isinstance(block_length, bool) or block_length < 1:
        raise SettingsError(f"block_length={block_length!r} must be a positive integer or {ONE_BLOCK!r} (one block)")
    return block_length


def _positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SettingsError(f"{name}={value!r} must be a positive integer")


def _one_of(name: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise SettingsError(f"unknown {name} {value!r} (accepted: {', '.join(accepted)})")
