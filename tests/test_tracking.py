"""The W&B mirror: offline without a key, nothing with tracking=none, never fatal."""

from __future__ import annotations

import pytest

from dllm_accel.tracking import Tracker, resolve_mode


def test_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("none") == "none"
    with pytest.raises(ValueError, match="accepted: auto, online, offline, none"):
        resolve_mode("cloud")


def test_none_writes_nothing(tmp_path):
    tracker = Tracker("none", "p", tmp_path, "run", {"a": 1})
    tracker.log_summary({"acc": 1.0})
    tracker.finish()
    assert list(tmp_path.iterdir()) == []


def test_a_failing_wandb_warns_and_the_run_goes_on(tmp_path, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("service unreachable")

    monkeypatch.setattr(wandb, "init", broken)
    with pytest.warns(UserWarning, match="service unreachable"):
        tracker = Tracker("offline", "p", tmp_path, "run", {})
    tracker.log_summary({"acc": 1.0})
    tracker.log_samples([{"key": "k", "status": "ok"}])
    tracker.finish()
    assert tracker.run is None
