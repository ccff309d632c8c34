"""Where the shared fixtures and evaluation data live (``../shared`` beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``$DLLM_ACCEL_SHARED`` if set, else the ``shared/`` folder beside the checkout."""
    env = os.environ.get("DLLM_ACCEL_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def fixtures_dir() -> Path:
    return shared_dir() / "fixtures"


def tiny_checkpoint(family: str) -> Path:
    """The tiny random-weight parity checkpoint of a family (``llada`` or ``dream``)."""
    return fixtures_dir() / f"{family}-tiny"
