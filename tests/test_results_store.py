"""The results store: append as samples finish, survive a cut line, resume, finalize, name directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dllm_accel.results import (
    QUARANTINE,
    SAMPLES,
    RunLocked,
    RunStore,
    config_hash,
    read_samples,
    run_directory,
    sample_key,
)

CONFIG = {
    "experiment_name": "exp",
    "model": {"name": "llada_tiny"},
    "method": {"name": "vanilla", "options": {}},
    "task": {"name": "gsm8k", "limit": 4},
    "seed": 1,
    "tracking": "none",
    "results_root": "/somewhere",
}


def _record(doc: int, prompt: str = "p") -> dict:
    return {
        "key": sample_key("t", doc),
        "task": "t",
        "doc_id": doc,
        "repeat": 0,
        "prompt_hash": prompt,
        "completion": f"c{doc}",
    }


def test_records_are_on_disk_as_soon_as_they_are_appended(tmp_path):
    store = RunStore(tmp_path)
    store.append(_record(1))
    assert [r["doc_id"] for r in read_samples(tmp_path)] == [1]
    store.append(_record(0))
    assert len((tmp_path / SAMPLES).read_text().splitlines()) == 2


def test_resume_needs_the_same_prompt_hash(tmp_path):
    RunStore(tmp_path).append(_record(3, prompt="abc"))
    resumed = RunStore(tmp_path)
    assert resumed.finished(sample_key("t", 3), "abc")["completion"] == "c3"
    assert resumed.finished(sample_key("t", 3), "abd") is None
    assert resumed.finished(sample_key("t", 4), "abc") is None


def test_a_line_cut_by_a_kill_is_dropped_and_appending_continues(tmp_path):
    store = RunStore(tmp_path)
    store.append(_record(0))
    with open(tmp_path / SAMPLES, "a") as handle:
        handle.write('{"key": "t/1/0", "comple')
    resumed = RunStore(tmp_path)
    assert list(resumed.records) == ["t/0/0"]
    resumed.append(_record(1))
    assert [r["doc_id"] for r in read_samples(tmp_path)] == [0, 1]


def test_finalize_attaches_scores_in_document_order(tmp_path):
    store = RunStore(tmp_path)
    for doc in (2, 0, 1):
        store.append(_record(doc))
    records = store.finalize({sample_key("t", 0): {"acc,none": 1.0}})
    assert [r["doc_id"] for r in records] == [0, 1, 2]
    on_disk = read_samples(tmp_path)
    assert on_disk[0]["scores"] == {"acc,none": 1.0} and on_disk[1]["scores"] is None
    store.write_summary({"complete": True})
    assert RunStore(tmp_path).read_summary() == {"complete": True}
    assert json.loads((tmp_path / "summary.json").read_text())["complete"]


def test_finalize_persists_document_metadata(tmp_path):
    """Long-context length and depth must reach samples.jsonl, where the analysis reads them."""
    store = RunStore(tmp_path)
    store.append(_record(0))
    store.finalize({sample_key("t", 0): {"acc,none": 1.0}}, doc_meta={sample_key("t", 0): {"target_len": 4096, "depth": 0.5}})
    assert read_samples(tmp_path)[0]["doc_meta"] == {"target_len": 4096, "depth": 0.5}


def test_directory_names_follow_the_settings_that_change_results():
    same = config_hash(CONFIG)
    assert config_hash(CONFIG | {"tracking": "offline", "results_root": "/elsewhere"}) == same
    assert config_hash(CONFIG | {"task": {"name": "gsm8k", "limit": 40}}) == same  # limit only selects docs
    assert config_hash(CONFIG | {"seed": 2}) != same
    assert config_hash(CONFIG | {"method": {"name": "vanilla", "options": {"x": 1}}}) != same
    assert str(run_directory("/r", CONFIG)) == f"/r/exp/llada_tiny/vanilla-{same}/gsm8k"


def test_the_hash_is_free_of_machine_paths(monkeypatch, tmp_path):
    """The same run from another clone (another checkout path, another shared folder) must find
    the same directory and resume; a different checkpoint must not."""
    from dllm_accel import results

    def config_in(repo, shared):
        return CONFIG | {
            "model": {"name": "m", "path": f"{repo}/checkpoints/tiny-llada"},
            "data_dir": f"{shared}/data",
        }

    monkeypatch.setattr(results, "REPO_ROOT", tmp_path / "clone_a")
    monkeypatch.setenv("DLLM_ACCEL_SHARED", str(tmp_path / "shared_a"))
    here = config_hash(config_in(tmp_path / "clone_a", tmp_path / "shared_a"))
    monkeypatch.setattr(results, "REPO_ROOT", tmp_path / "elsewhere" / "clone_b")
    monkeypatch.setenv("DLLM_ACCEL_SHARED", str(tmp_path / "elsewhere" / "shared_b"))
    assert config_hash(config_in(tmp_path / "elsewhere" / "clone_b", tmp_path / "elsewhere" / "shared_b")) == here
    other = config_in(tmp_path / "elsewhere" / "clone_b", tmp_path / "elsewhere" / "shared_b")
    other["model"]["path"] += "-v2"
    assert config_hash(other) != here


# ------------------------------------------------------------------ damage, locks, retries
def _lines(path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_damaged_lines_are_quarantined_with_file_and_line_named(tmp_path, caplog):
    store = RunStore(tmp_path)
    for doc in range(4):
        store.append(_record(doc))
    lines = _lines(tmp_path / SAMPLES)
    lines[1] = b'{"key": "t/1/0", "comple'  # bad JSON, not the last line
    lines[2] = b'{"key": "t/2/0", "completion": "\xff\xfe"}'  # not UTF-8
    lines.insert(3, b'{"doc_id": 9, "completion": "no key"}')  # no key
    (tmp_path / SAMPLES).write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level("WARNING", logger="dllm_accel.results"):
        resumed = RunStore(tmp_path)
    assert sorted(resumed.records) == ["t/0/0", "t/3/0"]  # the damaged samples will be generated again
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    for line_number, problem in ((2, "not valid JSON"), (3, "not UTF-8"), (4, "a record without a 'key'")):
        assert any(f"{SAMPLES} line {line_number}: {problem}" in m for m in messages), messages
    assert len(_lines(tmp_path / QUARANTINE)) == 3
    assert [r["doc_id"] for r in read_samples(tmp_path)] == [0, 3]
    assert sorted(RunStore(tmp_path).records) == ["t/0/0", "t/3/0"]  # repaired: no second warning needed


def test_a_cut_summary_is_set_aside_so_the_run_rebuilds_it(tmp_path, caplog):
    store = RunStore(tmp_path)
    store.write_summary({"complete": True, "accuracy": {"value": 1.0}})
    path = tmp_path / "summary.json"
    path.write_text(path.read_text()[:15])
    with caplog.at_level("WARNING", logger="dllm_accel.results"):
        assert RunStore(tmp_path).read_summary() is None
    assert "summary.json is damaged" in caplog.text
    assert (tmp_path / "summary.json.damaged").is_file() and not path.exists()


def test_a_second_run_into_the_same_directory_fails_clearly(tmp_path):
    first = RunStore(tmp_path)
    first.lock()
    with pytest.raises(RunLocked, match=rf"{tmp_path} is being written by another run \(pid {os.getpid()}\)"):
        RunStore(tmp_path).lock()
    first.unlock()
    RunStore(tmp_path).lock()  # free again


def test_a_killed_holder_releases_the_lock(tmp_path):
    code = f"from dllm_accel.results import RunStore\nRunStore({str(tmp_path)!r}).lock()\nimport os\nos.kill(os.getpid(), 9)\n"
    subprocess.run([sys.executable, "-c", code], env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])})
    RunStore(tmp_path).lock()


def test_retry_failed_treats_failed_samples_as_missing(tmp_path):
    store = RunStore(tmp_path)
    for doc, status in enumerate(("ok", "oom", "error", "timeout")):
        store.append(_record(doc) | {"status": status})
    keep = RunStore(tmp_path)
    retry = RunStore(tmp_path, retry_failed=True)
    assert all(keep.finished(sample_key("t", d), "p") for d in range(4))
    assert [bool(retry.finished(sample_key("t", d), "p")) for d in range(4)] == [True, False, False, False]
