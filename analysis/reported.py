"""The papers' published numbers (``results/reported/*.csv``) as one tidy DataFrame.

One row per printed number. ``setting`` is a canonical ``key=value;key=value`` string (keys
sorted) that tells apart the points of one (table, model, method, task), e.g. two generation
lengths or two thresholds; it is empty when the table has one point per cell. Descriptive
context (shots, read-off-a-plot accuracy, OOM) goes in ``note``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

REPORTED_DIR = Path(__file__).resolve().parents[1] / "results" / "reported"
COLUMNS = [
    "paper",
    "table",
    "model",
    "method",
    "task",
    "setting",
    "metric",
    "value",
    "unit",
    "throughput_definition",
    "gpu",
    "note",
]
# the task of a speed/memory point whose prompts the paper does not publish: any run matches
ANY_TASK = "any"
UNITS = {
    "accuracy": "%",
    "throughput": "tok/s",
    "speedup": "x",
    "peak_memory": "GiB",
    "memory_ratio": "x",
    "tokens_per_step": "tok/step",
}


def setting_key(**values: object) -> str:
    """Canonical ``setting`` string: keys sorted, ``None`` values left out."""
    return ";".join(f"{k}={_plain(v)}" for k, v in sorted(values.items()) if v is not None)


def parse_setting(setting: str) -> dict[str, str]:
    """Inverse of :func:`setting_key` (values stay strings)."""
    if not isinstance(setting, str) or not setting:
        return {}
    return dict(part.split("=", 1) for part in setting.split(";"))


def _plain(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def load_reported(directory: str | Path = REPORTED_DIR) -> pd.DataFrame:
    """Every ``*.csv`` in ``directory`` concatenated; empty ``setting``/``note`` become ''."""
    files = sorted(Path(directory).glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no reported-number CSVs in {directory}")
    # every column but ``value`` as text: a file whose table labels are all digits ("1", "2") would otherwise
    # read them as integers, which no catalog entry's table names match
    text = {c: str for c in COLUMNS if c != "value"}
    frame = pd.concat([pd.read_csv(f, keep_default_na=False, na_values={"value": [""]}, dtype=text) for f in files])
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"reported CSVs in {directory} lack columns {missing}; expected {COLUMNS}")
    frame["value"] = pd.to_numeric(frame["value"])
    return frame[COLUMNS].reset_index(drop=True)
