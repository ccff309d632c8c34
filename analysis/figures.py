"""Figures from the results store, PNG and PDF, each readable without the code:

- ``pareto_<model>_<task>``: accuracy against throughput, every method and sweep point, with
  the Pareto front;
- ``length_<experiment>_<model>``: throughput and peak memory against sequence length (the
  layout of Sparse-dLLM's Fig. 5), the paper's curves dashed beside ours;
- ``heatmap_<experiment>_<model>_<task>``: long-context accuracy by context length and needle depth;
- ``recompute_<model>``: the fraction of token rows each layer recomputes, for the reuse methods.

    python -m analysis.figures --results results/runs --out results/figures
"""

from __future__ import annotations

import argparse
import math
import re
import textwrap
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator, NullFormatter

from .catalog import BY_EXPERIMENT, METHOD_ORDER, PaperTable, method_rank
from .reported import REPORTED_DIR, load_reported, parse_setting
from .store import load_runs, load_samples, measure_groups

DEFINITION_TEXT = {
    "all_positions": "all generated positions",
    "answer": "answer tokens",
    "non_eos": "non-EOS tokens",
    "before_eos": "tokens before EOS",
}
PER_LAYER = re.compile(r"stat_recompute_fraction_layer_(\d+)$")
WHOLE_MODEL = ("stat_recompute_fraction", "stat_salient_fraction_mean")
PALETTE = (
    *plt.get_cmap("tab10").colors,
    *plt.get_cmap("Dark2").colors,
    *plt.get_cmap("Set1").colors,
    *plt.get_cmap("tab20b").colors,
)
METHOD_CONF = Path(__file__).resolve().parents[1] / "conf" / "method"


def method_labels() -> list[str]:
    """Every method label in a fixed order: the catalog's, then each other preset in conf/method by name.
    Taken from the presets, so a new method gets a colour of its own without being listed anywhere."""
    presets = sorted(p.stem for p in METHOD_CONF.glob("*.yaml"))
    return [*METHOD_ORDER, *(p for p in presets if p not in METHOD_ORDER)]


def color(label: str) -> tuple:
    """One colour per method, the same in every figure and distinct from every other method's; a sweep
    point labelled ``<method> <setting>=<value>`` takes its method's colour."""
    method = label.split(" ", 1)[0]
    labels = method_labels()
    index = labels.index(method) if method in labels else len(labels) + sum(map(ord, method))
    return PALETTE[index % len(PALETTE)]


def save(fig: plt.Figure, out: Path, name: str, banner: str | None) -> list[Path]:
    if banner:
        fig.text(0.5, 0.005, textwrap.fill(banner, 110), ha="center", va="bottom", fontsize=7, color="firebrick")
    fig.tight_layout(rect=(0, 0.05 if banner else 0, 1, 1))
    return _write(fig, out, name)


