"""Where the shared fixtures and evaluation data live (``../shared`` beside the checkout, or a copy inside it)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``$DLLM_ACCEL_SHARED`` if set, else the ``shared/`` folder beside the checkout, else a ``shared/``
    inside it: a machine that receives only the checkout (a lent GPU) gets the fixtures as such a copy."""
    env = os.environ.get("DLLM_ACCEL_SHARED")
    if env:
        return Path(env)
    beside, inside = REPO_ROOT.parent / "shared", REPO_ROOT / "shared"
    return inside if inside.is_dir() and not beside.is_dir() else beside


def fixtures_dir() -> Path:
    return shared_dir() / "fixtures"


def tiny_checkpoint(family: str) -> Path:
    """The tiny random-weight parity checkpoint of a family (``llada`` or ``dream``)."""
    return fixtures_dir() / f"{family}-tiny"
