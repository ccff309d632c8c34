"""Host syncs per denoising step and per layer, for every registered method, preset and policy.

Counted by ``dllm_accel.profiling.OpCounter`` (a sync on CPU is a sync on CUDA: see its
docstring for the ops that count) while ``generate`` runs on the tiny checkpoints. The cases
come from the method registry, ``conf/method/*.yaml`` and the policies no preset selects
(``experiments/sync_table.py``), for both families, batch 1 and a left-padded batch of 4,
greedy and sampled. Limits (issue 14): nothing inside the layer loop and at most one per step
(the block-end check); the saliency methods, whose shapes follow data, one per layer too.
"""

from __future__ import annotations

import pytest
import torch

from dllm_accel.profiling import OpCounter, OpCounts
from experiments.sync_table import TEMPERATURE, Case, cases, count

# Methods that landed over the limits; strict, so each flips to a failure when it is fixed.
OVER_LIMIT: dict[str, str] = {}
# ... and the ones over the limits only when sampling (temperature > 0)
OVER_LIMIT_SAMPLED: dict[str, str] = {}


def _over_limit(case: Case, temperature: float) -> str | None:
    """Why a case is expected over the limits (by method, or by the decoding rule it names), if it is."""
    policy = case.settings.get("policy")
    sampled = OVER_LIMIT_SAMPLED.get(policy) if temperature > 0 else None
    return OVER_LIMIT.get(case.method) or OVER_LIMIT.get(policy) or sampled


def _params() -> list:
    params = []
    for case in cases():
        for batch in (1, 4):
            for temperature in (0.0, TEMPERATURE):
                reason = _over_limit(case, temperature)
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                label = f"{case.family}-{case.label}-b{batch}-t{temperature:g}"
                params.append(pytest.param(case, batch, temperature, id=label, marks=marks))
    return params


def _limits(case: Case, counts: OpCounts, temperature: float) -> tuple[int, int]:
    """(syncs allowed per step, per layer); ``SECOND_READ`` says which rows read twice and why."""
    if case.per_layer_allowed:
        return 1 + counts.n_layers, 1
    return case.reads_per_step(temperature), 0


def _where(counts: OpCounts) -> str:
    return "; ".join(f"{n}x {op} at {where}" for (where, op), n in counts.sites.most_common(5))


@pytest.mark.slow
@pytest.mark.parametrize(("case", "batch", "temperature"), _params())
def test_syncs_per_step_and_layer(case: Case, batch: int, temperature: float):
    counts = count(case, batch, temperature)
    if isinstance(counts, str):
        pytest.skip(counts)
    per_step, per_layer = _limits(case, counts, temperature)
    assert counts.steps, "no denoising step ran"
    assert counts.max_syncs_per_layer <= per_layer, _where(counts)
    assert counts.max_syncs_per_step <= per_step, _where(counts)


def test_every_registered_method_and_preset_is_counted():
    from dllm_accel.methods.registry import available_methods

    counted = {case.method for case in cases()}
    assert set(available_methods()) <= counted
    labels = {case.label for case in cases()}
    assert {f"method:{name}" for name in available_methods()} <= labels


def test_the_counter_sees_every_kind_of_sync():
    """Each listed way of making the host wait counts once; device-only work counts none."""
    from dllm_accel.models import load_model
    from dllm_accel.paths import tiny_checkpoint

    model = load_model(tiny_checkpoint("llada"), dtype=torch.float32)
    x = torch.arange(6.0)
    mask = x > 2
    counter = OpCounter(model)
    with counter:
        x.sum().item()
        bool(mask.any())
        x[mask]
        y = x.clone()
        y[mask] = torch.zeros(3)
        mask.nonzero()
        x.tolist()
        torch.tensor([1.0, 2.0])
        torch.repeat_interleave(x, torch.tensor([1, 1, 1, 1, 1, 1]))
    # nine: the last line builds its repeats from host data (one) and repeats by them (one)
    assert counter.counts.setup.syncs == 9
    quiet = OpCounter(model)
    with quiet:
        torch.topk(x, 2)
        x.masked_fill(mask, 0.0)
        torch.where(mask, x, 0.0)
        torch.nonzero_static(mask, size=3)
        torch.full((2,), 1.0)
        torch.multinomial(torch.ones(2, 3), 1)
    assert quiet.counts.setup.syncs == 0
    assert quiet.counts.setup.launches >= 6


def test_the_counter_attributes_ops_to_steps_and_layers():
    """A vanilla LLaDA run: one step window per forward, every layer visited each step."""
    from dllm_accel import generate
    from dllm_accel.models import load_model
    from dllm_accel.paths import tiny_checkpoint

    model = load_model(tiny_checkpoint("llada"), dtype=torch.float32)
    counter = OpCounter(model)
    with counter:
        out = generate(model, torch.tensor([[5, 6, 7, 8]]), gen_length=8, steps=4, block_length=4)
    counts = counter.counts
    assert len(counts.steps) == out.nfe == 4
    assert counts.layer_visits == 4 * len(model.blocks)
    assert counts.launches_per_layer > 10
