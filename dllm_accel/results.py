"""The results store: one directory per (experiment, model, method+settings, task).

``samples.jsonl`` gets one line per sample the moment its generation finishes, so an
interrupted run loses at most the batch in flight; a rerun with the same resolved config
finds the same directory and skips every sample already there. After scoring the file is
rewritten once (atomically) with each sample's scores. ``summary.json`` holds accuracy,
every throughput definition, latency, memory and the environment. The local files are the
source of truth; W&B only mirrors them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .paths import REPO_ROOT, shared_dir

SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
# keys that never change a completion or a measurement, so they do not name the directory
NEUTRAL_KEYS = ("tracking", "wandb_project", "results_root", "print_summary", "code_workers", "code_isolation")


def prompt_hash(text: str) -> str:
    """sha256 of the exact rendered prompt: any whitespace change gives another hash."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _portable(value: Any, roots: list[tuple[str, str]]) -> Any:
    """``value`` with paths inside this checkout or the shared folder written relative to them."""
    if isinstance(value, dict):
        return {k: _portable(v, roots) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v, roots) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        for root, label in roots:
            if value == root or value.startswith(root + os.sep):
                return label + value[len(root) :]
    return value


def config_hash(config: dict) -> str:
    """Hash of the settings that can change results (``task.limit`` excluded: it only selects docs).

    Paths inside the checkout or the shared folder count relative to them, so the same run
    from another clone, or another machine, finds the same directory and resumes.
    """
    relevant = {k: v for k, v in config.items() if k not in NEUTRAL_KEYS}
    task = dict(relevant.get("task", {}))
    task.pop("limit", None)
    relevant["task"] = task
    roots = [(str(REPO_ROOT), "<repo>"), (os.path.abspath(shared_dir()), "<shared>")]
    roots.sort(key=lambda pair: -len(pair[0]))  # the deeper root first, whichever contains the other
    portable = _portable(relevant, roots)
    return hashlib.sha256(json.dumps(portable, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_directory(root: str | os.PathLike, config: dict) -> Path:
    """``<root>/<experiment>/<model>/<method>-<hash>/<task>``."""
    method = config["method"]["name"]
    return (
        Path(root)
        / config.get("experiment_name", "adhoc")
        / config["model"]["name"]
        / f"{method}-{config_hash(config)}"
        / config["task"]["name"]
    )


def sample_key(task: str, doc_id: int, repeat: int = 0) -> str:
    return f"{task}/{doc_id}/{repeat}"


class RunStore:
    """Append-as-you-go sample records, resume, final scores and the summary of one run."""

    def __init__(self, directory: str | os.PathLike, samples_name: str = SAMPLES) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.samples_path = self.dir / samples_name
        self.records: dict[str, dict] = {}
        self._load()

    def reload(self) -> None:
        """Re-read the samples file (other data-parallel ranks append to it too)."""
        self.records = {}
        self._load()

    def _load(self) -> None:
        if not self.samples_path.is_file():
            return
        data = self.samples_path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # a line cut by a kill: drop it, it is regenerated
            with open(self.samples_path, "wb") as handle:
                handle.write(complete)
        for line in complete.decode("utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                self.records[record["key"]] = record

    def finished(self, key: str, hashed_prompt: str) -> dict | None:
        """The stored record for this sample if its prompt is byte-identical, else None."""
        record = self.records.get(key)
        return record if record is not None and record.get("prompt_hash") == hashed_prompt else None

    def append(self, record: dict) -> None:
        with open(self.samples_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records[record["key"]] = record

    def write_config(self, text: str) -> None:
        atomic_write_text(self.dir / CONFIG, text)

    def finalize(
        self,
        scores: dict[str, dict[str, Any]],
        keep: set[str] | None = None,
        doc_meta: dict[str, dict[str, Any]] | None = None,
    ) -> list[dict]:
        """Attach scores (and document metadata such as length and depth) and rewrite the
        samples file in document order; returns the records."""
        records = [r for k, r in self.records.items() if keep is None or k in keep]
        for record in records:
            record["scores"] = scores.get(record["key"], record.get("scores"))
            if doc_meta is not None and record["key"] in doc_meta:
                record["doc_meta"] = doc_meta[record["key"]]
        records.sort(key=lambda r: (r["task"], r["doc_id"], r.get("repeat", 0)))
        atomic_write_text(self.samples_path, "".join(json.dumps(r, default=str) + "\n" for r in records))
        return records

    def write_summary(self, summary: dict) -> Path:
        path = self.dir / SUMMARY
        atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")
        return path

    def read_summary(self) -> dict | None:
        path = self.dir / SUMMARY
        return json.loads(path.read_text()) if path.is_file() else None


def read_samples(directory: str | os.PathLike) -> list[dict]:
    path = Path(directory) / SAMPLES
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
