"""Figures from the results store, PNG and PDF, each readable without the code:

- ``pareto_<model>_<task>``: accuracy against throughput, every method and sweep point, with
  the Pareto front;
- ``length_<model>``: throughput and peak memory against sequence length (the layout of
  Sparse-dLLM's Fig. 5), the paper's curves dashed beside ours;
- ``longctx_<model>_<task>``: long-context accuracy by context length and needle depth;
- ``recompute_<model>``: the fraction of token rows each layer recomputes, for the reuse methods.

    python -m analysis.figures --results results/runs --out results/figures
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .catalog import METHOD_ORDER, method_rank  # noqa: E402
from .reported import REPORTED_DIR, load_reported, parse_setting  # noqa: E402
from .store import load_runs, load_samples, measure_groups  # noqa: E402

DEFINITION_TEXT = {
    "all_positions": "all generated positions",
    "answer": "answer tokens",
    "non_eos": "non-EOS tokens",
    "before_eos": "tokens before EOS",
}
PER_LAYER = re.compile(r"stat_recompute_fraction_layer_(\d+)$")
WHOLE_MODEL = ("stat_recompute_fraction", "stat_salient_fraction_mean")
PALETTE = (*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors)


def color(label: str) -> tuple:
    """One colour per method label, the same in every figure."""
    index = METHOD_ORDER.index(label) if label in METHOD_ORDER else len(METHOD_ORDER) + sum(map(ord, label))
    return PALETTE[index % len(PALETTE)]


def save(fig: plt.Figure, out: Path, name: str, banner: str | None) -> list[Path]:
    if banner:
        fig.text(0.5, 0.005, banner, ha="center", va="bottom", fontsize=8, color="firebrick")
    fig.tight_layout(rect=(0, 0.03 if banner else 0, 1, 1))
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
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
    return [c for c in candidates if c in points.columns and points[c].astype(str).nunique() > 1]


def pareto_figures(runs: pd.DataFrame, out: Path, banner: str | None, definition: str = "all_positions") -> list[Path]:
    column = f"throughput_{definition}"
    usable = runs.dropna(subset=["accuracy", column]) if not runs.empty else runs
    paths = []
    for (model, task), group in usable.groupby(["model", "task"]):
        fig, ax = plt.subplots(figsize=(7, 4.8))
        for label in sorted(group["label"].unique(), key=method_rank):
            mine = group[group["label"] == label]
            ax.scatter(mine[column], mine["accuracy"], s=46, color=color(label), label=label, zorder=3,
                       edgecolor="black", linewidth=0.4)
            varying = _varying(mine)
            for _, row in mine.iterrows():
                note = _point_note(row, varying)
                if note:
                    ax.annotate(note, (row[column], row["accuracy"]), textcoords="offset points", xytext=(4, 4),
                                fontsize=7, color="dimgray")
        front = pareto_front(group, column, "accuracy")
        ax.plot(front[column], front["accuracy"], color="black", linestyle="--", linewidth=1, marker="o",
                markersize=13, markerfacecolor="none", label="Pareto front (no point is faster and more accurate)",
                zorder=2)
        spread = group[column].max() / max(group[column].min(), 1e-9)
        if spread > 10:
            ax.set_xscale("log")
        ax.set_xlabel(f"throughput (tokens/s, {DEFINITION_TEXT[definition]})")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{model} · {task}: accuracy vs throughput ({len(group)} runs)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        paths += save(fig, out, f"pareto_{model}_{task}", banner)
    return paths


def length_points(samples: pd.DataFrame) -> pd.DataFrame:
    """Throughput (all positions) and mean peak memory per run and context length."""
    if samples.empty or samples["target_len"].isna().all():
        return pd.DataFrame()
    chosen = samples[samples["target_len"].notna() & (samples["status"] == "ok")]
    grouped = measure_groups(chosen, ["run_dir", "target_len"])
    labels = chosen.drop_duplicates("run_dir")[["run_dir", "model", "label"]]
    return grouped.merge(labels, on="run_dir")


def length_figures(samples: pd.DataFrame, reported: pd.DataFrame | None, out: Path, banner: str | None) -> list[Path]:
    points = length_points(samples)
    if points.empty:
        return []
    paper = reported[(reported["paper"] == "sparse_dllm") & (reported["table"] == "fig5")] if reported is not None else None
    paths = []
    for model, group in points.groupby("model"):
        fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.4))
        for label in sorted(group["label"].unique(), key=method_rank):
            mine = group[group["label"] == label].groupby("target_len").mean(numeric_only=True).reset_index()
            speed.plot(mine["target_len"], mine["throughput_all_positions"], marker="o", color=color(label),
                       label=f"{label} (ours)")
            if mine["peak_memory_gib"].notna().any():
                memory.plot(mine["target_len"], mine["peak_memory_gib"], marker="o", color=color(label),
                            label=f"{label} (ours)")
        has_paper = paper is not None and (paper["model"] == model).any()
        if has_paper:
            _paper_lengths(paper[paper["model"] == model], speed, memory)
        if not group["peak_memory_gib"].notna().any():
            memory.text(0.5, 0.5, "peak memory not measured\n(no CUDA device in these runs)", ha="center",
                        va="center", transform=memory.transAxes, color="dimgray")
        speed.set_ylabel("throughput (tokens/s, all generated positions)")
        memory.set_ylabel("peak GPU memory allocated (GiB)")
        for ax, what in ((speed, "throughput"), (memory, "peak memory")):
            ax.set_xlabel("sequence length (prompt + generation, tokens)")
            ax.set_title(f"{model}: {what} vs sequence length")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        if has_paper:
            speed.set_yscale("log")
        paths += save(fig, out, f"length_{model}", banner)
    return paths


def _paper_lengths(paper: pd.DataFrame, speed: plt.Axes, memory: plt.Axes) -> None:
    """Sparse-dLLM Fig. 5 curves, dashed, OOM points left out."""
    paper = paper.assign(seq_len=[int(parse_setting(s)["seq_len"]) for s in paper["setting"]]).dropna(subset=["value"])
    for (label, metric), part in paper.groupby(["method", "metric"]):
        ax = speed if metric == "throughput" else memory
        part = part.sort_values("seq_len")
        ax.plot(part["seq_len"], part["value"], linestyle="--", marker="x", color=color(label), alpha=0.8,
                label=f"{label} (paper, RTX 4090)")


def heatmap_figures(samples: pd.DataFrame, out: Path, banner: str | None) -> list[Path]:
    if samples.empty or samples["depth"].isna().all():
        return []
    chosen = samples.dropna(subset=["depth", "target_len", "score"])
    paths = []
    for (model, task), group in chosen.groupby(["model", "task"]):
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
        fig.suptitle(f"{model} · {task}: long-context accuracy by length and needle depth")
        paths += _save_heatmap(fig, out, f"longctx_{model}_{task}", banner)
    return paths


def _save_heatmap(fig: plt.Figure, out: Path, name: str, banner: str | None) -> list[Path]:
    """Like ``save`` for a constrained layout (tight_layout cannot place a shared colour bar)."""
    if banner:
        fig.supxlabel(banner, fontsize=8, color="firebrick")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def recompute_figures(runs: pd.DataFrame, out: Path, banner: str | None) -> list[Path]:
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
        fig, ax = plt.subplots(figsize=(7, 4.4))
        layers = [int(PER_LAYER.match(c)[1]) for c in layer_columns]
        for label in sorted(reuse["label"].unique(), key=method_rank):
            mine = reuse[reuse["label"] == label]
            per_layer = mine[layer_columns].mean() if layer_columns else pd.Series(dtype=float)
            if per_layer.notna().any():
                ax.plot(layers, per_layer.values, marker="o", color=color(label), label=label)
                continue
            overall = mine[whole].mean().dropna()
            if len(overall):
                ax.axhline(overall.iloc[0], color=color(label), linestyle=":",
                           label=f"{label}: all layers (per-layer not recorded)")
        ax.set_ylim(0, 1.05)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("layer (0 = nearest the embedding)")
        ax.set_ylabel("fraction of token rows recomputed\n(mean over steps and samples)")
        ax.set_title(f"{model}: per-layer recompute fraction of the reuse methods")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
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
    for path in write_figures(args.results, args.out, args.banner):
        print(path)


if __name__ == "__main__":
    main()
