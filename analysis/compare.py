"""Our numbers beside the papers': one row per reported number of a paper table.

Our accuracy carries a 95% interval (1.96 standard errors of the per-sample scores, lm-eval's
``mean_stderr``; several runs of one cell combine their errors). Accuracy fails only when the
paper's number lies outside that interval widened by the paper's own run-to-run spread
(``Bands.accuracy_points``: no paper states one, so it is an assumption, 1 point by default); on
HumanEval's 164 problems one standard error is about 3.9 points, so a fixed band would judge
noise. Throughput, speed-up, tokens per step, peak memory and memory ratio carry a 95% interval from a
seeded bootstrap over generation batches (a speed-up or memory ratio combines the relative errors of its
run and its vanilla run); ratios pass within
``Bands.ratio_relative`` of the paper's ratio widened by that interval. Absolute
throughput and memory depend on the GPU, so they are shown with their ratio to the paper's
and the verdict ``info``. A paper row we have no run for is ``missing`` (never filled in); a run the
paper has no row for is ``ours only``, so a new method appears in every table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .catalog import METHOD_KEYS, PaperTable, method_rank
from .reported import ANY_TASK, UNITS, parse_setting, setting_key
from .store import measure_groups

ABSOLUTE = {"throughput", "peak_memory"}
RATIOS = {"speedup", "memory_ratio", "tokens_per_step"}
COMPARISON_COLUMNS = [
    "table",
    "model",
    "task",
    "method",
    "setting",
    "metric",
    "unit",
    "paper",
    "ours",
    "ours_ci95",
    "difference",
    "verdict",
    "throughput_definition",
    "note",
]


@dataclass(frozen=True)
class Bands:
    """Pass/fail tolerances: the paper's accuracy spread in points (added to our 95% interval), ratios
    relative to the paper's."""

    accuracy_points: float = 1.0
    ratio_relative: float = 0.2

    def describe(self) -> str:
        return (
            f"pass: the paper's accuracy lies within our 95% interval (±, 1.96 standard errors) widened by "
            f"{self.accuracy_points:g} point(s) of assumed paper run-to-run spread; speed-up, memory ratio and "
            f"tokens per step within {self.ratio_relative:.0%} of the paper's, widened by our 95% interval where "
            "there is one (a bootstrap over batches). Absolute tok/s and GiB depend on the GPU: shown as "
            "ours/paper, verdict 'info'."
        )


DEFAULT_BANDS = Bands()


