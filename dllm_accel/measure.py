"""One meter for every method: time, tokens, forwards and memory, recorded raw per sample.

Every throughput definition the papers use is derived from the same raw counts in
``summarize``, so a table can quote any paper's rule without re-running:

- ``all_positions``: every generated position, EOS padding included, over synchronized time
  (Sparse-dLLM, dLLM-Cache);
- ``non_eos``: generated tokens that are not EOS, before ``until`` truncation (Fast-dLLM Dream);
- ``answer``: tokens of the answer after ``until`` truncation, re-tokenized, minus EOS
  (Fast-dLLM LLaDA);
- ``before_eos``: positions before the first EOS/EoT (an early-exit engine's count, DyLLM).
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GIB = 1024**3
TOKEN_COUNTS = ("all_positions", "non_eos", "answer", "before_eos")


@dataclass
class Timing:
    """One timed generate call (a batch)."""

    batch_id: int
    first_call: bool
    wall_s: float = 0.0
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    # CPU runs: the process's peak resident memory during the call (Linux VmHWM, reset before it)
    peak_rss_bytes: int | None = None


_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_rss_peak() -> bool:
    """Reset the kernel's resident-memory high-water mark of this process (Linux only)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def rss_peak_bytes() -> int | None:
    """VmHWM of this process: the most memory it has held resident since the last reset.

    A coarse CPU figure: memory the allocator hands back from pages the process already holds
    resident does not raise it, so it can miss part of a call's own allocations."""
    try:
        lines = _STATUS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


@dataclass
class Meter:
    """Times generate calls with device synchronization; peak memory is reset before each
    (CUDA allocator statistics on a GPU, the process's resident high-water mark on CPU)."""

    device: torch.device
    calls: int = 0
    generate_s: float = 0.0
    _started: float = field(default_factory=time.perf_counter)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def time(self) -> Iterator[Timing]:
        timing = Timing(batch_id=self.calls, first_call=self.calls == 0)
        self.calls += 1
        cuda = self.device.type == "cuda"
        self._sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        rss = not cuda and reset_rss_peak()
        start = time.perf_counter()
        try:
            yield timing
        finally:
            self._sync()
            timing.wall_s = time.perf_counter() - start
            self.generate_s += timing.wall_s
            if cuda:
                timing.peak_allocated_bytes = torch.cuda.max_memory_allocated(self.device)
                timing.peak_reserved_bytes = torch.cuda.max_memory_reserved(self.device)
            elif rss:
                timing.peak_rss_bytes = rss_peak_bytes()

    def overhead(self) -> dict[str, float]:
        """Wall time since the meter started and the share spent outside generate."""
        wall = time.perf_counter() - self._started
        return {"wall_s": wall, "generate_s": self.generate_s, "outside_generate_share": 1 - self.generate_s / wall}


class LiveTensorPeak(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the block and still alive, followed op by op.

    The CPU's memory figure for one method: the allocator keeps no statistics there, and the
    process's resident peak is the same for every method (weights, libraries, earlier calls).
    Tensors that existed before the block (weights, the prompt) are not counted, nor is a
    kernel's internal scratch. Slows every op down: never inside a timed call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors referring to it]
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        entry = self.live.get(address)
        if entry is None:
            self.live[address] = [storage.nbytes(), 1]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        else:
            entry[1] += 1
        weakref.finalize(tensor, self._release, address)

    def _release(self, address: int) -> None:
        entry = self.live.get(address)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[address]


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float] | str]:
    """Every run ``repeats`` times, interleaved: round r calls each run once, the order rotated by r, so
    a drift in the machine's speed reaches every run alike. Per run: the seconds each round returned,
    in round order, or the error that stopped it (its later rounds are skipped, the others go on)."""
    names = list(runs)
    results: dict[str, list[float] | str] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            if isinstance(results[name], str):
                continue
            try:
                results[name].append(runs[name]())
            except Exception as err:  # one failing run is reported, the others still timed
                results[name] = f"FAILED: {type(err).__name__}: {err}"
    return results


def spread(values: list[float]) -> float:
    """(max - min) / median: how far repeated timings of one thing disagree."""
    return (max(values) - min(values)) / _percentile(values, 0.5)