def _write(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """PNG (for people) and PDF (for papers), then free the figure."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    # no creation date or version stamp: the same data gives byte-identical files
    fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None, "Producer": None, "Creator": None})
    plt.close(fig)
    return paths


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The points no other point beats on both ``x`` and ``y`` (higher is better), by ``x``."""
    ordered = points.sort_values([x, y], ascending=[False, False])
    front, best = [], -math.inf
    for index, row in ordered.iterrows():
        if row[y] > best:
            front.append(index)
            best = row[y]
    return points.loc[front].sort_values(x)


SHORT_NAMES = {"threshold": "τ", "tokens_per_step": "tok/step", "block_length": "block", "gen_length": "gen"}


def _point_note(row: pd.Series, varying: list[str]) -> str:
    """The settings that tell this point apart from the same method's other points."""
    parts = []
    for key in varying:
        value = row[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        name = SHORT_NAMES.get(key, key.removeprefix("opt_"))
        parts.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts)


def _varying(points: pd.DataFrame) -> list[str]:
    candidates = [*SHORT_NAMES, *sorted(c for c in points.columns if c.startswith("opt_"))]
    return [c for c in candidates if c in points.columns and points[c].nunique(dropna=False) > 1]


MARKERS = "os^vDPX*hp<>"


def pareto_figures(runs: pd.DataFrame, out: Path, banner: str | None, definition: str = "all_positions") -> list[Path]:
    """One figure per experiment, model and task, so a front never mixes settings of different
    experiments (shots, prompts, lengths). Colour = method; error bars are 95% intervals (accuracy: 1.96
    standard errors of the per-sample scores, clipped to 0-100; throughput: bootstrap over batches); the
    front's points are ringed and named."""
    column = f"throughput_{definition}"
    usable = runs.dropna(subset=["accuracy", column]) if not runs.empty else runs
    paths = []
    for (experiment, model, task), group in usable.groupby(["experiment", "model", "task"]):
        fig, ax = plt.subplots(figsize=(8, 5.2))
        marker = {experiment: MARKERS[0]}
        for label, mine in group.groupby("label"):
            half = 1.96 * pd.to_numeric(mine.get("accuracy_se"), errors="coerce").fillna(0.0)
            below, above = half.clip(upper=mine["accuracy"]), half.clip(upper=100 - mine["accuracy"])  # within 0-100
            rse = pd.to_numeric(mine.get(f"{column}_rse"), errors="coerce").fillna(0.0)
            ax.errorbar(mine[column], mine["accuracy"], yerr=[below, above], xerr=1.96 * rse * mine[column], fmt="none",
                        ecolor=color(label), elinewidth=1, capsize=3, zorder=2.5)
            ax.scatter(mine[column], mine["accuracy"], s=46, color=color(label), marker=marker[experiment], zorder=3,
                       edgecolor="black", linewidth=0.4)
        front = pareto_front(group, column, "accuracy")
        ax.plot(front[column], front["accuracy"], color="black", linestyle="--", linewidth=1, marker="o",
                markersize=14, markerfacecolor="none", zorder=2)
        middle = (group[column].min() + group[column].max()) / 2
        for _, row in front.iterrows():
            same = group[(group["label"] == row["label"]) & (group["experiment"] == row["experiment"])]
            note = textwrap.shorten(", ".join(p for p in (row["label"], _point_note(row, _varying(same))) if p), 60)
            right = row[column] >= middle
            ax.annotate(note, (row[column], row["accuracy"]), textcoords="offset points", xytext=(-8 if right else 8, 8),
                        ha="right" if right else "left", fontsize=7, color="dimgray")
        spread = group[column].max() / max(group[column].min(), 1e-9)
        if spread > 30:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        if group["accuracy"].max() - group["accuracy"].min() < 1:  # one accuracy for all: show the whole scale
            ax.set_ylim(-2, 102)
        ax.set_xlabel(f"throughput (tokens/s, {DEFINITION_TEXT[definition]})")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{experiment}: {model} · {task}, accuracy (95% interval) vs throughput ({len(group)} runs)")
        ax.grid(alpha=0.3)
        _pareto_legends(ax, sorted(group["label"].unique(), key=method_rank), marker)
        paths += save(fig, out, f"pareto_{experiment}_{model}_{task}", banner)
    return paths


def _pareto_legends(ax: plt.Axes, labels: list[str], marker: dict[str, str]) -> None:
    """One legend outside the axes: colours are methods, shapes are experiments."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="", marker="o", color=color(label), markeredgecolor="black", label=label)
               for label in labels]
    handles.append(Line2D([], [], linestyle="--", marker="o", color="black", markerfacecolor="none", markersize=10,
                          label="Pareto front"))
    handles += [Line2D([], [], linestyle="", marker=m, color="gray", label=f"experiment: {e}") for e, m in marker.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def length_points(samples: pd.DataFrame) -> pd.DataFrame:
    """Throughput (every count) and mean peak memory per run and context length."""
    if samples.empty or samples["target_len"].isna().all():
        return pd.DataFrame()
    chosen = samples[samples["target_len"].notna() & (samples["status"] == "ok")]
    grouped = measure_groups(chosen, ["run_dir", "target_len"])
    labels = chosen.drop_duplicates("run_dir")[["run_dir", "experiment", "model", "label", "rope_scaling"]]
    return grouped.merge(labels, on="run_dir")


def length_figures(samples: pd.DataFrame, reported: pd.DataFrame | None, out: Path, banner: str | None) -> list[Path]:
    """One figure per (experiment, model); Sparse-dLLM Fig. 5's curves beside its reproduction."""
    points = length_points(samples)
    if points.empty:
        return []
    paths = []
    for (experiment, model), group in points.groupby(["experiment", "model"]):
        fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.4))
        for (label, scaling), mine in sorted(group.groupby(["label", "rope_scaling"]), key=lambda kv: method_rank(kv[0][0])):
            mine = mine.groupby("target_len").mean(numeric_only=True).reset_index()
            name = label + ("" if scaling == 1.0 else f", RoPE θ×{scaling:g}") + " (ours)"
            rse = mine["throughput_all_positions_rse"] if "throughput_all_positions_rse" in mine else None
            errors = None if rse is None else (1.96 * rse * mine["throughput_all_positions"]).fillna(0.0)
            speed.errorbar(mine["target_len"], mine["throughput_all_positions"], yerr=errors, marker="o", capsize=3,
                           color=color(label), label=name)  # 95% interval: bootstrap over batches
            if mine["peak_memory_gib"].notna().any():
                memory.plot(mine["target_len"], mine["peak_memory_gib"], marker="o", color=color(label), label=name)
        table = BY_EXPERIMENT.get(experiment)
        paper = None
        if reported is not None and table is not None and "fig5" in table.tables and table.paper == "sparse_dllm":
            paper = reported[(reported["paper"] == "sparse_dllm") & (reported["table"] == "fig5") & (reported["model"] == model)]
            _paper_lengths(paper, table, speed, memory)
        if not group["peak_memory_gib"].notna().any():
            memory.text(0.98, 0.02, "our peak memory not measured (no CUDA device)", ha="right", va="bottom",
                        transform=memory.transAxes, color="dimgray", fontsize=8)
        speed.set_ylabel("throughput (tokens/s, all generated positions)")
        memory.set_ylabel("peak GPU memory allocated (GiB)")
        for ax, what in ((speed, "throughput"), (memory, "peak memory")):
            ax.set_xlabel("sequence length (prompt + generation, tokens)")
            ax.set_title(f"{model}: {what} vs sequence length")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        if paper is not None and len(paper):
            speed.set_yscale("log")
        fig.suptitle(f"experiment {experiment}", fontsize=9)
        paths += save(fig, out, f"length_{experiment}_{model}", banner)
    return paths


