"""Local evaluation data for lm-eval tasks, and the task YAMLs made concrete for one run.

Task YAMLs in ``eval/tasks`` name their files relative to ``@DATA_DIR@`` and lm-eval's own
task folder as ``@LM_EVAL_TASKS@``; ``materialize_tasks`` writes copies with absolute paths
(relative ``data_files`` would resolve against the working directory, not the YAML).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..paths import shared_dir

TASK_TEMPLATES = Path(__file__).resolve().parent / "tasks"
_HUB_ENV = "DLLM_ACCEL_DATA_FROM_HUB"


def default_data_dir() -> Path:
    return shared_dir() / "data"


def lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).resolve().parent / "tasks"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_splits(splits: dict[str, str], hub: dict | None = None, **_metadata: Any):
    """lm-eval ``custom_dataset``: one ``Dataset`` per split from local JSONL(.gz) files.

    Files of different schemas may form one task (MBPP+ tests with MBPP's few-shot rows).
    When a file is missing and ``DLLM_ACCEL_DATA_FROM_HUB=1``, ``hub`` (``path``, ``name``)
    is loaded from the Hugging Face hub instead.
    """
    import datasets

    missing = [p for p in splits.values() if not Path(p).is_file()]
    if missing:
        if hub and os.environ.get(_HUB_ENV) == "1":
            return datasets.load_dataset(hub["path"], hub.get("name"))
        raise FileNotFoundError(
            f"evaluation data file {missing[0]} not found (set data_dir= to a folder laid out like shared/data, "
            f"or {_HUB_ENV}=1 to load it from the hub)"
        )
    return datasets.DatasetDict({name: datasets.Dataset.from_list(read_jsonl(path)) for name, path in splits.items()})


def template_files(template: str) -> list[str]:
    """Data files a task template names (relative to the data dir)."""
    text = (TASK_TEMPLATES / f"{template}.yaml").read_text()
    return sorted({part.split("'")[0].split('"')[0].split()[0] for part in text.split("@DATA_DIR@/")[1:]})


def materialize_tasks(dest: Path, data_dir: Path, generated_dir: Path | None = None) -> Path:
    """Write every task template into ``dest`` with absolute paths; returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    replacements = {
        "@DATA_DIR@": str(Path(data_dir).resolve()),
        "@LM_EVAL_TASKS@": str(lm_eval_tasks_dir()),
        "@GENERATED_DIR@": str(Path(generated_dir or dest).resolve()),
    }
    for template in sorted(TASK_TEMPLATES.glob("*.yaml")):
        text = template.read_text()
        for key, value in replacements.items():
            text = text.replace(key, value)
        atomic_write_text(dest / template.name, text)
    return dest


def check_data(template: str, data_dir: Path) -> None:
    """Fail before loading a model when a task's data file is absent."""
    if os.environ.get(_HUB_ENV) == "1":
        return
    for relative in template_files(template):
        path = Path(data_dir) / relative
        if not path.is_file():
            raise FileNotFoundError(
                f"task {template!r} needs {path}, which does not exist (set data_dir= to a folder laid out "
                f"like shared/data, or {_HUB_ENV}=1 to load it from the hub)"
            )
