"""The meter's raw counts and every throughput definition derived from them."""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest
import torch

from dllm_accel import generate, load_model
from dllm_accel.measure import Meter, environment, summarize, token_counts
from dllm_accel.methods.vanilla import Vanilla
from dllm_accel.paths import tiny_checkpoint

EOS, EOT, MASK = 9, 8, 7


def test_token_counts_under_each_papers_rule():
    generated = [1, 2, EOT, 3, EOS, EOS]
    counts = token_counts(generated, answer_ids=[1, 2, EOT], eos=EOS, eot=EOT)
    assert counts == {"all_positions": 6, "non_eos": 4, "answer": 3, "before_eos": 2}
    assert token_counts([1, 2], [1], EOS, None)["before_eos"] == 2


def test_masks_left_after_an_early_exit_are_not_generated_tokens():
    # the DyLLM engine stopped this row at its EOS: the two masks after it were never decoded
    counts = token_counts([1, EOS, MASK, MASK], answer_ids=[1], eos=EOS, eot=EOT, mask=MASK)
    assert counts == {"all_positions": 2, "non_eos": 1, "answer": 1, "before_eos": 1}
    assert token_counts([1, 2, MASK], [1, 2], EOS, None, mask=MASK)["before_eos"] == 2


def test_method_statistics_are_gathered_after_the_timed_call():
    """A meter times generate(); the strategy's summary runs only when the stats are read."""
    calls = []

    class Summarising(Vanilla):
        def finish(self, model, canvas):
            calls.append(canvas.nfe)
            canvas.stats["summarised"] = 1.0

    model = load_model(tiny_checkpoint("llada"), dtype=torch.float32)
    meter = Meter(torch.device("cpu"))
    with meter.time():
        out = generate(model, torch.tensor([[5, 6, 7, 8]]), method=Summarising(), gen_length=4, steps=4)
    assert calls == []
    assert out.stats == {"summarised": 1.0}
    assert out.stats == {"summarised": 1.0} and calls == [4]  # once, then cached



def _sample(batch: int, first: bool, wall: float, positions: int, non_eos: int, nfe: int, peak=None, status="ok"):
    return {
        "status": status,
        "process": "p",
        "nfe": nfe,
        "tokens": {"all_positions": positions, "non_eos": non_eos, "answer": non_eos, "before_eos": non_eos},
        "timing": {"batch_id": batch, "first_call": first, "wall_s": wall, "peak_allocated_bytes": peak},
    }


def test_summary_counts_a_batch_once_and_separates_the_first_call():
    records = [
        _sample(0, True, 4.0, 16, 10, 16, peak=2 * 1024**3),
        _sample(1, False, 2.0, 16, 12, 8, peak=4 * 1024**3),
        _sample(1, False, 2.0, 16, 8, 8, peak=4 * 1024**3),  # same batch: its 2 s count once
        {"status": "oom"},
    ]
    summary = summarize(records)
    assert summary["statuses"] == {"ok": 3, "oom": 1}
    everything, warm = summary["all"], summary["warm"]
    assert everything["seconds"] == 6.0 and warm["seconds"] == 2.0
    assert everything["tokens_per_s"]["all_positions"] == pytest.approx(48 / 6)
    assert warm["tokens_per_s"]["non_eos"] == pytest.approx(20 / 2)
    assert everything["forwards_per_s"] == pytest.approx(24 / 6)
    assert everything["nfe_per_token"] == pytest.approx(32 / 48)
    assert everything["tokens_per_forward"] == pytest.approx(48 / 32)
    assert summary["latency_s"]["p50"] == 2.0 and summary["latency_s"]["p99"] == pytest.approx(3.96)
    assert summary["peak_memory_gib"]["mean"] == pytest.approx(3.0) and summary["peak_memory_gib"]["max"] == 4.0


def test_meter_times_each_call_and_flags_the_first():
    meter = Meter(torch.device("cpu"))
    with meter.time() as first:
        sum(range(1000))
    with meter.time() as second:
        pass
    assert first.first_call and not second.first_call and second.batch_id == 1
    assert first.wall_s > 0 and meter.generate_s == pytest.approx(first.wall_s + second.wall_s)
    assert 0 <= meter.overhead()["outside_generate_share"] <= 1


def _touch_fresh_pages(size: int) -> None:
    """Fault in ``size`` bytes of new anonymous memory (a freed tensor may come back from the
    allocator's already-resident pages, which no RSS measure can see)."""
    with mmap.mmap(-1, size) as block:
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_cpu_peak_is_the_resident_high_water_mark_of_each_call():
    meter = Meter(torch.device("cpu"))
    with meter.time() as small:
        pass
    with meter.time() as large:
        _touch_fresh_pages(64 * 2**20)
    with meter.time() as after:  # the mark was reset: the unmapped block no longer counts
        pass
    assert small.peak_rss_bytes > 0 and small.peak_allocated_bytes is None
    assert large.peak_rss_bytes >= small.peak_rss_bytes + 60 * 2**20
    assert after.peak_rss_bytes < large.peak_rss_bytes - 60 * 2**20


def test_environment_fingerprint():
    env = environment(torch.device("cpu"), torch.float32)
    assert env["torch"] == torch.__version__ and env["dtype"] == "float32" and env["gpu"] is None
    assert env["lm_eval"] and env["attention"].startswith("sdpa")
    assert len(env["git"]["commit"] or "") in (0, 40)