def token_counts(
    generated: list[int], answer_ids: list[int], eos: int, eot: int | None, mask: int | None = None
) -> dict[str, int]:
    """The raw per-sample counts every throughput definition is derived from.

    Positions still holding ``mask`` were never generated (a row stopped by the EOS early
    exit, or a pass budget that ran out) and count under no definition.
    """
    decoded = [t for t in generated if t != mask]
    ends = [i for i, t in enumerate(generated) if t == eos or (eot is not None and t == eot)]
    return {
        "all_positions": len(decoded),
        "non_eos": sum(1 for t in decoded if t != eos),
        "answer": sum(1 for t in answer_ids if t not in (eos, mask)),
        "before_eos": ends[0] if ends else len(decoded),
    }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _rates(samples: list[dict], batches: dict[int, dict]) -> dict:
    seconds = sum(b["wall_s"] for b in batches.values())
    forwards = sum(b["nfe"] for b in batches.values())
    per_sequence_nfe = sum(s["nfe"] for s in samples)
    positions = sum(s["tokens"]["all_positions"] for s in samples)
    out = {
        "samples": len(samples),
        "seconds": seconds,
        "tokens_per_s": {
            k: (sum(s["tokens"][k] for s in samples) / seconds if seconds else None) for k in TOKEN_COUNTS
        },
        "forwards_per_s": forwards / seconds if seconds else None,
        "tokens_per_forward": positions / per_sequence_nfe if per_sequence_nfe else None,
        "nfe_per_token": per_sequence_nfe / positions if positions else None,
    }
    return out


def summarize(records: list[dict]) -> dict:
    """Throughput under every definition, latency percentiles and peak memory from sample records."""
    ok = [r for r in records if r.get("status") == "ok"]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r.get("status", "unknown")] = statuses.get(r.get("status", "unknown"), 0) + 1
    batches: dict[tuple, dict] = {}
    for r in ok:
        batches.setdefault((r["process"], r["timing"]["batch_id"]), r["timing"] | {"nfe": r["nfe"]})
    warm = [r for r in ok if not r["timing"]["first_call"]]
    warm_batches = {k: v for k, v in batches.items() if not v["first_call"]}
    peaks = [b["peak_allocated_bytes"] for b in batches.values() if b.get("peak_allocated_bytes") is not None]
    reserved = [b["peak_reserved_bytes"] for b in batches.values() if b.get("peak_reserved_bytes") is not None]
    resident = [b["peak_rss_bytes"] for b in batches.values() if b.get("peak_rss_bytes") is not None]
    latencies = [r["timing"]["wall_s"] for r in ok]
    stats: dict[str, list[float]] = {}
    for r in ok:
        for key, value in (r.get("method_stats") or {}).items():
            stats.setdefault(key, []).append(float(value))
    return {
        "statuses": statuses,
        "all": _rates(ok, batches),
        "warm": _rates(warm, warm_batches),
        "latency_s": {"p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99)},
        "peak_memory_gib": {
            "mean": sum(peaks) / len(peaks) / GIB if peaks else None,
            "max": max(peaks) / GIB if peaks else None,
            "reserved_max": max(reserved) / GIB if reserved else None,
            "rss_max": max(resident) / GIB if resident else None,
        },
        "method_stats": {k: sum(v) / len(v) for k, v in stats.items()},
    }


def _git_commit() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    return {
        "commit": head.stdout.strip() or None,
        "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None,
    }


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def attention_backend(device: torch.device) -> str:
    if device.type != "cuda":
        return f"sdpa ({device.type}: math/flash-cpu kernels)"
    enabled = [
        name
        for name, on in (
            ("flash", torch.backends.cuda.flash_sdp_enabled()),
            ("mem_efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
            ("cudnn", torch.backends.cuda.cudnn_sdp_enabled()),
            ("math", torch.backends.cuda.math_sdp_enabled()),
        )
        if on
    ]
    return "sdpa (" + ", ".join(enabled) + ")"


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    """What the numbers were measured on: hardware, software versions, code commit, dtype."""
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_memory_gib": torch.cuda.get_device_properties(device).total_memory / GIB if cuda else None,
        "driver": _driver_version() if cuda else None,
        "cuda": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": pkg("transformers"),
        "lm_eval": pkg("lm_eval"),
        "dllm_accel": pkg("dllm-accel"),
        "attention": attention_backend(device),
        "dtype": str(dtype).replace("torch.", ""),
        "git": _git_commit(),
    }
