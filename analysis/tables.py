"""Per paper table: our value beside the paper's, the difference and a pass/fail verdict.

Writes ``<experiment>.md``, ``<experiment>.tex`` and ``<experiment>.csv`` per table of
``catalog.PAPER_TABLES`` plus an ``index.md``:

    python -m analysis.tables --results results/runs --out results/tables [--experiment NAME]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from .catalog import BY_EXPERIMENT, PAPER_TABLES, PaperTable, method_rank
from .compare import DEFAULT_BANDS, RATIOS, Bands, compare
from .reported import REPORTED_DIR, load_reported
from .store import load_runs, load_samples

REPO_ROOT = REPORTED_DIR.parents[1]

VERDICTS = ("pass", "fail", "missing", "ours only", "info", "OOM")
DEFINITIONS = {
    "all_positions": "every generated position, EOS included",
    "answer": "answer tokens after the stop strings, minus EOS",
    "non_eos": "generated tokens that are not EOS",
    "before_eos": "positions before the first EOS",
}
HEADER = ["task", "method", "setting", "metric", "paper", "ours", "difference", "verdict"]


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_value(value: object, metric: str) -> str:
    if _missing(value):
        return "—"
    return f"{value:.2f}×" if metric in ("speedup", "memory_ratio") else f"{value:.2f}"


def fmt_difference(value: object, metric: str) -> str:
    if _missing(value):
        return ""
    if metric == "accuracy":
        return f"{value:+.2f} pt"
    if metric in RATIOS:
        return f"{value:+.0%}"
    return f"{value:.2f}× paper"


def fmt_ours(row: pd.Series) -> str:
    """Our value, with its 95% interval where there is one."""
    text = fmt_value(row["ours"], row["metric"])
    interval = row.get("ours_ci95")
    return text if _missing(interval) or _missing(row["ours"]) else f"{text} ± {interval:.2f}"


def display_rows(frame: pd.DataFrame) -> list[list[str]]:
    return [
        [
            r["task"],
            r["method"],
            r["setting"] or "",
            f"{r['metric']} ({r['unit']})",
            fmt_value(r["paper"], r["metric"]),
            fmt_ours(r),
            fmt_difference(r["difference"], r["metric"]),
            r["verdict"],
        ]
        for _, r in frame.iterrows()
    ]


def verdict_counts(frame: pd.DataFrame) -> str:
    counts = frame["verdict"].value_counts()
    return ", ".join(f"{v}: {int(counts[v])}" for v in VERDICTS if v in counts)


def _definitions_used(frame: pd.DataFrame) -> list[str]:
    used = sorted({d for d in frame["throughput_definition"] if d})
    return [f"`{d}` ({DEFINITIONS.get(d, d)})" for d in used]


def markdown(
    frame: pd.DataFrame,
    table: PaperTable,
    runs: int,
    bands: Bands,
    banner: str | None,
    task_order: list[str] | None = None,
) -> str:
    lines = [f"# {table.title}", ""]
    if banner:
        lines += [f"> **{banner}**", ""]
    lines += [
        f"Experiment `{table.experiment}` · {runs} run(s) · {verdict_counts(frame)}",
        "",
        bands.describe(),
        "",
        "Throughput = tokens / synchronized generation time, counting " + "; ".join(_definitions_used(frame)) + ".",
        "",
    ]
    for (paper_table, model), part in frame.groupby(["table", "model"], sort=False):
        lines += [f"## Table {paper_table} · {model}", ""]
        lines += paper_layout(part, table, task_order) + ["", "Every number:", ""]
        lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in display_rows(part)]
        lines.append("")
    return "\n".join(lines)


METRIC_ORDER = ("accuracy", "throughput", "speedup", "tokens_per_step", "peak_memory", "memory_ratio")
MARKS = {"pass": "✓", "fail": "✗", "missing": "", "ours only": "", "info": "", "OOM": ""}


def _cell(rows: pd.DataFrame, metrics: list[str]) -> list[str]:
    """One cell of the paper's grid, a line per metric of the grid (in its order; ``·`` where this cell
    has none): ours (± 95%) / the paper's and the verdict mark."""
    lines = []
    for metric in metrics:
        chosen = rows[rows["metric"] == metric]
        if chosen.empty:
            lines.append("·")
            continue
        r = chosen.iloc[0]
        paper = fmt_value(r["paper"], r["metric"])
        ours = fmt_ours(r) if not _missing(r["ours"]) else ("OOM" if r["verdict"] == "OOM" else "—")
        mark = MARKS.get(r["verdict"], "")
        lines.append(f"{ours} / {paper}{(' ' + mark) if mark else ''}")
    return lines