def _paper_lengths(paper: pd.DataFrame, table: PaperTable, speed: plt.Axes, memory: plt.Axes) -> None:
    """The paper's curves, dashed, in the colour of our stand-in for each method; OOM points left out."""
    paper = paper.assign(seq_len=[int(parse_setting(s)["seq_len"]) for s in paper["setting"]]).dropna(subset=["value"])
    for (method, metric), part in paper.groupby(["method", "metric"]):
        ax = speed if metric == "throughput" else memory
        part = part.sort_values("seq_len")
        label = table.our_label(method)
        ax.plot(part["seq_len"], part["value"], linestyle="--", marker="x", color=color(label), alpha=0.8,
                label=f"{label} (paper{'' if label == method else ': ' + method}, RTX 4090)")


def heatmap_figures(samples: pd.DataFrame, out: Path, banner: str | None) -> list[Path]:
    if samples.empty or samples["depth"].isna().all():
        return []
    chosen = samples.dropna(subset=["depth", "target_len", "score"])
    paths = []
    for (experiment, model, task), group in chosen.groupby(["experiment", "model", "task"]):
        if group["depth"].nunique() < 2:  # a speed run at one depth (Sparse-dLLM Fig. 5) is no heat map
            continue
        panels = sorted(group.groupby(["label", "rope_scaling"]).groups, key=lambda k: (method_rank(k[0]), k[1]))
        columns = min(3, len(panels))
        rows = math.ceil(len(panels) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.6 * rows), squeeze=False,
                                 layout="constrained")
        image = None
        for ax, (label, scaling) in zip(axes.flat, panels, strict=False):
            part = group[(group["label"] == label) & (group["rope_scaling"] == scaling)]
            grid = part.pivot_table(index="target_len", columns="depth", values="score", aggfunc="mean")
            image = ax.imshow(grid.values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto", origin="lower")
            ax.set_xticks(range(len(grid.columns)), [f"{100 * d:.0f}" for d in grid.columns])
            ax.set_yticks(range(len(grid.index)), [str(int(n)) for n in grid.index])
            for (i, j), value in pd.DataFrame(grid.values).stack().items():
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7)
            ax.set_xlabel("needle depth (% of context)")
            if ax in axes[:, 0]:
                ax.set_ylabel("context length (tokens)")
            ax.set_title(label + ("" if scaling == 1.0 else f" (RoPE θ×{scaling:g})"), fontsize=9)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.colorbar(image, ax=axes, label="accuracy (%)", shrink=0.8)
        fig.suptitle(f"{model} · {task}: long-context accuracy by length and needle depth ({experiment})")
        paths += _save_heatmap(fig, out, f"heatmap_{experiment}_{model}_{task}", banner)
    return paths


