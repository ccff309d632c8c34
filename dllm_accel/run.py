"""``python -m dllm_accel.run``: compose model x method x task, evaluate, measure, record, mirror.

Examples::

    python -m dllm_accel.run model=llada_8b_instruct method=vanilla task=gsm8k
    python -m dllm_accel.run -m method=vanilla task=gsm8k,humaneval batch_size=1,4
    python -m dllm_accel.run experiment=demo_tiny

Every sweep point runs in its own results directory; between points in one process the
model is freed, peak-memory statistics reset and the W&B run finished.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # answered before the imports below, which take seconds (torch, lm-eval)
    from .cli_help import help_text, wants_help

    if wants_help(sys.argv[1:]):
        print(help_text())
        sys.exit(0)

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from .errors import check_ranges, debug_in_argv, failure_lines, failures, reported
from .eval.byte_tokenizer import build_tokenizer
from .eval.code_tasks import CODE_TASKS, HUMANEVAL_POSTPROCESS, configure_execution
from .eval.data import check_data, default_data_dir, materialize_tasks
from .eval.prompting import DecodeFormat, PromptFormat, encode, render_prompt, resolve_style
from .eval.report import HEADER, summary_row, write_job_summary
from .eval.schema import register
from .eval.tiny_tasks import TINY_TASKS, write_tiny_samples
from .generation.settings import SamplerSettings
from .measure import Meter, environment, summarize
from .methods import available_methods, build_method
from .models import load_model, load_spec, resolve_dtype
from .overrides import check_argv
from .paths import REPO_ROOT, shared_dir
from .points import Point, hydra_point
from .quiet import silence_known_warnings
from .results import RunStore, config_hash, run_directory, sample_key
from .tracking import Tracker, resolve_mode, sweep_group

log = logging.getLogger("dllm_accel.run")
_LENGTH_NAMES = {"gen_length", "max_new_tokens"}
LONG_CONTEXT_TASKS = (
    "passkey",
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
    "variable_tracking",
)


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("dllm_shared"):
        OmegaConf.register_new_resolver("dllm_shared", lambda relative="": str(shared_dir() / relative))
    if not OmegaConf.has_resolver("dllm_repo"):
        OmegaConf.register_new_resolver("dllm_repo", lambda relative="": str(REPO_ROOT / relative))


register()
_register_resolvers()


# ------------------------------------------------------------------ settings
def sampler_settings(config: dict) -> dict:
    """Task defaults, then the method's overrides, then the task's fixed window, then the run's.

    The schema gives every key a layer leaves out a null, so a null means "not set here" and the
    layer below shows through; one block is asked for with ``block_length: gen_length`` (``ONE_BLOCK``).
    """
    merged: dict = {}
    layers = (config["task"].get("sampler"), config["method"].get("sampler"), config["task"].get("window"))
    for layer in (*layers, config.get("sampler")):
        given = {k: v for k, v in (layer or {}).items() if v is not None}
        if given.keys() & _LENGTH_NAMES:  # gen_length and max_new_tokens are one setting
            for name in _LENGTH_NAMES:
                merged.pop(name, None)
        merged.update(given)
    return merged


def validate(config: dict) -> None:
    """Reject bad names and values before any weight is read, naming what is accepted."""
    name = config["method"]["name"]
    if name not in available_methods():
        raise ValueError(f"unknown method {name!r} (accepted: {', '.join(available_methods())})")
    build_method(name, **(config["method"].get("options") or {}))
    check_ranges(config)
    resolve_dtype(config["model"]["dtype"])
    resolve_style(config["prompt"]["style"], config["model"]["instruct"])
    resolve_mode(config["tracking"])
    if config["humaneval_postprocess"] not in HUMANEVAL_POSTPROCESS:
        raise ValueError(
            f"unknown humaneval_postprocess {config['humaneval_postprocess']!r} "
            f"(accepted: {', '.join(HUMANEVAL_POSTPROCESS)})"
        )
    if config["batch_size"] < 1:
        raise ValueError(f"batch_size={config['batch_size']} must be >= 1")
    if config["task"]["lm_eval_task"] in CODE_TASKS:  # refuse now, not after hours of generation
        from .eval.sandbox import resolve_isolation

        resolve_isolation(config["code_isolation"])
    spec, _, _ = load_spec(config["model"]["path"])
    SamplerSettings(**sampler_settings(config)).resolve(spec, prompt_length=0)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def scale_rope_theta(model, factor: float) -> None:
    """LongLLaDA / Sparse-dLLM ``scaling_factor``: RoPE theta times ``factor`` (NTK-style extrapolation)."""
    if factor <= 0:
        raise ValueError(f"model.rope_scaling={factor} must be > 0")
    if factor == 1.0:
        return
    spec = dataclasses.replace(model.spec, rope_theta=model.spec.rope_theta * factor)
    model.spec = spec
    for block in model.blocks:
        block.spec = spec


def _init_distributed() -> None:
    if "SUBMITIT_EXECUTOR" in os.environ and int(os.environ.get("SUBMITIT_NTASKS", "1")) > 1:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


# ------------------------------------------------------------------ the run
def evaluate(cfg: DictConfig, point: Point | None = None) -> dict | None:
    """One sweep point: returns its summary (None on ranks other than 0).

    ``point`` names it (preset and overridden values); by default the running Hydra job's.
    """
    config = OmegaConf.to_container(cfg, resolve=True)
    validate(config)
    silence_known_warnings()
    point = point or hydra_point(config)
    run_dir = run_directory(config["results_root"], config, point.slug)
    store = RunStore(run_dir, retry_failed=config["retry_failed"])
    previous = store.read_summary()
    retry = config["retry_failed"] and (previous or {}).get("failures", {}).get("count")
    if previous and previous.get("complete") and previous.get("limit") == config["task"]["limit"] and not retry:
        log.info("already complete: %s", run_dir)
        _leave_in_job_folder(previous)
        _print_summary(previous, config)
        return previous
    _init_distributed()
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        store.lock()  # data-parallel ranks share rank 0's directory; two separate runs may not
    store.write_config(OmegaConf.to_yaml(OmegaConf.create(config)))
    torch.manual_seed(config["seed"])
    if config["cpu_threads"]:
        torch.set_num_threads(config["cpu_threads"])
    configure_execution(
        config["code_workers"], config["code_timeout_s"], config["humaneval_postprocess"], config["code_isolation"]
    )
    device = _device(config["model"]["device"])
    model_cfg = config["model"]
    model = load_model(
        model_cfg["path"], dtype=model_cfg["dtype"], device=device, random_weights=model_cfg["random_weights"]
    )
    tracker = lm = None
    try:
        scale_rope_theta(model, model_cfg["rope_scaling"])
        tokenizer = build_tokenizer(model_cfg.get("tokenizer"), model_cfg["path"], model.spec)
        prompt = PromptFormat(
            style=resolve_style(config["prompt"]["style"], model_cfg["instruct"]),
            add_bos=config["prompt"]["add_bos"],
            system=config["prompt"]["system"],
            raw_for_humaneval=config["prompt"]["raw_for_humaneval"],
        )
        decode_cfg = config["decode"]
        decode = DecodeFormat(**{**decode_cfg, "extra_until": tuple(decode_cfg["extra_until"])})
        tasks_dir = _prepare_tasks(config, run_dir, tokenizer, prompt)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        tracker = Tracker(
            config["tracking"] if rank == 0 else "none",
            config["wandb_project"],
            run_dir,
            name=f"{point.label} | {model_cfg['name']} | {config['task']['name']}",
            config=_wandb_config(config, point, model),
            group=sweep_group(config["experiment_name"], _sweep_dir()),
            tags=[config["experiment_name"], model_cfg["name"], config["task"]["name"], point.preset, *point.settings],
        )
        meter = Meter(model.device)
        from .eval.lm import DiffusionLM

        lm = DiffusionLM(
            model,
            tokenizer,
            config["method"]["name"],
            options=config["method"].get("options"),
            sampler=sampler_settings(config),
            prompt=prompt,
            decode=decode,
            batch_size=config["batch_size"],
            store=store,
            meter=meter,
            seed=config["seed"],
            generation_timeout_s=config["measure"]["generation_timeout_s"],
        )
        results = _simple_evaluate(lm, config, tasks_dir, prompt)
        if results is None:
            return None
        summary = _summarize(results, config, store, run_dir, meter, model, point)
        _leave_in_job_folder(summary)
        tracker.log_summary(_flatten(summary))
        tracker.log_samples(list(store.records.values()))
        _print_summary(summary, config)
        return summary
    finally:
        store.unlock()
        if tracker is not None:
            tracker.finish()
        model = lm = None
        _free_memory()


def _sweep_dir() -> str | None:
    """The multirun's folder (one W&B group per sweep), None outside a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return HydraConfig.get().sweep.dir
    return None