def _format_key(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def point_setting(row: pd.Series, keys: list[str]) -> str:
    """A run's ``setting`` string restricted to the keys its paper table uses."""
    values = {}
    for key in keys:
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            values[key] = _format_key(value)
    return setting_key(**values)


def _table_keys(reported: pd.DataFrame) -> list[str]:
    return sorted({k for s in reported["setting"] for k in parse_setting(s)})


def our_points(runs: pd.DataFrame, samples: pd.DataFrame | None, table: PaperTable, keys: list[str]) -> pd.DataFrame:
    """Per (model, method label, task, setting): accuracy, throughput under each count, memory."""
    mine = runs[runs["experiment"] == table.experiment]
    if mine.empty:
        return pd.DataFrame()
    if "seq_len" in keys:
        if samples is None or samples.empty:
            return pd.DataFrame()
        chosen = samples[samples["run_dir"].isin(mine["run_dir"]) & samples["target_len"].notna()]
        if chosen.empty:
            return pd.DataFrame()
        grouped = measure_groups(chosen, ["run_dir", "target_len"])
        points = grouped.merge(mine[["run_dir", "model", "label", "task"]], on="run_dir")
        points["seq_len"] = points["target_len"].astype(int)
        points["accuracy"] = None
    else:
        points = mine.copy()
    points = points.copy()
    points["setting"] = [point_setting(r, keys) for _, r in points.iterrows()]
    return points


def _same_task(points: pd.DataFrame, task: str) -> pd.Series:
    return points["task"].notna() if task == ANY_TASK else points["task"] == task


def _baseline(points: pd.DataFrame, row: pd.Series) -> pd.DataFrame | None:
    """Our vanilla runs at the same point, the method's own keys (a threshold) left out."""
    base_setting = {k: v for k, v in parse_setting(row["setting"]).items() if k not in METHOD_KEYS}
    same = points[(points["model"] == row["model"]) & _same_task(points, row["task"]) & (points["label"] == "vanilla")]
    same = same[[parse_setting(s) == base_setting for s in same["setting"]]]
    return None if same.empty else same


def our_value(points: pd.DataFrame, row: pd.Series, metric: str, definition: str, label: str | None = None) -> float | None:
    """Our number for one reported cell (our ``label`` for the paper's method); None without a run."""
    if points.empty:
        return None
    match = points[
        (points["model"] == row["model"])
        & (points["label"] == (label or row["method"]))
        & _same_task(points, row["task"])
        & (points["setting"] == row["setting"])
    ]
    if match.empty:
        return None
    throughput = f"throughput_{definition or 'all_positions'}"
    if metric == "accuracy":
        return _mean(match, "accuracy")
    if metric == "throughput":
        return _mean(match, throughput)
    if metric == "peak_memory":
        return _mean(match, "peak_memory_gib")
    if metric == "tokens_per_step":
        nfe = _mean(match, "nfe_per_token")
        return 1 / nfe if nfe else None
    base = _baseline(points, row)
    if base is None:
        return None
    column = throughput if metric == "speedup" else "peak_memory_gib"
    ours, reference = _mean(match, column), _mean(base, column)
    return ours / reference if ours is not None and reference else None


def _combined(points: pd.DataFrame | None, column: str) -> float | None:
    """The standard error of a mean over runs from each run's (sqrt of the summed squares over k)."""
    if points is None or column not in points.columns:
        return None
    errors = pd.to_numeric(points[column], errors="coerce").dropna()
    return math.sqrt(float((errors**2).sum())) / len(errors) if len(errors) else None


# the bootstrap relative standard error behind each metric's interval (throughput: per token count)
INTERVAL_COLUMNS = {
    "tokens_per_step": "tokens_per_step_rse",
    "peak_memory": "peak_memory_gib_rse",
    "memory_ratio": "peak_memory_gib_rse",
}


def our_ci95(
    points: pd.DataFrame, row: pd.Series, metric: str, definition: str = "", label: str | None = None
) -> float | None:
    """Half-width of the 95% interval of our number for one reported cell: accuracy from the per-sample
    scores' standard error; throughput, tokens per step and peak memory from a bootstrap over batches
    (speed-up and memory ratio combine their two runs' relative errors). None where nothing supports one."""
    if points.empty:
        return None
    match = points[
        (points["model"] == row["model"])
        & (points["label"] == (label or row["method"]))
        & _same_task(points, row["task"])
        & (points["setting"] == row["setting"])
    ]
    if metric == "accuracy":
        error = _combined(match, "accuracy_se")
        return None if error is None else 1.96 * error
    column = INTERVAL_COLUMNS.get(metric) or f"throughput_{definition or 'all_positions'}_rse"
    value = our_value(points, row, metric, definition, label)
    if metric not in ("throughput", "speedup", *INTERVAL_COLUMNS) or value is None:
        return None
    relative = _combined(match, column)
    if metric in ("speedup", "memory_ratio"):  # a ratio of two runs: their relative errors combine
        base = _combined(_baseline(points, row), column)
        relative = None if relative is None or base is None else math.hypot(relative, base)
    return None if relative is None else 1.96 * relative * value


def _mean(points: pd.DataFrame, column: str) -> float | None:
    """Mean over the matching runs (several seeds or repeats), None when nothing was measured."""
    if column not in points.columns:
        return None
    values = pd.to_numeric(points[column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


def _number(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def verdict(
    metric: str, paper: float | None, ours: float | None, bands: Bands, ci95: float | None = None
) -> tuple[float | None, str]:
    """(difference, verdict): points for accuracy, ours/paper - 1 for ratios, ours/paper otherwise."""
    if paper is None:
        return None, "ours only" if ours is not None else "OOM"
    if ours is None:
        return None, "missing"
    if metric == "accuracy":
        difference = ours - paper
        return difference, "pass" if abs(difference) <= (ci95 or 0.0) + bands.accuracy_points else "fail"
    if metric in RATIOS:
        difference = ours / paper - 1
        widened = bands.ratio_relative + ((ci95 or 0.0) / ours if ours else 0.0)
        return difference, "pass" if abs(difference) <= widened else "fail"
    return ours / paper, "info"


def _average_accuracy(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill ours for the paper's ``avg`` column when we have every task of that row."""
    for index, row in frame[(frame["task"] == "avg") & (frame["metric"] == "accuracy")].iterrows():
        peers = frame[
            (frame["table"] == row["table"])
            & (frame["model"] == row["model"])
            & (frame["method"] == row["method"])
            & (frame["setting"] == row["setting"])
            & (frame["metric"] == "accuracy")
            & (frame["task"] != "avg")
        ]
        if len(peers) and peers["ours"].notna().all():
            frame.at[index, "ours"] = float(peers["ours"].mean())
            errors = pd.to_numeric(peers["ours_ci95"], errors="coerce")
            if errors.notna().all():
                frame.at[index, "ours_ci95"] = math.sqrt(float((errors**2).sum())) / len(errors)
    return frame


def compare(
    reported: pd.DataFrame,
    runs: pd.DataFrame,
    table: PaperTable,
    samples: pd.DataFrame | None = None,
    bands: Bands = DEFAULT_BANDS,
) -> pd.DataFrame:
    """The comparison rows of one paper table (``COMPARISON_COLUMNS``)."""
    paper_rows = reported[(reported["paper"] == table.paper) & reported["table"].isin(table.tables)]
    keys = _table_keys(paper_rows)
    points = our_points(runs, samples, table, keys)
    rows = []
    for _, row in paper_rows.iterrows():
        rows.append(
            {
                **{k: row[k] for k in ("table", "model", "task", "method", "setting", "metric", "unit", "note")},
                "paper": _number(row["value"]),
                "ours": our_value(points, row, row["metric"], row["throughput_definition"], table.our_label(row["method"])),
                "ours_ci95": our_ci95(points, row, row["metric"], row["throughput_definition"], table.our_label(row["method"])),
                "throughput_definition": row["throughput_definition"],
            }
        )
    frame = _average_accuracy(pd.DataFrame(rows, columns=[c for c in COMPARISON_COLUMNS if c not in ("difference", "verdict")]))
    frame = pd.concat([frame, _ours_only(points, paper_rows, table)], ignore_index=True)
    judged = [
        verdict(r["metric"], _number(r["paper"]), _number(r["ours"]), bands, _number(r["ours_ci95"]))
        for _, r in frame.iterrows()
    ]
    frame["difference"] = [d for d, _ in judged]
    frame["verdict"] = [v for _, v in judged]
    frame["_rank"] = [method_rank(m) for m in frame["method"]]
    frame = frame.sort_values(["table", "model", "task", "_rank", "setting", "metric"], kind="stable")
    return frame.drop(columns="_rank")[COMPARISON_COLUMNS].reset_index(drop=True)


def _ours_only(points: pd.DataFrame, paper_rows: pd.DataFrame, table: PaperTable) -> pd.DataFrame:
    """Rows for runs whose (model, method, task, setting) the paper does not print."""
    if points.empty:
        return pd.DataFrame()
    labels = [table.our_label(m) for m in paper_rows["method"]]
    printed = set(zip(paper_rows["model"], labels, paper_rows["task"], paper_rows["setting"], strict=True))
    printed |= {(m, label, ANY_TASK, s) for m, label, s in zip(paper_rows["model"], labels, paper_rows["setting"],
                                                                 strict=True)}
    tables = paper_rows.groupby("model")["table"].first().to_dict()
    definitions = paper_rows[paper_rows["throughput_definition"] != ""].groupby("model")["throughput_definition"].first()
    rows = []
    for _, point in points.iterrows():
        if {(point["model"], point["label"], task, point["setting"]) for task in (point["task"], ANY_TASK)} & printed:
            continue
        definition = definitions.get(point["model"], "all_positions")
        for metric in ("accuracy", "throughput", "speedup"):
            fake_row = pd.Series({"model": point["model"], "method": point["label"], "task": point["task"],
                                  "setting": point["setting"]})
            value = our_value(points, fake_row, metric, definition)
            if value is None:
                continue
            rows.append(
                {
                    "table": tables.get(point["model"], table.tables[0]),
                    "model": point["model"],
                    "task": point["task"],
                    "method": point["label"],
                    "setting": point["setting"],
                    "metric": metric,
                    "unit": UNITS[metric],
                    "paper": None,
                    "ours": value,
                    "ours_ci95": our_ci95(points, fake_row, metric, definition),
                    "throughput_definition": definition if metric != "accuracy" else "",
                    "note": "not in the paper",
                }
            )
    return pd.DataFrame(rows)
