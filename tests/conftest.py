"""Shared helpers: the tiny parity checkpoints and their recorded cases."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import pytest
import torch

from dllm_accel.models import load_model
from dllm_accel.paths import fixtures_dir, tiny_checkpoint

# The tiny models gain nothing from threads, and oversubscribed cores slow them 20-30x;
# the fixtures are bit-identical with 1 and 2 threads.
torch.set_num_threads(1)
# and the runs they start in subprocesses (the CLI, reproduce, torchrun) too: `make test` runs tests on every
# core at once (pytest-xdist), so a subprocess with a thread per core would oversubscribe them
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The heavy tests first (a stable sort): a worker that picks one up late would finish minutes after the others."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


def pytest_configure(config: pytest.Config) -> None:
    if not fixtures_dir().is_dir():
        pytest.exit(
            f"the tests need the shared fixtures, not found at {fixtures_dir()}: put shared/ beside the checkout or "
            "set DLLM_ACCEL_SHARED (README, 'What lives in shared/')",
            returncode=2,
        )


@cache
def tiny_model(family: str):
    """One float32 tiny model per family, shared by every test (never mutate it)."""
    return load_model(tiny_checkpoint(family), dtype=torch.float32)


def load_cases(relative: str) -> list[dict]:
    """The ``cases`` list of a fixture JSON under ``shared/fixtures/cases``."""
    return json.loads((fixtures_dir() / "cases" / relative).read_text())["cases"]


def case_ids(cases: list[dict]) -> list[str]:
    return [c["name"] for c in cases]


def transfer_counts(trajectory: list[torch.Tensor], start: torch.Tensor, mask_id: int) -> list[list[int]]:
    """How many masks each step filled, per row, from the sequence before and after it."""
    counts, previous = [], start
    for state in trajectory:
        counts.append(((previous == mask_id) & (state != mask_id)).sum(dim=1).tolist())
        previous = state
    return counts


def assert_matches_case(out, case: dict, prompt: torch.Tensor, mask_id: int) -> None:
    """A generation equals a recorded official case: ids, NFE, per-step counts, trajectory."""
    expected = torch.tensor(case["expected_output_ids"])
    assert torch.equal(out.sequences, expected)
    assert out.nfe == case["nfe"]
    start = torch.cat([prompt, torch.full_like(expected[:, prompt.shape[1] :], mask_id)], dim=1)
    assert transfer_counts(out.trajectory, start, mask_id) == case["transfer_counts_per_step"]
    if "trajectory" in case:
        assert torch.equal(torch.stack(out.trajectory), torch.tensor(case["trajectory"]["states"]))


@pytest.fixture(scope="session")
def fixtures() -> Path:
    path = fixtures_dir()
    if not path.is_dir():
        pytest.fail(f"parity fixtures not found at {path} (set DLLM_ACCEL_SHARED)")
    return path
