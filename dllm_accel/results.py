"""The results store: one directory per (experiment, model, method+settings, task).

``samples.jsonl`` gets one line per sample the moment its generation finishes, so an
interrupted run loses at most the batch in flight; a rerun with the same resolved config
finds the same directory and skips every sample already there. After scoring the file is
rewritten once (atomically) with each sample's scores. ``summary.json`` holds accuracy,
every throughput definition, latency, memory and the environment. The local files are the
source of truth; W&B only mirrors them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .paths import REPO_ROOT, shared_dir

SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
QUARANTINE = "samples.quarantine.jsonl"
LOCK = ".lock"
# stored samples that ``retry_failed=true`` generates again
RETRYABLE = ("oom", "error", "timeout")
log = logging.getLogger("dllm_accel.results")
# keys that never change a completion or a measurement, so they do not name the directory
NEUTRAL_KEYS = (
    "tracking",
    "wandb_project",
    "results_root",
    "print_summary",
    "code_workers",
    "code_isolation",
    "retry_failed",
    "debug",
)


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


def run_directory(root: str | os.PathLike, config: dict, name: str | None = None) -> Path:
    """``<root>/<experiment>/<model>/<name>-<hash>/<task>``; ``name`` is the sweep point's
    (``points.Point.slug``: preset and overridden values), by default the method's."""
    return (
        Path(root)
        / config.get("experiment_name", "adhoc")
        / config["model"]["name"]
        / f"{name or config['method']['name']}-{config_hash(config)}"
        / config["task"]["name"]
    )


def sample_key(task: str, doc_id: int, repeat: int = 0) -> str:
    return f"{task}/{doc_id}/{repeat}"


class RunLocked(RuntimeError):
    """Another live process is generating into the same results directory."""


def parse_record(line: bytes) -> tuple[dict | None, str | None]:
    """(record, None) for a good samples line, else (None, what is wrong with it)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 ({err.reason} at byte {err.start})"
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg}, column {err.colno})"
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        return None, "a record without a 'key'"
    return record, None


class RunStore:
    """Append-as-you-go sample records, resume, final scores and the summary of one run.

    Damage is repaired on open: a line cut by a kill is dropped; any other bad line (not JSON,
    not UTF-8, no ``key``) is moved to ``samples.quarantine.jsonl`` with a warning naming the
    file and line, and its sample is generated again. ``retry_failed`` treats stored
    oom/error/timeout samples as missing.
    """

    def __init__(self, directory: str | os.PathLike, samples_name: str = SAMPLES, retry_failed: bool = False) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.samples_path = self.dir / samples_name
        self.retry_failed = retry_failed
        self.records: dict[str, dict] = {}
        self._lock_fd: int | None = None
        self._load(repair=True)

    def reload(self) -> None:
        """Re-read the samples file (other data-parallel ranks append to it too)."""
        self.records = {}
        self._load(repair=False)

    def _load(self, repair: bool) -> None:
        if not self.samples_path.is_file():
            return
        data = self.samples_path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        kept, bad = [], []
        for number, line in enumerate(complete.split(b"\n")[:-1], start=1):
            if not line.strip():
                continue
            record, problem = parse_record(line)
            if record is None:
                bad.append((number, line, problem))
                continue
            kept.append(line)
            self.records[record["key"]] = record
        if not repair:
            return
        if bad:
            self._quarantine(bad)
            atomic_write_text(self.samples_path, b"".join(line + b"\n" for line in kept).decode("utf-8"))
        elif len(complete) != len(data):  # a line cut by a kill: drop it, it is regenerated
            with open(self.samples_path, "r+b") as handle:
                handle.truncate(len(complete))

    def _quarantine(self, bad: list[tuple[int, bytes, str]]) -> None:
        with open(self.dir / QUARANTINE, "ab") as handle:
            for number, line, problem in bad:
                handle.write(line + b"\n")
                log.warning(
                    "%s line %d: %s; moved to %s, the sample will be generated again",
                    self.samples_path,
                    number,
                    problem,
                    QUARANTINE,
                )

    def lock(self) -> None:
        """Hold this directory for this process (released when it exits, however it exits)."""
        path = self.dir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLocked(
                f"{self.dir} is being written by another run (pid {holder}); wait for it to finish "
                "or give this run another results_root"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def finished(self, key: str, hashed_prompt: str) -> dict | None:
        """The stored record for this sample if its prompt is byte-identical (and, with
        ``retry_failed``, it did not fail), else None."""
        record = self.records.get(key)
        if record is None or record.get("prompt_hash") != hashed_prompt:
            return None
        if self.retry_failed and record.get("status") in RETRYABLE:
            return None
        return record

    def append(self, record: dict) -> None:
        self.append_many([record])

    def append_many(self, records: list[dict]) -> None:
        """Append records in one write, flushed to disk before returning."""
        if not records:
            return
        with open(self.samples_path, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r, default=str) + "\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())
        for record in records:
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
        """The stored summary; a damaged one is set aside (``summary.json.damaged``) and None
        returned, so the run rebuilds it from the samples."""
        path = self.dir / SUMMARY
        if not path.is_file():
            return None
        try:
            summary = json.loads(path.read_bytes().decode("utf-8"))
            if isinstance(summary, dict):
                return summary
            problem = "not a JSON object"
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            problem = str(err)
        log.warning("%s is damaged (%s); moved to %s.damaged, rebuilding it from the samples", path, problem, SUMMARY)
        os.replace(path, path.with_name(SUMMARY + ".damaged"))
        return None


def read_samples(directory: str | os.PathLike) -> list[dict]:
    """The records of a samples file; damaged lines are skipped with a warning naming them."""
    path = Path(directory) / SAMPLES
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if line.strip():
            record, problem = parse_record(line)
            if record is None:
                log.warning("%s line %d: %s; skipped", path, number, problem)
            else:
                records.append(record)
    return records
