"""Fast-dLLM's parallel decoding rules, as policies any forward strategy can use.

LLaDA (``sampler='llada'``, Fast-dLLM ``llada/generate.py``):

- ``threshold``: every candidate whose confidence is at least tau, plus the most
  confident one, so a step always commits something.
- ``factor``: with sorted confidences c_1 >= ... >= c_n, commit the ranks before the first
  r with c_r < 1 - f/(r+1) (rank 1 always passes). The official loop also commits every
  rank when the first failure is the last rank (``factor_last_rank_quirk``).

Candidates are the masks from the first row the strategy computed up to the block end,
as the official code ranks its forward's rows: a full pass also sees masks an earlier
block left behind (only Fast-dLLM's capped dual cache leaves any).

Dream (Fast-dLLM ``dream/model/``):

- ``QuotaThresholdPolicy``: ``alg='confidence_threshold'`` without cache
  (``generation_utils.py``): a quota of masks/steps per step plus the ranks rejected at the
  step before; a rejection on the last step extends the loop by a step.
- ``DreamBlockPolicy``: the cached block sampler (``generation_utils_block.py``).

DyLLM (``sampler='dyllm'``, engine commit ``f01c847``, spec B.11): ``confidence_threshold``
(``DyLLMThresholdPolicy``), the same top-1-plus-threshold rule on the engine's own scores.
"""

from __future__ import annotations

import torch

from .canvas import Canvas, Commit
from .dyllm_sampler import ranked_commit
from .policies import (
    DecodingPolicy,
    DyLLMSamplerPolicy,
    dream_candidates,
    noise_positions,
    noise_rows,
    ranked_rows,
    top_k_commit,
)
from .schedules import ConstantSchedule, TimestepSchedule
from .scoring import dream_sample_tokens, llada_propose, multinomial
from .settings import SettingsError

# Dream's ``diffusion_generate`` reads ``threshold`` with this default
DREAM_DEFAULT_THRESHOLD = 0.9


def dream_threshold(canvas: Canvas) -> float:
    threshold = canvas.settings.threshold
    return DREAM_DEFAULT_THRESHOLD if threshold is None else threshold


