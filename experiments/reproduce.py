"""``make reproduce``: every paper-table experiment, then the tables and figures.

    python experiments/reproduce.py                      # every table, full size (one GPU)
    python experiments/reproduce.py --table fast_dllm_table1
    python experiments/reproduce.py --scope smoke        # every table on the tiny checkpoints, CPU, minutes
    python experiments/reproduce.py --launcher slurm_1gpu  # each table as a Hydra multirun on SLURM
    python experiments/reproduce.py --experiment sweep_dyllm  # a sweep (``make sweep NAME=dyllm``)

An experiment is ``conf/experiment/<name>.yaml``; its ``hydra.sweeper.params`` list the
points (plain values and the point groups under ``conf/experiment/<name>/``), exactly what
``python -m dllm_accel.run -m experiment=<name>`` runs. Locally the points run one after the
other in this process; a finished point is found in the results store and skipped.

The smoke scope runs every table on the tiny parity checkpoints (each model keeps its name,
its weights are the tiny fixture of its family) with 2 samples, 0 shots and 16 generated
tokens, every method of the table but only the first value of the other sweep dimensions.
Its store, tables and figures go to the git-ignored ``outputs/smoke/`` (so the checkout stays
clean) and say on every page that they are tiny-random-model output; ``results/smoke/`` holds a
committed snapshot (``--results results/smoke/runs`` refreshes it).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make analysis/ importable
    sys.path.insert(0, str(REPO))

from analysis.catalog import PAPER_TABLES  # noqa: E402
from dllm_accel.errors import USER_ERRORS, debug_enabled, debug_in_argv, reported  # noqa: E402
from dllm_accel.overrides import check_overrides, explained, hydra_session  # noqa: E402
from dllm_accel.paths import tiny_checkpoint  # noqa: E402
from dllm_accel.points import Point  # noqa: E402

CONF = REPO / "conf"
TABLES = (*(t.experiment for t in PAPER_TABLES), "longctx", "batch_size")
SMOKE_BANNER = "SMOKE OUTPUT: tiny random-weight checkpoints, 2 samples, 16 tokens, CPU. Tests the pipeline; the numbers mean nothing."
# how many values of a sweep dimension the smoke scope keeps (beyond every method), where one is too few
SMOKE_KEEPS = {
    "batch_size": {"batch_size": 2},
    "fast_dllm_table2": {"+experiment/fast_dllm_table2/methods": 4},  # the four columns at length 256
    "dyllm_curves": {"sampler.steps": 2},
    "fast_dllm_fig5": {"sampler.threshold": 2},
    # one (model, task) pair's baseline and method: the points differ only in per-task thresholds
    "klass_table1": {"+experiment/klass_table1/task_methods": 2},
    "wino_table1": {"+experiment/wino_table1/task_methods": 2},
}
SMOKE_GEN = 16
SMOKE_LIMIT = 2
SMOKE_LENGTHS = (384, 512)

log = logging.getLogger("reproduce")


@dataclass(frozen=True)
class Scope:
    name: str
    results: Path  # the results store root
    analysis: Path  # tables/ and figures/ go here
    banner: str | None


SCOPES = {
    "full": Scope("full", REPO / "results" / "runs", REPO / "results", None),
    # into the git-ignored outputs/ (timings differ on every run): a smoke run leaves the checkout clean;
    # results/smoke/ is a committed snapshot, refreshed with --results results/smoke/runs
    "smoke": Scope("smoke", REPO / "outputs" / "smoke" / "runs", REPO / "outputs" / "smoke", SMOKE_BANNER),
}


def experiment_file(name: str) -> Path:
    path = CONF / "experiment" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
        raise SystemExit(f"no experiment {name!r} in {path.parent} (known: {', '.join(known)})")
    return path


def sweep_params(name: str) -> dict[str, str]:
    """The experiment's ``hydra.sweeper.params`` (empty for a single-point experiment)."""
    raw = yaml.safe_load(experiment_file(name).read_text()) or {}
    params = ((raw.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    return {str(k): str(v) for k, v in params.items()}


def expand(name: str, params: dict[str, str], extra: list[str]) -> list[list[str]]:
    """Every job's overrides, as Hydra's basic sweeper would launch them (globs resolved)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with hydra_session():
        loader = GlobalHydra.instance().config_loader()
        parser = OverridesParser.create(config_loader=loader)
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + extra)
    dimensions: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            dimensions[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            dimensions[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [[f"experiment={name}", *job] for job in itertools.product(*dimensions.values())]


def smoke_subset(name: str, jobs: list[list[str]]) -> list[list[str]]:
    """Every method of the table; of the other dimensions the first value (``SMOKE_KEEPS``: the first few)."""
    keeps = SMOKE_KEEPS.get(name, {})
    allowed: dict[str, list[str]] = {}
    for job in jobs:
        for override in job:
            key = override.split("=", 1)[0]
            values = allowed.setdefault(key, [])
            limit = keeps.get(key, len(jobs) if _is_method(key) else 1)
            if override not in values and len(values) < limit:
                values.append(override)
    return [job for job in jobs if all(o in allowed[o.split("=", 1)[0]] for o in job)]


def method_presets() -> list[str]:
    return sorted(str(p.relative_to(CONF / "method").with_suffix("")) for p in (CONF / "method").rglob("*.yaml"))


def check_added_methods(methods: list[str]) -> None:
    known = method_presets()
    for method in methods:
        if method not in known:
            raise SystemExit(f"--add-method {method!r}: no conf/method/{method}.yaml (accepted: {', '.join(known)})")


def baseline_overrides(jobs: list[list[str]]) -> list[str]:
    """The method overrides of the table's first point: its first method and that method's settings."""
    return [o for o in jobs[0] if _is_method(o.split("=", 1)[0])] if jobs else []


def with_added_methods(jobs: list[list[str]], methods: list[str]) -> list[list[str]]:
    """Each added method at every point of the table's first method, so it gets its own row under the
    same models, tasks and lengths. A method point group (``+experiment/<x>/methods=...``) stays for its
    settings (generation length, block); the command-line ``method=`` wins over the group's method."""
    first = set(baseline_overrides(jobs))
    base = [job for job in jobs if first <= set(job)]
    added = [[*(o for o in job if not o.startswith("method=")), f"method={m}"] for m in methods for job in base]
    return jobs + added


def _is_method(key: str) -> bool:
    """``method`` and point groups named for methods (``+experiment/dyllm_methods``)."""
    return "method" in key.split("/")[-1]


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose

    with hydra_session():
        return hydra_compose(config_name="config", overrides=overrides)


def compose_point(overrides: list[str]) -> tuple[DictConfig, Point]:
    """The config of one job and its name (preset and overridden values), as a Hydra multirun names it."""
    from hydra import compose as hydra_compose

    with hydra_session(), explained(overrides):
        cfg = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    point = Point.from_overrides(cfg.hydra.runtime.choices.method, list(cfg.hydra.overrides.task))
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, point


def shrink(cfg: DictConfig) -> DictConfig:
    """The smoke version of one composed point (see the module docstring)."""
    from dllm_accel.generation.settings import block_size
    from dllm_accel.run import sampler_settings

    family = "dream" if cfg.model.name.startswith("dream") else "llada"
    cfg.model.path = str(tiny_checkpoint(family))
    cfg.model.tokenizer = "byte"
    cfg.model.dtype = "float32"
    cfg.model.device = "cpu"
    cfg.model.random_weights = False
    cfg.task.num_fewshot = 0
    long_context = bool(cfg.task.lengths)
    if long_context:
        cfg.task.lengths = list(SMOKE_LENGTHS)
        cfg.task.depths = _spread(list(cfg.task.depths), 3)
        cfg.task.samples_per_cell = 1
        cfg.task.limit = None
    else:
        cfg.task.limit = SMOKE_LIMIT
    merged = sampler_settings(OmegaConf.to_container(cfg, resolve=True))
    gen = merged.get("gen_length") or merged.get("max_new_tokens")
    steps = merged.get("steps") or gen
    block = block_size(merged.get("block_length"), gen)
    if "gen_length" in merged:
        cfg.sampler.gen_length = SMOKE_GEN
    if "max_new_tokens" in merged:
        cfg.sampler.max_new_tokens = SMOKE_GEN
    cfg.sampler.block_length = SMOKE_GEN if block >= gen else min(block, SMOKE_GEN // 2)
    blocks = SMOKE_GEN // cfg.sampler.block_length
    # the same tokens per step, and still a whole number of steps per block
    wanted = max(SMOKE_GEN * steps // gen, 1)
    cfg.sampler.steps = min(SMOKE_GEN, -(-wanted // blocks) * blocks)
    cfg.tracking = "none"
    cfg.code_workers = 1
    cfg.cpu_threads = 1  # tiny matrices: more threads only contend
    return cfg


# what shrink() replaces: a smoke point's name must not claim the full-size value (its hash still differs)
SHRUNK_SETTINGS = {"gen_length", "max_new_tokens", "steps", "block_length", "num_fewshot", "lengths", "depths"}


def smoke_point(point: Point) -> Point:
    """The point's name without the settings the smoke scope overrides, marked ``smoke``."""
    kept = tuple(s for s in point.settings if s.split("=", 1)[0] not in SHRUNK_SETTINGS)
    return Point(point.preset, (*kept, "smoke"))


def _spread(values: list, count: int) -> list:
    if len(values) <= count:
        return values
    step = (len(values) - 1) / (count - 1)
    return [values[round(i * step)] for i in range(count)]


def run_local(name: str, scope: Scope, extra: list[str], added_methods: list[str] = ()) -> dict[str, int]:
    """Every point of one experiment in this process; returns counts of run and skipped points."""
    from dllm_accel.run import evaluate

    jobs = with_added_methods(expand(name, sweep_params(name), extra), added_methods)
    if scope.name == "smoke":
        jobs = smoke_subset(name, jobs)
    counts = {"points": len(jobs), "ran": 0, "skipped": 0, "failed": 0}
    for index, job in enumerate(jobs):
        started = time.perf_counter()
        try:
            cfg, point = compose_point([*job, f"results_root={scope.results}"])
            if scope.name == "smoke":
                cfg, point = shrink(cfg), smoke_point(point)
            done = finished(cfg, point)
            evaluate(cfg, point)
            outcome = "already done" if done else "ran"
            counts["skipped" if done else "ran"] += 1
        except Exception as error:  # one broken point must not stop a table: report it and go on
            if isinstance(error, USER_ERRORS) and not debug_enabled(debug_in_argv(extra)):  # a bad value: its one line says it all
                log.error("%s: point %s failed: %s", name, " ".join(job), " ".join(str(error).split()))
            else:
                log.exception("%s: point %s failed", name, " ".join(job))
            outcome = f"FAILED: {type(error).__name__}: {error}"
            counts["failed"] += 1
        log.info(
            "%s [%d/%d] %s (%s, %.1f s)",
            name,
            index + 1,
            len(jobs),
            " ".join(job[1:]),
            outcome,
            time.perf_counter() - started,
        )
    return counts


def finished(cfg: DictConfig, point: Point | None = None) -> bool:
    """Whether the results store already holds this point complete (the runner then skips it)."""
    import json

    from dllm_accel.results import SUMMARY, run_directory

    config = OmegaConf.to_container(cfg, resolve=True)
    path = run_directory(config["results_root"], config, point.slug if point else None) / SUMMARY
    if not path.is_file():
        return False
    summary = json.loads(path.read_text())
    return bool(summary.get("complete")) and summary.get("limit") == config["task"]["limit"]


def run_launcher(name: str, scope: Scope, launcher: str, extra: list[str], added_methods: list[str] = ()) -> None:
    """One Hydra multirun of the experiment through ``hydra/launcher=<launcher>`` (SLURM, submitit_local),
    then one per added method over the points of the table's first method."""
    baseline = [o for o in baseline_overrides(expand(name, sweep_params(name), extra)) if not o.startswith("method=")]
    for added in [[], *([*baseline, f"method={m}"] for m in added_methods)]:
        _launch(name, scope, launcher, [*extra, *added])


def _launch(name: str, scope: Scope, launcher: str, extra: list[str]) -> None:
    command = [
        sys.executable,
        "-m",
        "dllm_accel.run",
        "-m",
        f"experiment={name}",
        f"hydra/launcher={launcher}",
        f"results_root={scope.results}",
        *extra,
    ]
    subprocess.run(command, cwd=REPO, check=True)


def require_results(scope: Scope) -> None:
    """``make tables`` / ``make figures`` on an empty store: say so, exit non-zero (it printed nothing, exit 0)."""
    from analysis.store import run_dirs

    if not scope.results.is_dir() or not run_dirs(scope.results):
        hint = "make reproduce SCOPE=smoke" if scope.name == "smoke" else "make reproduce (or SCOPE=smoke on a CPU)"
        raise SystemExit(f"no results in {scope.results}: nothing to draw tables or figures from; run `{hint}` first")


def analyse(scope: Scope, tables: bool = True, figures: bool = True) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, even where a display exists
    from analysis.figures import write_figures
    from analysis.tables import write_tables

    if tables:
        for path in write_tables(scope.results, scope.analysis / "tables", banner=scope.banner):
            log.info("table: %s", path)
    if figures:
        for path in write_figures(scope.results, scope.analysis / "figures", banner=scope.banner):
            log.info("figure: %s", path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scope", choices=sorted(SCOPES), default="full")
    parser.add_argument(
        "--table", action="append", help=f"one table experiment (repeatable); default: {', '.join(TABLES)}"
    )
    parser.add_argument("--experiment", action="append", help="any experiment, e.g. a sweep (repeatable)")
    parser.add_argument("--launcher", help="hydra/launcher option (e.g. slurm_1gpu); default: this process")
    parser.add_argument("--results", type=Path, help="results store root (default: the scope's)")
    parser.add_argument("--skip-analysis", action="store_true", help="run the points, write no tables or figures")
    parser.add_argument("--only", choices=("tables", "figures"), help="write only these from the store, run nothing")
    parser.add_argument(
        "--add-method",
        action="append",
        default=[],
        metavar="PRESET",
        help="a conf/method preset to run beside the table's methods (repeatable), at the first method's points",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every point, e.g. task.limit=50")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scope = SCOPES[args.scope]
    if args.results:
        scope = Scope(scope.name, args.results, args.results.parent, scope.banner)
    if args.launcher and scope.name == "smoke":
        raise SystemExit("the smoke scope shrinks each point in this process; --launcher is for full-size runs")
    unknown = [t for t in args.table or [] if t not in TABLES]
    if unknown:
        raise SystemExit(f"unknown table {unknown} (accepted: {', '.join(TABLES)})")
    if args.only:
        require_results(scope)
        analyse(scope, tables=args.only == "tables", figures=args.only == "figures")
        return
    names = [*(args.table or []), *(args.experiment or [])] or list(TABLES)
    for name in names:
        experiment_file(name)
    check_added_methods(args.add_method)
    if args.overrides:  # the extra overrides compose with each experiment, or one line says which does not
        with reported(debug_in_argv(args.overrides)):
            for name in names:
                check_overrides([f"experiment={name}", *args.overrides], multirun=True)
    failed = 0
    with hydra_session():
        for name in names:
            if args.launcher:
                run_launcher(name, scope, args.launcher, args.overrides, args.add_method)
                continue
            counts = run_local(name, scope, args.overrides, args.add_method)
            failed += counts["failed"]
            log.info(
                "%s: %d points, %d ran, %d already done, %d failed",
                name,
                counts["points"],
                counts["ran"],
                counts["skipped"],
                counts["failed"],
            )
    if not args.skip_analysis:
        analyse(scope)
    if failed:
        raise SystemExit(f"{failed} point(s) failed (see the log above); the tables show them as missing")


if __name__ == "__main__":
    main()
