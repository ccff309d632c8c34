"""Interleaved re-timing (``make demo``'s tables, ``python -m dllm_accel.retime``) without timing anything.

What can be checked without a clock: how many times each run is called and in which order, how
a failure is isolated, how the speed-up pairs rounds, what the columns say they are, and that the
CPU memory figure is the method's own tensors, not the process's.
"""

from __future__ import annotations

import torch
from conftest import tiny_model

from dllm_accel.demo import method_configs, not_applicable
from dllm_accel.measure import LiveTensorPeak, interleaved, spread
from dllm_accel.retime import HEADER, Replay, legend, paired_speedup, recorded_calls, table


def _recording(calls: list[str], name: str, fail_on: int | None = None):
    def run() -> float:
        calls.append(name)
        if fail_on is not None and calls.count(name) == fail_on:
            raise RuntimeError("boom")
        return float(len(calls))

    return run


def test_every_run_is_called_once_per_round_in_a_rotated_order():
    calls: list[str] = []
    timed = interleaved({n: _recording(calls, n) for n in "abc"}, repeats=4)
    assert calls == list("abcbcacababc")
    assert {n: len(t) for n, t in timed.items()} == {"a": 4, "b": 4, "c": 4}
    assert timed["b"] == [2.0, 4.0, 9.0, 11.0]  # seconds kept in round order, whatever the call order


def test_a_failing_run_is_reported_and_the_others_keep_their_rounds():
    calls: list[str] = []
    runs = {"a": _recording(calls, "a"), "b": _recording(calls, "b", fail_on=2), "c": _recording(calls, "c")}
    timed = interleaved(runs, repeats=3)
    assert timed["b"] == "FAILED: RuntimeError: boom"
    assert calls.count("b") == 2 and len(timed["a"]) == len(timed["c"]) == 3


def test_spread_and_the_paired_speed_up():
    assert spread([1.0, 2.0, 4.0]) == 1.5
    # the machine slows down 3x in round 2: both points feel it, the paired ratio does not
    mine, vanilla = [1.0, 3.0, 1.0], [2.0, 6.0, 2.0]
    assert paired_speedup(mine, vanilla, positions=10, vanilla_positions=10) == 2.0
    assert paired_speedup([1.0], [1.0], positions=20, vanilla_positions=10) == 2.0  # rates, not seconds


def test_recorded_calls_keep_batches_whole_and_in_order():
    def record(key, batch, process="p", **extra):
        return {
            "key": key,
            "status": "ok",
            "process": process,
            "timing": {"batch_id": batch},
            "generated_ids": [1],
        } | extra

    records = [
        record("a", 0),
        record("b", 0),
        record("c", 1),
        {"key": "x", "status": "error"},
        record("l", 2, kind="loglikelihood"),
        record("d", 3),
    ]
    assert [[r["key"] for r in g] for g in recorded_calls(records, 2)] == [["a", "b"], ["c"]]
    assert [[r["key"] for r in g] for g in recorded_calls(records, 9)] == [["a", "b"], ["c"], ["d"]]


def _summary(preset: str, accuracy: float = 1.0) -> dict:
    return {
        "model": "tiny",
        "method": preset,
        "preset": preset,
        "point": preset,
        "overrides": {},
        "task": "copy",
        "accuracy": {"value": accuracy},
        "measurement": {"all": {"nfe_per_token": 0.5}},
    }


def test_the_table_says_what_each_column_is():
    summaries = [_summary("vanilla"), _summary("fast_dllm"), _summary("broken")]
    replays = {i: Replay(None, "m", {}, {}, None, [], positions=10, live_bytes=2 * 1024**2) for i in range(2)}
    replays[2] = "FAILED: ValueError: no samples"
    lines = table(summaries, replays, {0: [2.0, 4.0], 1: [1.0, 1.0]})
    assert lines[0] == HEADER and "spread" in HEADER and "live MiB" in HEADER and "peak" not in HEADER
    vanilla, fast, broken = lines[1:]
    assert "1.00x" in vanilla and " 3.33 " in vanilla and "67%" in vanilla and "2.00" in vanilla
    assert "3.00x" in fast  # median of the paired ratios 2 and 4
    assert broken.endswith("FAILED: ValueError: no samples")
    text = " ".join(legend(5, 2, "cpu"))
    assert "5 rounds" in text and "first 2 generate calls" in text and "rotated order" in text
    assert "tensors alive" in text and "weights and prompt excluded" in text
    assert "allocator's peak" in " ".join(legend(5, 2, "cuda"))


def test_live_tensor_bytes_count_the_calls_own_tensors_only():
    weights = torch.ones(1 << 16)
    with LiveTensorPeak() as tracker:
        a = weights * 2  # 256 KiB
        del a
        b = torch.zeros(1 << 14)  # 64 KiB, after a was freed
        c = b + 1
    assert tracker.peak == 4 << 16  # a alone; never a and b together, and the weights not at all
    assert tracker.current == b.nbytes + c.nbytes


def test_the_demo_skips_a_preset_whose_rule_the_family_lacks():
    presets = {e["preset"]: e for e in method_configs()}
    assert "sampler llada" in not_applicable(presets["wino"], "dream")
    assert not_applicable(presets["wino"], "llada") is None
    assert not_applicable(presets["vanilla"], "dream") is None


def test_the_demo_skips_a_preset_whose_method_refuses_the_family():
    """dKV-Cache's pd variant is Dream-only: on LLaDA the demo says so instead of counting a failure."""
    llada, dream = tiny_model("llada").spec, tiny_model("dream").spec
    presets = {e["preset"]: e for e in method_configs()}
    assert "not run" in not_applicable(presets["dkv_cache_pd"], "llada", llada)
    assert not_applicable(presets["dkv_cache_pd"], "dream", dream) is None
    assert not_applicable(presets["vanilla"], "llada", llada) is None