def _leave_in_job_folder(summary: dict) -> None:
    """A copy in the Hydra job's folder: the end-of-sweep table reads it, whichever launcher ran the job."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        write_job_summary(HydraConfig.get().runtime.output_dir, summary)


def _wandb_config(config: dict, point: Point, model) -> dict:
    """The composed config plus what it leaves implicit: the point's name, the sampler settings and
    method options as resolved (defaults filled in), commit, device and versions."""
    resolved = SamplerSettings(**sampler_settings(config)).resolve(model.spec, prompt_length=0)
    sampler = {k: v for k, v in dataclasses.asdict(resolved.raw).items() if v is not None}
    sampler |= {k: getattr(resolved, k) for k in ("sampler", "gen_length", "steps", "block_length", "num_blocks")}
    method = build_method(config["method"]["name"], **(config["method"].get("options") or {}))
    return config | {
        "point": {"label": point.label, "preset": point.preset, "overrides": point.overrides},
        "resolved": {"sampler": sampler, "method": dataclasses.asdict(method.config)},
        "environment": environment(model.device, model.dtype),
    }


def _prepare_tasks(config: dict, run_dir: Path, tokenizer, prompt: PromptFormat) -> Path:
    task = config["task"]
    data_dir = Path(config["data_dir"]) if config["data_dir"] else default_data_dir()
    check_data(task["lm_eval_task"], data_dir)
    tasks_dir = materialize_tasks(run_dir / "lm_eval_tasks", data_dir)
    kind = task["lm_eval_task"].removeprefix("dllm_")
    if kind in LONG_CONTEXT_TASKS:
        from .eval import longctx

        gen_length = SamplerSettings(**sampler_settings(config))
        samples = longctx.build_samples(
            kind,
            task["lengths"],
            task["depths"],
            task["samples_per_cell"],
            config["seed"],
            units=longctx.haystack_units(task["haystack"], data_dir),
            count_tokens=lambda text: len(encode(tokenizer, render_prompt(text, tokenizer, prompt))),
            gen_length=gen_length.gen_length or gen_length.max_new_tokens,
        )
        longctx.write_samples(tasks_dir / f"{kind}.jsonl", samples)
    elif kind in TINY_TASKS:
        write_tiny_samples(kind, tasks_dir, task["lengths"], task["samples_per_cell"], config["seed"])
    return tasks_dir


def _simple_evaluate(lm, config: dict, tasks_dir: Path, prompt: PromptFormat) -> dict | None:
    import datasets
    import lm_eval
    from lm_eval.tasks import TaskManager

    datasets.disable_progress_bars()
    multiturn = prompt.style == "multiturn"
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=[config["task"]["lm_eval_task"]],
        num_fewshot=config["task"]["num_fewshot"],
        limit=config["task"]["limit"],
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        apply_chat_template=multiturn,
        fewshot_as_multiturn=multiturn,
        system_instruction=prompt.system if multiturn else None,
        bootstrap_iters=0,
        log_samples=True,
        confirm_run_unsafe_code=True,
    )


def _scores(results: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per-sample scores and document metadata from lm-eval's logged samples."""
    scores: dict[str, dict] = {}
    meta: dict[str, dict] = {}
    for task, entries in results.get("samples", {}).items():
        for entry in entries:
            key = sample_key(task, entry["doc_id"], 0)
            for metric in entry.get("metrics", []):
                scores.setdefault(key, {})[f"{metric},{entry['filter']}"] = entry.get(metric)
            doc = entry.get("doc", {})
            meta[key] = {k: doc[k] for k in ("target_len", "depth", "prompt_tokens", "task_id") if k in doc}
    return scores, meta


