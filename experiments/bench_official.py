"""Ours against the official implementations, on one shared random-weight LLaDA checkpoint.

The official code is imported at run time from checkouts whose paths you give; nothing of
it is vendored. One random-weight checkpoint is written in the official LLaDA schema
(``model.safetensors`` + ``config.json``); every official implementation loads it with its
own model class and every one of ours with ``load_model``. For each preset, ours and the
official call run alternately (the order swapped every round), outputs are compared token
for token, and the ratio official seconds / ours (median over the paired runs, > 1 = ours
faster) is printed last, with each side's speed-up over its own vanilla.

| preset | official call |
|---|---|
| vanilla | ML-GSAI/LLaDA ``generate.py`` ``generate`` (on the hub model class, ``--llada-hub``) |
| fast_dllm_parallel / _prefix / fast_dllm / _dual | NVlabs/Fast-dLLM ``llada/generate.py``: ``generate`` / ``generate_with_prefix_cache`` / ``generate_with_dual_cache`` (threshold 0.9 where the preset has it) |
| dllm_cache | maomaocun/dLLM-cache ``utils.generate`` with ``register_cache_LLaDA`` (on the hub model class) |
| sparse_dllm | OpenMOSS/Sparse-dLLM ``llada_generate.generate`` on its ``modeling_llada.LLaDAModelLM`` |

Run it in an environment with the official code's pins (``transformers==4.46.2``), e.g.

    python experiments/bench_official.py --fast-dllm ../official/Fast-dLLM --llada ../official/LLaDA \\
        --llada-hub ../official/llada-hub \\
        --dllm-cache ../official/dLLM-cache --sparse-dllm ../official/Sparse-dLLM --out results/bench/official_cpu

``TORCHDYNAMO_DISABLE=1`` is set (as when the fixtures were made) so Fast-dLLM's
``@torch.compile`` attention runs eagerly, like ours by default.
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402

from dllm_accel import generate, load_model  # noqa: E402
from dllm_accel.measure import environment  # noqa: E402
from dllm_accel.paths import REPO_ROOT, tiny_checkpoint  # noqa: E402
from dllm_accel.train.checkpoint import write_llada_checkpoint  # noqa: E402

PRESETS = (
    "vanilla",
    "fast_dllm_parallel",
    "fast_dllm_prefix",
    "fast_dllm",
    "fast_dllm_dual",
    "dllm_cache",
    "sparse_dllm",
)


def write_checkpoint(directory: Path, d_model: int, layers: int, heads: int, mlp: int, seed: int) -> Path:
    """A random-weight LLaDA of the given size, in the official schema (tiny checkpoint's vocabulary and ids)."""
    config = json.loads((tiny_checkpoint("llada") / "config.json").read_text())
    config.update(d_model=d_model, n_layers=layers, n_heads=heads, n_kv_heads=heads, mlp_hidden_size=mlp)
    source = directory / "config"
    source.mkdir(parents=True)
    (source / "config.json").write_text(json.dumps(config))
    model = load_model(source, dtype=torch.float32, random_weights=True, seed=seed)
    target = directory / "checkpoint"
    write_llada_checkpoint(model, target, torch.float32)
    # the official loaders read the official config fields; keep every one of the tiny config's
    written = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **{k: written[k] for k in written if k not in config}}))
    return target


def _module(name: str, path: Path, search: Path | None = None):
    """Import ``path`` as module ``name``, with ``search`` first on sys.path for its own imports."""
    if search is not None and str(search) not in sys.path:
        sys.path.insert(0, str(search))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _package(name: str, directory: Path) -> types.ModuleType:
    """A package ``name`` over ``directory`` (its modules import each other relatively)."""
    package = types.ModuleType(name)
    package.__path__ = [str(directory)]
    sys.modules[name] = package
    return package