def _metric_rank(metric: str) -> int:
    return METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER)


def paper_grid(
    part: pd.DataFrame, table: PaperTable, task_order: list[str] | None = None
) -> tuple[list[str], list[str], list[list[list[str]]]]:
    """The paper's grid: methods as columns and (task, setting) as rows, or the transpose
    (``PaperTable.rows``), as the paper prints it. Returns (metrics, header, rows of cells, each a
    list of lines). Tasks keep the paper's order (``task_order``: as transcribed), methods the
    papers' row order."""
    rows_key, columns_key = ("task", "method") if table.rows == "task" else ("method", "task")
    order = {task: i for i, task in enumerate(task_order or [])}

    def rank(key: str, value: str) -> tuple:
        return method_rank(value) if key == "method" else (order.get(value, len(order)), value)

    columns = sorted(dict.fromkeys(part[columns_key]), key=lambda value: rank(columns_key, value))
    row_names = list(dict.fromkeys(zip(part[rows_key], part["setting"].fillna(""), strict=True)))
    row_names.sort(key=lambda name: rank(rows_key, name[0]))
    metrics = sorted(set(part["metric"]), key=_metric_rank)
    rows = []
    for name, setting in row_names:
        mine = part[(part[rows_key] == name) & (part["setting"].fillna("") == setting)]
        rows.append([[name], [setting], *(_cell(mine[mine[columns_key] == column], metrics) for column in columns)])
    return metrics, [rows_key, "setting", *columns], rows


GRID_NOTE = "Ours / paper; ours as value ± 95% interval; ✓ pass, ✗ fail. Lines per cell: {}."
GRID_NOTE_TEX = "Ours / paper; ours as value ± 95% interval, then the verdict (pass or fail). Lines per cell: {}."


def paper_layout(part: pd.DataFrame, table: PaperTable, task_order: list[str] | None = None) -> list[str]:
    """The paper's grid as Markdown (a cell's lines joined by ``<br>``)."""
    metrics, header, rows = paper_grid(part, table, task_order)
    lines = [GRID_NOTE.format(", ".join(metrics)), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join("<br>".join(cell).replace("|", "\\|") for cell in row) + " |")
    return lines


def paper_layout_tex(part: pd.DataFrame, table: PaperTable, caption: str, task_order: list[str] | None = None) -> list[str]:
    """The paper's grid as a ``table`` (a cell's lines stacked with ``\\shortstack``)."""
    metrics, header, rows = paper_grid(part, table, task_order)

    def cell(lines: list[str]) -> str:
        texts = [_tex(line) for line in lines]
        return texts[0] if len(texts) == 1 else r"\shortstack[l]{" + r"\\".join(texts) + "}"

    out = [r"\begin{table}[htbp]", r"\centering", r"\small",
           rf"\caption{{{_tex(caption)} {_tex(GRID_NOTE_TEX.format(', '.join(metrics)))}}}",
           FIT_WIDTH, r"\begin{tabular}{" + "l" * len(header) + "}", r"\toprule",
           " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    out += [" & ".join(cell(c) for c in row) + r" \\" for row in rows]
    return [*out, r"\bottomrule", r"\end{tabular}}}", r"\end{table}", ""]


# a grid wider than the text, or taller than most of a page, is scaled down to fit (graphicx), never up
FIT_WIDTH = (
    r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"
    "\n"
    r"\resizebox*{!}{\ifdim\totalheight>0.8\textheight0.8\textheight\else\totalheight\fi}{%"
)
# the long form breaks across pages, so it cannot be scaled: smaller type and columns closer together
COMPACT = r"\footnotesize\setlength{\tabcolsep}{3pt}"
TEX_PACKAGES = ("booktabs", "longtable", "graphicx")
TEX_NEEDS = (
    r"% needs \usepackage{" + ",".join(TEX_PACKAGES) + "}; the grids fit any page, the long form (a longtable, "
    "which cannot be scaled) is wide: a landscape page (pdflscape) or narrow margins hold it"
)


TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "×": r"$\times$", "—": "--",
               "±": r"$\pm$", "✓": "pass", "✗": "fail", "·": "."}


def _tex(text: str) -> str:
    return "".join(TEX_ESCAPES.get(char, char) for char in text)


