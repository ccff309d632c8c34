"""The state one generation carries from step to step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.spec import ModelSpec
from .scoring import settle_samples, unread_checks
from .settings import ResolvedSettings


@dataclass
class Commit:
    """Positions to fill (``index`` [B, L] bool) and the tokens that fill them."""

    index: torch.Tensor
    tokens: torch.Tensor
    # [B, L] the policy's ranking score of each committed position (higher = earlier), when it ranks
    confidence: torch.Tensor | None = None
    # [B] rows this commit ends: it filled every position after their block, so they stop
    finishes: torch.Tensor | None = None

    def counts(self) -> torch.Tensor:
        return self.index.sum(dim=1)


@dataclass
class Canvas:
    x: torch.Tensor  # [B, L] current sequence, mask ids where undecided
    prompt_length: int  # P: width of the (left-padded) prompt
    settings: ResolvedSettings
    spec: ModelSpec
    key_mask: torch.Tensor | None  # [B, L] bool, False = padded key; None = attend to all
    positions: torch.Tensor  # [L] or [B, L] RoPE positions
    prompt_index: torch.Tensor  # [B, L] positions that were not masks at the start
    block: int = 0
    block_step: int = 0
    step: int = 0
    nfe: int = 0
    trajectory: list[torch.Tensor] | None = None
    stats: dict[str, float] = field(default_factory=dict)
    finished: torch.Tensor | None = None  # [B] bool rows stopped by the EOS early exit; None = never checked
    emptied: torch.Tensor | None = None  # [B] bool rows a commit filled to the end (``Commit.finishes``)
    # positions the step's policy reads (open ends: the pass's own first or last row); strategies run
    # the final norm and head only there (``scored_rows``); set by the loop before each forward
    reads: slice = field(default_factory=lambda: slice(None))
    # positions the last pass computed (its model input), when a strategy returns logits for fewer
    # rows: the official samplers rank over, and draw noise for, all of them
    pass_rows: slice | None = None
    # [B, W] positions the last pass computed, in the order fed, when they are scattered (a cache that
    # recomputes chosen rows): LLaDA's noise is then drawn over exactly these rows; None = ``pass_rows``
    pass_positions: torch.Tensor | None = None
    # host copy of the per-row masks left in the block and of ``finished``, read
    # once per step at most (the step's one sync); None = stale since the last write
    # start of the earliest block left with masks (only a capped or step-bounded block ends so)
    open_from: int | None = None
    _left: list[int] | None = field(default=None, repr=False)
    # values a strategy asked to have read with the step's status (``read_with_step``), and their host copies
    _later: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _read: dict[str, int] = field(default_factory=dict, repr=False)
    _stopped: list[bool] | None = field(default=None, repr=False)
    _emptied: list[bool] | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls,
        prompt: torch.Tensor,
        attention_mask: torch.Tensor | None,
        settings: ResolvedSettings,
        spec: ModelSpec,
    ) -> Canvas:
        batch, plen = prompt.shape
        gen = settings.gen_length
        x = torch.full((batch, plen + gen), settings.mask_id, dtype=torch.long, device=prompt.device)
        x[:, :plen] = prompt
        key_mask, positions = _padding(attention_mask, batch, plen + gen, spec, settings, prompt.device)
        return cls(
            x=x,
            prompt_length=plen,
            settings=settings,
            spec=spec,
            key_mask=key_mask,
            positions=positions,
            prompt_index=x != settings.mask_id,
            trajectory=[] if settings.output_history else None,
        )

    @property
    def length(self) -> int:
        return self.x.shape[1]

    @property
    def mask_id(self) -> int:
        return self.settings.mask_id

    @property
    def block_start(self) -> int:
        return self.prompt_length + self.block * self.settings.block_length

    @property
    def block_end(self) -> int:
        return self.block_start + self.settings.block_length

    @property
    def block_slice(self) -> slice:
        return slice(self.block_start, self.block_end)

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def masked(self) -> torch.Tensor:
        return self.x == self.mask_id

    def block_masked(self) -> torch.Tensor:
        """[B, block_length] bool: undecided positions of the current block."""
        return self.x[:, self.block_slice] == self.mask_id

    def begin_block(self, block: int) -> None:
        """Enter ``block``. It holds only masks (commits never reach past the current block, but for a
        fill to the end, which stops its row), so every row has ``block_length`` of them, or none when
        filled: known without reading the device. Remembers where the earliest block that may still
        hold masks starts (``open_from``)."""
        if block > 0 and self.open_from is None and (self._left is None or any(self._left)):
            self.open_from = self.block_start
        self.stopped()
        self.block, self.block_step = block, 0
        emptied = self._emptied or [False] * self.batch
        self._left = [0 if row else self.settings.block_length for row in emptied]

    def stop_filled(self, rows: torch.Tensor) -> None:
        """Stop ``rows`` [B] bool, whose commit filled every position after their block."""
        self.finished = rows.clone() if self.finished is None else self.finished | rows
        self.emptied = rows.clone() if self.emptied is None else self.emptied | rows
        self._stopped = None

    def write(self, commit: Commit) -> None:
        self.x = torch.where(commit.index, commit.tokens, self.x)
        self._left = None

    def masks_left(self) -> list[int]:
        """Per row, the masks left in the current block.

        The first call after a write reads them from the device, with the rows stopped by the
        EOS early exit and the checks of samples drawn since (``scoring.settle_samples``): the
        one host sync a step may make. Later calls reuse that read.
        """
        if self._left is None:
            self._read_status()
        return self._left

    def _read_status(self) -> None:
        checks, later = unread_checks(), list(self._later.items())
        parts = [self.block_masked().sum(dim=1)]
        if self.finished is not None:
            parts.append(self.finished.long())
        if self.emptied is not None:
            parts.append(self.emptied.long())
        parts += [torch.stack(checks).long()] if checks else []
        parts += [value.reshape(1).long() for _, value in later]
        values = torch.cat(parts).tolist()
        batch = self.batch
        self._left = values[:batch]
        rows = 1
        if self.finished is not None:
            self._stopped = [bool(v) for v in values[batch : 2 * batch]]
            rows += 1
        if self.emptied is not None:
            self._emptied = [bool(v) for v in values[rows * batch : (rows + 1) * batch]]
            rows += 1
        rest = values[rows * batch :]
        if checks:
            settle_samples([bool(v) for v in rest[: len(checks)]])
        self._read.update({key: value for (key, _), value in zip(later, rest[len(checks) :], strict=True)})
        self._later.clear()

    def read_with_step(self, key: str, value: torch.Tensor) -> None:
        """Have the one-element ``value`` read with the step's status (the block-end check) rather
        than on its own; ``host_value(key)`` then returns it without another read."""
        self._later[key] = value

    def host_value(self, key: str) -> int:
        """The host copy of a value passed to ``read_with_step``, read now if no read took it yet."""
        if key in self._later:
            self._read_status()
        return self._read.pop(key)

    def block_done(self) -> bool:
        """No masks left in the block, rows stopped by the EOS early exit aside."""
        return not any(n for n, done in zip(self.masks_left(), self.stopped(), strict=True) if not done)

    def stopped(self) -> list[bool]:
        """Per row, stopped by the EOS early exit, as of the last status read (``masks_left``)."""
        if self.finished is None:
            return [False] * self.batch
        if self._stopped is None or self._left is None:
            self._left = None
            self.masks_left()
        return self._stopped

    def all_finished(self) -> bool:
        """Every row stopped by the EOS early exit (never, without the early exit)."""
        return self.finished is not None and all(self.stopped())


def _padding(
    attention_mask: torch.Tensor | None,
    batch: int,
    length: int,
    spec: ModelSpec,
    settings: ResolvedSettings,
    device: torch.device,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Key mask and positions for left-padded prompts, as each family's official code does.

    Without padding (or with the legacy no-mask semantics) every key is attended and
    positions run 0..L-1. Dream shifts positions past the pads (pads get position 1);
    LLaDA keeps 0..L-1 and only hides padded keys.
    """
    plain = torch.arange(length, device=device)
    if attention_mask is None or settings.legacy_ignore_attention_mask or bool(attention_mask.all()):
        return None, plain
    if attention_mask.shape[0] != batch:
        raise ValueError(f"attention_mask has batch {attention_mask.shape[0]}, input_ids has {batch}")
    ones = torch.ones(batch, length - attention_mask.shape[1], dtype=torch.bool, device=device)
    key_mask = torch.cat([attention_mask.to(device=device, dtype=torch.bool), ones], dim=1)
    if not spec.pad_shifts_positions:
        return key_mask, plain
    positions = key_mask.long().cumsum(-1) - 1
    return key_mask, positions.masked_fill(~key_mask, 1)