def _commit(path: Path) -> str | None:
    marker = path / ".official_commit"
    if marker.exists():
        return marker.read_text().strip()
    out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def official_calls(args: argparse.Namespace, checkpoint: Path, mask_id: int) -> dict[str, Callable]:
    """Per preset, a function prompt -> output ids that runs the official code."""
    calls: dict[str, Callable] = {}
    shape = {"gen_length": args.gen, "block_length": args.block}
    if args.fast_dllm:
        llada_dir = Path(args.fast_dllm) / "llada"
        fast = _module("fast_dllm_generate", llada_dir / "generate.py", search=llada_dir)
        from model.configuration_llada import LLaDAConfig  # Fast-dLLM's package, found through llada_dir
        from model.modeling_llada import LLaDAModelLM

        config = LLaDAConfig.from_pretrained(checkpoint)
        config.flash_attention = True  # as eval_llada.py; without flash_attn installed this is the SDPA branch
        model = (
            LLaDAModelLM.from_pretrained(checkpoint, config=config, torch_dtype=args.torch_dtype).to(args.device).eval()
        )
        steps = {"steps": args.steps, "mask_id": mask_id, **shape}

        def first(fn, **kw):
            return lambda prompt: fn(model, prompt, **steps, **kw)[0]

        calls["fast_dllm_parallel"] = first(fast.generate, threshold=0.9)
        calls["fast_dllm_prefix"] = first(fast.generate_with_prefix_cache)
        calls["fast_dllm"] = first(fast.generate_with_prefix_cache, threshold=0.9)
        calls["fast_dllm_dual"] = first(fast.generate_with_dual_cache, threshold=0.9)
    hub = None
    if args.llada_hub:
        hub = _package("llada_hub", Path(args.llada_hub))
        hub_model = importlib.import_module("llada_hub.modeling_llada").LLaDAModelLM
    if args.llada and hub is not None:
        llada = _module("llada_generate", Path(args.llada) / "generate.py")
        plain = hub_model.from_pretrained(checkpoint, torch_dtype=args.torch_dtype).to(args.device).eval()
        calls["vanilla"] = lambda prompt: llada.generate(plain, prompt, steps=args.steps, mask_id=mask_id, **shape)
    if args.dllm_cache and hub is not None:
        sys.path.insert(0, str(Path(args.dllm_cache)))
        from dllm_cache.cache import dLLMCache, dLLMCacheConfig
        from dllm_cache.hooks import register_cache_LLaDA
        from utils import generate as cache_generate

        hooked = hub_model.from_pretrained(checkpoint, torch_dtype=args.torch_dtype).to(args.device).eval()
        preset = yaml.safe_load((REPO_ROOT / "conf" / "method" / "dllm_cache.yaml").read_text())["options"]
        cache_config = {k: preset[k] for k in ("prompt_interval_steps", "gen_interval_steps", "transfer_ratio")}
        register_cache_LLaDA(hooked, "model.transformer.blocks")

        def run_cache(prompt):
            dLLMCache.new_instance(**vars(dLLMCacheConfig(**cache_config)))
            return cache_generate(prompt, None, hooked, steps=args.steps, mask_id=mask_id, **shape)

        calls["dllm_cache"] = run_cache
    if args.sparse_dllm:
        base = Path(args.sparse_dllm) / "opencompass" / "models" / "sparse_dllm"
        package = "sparse_dllm_official"
        _package(package, base)  # without opencompass's own __init__ files, as the fixtures were made
        configuration = _module(f"{package}.configuration_llada", base / "configuration_llada.py")
        modeling = _module(f"{package}.modeling_llada", base / "modeling_llada.py")
        sparse = _module(f"{package}.llada_generate", base / "llada_generate.py")
        config = configuration.LLaDAConfig.from_pretrained(checkpoint)
        preset = yaml.safe_load((REPO_ROOT / "conf" / "method" / "sparse_dllm.yaml").read_text())["options"]
        config.kernel_size, config.keep_ratio, config.block_len = (
            preset["kernel_size"],
            preset["keep_ratio"],
            args.block,
        )
        sparse_model = modeling.LLaDAModelLM.from_pretrained(checkpoint, config=config, torch_dtype=args.torch_dtype)
        sparse_model = sparse_model.to(args.device).eval()
        calls["sparse_dllm"] = lambda prompt: sparse.generate(
            sparse_model, prompt, steps=args.steps, mask_id=mask_id, **shape
        )
    return calls