def _save_heatmap(fig: plt.Figure, out: Path, name: str, banner: str | None) -> list[Path]:
    """Like ``save`` for a constrained layout (tight_layout cannot place a shared colour bar)."""
    if banner:
        fig.supxlabel(textwrap.fill(banner, 110), fontsize=7, color="firebrick")
    return _write(fig, out, name)


def recompute_figures(runs: pd.DataFrame, out: Path, banner: str | None) -> list[Path]:
    """Per layer where the method records ``recompute_fraction_layer_<i>``; else one bar per method
    from its whole-model ``recompute_fraction`` (dLLM-Cache) or ``salient_fraction_mean`` (DyLLM)."""
    if runs.empty:
        return []
    layer_columns = sorted((c for c in runs.columns if PER_LAYER.match(c)), key=lambda c: int(PER_LAYER.match(c)[1]))
    whole = [c for c in WHOLE_MODEL if c in runs.columns]
    if not layer_columns and not whole:
        return []
    paths = []
    for model, group in runs.groupby("model"):
        reuse = group[group[layer_columns + whole].notna().any(axis=1)]
        if reuse.empty:
            continue
        labels = sorted(reuse["label"].unique(), key=method_rank)
        per_layer = {label: reuse[reuse["label"] == label][layer_columns].mean() for label in labels} if layer_columns else {}
        per_layer = {k: v for k, v in per_layer.items() if v.notna().any()}
        overall = {label: reuse[reuse["label"] == label][whole].mean().dropna() for label in labels}
        overall = {k: float(v.iloc[0]) for k, v in overall.items() if len(v) and k not in per_layer}
        fig, ax = plt.subplots(figsize=(7, 4.4))
        if per_layer:
            layers = [int(PER_LAYER.match(c)[1]) for c in layer_columns]
            for label, values in per_layer.items():
                ax.plot(layers, values.values, marker="o", color=color(label), label=label)
            for label, value in overall.items():
                ax.axhline(value, color=color(label), linestyle=":", label=f"{label}: all layers (per-layer not recorded)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("layer (0 = nearest the embedding)")
            ax.set_title(f"{model}: per-layer recompute fraction of the reuse methods")
            ax.legend(fontsize=8)
        else:
            names = list(overall)
            ax.bar(names, [overall[n] for n in names], color=[color(n) for n in names], edgecolor="black")
            for i, name in enumerate(names):
                ax.text(i, overall[name] + 0.02, f"{overall[name]:.2f}", ha="center", fontsize=8)
            ax.set_xlabel("method (these methods record the whole-model fraction, not per layer)")
            ax.set_title(f"{model}: recompute fraction of the reuse methods, all layers")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("fraction of token rows recomputed\n(mean over steps and samples)")
        ax.grid(alpha=0.3)
        paths += save(fig, out, f"recompute_{model}", banner)
    return paths


def write_figures(results: Path, out: Path, banner: str | None = None, reported_dir: Path = REPORTED_DIR) -> list[Path]:
    runs = load_runs(results)
    samples = load_samples(results)
    reported = load_reported(reported_dir)
    return [
        *pareto_figures(runs, out, banner),
        *length_figures(samples, reported, out, banner),
        *heatmap_figures(samples, out, banner),
        *recompute_figures(runs, out, banner),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/runs"), help="results store root")
    parser.add_argument("--out", type=Path, default=Path("results/figures"))
    parser.add_argument("--banner", help="a line printed under every figure (e.g. smoke output)")
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # files only, even where a display exists
    for path in write_figures(args.results, args.out, args.banner):
        print(path)


if __name__ == "__main__":
    main()