def latex(
    frame: pd.DataFrame, table: PaperTable, bands: Bands, banner: str | None, task_order: list[str] | None = None
) -> str:
    """Per (paper table, model) the paper's grid, then every number in a ``longtable`` (``TEX_PACKAGES``)."""
    out = [f"% {table.title} (experiment {table.experiment}); {bands.describe()}", TEX_NEEDS]
    if banner:
        out.append(f"% {banner}")
    for (paper_table, model), part in frame.groupby(["table", "model"], sort=False):
        caption = f"{table.title}: table {paper_table}, {model}. Ours beside the paper's. {bands.describe()}"
        if banner:
            caption = f"{banner}. {caption}"
        out += paper_layout_tex(part, table, caption, task_order)
        out += [
            r"\begingroup" + COMPACT,
            r"\begin{longtable}{" + "l" * 4 + "rrrl" + "}",
            rf"\caption{{{_tex(caption)}}}\\",
            r"\toprule",
            " & ".join(_tex(h) for h in HEADER) + r" \\",
            r"\midrule",
            r"\endhead",
        ]
        out += [" & ".join(_tex(cell) for cell in row) + r" \\" for row in display_rows(part)]
        out += [r"\bottomrule", r"\end{longtable}", r"\endgroup", ""]
    return "\n".join(out)


RUN_HEADER = ["model", "task", "method", "setting", "samples", "accuracy (%)", "tok/s (all positions)",
              "tok/s (before EOS)", "peak GiB", "NFE/token"]
SETTING_COLUMNS = ["batch_size", "gen_length", "steps", "block_length", "threshold", "rope_scaling"]


def run_rows(runs: pd.DataFrame, bands: Bands) -> pd.DataFrame:
    """One row per run of a non-paper experiment (a sweep, the batch-size axis, long context).

    The settings that vary within the experiment name each point. When ``batch_size`` varies,
    each run's accuracy is checked against the batch-1 run of the same method (``batch check``):
    padding is masked, so accuracy must stay within the accuracy band.
    """
    def varies(column: str) -> bool:  # within one method: what tells its runs apart
        return bool((runs.groupby("label")[column].nunique(dropna=False) > 1).any())

    varying = [c for c in SETTING_COLUMNS if varies(c)]
    options = sorted(c for c in runs.columns
                     if c.startswith("opt_") and c.removeprefix("opt_") not in SETTING_COLUMNS and varies(c))
    frame = runs.assign(
        setting=[
            ";".join(f"{c.removeprefix('opt_')}={_plain(r[c])}" for c in varying + options if not _missing(r[c]))
            for _, r in runs.iterrows()
        ]
    )
    if "batch_size" in varying:
        frame["batch_check"] = [_batch_check(frame, r, bands) for _, r in frame.iterrows()]
    return frame.sort_values(["model", "task", "label", "setting"]).reset_index(drop=True)


def _batch_check(frame: pd.DataFrame, row: pd.Series, bands: Bands) -> str:
    same = frame[(frame["model"] == row["model"]) & (frame["task"] == row["task"]) & (frame["label"] == row["label"])
                 & (frame["batch_size"] == 1)]
    for column in ("threshold", "gen_length", "block_length", "steps"):
        same = same[[_same(value, row[column]) for value in same[column]]]
    if same.empty or _missing(row["accuracy"]) or _missing(same["accuracy"].iloc[0]):
        return "no batch-1 run"
    difference = row["accuracy"] - float(same["accuracy"].iloc[0])
    verdict = "pass" if abs(difference) <= bands.accuracy_points else "fail"
    return f"{difference:+.2f} pt vs batch 1: {verdict}"