def ours(model, preset: str, args: argparse.Namespace) -> Callable:
    entry = yaml.safe_load((REPO_ROOT / "conf" / "method" / f"{preset}.yaml").read_text())
    settings = {**(entry.get("sampler") or {}), **(entry.get("options") or {})}
    settings.update(gen_length=args.gen, steps=args.steps, block_length=args.block, compile=args.compile)
    return lambda prompt: generate(model, prompt, method=entry["name"], **settings).sequences


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def timed(fn: Callable, prompt: torch.Tensor, clock: str = "wall") -> tuple[float, torch.Tensor]:
    """Seconds of one call by ``clock``: wall time, or this process's CPU time (on a shared CPU
    machine it leaves out the time other jobs took from the core; with one thread it is the run's cost)."""
    now = CLOCKS[clock]
    cuda = prompt.is_cuda
    if cuda:
        torch.cuda.synchronize()
    start = now()
    with torch.no_grad():
        out = fn(prompt)
    if cuda:
        torch.cuda.synchronize()
    return now() - start, out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("fast-dllm", "llada", "dllm-cache", "sparse-dllm"):
        parser.add_argument(f"--{name}", help=f"path of an official {name} checkout")
    parser.add_argument(
        "--llada-hub", help="directory with the hub's modeling_llada.py and configuration_llada.py (LLaDA-8B-Instruct)"
    )
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--mlp", type=int, default=1536)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument(
        "--steps", type=int, help="denoising steps (default: gen, one token per step); fewer times a step of the full shape for less"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per side before the timed ones")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compile", action="store_true", help="our side with compile=True")
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall time, or process CPU time (CPU runs on a shared machine, one thread: what each run cost its core)",
    )
    parser.add_argument("--time-budget", type=float, help="seconds; presets that would start after it are skipped")
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    parser.add_argument("--note", default="", help="a sentence for the table's header (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    if args.clock == "process" and args.device != "cpu":
        parser.error(f"--clock process times CPU runs only (got --device {args.device}); use --clock wall")
    args.steps = args.steps or args.gen
    torch.set_num_threads(args.threads)
    args.torch_dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp), args.d_model, args.layers, args.heads, args.mlp, seed=0)
        model = load_model(checkpoint, dtype=args.torch_dtype, device=args.device)
        mask_id = model.spec.tokens.mask
        calls = official_calls(args, checkpoint, mask_id)
        generator = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, model.spec.tokens.eos - 1, (1, args.prompt), generator=generator).to(args.device)
        results = {}
        for preset in args.presets:
            if preset not in calls:
                results[preset] = {"skipped": "no checkout given for its official code"}
                continue
            if args.time_budget is not None and time.perf_counter() - start > args.time_budget:
                results[preset] = {"skipped": "time budget spent"}
                continue
            sides = {"ours": ours(model, preset, args), "official": calls[preset]}
            for _ in range(args.warmup):
                for fn in sides.values():
                    timed(fn, prompt)
            seconds: dict[str, list[float]] = {"ours": [], "official": []}
            outputs = {}
            for r in range(args.repeats):
                for side in ("ours", "official") if r % 2 == 0 else ("official", "ours"):
                    s, outputs[side] = timed(sides[side], prompt, args.clock)
                    seconds[side].append(s)
            ratios = [o / u for o, u in zip(seconds["official"], seconds["ours"], strict=True)]
            results[preset] = {
                "seconds": seconds,
                "median_s": {k: statistics.median(v) for k, v in seconds.items()},
                "ratio_official_over_ours": statistics.median(ratios),
                "paired_ratios": ratios,
                # dLLM-Cache returns the generated part only
                "identical_tokens": torch.equal(
                    outputs["ours"].cpu()[:, -args.gen :], outputs["official"].cpu()[:, -args.gen :]
                ),
            }
            print(
                json.dumps({"preset": preset, **{k: v for k, v in results[preset].items() if k != "seconds"}}),
                flush=True,
            )
    vanilla = results.get("vanilla", {})
    for r in results.values():
        if "median_s" in vanilla and "median_s" in r:
            r["speedup_over_vanilla"] = {k: vanilla["median_s"][k] / r["median_s"][k] for k in ("ours", "official")}
            # ours' speed-up over ours' vanilla / the official one's over official vanilla, from the paired
            # ratios (each pair ran back to back, so load that drifts between presets cancels)
            r["speedup_ours_over_official"] = r["ratio_official_over_ours"] / vanilla["ratio_official_over_ours"]
    report = {
        "args": {k: v if isinstance(v, int | float | list | None) else str(v) for k, v in vars(args).items()},
        "official_commits": {
            k: _commit(Path(getattr(args, k)))
            for k in ("fast_dllm", "llada", "dllm_cache", "sparse_dllm", "llada_hub")
            if getattr(args, k)
        },
        "environment": environment(torch.device(args.device), args.torch_dtype)
        | {"transformers": _version("transformers")},
        "total_s": time.perf_counter() - start,
        "results": results,
    }
    table = markdown(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    print(table)
    return report


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def markdown(report: dict) -> str:
    a = report["args"]
    lines = [
        "# Ours vs the official code (one shared random-weight LLaDA checkpoint)",
        "",
        f"d_model {a['d_model']}, {a['layers']} layers, prompt {a['prompt']}, gen {a['gen']}, steps {a.get('steps') or a['gen']}, "
        f"block {a['block']}, "
        f"{a['dtype']} on {a['device']}, "
        f"{a['threads']} thread(s), {a['warmup']} warm-up and {a['repeats']} alternated timed runs per side, "
        f"{'process CPU' if a.get('clock') == 'process' else 'wall'} seconds; ratio = median of paired official/ours "
        "seconds (> 1: ours faster). Official commits: "
        + ", ".join(f"{k} `{v[:7] if v and len(v) == 40 else v}`" for k, v in report["official_commits"].items())
        + (f". {a['note']}" if a.get("note") else ""),
        "",
        "Speed-up ratio: ours' speed-up over our vanilla divided by the official one's over official vanilla, "
        "from the paired ratios (this preset's official/ours over vanilla's; >= 1: ours gains at least as much).",
        "",
        "| preset | ours s | official s | identical tokens | speed-up over vanilla (ours / official) | speed-up ratio | official / ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for preset, r in report["results"].items():
        if "skipped" in r:
            lines.append(f"| {preset} | skipped: {r['skipped']} ||||||")
            continue
        up = r.get("speedup_over_vanilla")
        ups = f"{up['ours']:.2f}x / {up['official']:.2f}x" if up else "-"
        relative = f"{r['speedup_ours_over_official']:.3f}" if "speedup_ours_over_official" in r else "-"
        lines.append(
            f"| {preset} | {r['median_s']['ours']:.2f} | {r['median_s']['official']:.2f} | {r['identical_tokens']} | {ups} | {relative} "
            f"| **{r['ratio_official_over_ours']:.2f}** |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