def _summarize(results: dict, config: dict, store: RunStore, run_dir: Path, meter: Meter, model, point: Point) -> dict:
    scores, meta = _scores(results)
    store.reload()
    records = store.finalize(scores, doc_meta=meta)
    current = [r for r in records if r["key"] in scores]
    name = config["task"]["lm_eval_task"]
    metrics = {
        k: v for k, v in results["results"].get(name, {}).items() if isinstance(v, (int, float)) and "stderr" not in k
    }
    primary = config["task"].get("primary_metric")
    expected = sum(n["effective"] for n in results.get("n-samples", {}).values())
    summary = {
        "complete": len(current) == expected and all(r["status"] in ("ok", "error", "oom", "timeout") for r in current),
        "run_dir": str(run_dir),
        "config_hash": config_hash(config),
        "model": config["model"]["name"],
        "method": config["method"]["name"],
        "preset": point.preset,
        "point": point.label,
        "overrides": point.overrides,
        "task": config["task"]["name"],
        "limit": config["task"]["limit"],
        "n_samples": len(current),
        "accuracy": {"metric": primary, "value": metrics.get(primary)},
        "metrics": metrics,
        "subtask_metrics": {
            task: {k: v for k, v in values.items() if isinstance(v, (int, float)) and "stderr" not in k}
            for task, values in results["results"].items()
            if task != name
        },
        "n_shot": results.get("n-shot"),
        "failures": failures(current),
        # timed generations only (a multiple-choice task's log-likelihood records have no tokens)
        "measurement": summarize([r for r in current if r.get("kind") != "loglikelihood"]),
        "by_length_depth": _by_length_depth(current),
        "environment": environment(model.device, model.dtype),
        "overhead": meter.overhead(),
    }
    store.write_summary(summary)
    return summary