def _plain(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _same(a: object, b: object) -> bool:
    return (_missing(a) and _missing(b)) or a == b


def _run_cells(row: pd.Series) -> list[str]:
    def number(value: object, spec: str = ".2f") -> str:
        return "—" if _missing(value) else format(value, spec)

    cells = [row["model"], row["task"], row["label"], row["setting"], str(int(row["samples"])), number(row["accuracy"]),
             number(row["throughput_all_positions"]), number(row["throughput_before_eos"]), number(row["peak_memory_gib"]),
             number(row["nfe_per_token"], ".3f")]
    return cells + ([row["batch_check"]] if "batch_check" in row else [])


def run_markdown(frame: pd.DataFrame, experiment: str, bands: Bands, banner: str | None) -> str:
    header = RUN_HEADER + (["batch check"] if "batch_check" in frame.columns else [])
    lines = [f"# Experiment `{experiment}`", ""]
    if banner:
        lines += [f"> **{banner}**", ""]
    lines += [f"{len(frame)} run(s). Throughput = tokens / synchronized generation time (warm-up batch excluded).", ""]
    if "batch_check" in frame.columns:
        lines += [f"Batch check: accuracy within {bands.accuracy_points:g} points of the same method at batch 1.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in _run_cells(r)) + " |" for _, r in frame.iterrows()]
    return "\n".join(lines) + "\n"


def run_latex(frame: pd.DataFrame, experiment: str, banner: str | None) -> str:
    header = RUN_HEADER + (["batch check"] if "batch_check" in frame.columns else [])
    caption = f"Experiment {experiment}" + (f". {banner}" if banner else "")
    out = [TEX_NEEDS, r"\begingroup" + COMPACT,
           r"\begin{longtable}{" + "l" * 4 + "r" * 6 + ("l" if "batch_check" in frame.columns else "") + "}",
           rf"\caption{{{_tex(caption)}}}\\", r"\toprule", " & ".join(_tex(h) for h in header) + r" \\",
           r"\midrule", r"\endhead"]
    out += [" & ".join(_tex(c) for c in _run_cells(r)) + r" \\" for _, r in frame.iterrows()]
    return "\n".join([*out, r"\bottomrule", r"\end{longtable}", r"\endgroup", ""])


def write_tables(
    results: Path,
    out: Path,
    experiments: list[str] | None = None,
    bands: Bands = DEFAULT_BANDS,
    banner: str | None = None,
    reported_dir: Path = REPORTED_DIR,
) -> list[Path]:
    """Every requested paper table under ``out``; returns the Markdown paths."""
    reported = load_reported(reported_dir)
    runs = load_runs(results)
    samples = load_samples(results)
    out.mkdir(parents=True, exist_ok=True)
    written, index = [], [f"# Paper tables: ours beside the papers' ({_shown(results)})", ""]
    if banner:
        index += [f"> **{banner}**", ""]
    index += ["| table | runs | verdicts |", "|---|---|---|"]
    for table in _select(experiments):
        frame = compare(reported, runs, table, samples, bands)
        count = int((runs["experiment"] == table.experiment).sum()) if not runs.empty else 0
        printed = reported[(reported["paper"] == table.paper) & reported["table"].isin(table.tables)]
        task_order = list(dict.fromkeys(printed["task"]))
        (out / f"{table.experiment}.md").write_text(markdown(frame, table, count, bands, banner, task_order))
        (out / f"{table.experiment}.tex").write_text(latex(frame, table, bands, banner, task_order))
        frame.to_csv(out / f"{table.experiment}.csv", index=False)
        written.append(out / f"{table.experiment}.md")
        index.append(f"| [{table.title}]({table.experiment}.md) | {count} | {verdict_counts(frame)} |")
    others = [] if runs.empty or experiments else sorted(set(runs["experiment"]) - set(BY_EXPERIMENT))
    if others:
        index += ["", "| other experiment | runs |", "|---|---|"]
    for experiment in others:
        frame = run_rows(runs[runs["experiment"] == experiment], bands)
        (out / f"{experiment}.md").write_text(run_markdown(frame, experiment, bands, banner))
        (out / f"{experiment}.tex").write_text(run_latex(frame, experiment, banner))
        frame.drop(columns=[c for c in frame.columns if c.startswith("stat_")]).to_csv(out / f"{experiment}.csv", index=False)
        written.append(out / f"{experiment}.md")
        index.append(f"| [{experiment}]({experiment}.md) | {len(frame)} |")
    (out / "index.md").write_text("\n".join(index) + "\n")
    return written


def _shown(path: Path) -> str:
    """A store path as the reader of a committed table should see it: relative to the repository."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


def _select(experiments: list[str] | None) -> list[PaperTable]:
    if not experiments:
        return list(PAPER_TABLES)
    unknown = [e for e in experiments if e not in BY_EXPERIMENT]
    if unknown:
        raise ValueError(f"unknown paper table(s) {unknown}; known: {sorted(BY_EXPERIMENT)}")
    return [BY_EXPERIMENT[e] for e in experiments]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/runs"), help="results store root")
    parser.add_argument("--out", type=Path, default=Path("results/tables"))
    parser.add_argument("--experiment", action="append", help="one paper table (repeatable); default: all")
    parser.add_argument("--accuracy-band", type=float, default=Bands.accuracy_points, help="points")
    parser.add_argument("--ratio-band", type=float, default=Bands.ratio_relative, help="relative, 0.2 = 20%%")
    parser.add_argument("--banner", help="a line printed on top of every table (e.g. smoke output)")
    args = parser.parse_args(argv)
    bands = Bands(args.accuracy_band, args.ratio_band)
    for path in write_tables(args.results, args.out, args.experiment, bands, args.banner):
        print(path)


if __name__ == "__main__":
    main()