def score_range(
    logits: torch.Tensor, rows: slice, canvas: Canvas, start: int, stop: int, alg: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens and confidences for the masks in [start, stop), as full-length [B, L] tensors.

    Returns ``(x0, confidence, candidates)``; confidence is -inf off the candidates. LLaDA
    scores with ``llada_propose`` (noise over all computed rows); Dream with
    ``sample_tokens`` over exactly the candidates, with ``alg`` overriding the settings'.
    Dream scores from the block start on: candidates past the block are masks of blocks not
    yet begun, so with the block's (``Canvas.masks_left``) their number is known on the host.
    """
    s = canvas.settings
    first = rows.start or 0
    if start < first or stop > (rows.stop or canvas.length):
        raise ValueError(f"strategy computed rows {rows} that do not cover positions [{start}, {stop})")
    window = slice(start - first, stop - first)
    masked = canvas.x[:, start:stop] == s.mask_id
    if s.sampler == "llada":
        x0, conf = llada_propose(logits, window, s, canvas.spec, noise_rows(canvas, rows), noise_positions(canvas, start))
    else:
        later = max(stop - canvas.block_end, 0) * canvas.batch
        x0, conf = dream_candidates(logits[:, window], masked, canvas, sum(canvas.masks_left()) + later, alg)
    conf = conf.masked_fill(~masked, -torch.inf)
    full_x0 = torch.full_like(canvas.x, s.mask_id)
    full_conf = torch.full(canvas.x.shape, -torch.inf, dtype=conf.dtype, device=conf.device)
    candidates = torch.zeros_like(canvas.x, dtype=torch.bool)
    full_x0[:, start:stop], full_conf[:, start:stop], candidates[:, start:stop] = x0, conf, masked
    return full_x0, full_conf, candidates


def threshold_commit(
    x0: torch.Tensor, confidence: torch.Tensor, candidates: torch.Tensor, threshold: float | torch.Tensor
) -> Commit:
    """Every candidate with confidence >= threshold, plus each row's most confident one."""
    index = candidates & (confidence >= threshold)
    best = torch.zeros_like(index).scatter_(1, confidence.argmax(dim=1, keepdim=True), True)
    return Commit(index=index | (best & candidates), tokens=x0, confidence=confidence)


def factor_counts(ranked: torch.Tensor, candidates: torch.Tensor, factor: float, last_rank_quirk: bool) -> torch.Tensor:
    """[B]: how many of each row's candidates the factor rule commits.

    ``ranked`` [B, W] holds each row's candidate confidences in descending order first
    (``candidates`` [B] of them), then anything.
    """
    width = ranked.shape[1]
    ranks = torch.arange(1, width + 1, dtype=torch.float64, device=ranked.device)
    bounds = 1 - factor / (ranks + 1)
    bounds[0] = -1
    failed = (ranked < bounds) & (ranks[None, :] <= candidates[:, None])
    first = torch.where(failed.any(dim=1), failed.int().argmax(dim=1), candidates)
    if last_rank_quirk:
        return torch.where(first == candidates - 1, candidates, first)
    return first


class _LLaDAParallelPolicy(DecodingPolicy):
    """Shared by the LLaDA rules: candidates and the end of a block.

    Candidates start at the earliest block that may still hold masks (``Canvas.open_from``,
    known on the host): positions before the first real mask are -inf either way.
    """

    def begin_block(self, canvas: Canvas) -> None:
        self.first_candidate = canvas.block_start if canvas.open_from is None else canvas.open_from

    def reads(self, canvas: Canvas) -> slice:
        return slice(self.first_candidate, canvas.block_end)

    def block_finished(self, canvas: Canvas) -> bool:
        return canvas.block_done()

    def scores(
        self, logits: torch.Tensor, rows: slice, canvas: Canvas
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        start = max(ranked_rows(canvas, rows).start or 0, self.first_candidate)
        return score_range(logits, rows, canvas, start, canvas.block_end)


class ThresholdPolicy(_LLaDAParallelPolicy):
    """Fast-dLLM ``threshold``: every candidate with confidence >= tau, and the best one."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        return threshold_commit(*self.scores(logits, rows, canvas), self.threshold)


class FactorPolicy(_LLaDAParallelPolicy):
    """Fast-dLLM ``factor``: as many top candidates as ``factor_counts`` allows."""

    def __init__(self, factor: float, last_rank_quirk: bool = True) -> None:
        self.factor = factor
        self.last_rank_quirk = last_rank_quirk

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        x0, confidence, candidates = self.scores(logits, rows, canvas)
        window = slice(self.first_candidate, canvas.block_end)
        ranked = confidence[:, window].sort(dim=1, descending=True).values
        counts = factor_counts(ranked, candidates.sum(dim=1), self.factor, self.last_rank_quirk)
        width = window.stop - window.start
        commit = top_k_commit(confidence, x0, counts, canvas, ranked_rows(canvas, rows), bound=width)
        return Commit(index=commit.index, tokens=x0, confidence=confidence)


class QuotaThresholdPolicy(DecodingPolicy):
    """Dream ``confidence_threshold`` without cache: a quota per step, rejections carried.

    Each step ranks the block's masks and looks at the top ``quota + carry``: rank 1 is
    always committed, any other rank below tau is rejected and carried to the next step.
    Rejections on a row's last scheduled step set its quota to 0 and add one step, so the
    block ends exactly when its masks are filled. Per row, so batches equal batch 1 (the
    official code takes batch 1 only); the rows' state lives on the device.
    """

    def begin_block(self, canvas: Canvas) -> None:
        steps = canvas.settings.steps_per_block
        masks = canvas.settings.block_length  # a block starts with only masks
        if masks % steps:
            raise SettingsError(
                f"alg='confidence_threshold' needs the block's masks ({[masks] * canvas.batch}) divisible by its "
                f"{steps} steps (the official code asserts masks % steps == 0)"
            )
        device = canvas.x.device
        self.quota = torch.full((canvas.batch,), masks // steps, dtype=torch.long, device=device)
        self.carry = torch.zeros_like(self.quota)
        self.last_step = torch.full_like(self.quota, steps - 1)

    def reads(self, canvas: Canvas) -> slice:
        return canvas.block_slice

    def block_finished(self, canvas: Canvas) -> bool:
        return canvas.block_done()

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        x0, confidence, candidates = score_range(logits, rows, canvas, canvas.block_start, canvas.block_end)
        threshold = dream_threshold(canvas)
        ranked = ranked_rows(canvas, rows)
        wanted = self.quota + self.carry
        active = (wanted > 0) & candidates.any(dim=1)
        values, order = torch.topk(confidence[:, ranked], confidence[:, ranked].shape[1], dim=1)
        rank = torch.arange(values.shape[1], device=values.device)[None, :]
        within = rank < wanted[:, None]
        passed = values >= threshold
        rejected = (within & ~passed & (rank > 0)).sum(dim=1)
        keep = within & (passed | (rank == 0)) & active[:, None]
        index = torch.zeros_like(candidates)
        index[:, ranked] = index[:, ranked].scatter(1, order, keep)
        extend = active & (rejected > 0) & (self.last_step == canvas.block_step)
        self.quota = self.quota.masked_fill(extend, 0)
        self.last_step = self.last_step + extend.long()
        self.carry = torch.where(active, rejected, self.carry)
        return Commit(index=index & candidates, tokens=x0, confidence=confidence)


class DreamBlockPolicy(DecodingPolicy):
    """Fast-dLLM's cached Dream sampler (``generation_utils_block.py``), step by step.

    - Step 0 (the block's refresh pass) commits only the block's first position, with the
      token ``sample_tokens`` gives it, whatever its confidence (Fast-dLLM issue #61):
      cached passes start at the block, so they cannot see that position's predictor.
    - ``alg='confidence_threshold'``: later steps commit the block's masks with confidence
      >= tau plus the best one, until the block is full.
    - Any other alg: step i >= 1 commits ``int(m * (1 - s/t))`` of the block's m masks on
      ``linspace(1, eps, steps_per_block + 1)`` (all of them at ``i = steps_per_block - 1``),
      ranked by neg-entropy whatever ``alg`` says (``hardcoded_entropy``); a pass at
      ``i = steps_per_block`` commits nothing and ends the block, which only happens with
      one step per block and then leaves masks behind.
    """

    def __init__(self, hardcoded_entropy: bool = True) -> None:
        self.hardcoded_entropy = hardcoded_entropy
        self.schedule = TimestepSchedule()

    def begin_block(self, canvas: Canvas) -> None:
        self.schedule.begin_block(canvas)

    def reads(self, canvas: Canvas) -> slice:
        s = canvas.settings
        if canvas.block_step == 0:
            # the official code samples every position of the refresh pass when it samples
            return slice(None) if s.temperature > 0 else slice(canvas.block_start, canvas.block_start + 1)
        if s.alg == "confidence_threshold":
            return slice(canvas.block_start, None)
        return canvas.block_slice

    def block_finished(self, canvas: Canvas) -> bool:
        if canvas.settings.alg != "confidence_threshold" and canvas.block_step > canvas.settings.steps_per_block:
            return True
        return canvas.block_step > 0 and canvas.block_done()

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        s = canvas.settings
        if canvas.block_step == 0:
            return self._first_position(logits, rows, canvas)
        if s.alg == "confidence_threshold":
            # the official code samples every mask of the pass (RNG order), then keeps the block
            x0, confidence, candidates = score_range(
                logits, rows, canvas, canvas.block_start, rows.stop or canvas.length
            )
            in_block = torch.zeros_like(candidates)
            in_block[:, canvas.block_slice] = True
            confidence = confidence.masked_fill(~in_block, -torch.inf)
            return threshold_commit(x0, confidence, candidates & in_block, dream_threshold(canvas))
        if canvas.block_step >= s.steps_per_block:
            return Commit(index=torch.zeros_like(canvas.x, dtype=torch.bool), tokens=canvas.x)
        alg = "entropy" if self.hardcoded_entropy else s.alg
        x0, confidence, _ = score_range(logits, rows, canvas, canvas.block_start, canvas.block_end, alg)
        counts = self.schedule.count(canvas)
        ranked = ranked_rows(canvas, rows)
        if not s.alg_temp:
            commit = top_k_commit(confidence, x0, counts, canvas, ranked)
            return Commit(index=commit.index, tokens=x0, confidence=confidence)
        index = torch.zeros_like(canvas.x, dtype=torch.bool)
        if counts > 0:
            probs = torch.softmax(confidence[:, ranked] / s.alg_temp, dim=-1)
            index[:, ranked] = index[:, ranked].scatter(1, multinomial(probs, counts), True)
        return Commit(index=index & canvas.masked(), tokens=x0, confidence=confidence)

    @staticmethod
    def _first_position(logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        s = canvas.settings
        at = canvas.block_start - (rows.start or 0)
        if s.temperature > 0:
            # the official code samples every position of the pass (RNG order), then keeps one
            _, tokens = dream_sample_tokens(logits.reshape(-1, logits.shape[-1]), s.temperature, s.top_p, s.top_k)
            token = tokens.view(logits.shape[0], -1)[:, at]
        else:
            _, token = dream_sample_tokens(logits[:, at], s.temperature, s.top_p, s.top_k)
        index = torch.zeros_like(canvas.x, dtype=torch.bool)
        index[:, canvas.block_start] = canvas.x[:, canvas.block_start] == s.mask_id
        tokens = canvas.x.clone()
        tokens[:, canvas.block_start] = token
        return Commit(index=index, tokens=tokens)


class DyLLMThresholdPolicy(DyLLMSamplerPolicy):
    """The DyLLM engine's ``confidence_threshold`` mode: each step commits its best candidate
    (the transfer count becomes 1) and every candidate whose score reaches the threshold,
    cast to the score's dtype as the engine casts it (a bf16 0.9 is 0.8984375). The step
    budget no longer ends the run: a block ends when it is full (or its row stopped at EOS).
    Dream scores are negative entropies, so only thresholds <= 0 commit more than one.
    """

    def __init__(self, threshold: float) -> None:
        super().__init__(ConstantSchedule())
        self.threshold = threshold

    def block_finished(self, canvas: Canvas) -> bool:
        return canvas.block_done()

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        x0, score = self.propose(logits, rows, canvas)
        best = ranked_commit(score, x0, torch.ones(score.shape[0], dtype=torch.long, device=score.device), canvas)
        reached = score >= torch.full((), self.threshold, dtype=score.dtype, device=score.device)
        return Commit(index=best.index | (reached & canvas.masked()), tokens=x0, confidence=score)


def parallel_policy(canvas: Canvas) -> DecodingPolicy | None:
    """The threshold or factor rule these settings ask for, or None when they ask for none."""
    s = canvas.settings
    if s.sampler == "dyllm" and s.confidence_threshold is not None:
        return DyLLMThresholdPolicy(s.confidence_threshold)
    if s.sampler == "llada" and s.factor is not None:
        return FactorPolicy(s.factor, s.factor_last_rank_quirk)
    if s.sampler == "llada" and s.threshold is not None:
        return ThresholdPolicy(s.threshold)
    if s.sampler == "dream" and s.alg == "confidence_threshold":
        return QuotaThresholdPolicy()
    return None