def _by_length_depth(records: list[dict]) -> dict:
    cells: dict[str, list[float]] = {}
    for r in records:
        meta = r.get("doc_meta") or {}
        if "target_len" in meta and r.get("scores"):
            value = next(iter(r["scores"].values()))
            cells.setdefault(f"{meta['target_len']}@{meta['depth']}", []).append(float(value))
    return {cell: sum(v) / len(v) for cell, v in sorted(cells.items())}


def _flatten(summary: dict, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


def _print_summary(summary: dict, config: dict) -> None:
    if config.get("print_summary", True):
        print(f"{HEADER}\n{summary_row(summary)}\nresults: {summary['run_dir']}", flush=True)
    for line in failure_lines(summary):
        log.warning("not generated: %s", line)
        print(f"warning: {line}", file=sys.stderr, flush=True)


def _free_memory() -> None:
    """Between sweep points in one process: collect the dropped model, reset the memory statistics."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict | None:
    with reported(cfg.get("debug")):
        return evaluate(cfg)


def cli(argv: list[str]) -> None:
    """The command line: an override Hydra cannot compose (or would ignore) is one line before Hydra runs."""
    with reported(debug_in_argv(argv)):
        check_argv(argv)
    main()


if __name__ == "__main__":
    cli(sys.argv[1:])
