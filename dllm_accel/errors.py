"""Bad input ends a run with one line that names the value and what is accepted.

The runner checks every value's range before reading weights; any rejected value, file or
checkpoint is printed as ``error: ...`` on one line (exit status 2), with no traceback unless
``DLLM_ACCEL_DEBUG=1`` or ``debug=true`` asks for it. Samples that could not be generated are
counted by reason for the summary and the console.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from contextlib import contextmanager

from omegaconf.errors import OmegaConfBaseException

from .eval.sandbox import ISOLATION, SandboxUnavailable
from .results import RunLocked

DEBUG_ENV = "DLLM_ACCEL_DEBUG"
USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    SandboxUnavailable,
    RunLocked,
    OmegaConfBaseException,
)
_TOO_LONG = re.compile(r"prompt_too_long: (\d+) prompt \+ (\d+) generated tokens exceed the model's context of (\d+)")


def debug_enabled(flag: bool | None = False) -> bool:
    return bool(flag) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def debug_in_argv(argv: list[str]) -> bool:
    """``debug=true`` among command-line overrides (read before Hydra has composed anything)."""
    return any(arg.lstrip("+").lower() in ("debug=true", "debug=1") for arg in argv)


@contextmanager
def reported(debug: bool = False):
    """Turn a rejected input into one line on stderr and exit status 2 (unless debugging)."""
    try:
        yield
    except USER_ERRORS as err:
        if debug_enabled(debug):
            raise
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {text} (traceback: {DEBUG_ENV}=1 or debug=true)", file=sys.stderr, flush=True)
        sys.exit(2)


def _at_least(name: str, value, low, allow_none: bool = True, strict: bool = False) -> None:
    if value is None and allow_none:
        return
    bad = value is None or isinstance(value, bool) or (value <= low if strict else value < low)
    if bad:
        accepted = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{name}={value} is out of range (accepted: {accepted}{' or null' if allow_none else ''})")


def check_ranges(config: dict) -> None:
    """Every numeric setting of a run inside its range, every path that must exist present."""
    task, measure, model = config["task"], config["measure"], config["model"]
    _at_least("task.limit", task.get("limit"), 1)
    _at_least("task.num_fewshot", task.get("num_fewshot"), 0)
    _at_least("task.samples_per_cell", task.get("samples_per_cell"), 0, allow_none=False)
    for length in task.get("lengths") or []:
        _at_least("task.lengths entry", length, 1, allow_none=False)
    for depth in task.get("depths") or []:
        if not isinstance(depth, (int, float)) or not 0 <= depth <= 1:
            raise ValueError(f"task.depths entry {depth!r} is out of range (accepted: 0 to 1)")
    _at_least("cpu_threads", config.get("cpu_threads"), 1)
    _at_least("batch_size", config.get("batch_size"), 1, allow_none=False)
    _at_least("seed", config.get("seed"), 0, allow_none=False)
    _at_least("measure.generation_timeout_s", measure.get("generation_timeout_s"), 0, strict=True)
    _at_least("measure.warmup", measure.get("warmup"), 0, allow_none=False)
    _at_least("code_workers", config.get("code_workers"), 1, allow_none=False)
    _at_least("code_timeout_s", config.get("code_timeout_s"), 0, allow_none=False, strict=True)
    _at_least("model.rope_scaling", model.get("rope_scaling"), 0, allow_none=False, strict=True)
    if config.get("code_isolation") not in ISOLATION:
        raise ValueError(f"code_isolation={config.get('code_isolation')!r} is not one of {', '.join(ISOLATION)}")
    _check_device(model.get("device"))
    if config.get("data_dir") and not os.path.isdir(config["data_dir"]):
        raise NotADirectoryError(
            f"data_dir={config['data_dir']} is not a directory (expected a folder like shared/data)"
        )


def _check_device(name: str | None) -> None:
    import torch

    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"model.device={name!r} is not a device (accepted: auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"model.device={name!r} but no CUDA device is available here (accepted: auto, cpu)")


def _reason(record: dict) -> str:
    error = str(record.get("error") or "")
    too_long = _TOO_LONG.match(error)
    if too_long:
        return "prompt longer than the model's context"
    if record["status"] == "oom":
        return f"out of memory ({error[:100]})"
    if record["status"] == "timeout":
        return f"generation timed out ({error[:100]})"
    return error[:160] or record["status"]


def failures(records: list[dict]) -> dict:
    """How many samples were not generated, and why (the context figure is the worst case)."""
    failed = [r for r in records if r.get("status") != "ok"]
    reasons = Counter(_reason(r) for r in failed)
    out = {"count": len(failed), "samples": len(records), "reasons": dict(reasons)}
    lengths = [_TOO_LONG.match(str(r.get("error") or "")) for r in failed]
    lengths = [m for m in lengths if m]
    if lengths:
        needed = max(int(m[1]) + int(m[2]) for m in lengths)
        context = int(lengths[0][3])
        label = f"prompt longer than the model's context ({needed:,} > {context:,} tokens)"
        out["reasons"][label] = out["reasons"].pop("prompt longer than the model's context")
    return out


def failure_lines(summary: dict) -> list[str]:
    """``12/12 samples: prompt longer than the model's context (4,210 > 4,096 tokens)``, one per reason."""
    found = summary.get("failures") or {}
    total = found.get("samples", 0)
    return [f"{count}/{total} samples: {reason}" for reason, count in (found.get("reasons") or {}).items()]
