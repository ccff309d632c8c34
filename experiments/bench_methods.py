"""Speed of every method preset on full-size random-weight LLaDA-8B and Dream-7B.

Every preset in ``conf/method/`` (each names a registered method) runs at batch 1 and 8,
generation 256 and 1024 (block 32, one step per token unless the preset decodes in
parallel; the shape overrides a preset's own), after a warm-up at the timed shape, ``--repeats`` timed runs each. With
``--compile both`` each point runs eager and compiled alternately (E C E C ...), so the
two see the same machine. Recorded per point, from raw counts: median seconds and the
spread, generated tokens (all positions; up to the first EOS), NFE, tokens per forward
(TPF = generated positions per sequence / NFE), tokens/s, peak memory, and the
environment fingerprint. Writes ``<out>/<tag>.json`` and ``<out>/<tag>.md``.

Points run cheapest first; with ``--time-budget`` a point whose estimate (its warm-up
times the runs left) does not fit is recorded as skipped, so one command ends in time.

    python experiments/bench_methods.py --device cuda --time-budget 420 --tag h200
    python experiments/bench_methods.py --smoke            # CPU, tiny configs (CI)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vanilla import FULL_SIZE, write_config  # noqa: E402

from dllm_accel import generate, load_model  # noqa: E402
from dllm_accel.demo import method_configs  # noqa: E402
from dllm_accel.measure import environment  # noqa: E402
from dllm_accel.paths import REPO_ROOT  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generated_counts(sequences: torch.Tensor, prompt_length: int, spec) -> dict[str, int]:
    """Generated positions (masks left by an early stop excluded) and positions before each row's first EOS/EoT."""
    gen = sequences[:, prompt_length:]
    decoded = gen != spec.tokens.mask
    ends = gen == spec.tokens.eos
    if spec.tokens.eot is not None:
        ends |= gen == spec.tokens.eot
    width = gen.shape[1]
    first_end = torch.where(ends.any(dim=1), ends.int().argmax(dim=1), width)
    return {"all_positions": int(decoded.sum()), "to_eos": int(first_end.sum())}


def timed_run(model, prompt: torch.Tensor, entry: dict, settings: dict, compiled: bool) -> dict:
    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    synchronize(device)
    start = time.perf_counter()
    out = generate(model, prompt, method=entry["name"], compile=compiled, **settings)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"seconds": seconds, "nfe": out.nfe, "peak_bytes": peak, "sequences": out.sequences.cpu()}


def summarise_runs(runs: list[dict], batch: int, prompt_length: int, spec) -> dict:
    seconds = [r["seconds"] for r in runs]
    counts = generated_counts(runs[0]["sequences"], prompt_length, spec)
    median = statistics.median(seconds)
    nfe = runs[0]["nfe"]
    peaks = [r["peak_bytes"] for r in runs if r["peak_bytes"] is not None]
    return {
        "repeats": len(runs),
        "seconds_median": median,
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
        "spread_pct": (max(seconds) - min(seconds)) / median * 100,
        "seconds_all": seconds,
        "nfe": nfe,
        "generated_tokens": counts["all_positions"],
        "generated_tokens_to_eos": counts["to_eos"],
        "tokens_per_s": counts["all_positions"] / median,
        "tokens_per_s_to_eos": counts["to_eos"] / median,
        "tpf": counts["all_positions"] / batch / nfe,
        "peak_memory_gib": max(peaks) / 2**30 if peaks else None,
        "same_output_every_run": all(torch.equal(r["sequences"], runs[0]["sequences"]) for r in runs),
    }


def points(args: argparse.Namespace, entries: list[dict]) -> list[dict]:
    """Every (model, preset, batch, gen) point, cheapest shapes first."""
    out = []
    for gen in sorted(args.gen):
        for batch in sorted(args.batch):
            for model in args.models:
                for entry in entries:
                    out.append({"model": model, "entry": entry, "batch": batch, "gen": gen})
    return out


def run_point(model, point: dict, args: argparse.Namespace, deadline: float | None) -> dict:
    entry, batch, gen = point["entry"], point["batch"], point["gen"]
    # the preset's decoding rules and options at the benchmark's shared shape
    settings = {
        **(entry.get("sampler") or {}),
        **(entry.get("options") or {}),
        "gen_length": gen,
        "steps": gen,
        "block_length": min(args.block, gen),
    }
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.spec.tokens.eos - 1, (batch, args.prompt), generator=generator).to(model.device)
    record = {
        "model": point["model"],
        "preset": entry["preset"],
        "method": entry["name"],
        "batch": batch,
        "prompt_length": args.prompt,
        "gen_length": gen,
        "block_length": settings["block_length"],
    }
    started = time.perf_counter()
    warm = {}
    for compiled in modes:  # warm-up at the timed shape (compiles, captures graphs)
        warm[compiled] = timed_run(model, prompt, entry, settings, compiled)["seconds"]
    estimate = sum(warm.values()) * args.repeats
    if deadline is not None and time.perf_counter() + estimate > deadline:
        return record | {"skipped": f"estimated {estimate:.0f} s does not fit the time budget"}
    runs: dict[bool, list[dict]] = {c: [] for c in modes}
    for _ in range(args.repeats):
        for compiled in modes:
            runs[compiled].append(timed_run(model, prompt, entry, settings, compiled))
    for compiled in modes:
        record["compiled" if compiled else "eager"] = summarise_runs(runs[compiled], batch, args.prompt, model.spec)
    if len(modes) == 2:
        pairs = [e["seconds"] / c["seconds"] for e, c in zip(runs[False], runs[True], strict=True)]
        record["speedup_compiled_over_eager"] = statistics.median(pairs)
        record["compiled_equals_eager"] = torch.equal(runs[False][0]["sequences"], runs[True][0]["sequences"])
    record["wall_s"] = time.perf_counter() - started
    return record


def markdown(report: dict) -> str:
    lines = [
        f"# bench_methods: {report['tag']}" + (" (--smoke: the tiny fixture configs under the full-size names)" if report["args"]["smoke"] else ""),
        "",
        f"Device {report['environment']['gpu'] or report['environment']['cpu']}, torch {report['environment']['torch']}, "
        f"{report['args']['dtype']}, prompt {report['args']['prompt']}, block {report['args']['block']}. "
        f"Each figure: median of {report['args']['repeats']} timed runs after a warm-up at the same shape; "
        "spread = (max - min) / median. tok/s counts every generated position; TPF = positions per sequence / NFE.",
        "",
        "| model | preset | batch | gen | mode | median s | spread | tok/s | tok/s to EOS | NFE | TPF | peak GiB | compiled/eager |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["points"]:
        head = f"| {r['model']} | {r['preset']} | {r['batch']} | {r['gen_length']} "
        if "skipped" in r:
            lines.append(head + f"| skipped: {r['skipped']} |||||||||")
            continue
        for mode in ("eager", "compiled"):
            if mode not in r:
                continue
            m = r[mode]
            peak = "-" if m["peak_memory_gib"] is None else f"{m['peak_memory_gib']:.2f}"
            speedup = r.get("speedup_compiled_over_eager")
            ratio = f"{speedup:.2f}x" if mode == "compiled" and speedup is not None else ""
            lines.append(
                head + f"| {mode} | {m['seconds_median']:.3f} | {m['spread_pct']:.0f}% | {m['tokens_per_s']:.1f} | "
                f"{m['tokens_per_s_to_eos']:.1f} | {m['nfe']} | {m['tpf']:.2f} | {peak} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(FULL_SIZE), choices=list(FULL_SIZE))
    parser.add_argument("--presets", nargs="+", help="preset names under conf/method (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--gen", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off")
    parser.add_argument(
        "--time-budget", type=float, help="seconds for the whole command; points that do not fit are skipped"
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="tiny fixture configs, for a CPU check of this script")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results" / "bench")
    parser.add_argument("--tag", default="methods")
    argv = sys.argv[1:] if argv is None else argv
    if "--smoke" in argv:
        parser.set_defaults(
            device="cpu", dtype="float32", batch=[1, 2], gen=[16], prompt=16, block=8, repeats=2, threads=1
        )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats} must be >= 1")
    entries = method_configs()
    if args.presets:
        unknown = sorted(set(args.presets) - {e["preset"] for e in entries})
        if unknown:
            parser.error(f"unknown preset {unknown[0]!r} (accepted: {', '.join(e['preset'] for e in entries)})")
        entries = [e for e in entries if e["preset"] in args.presets]
    start = time.perf_counter()
    deadline = None if args.time_budget is None else start + args.time_budget
    device = torch.device(args.device)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for name in args.models:
            path = write_config(name, Path(tmp), args.smoke)
            models[name] = load_model(path, dtype=args.dtype, device=device, random_weights=True)
        for point in points(args, entries):
            if deadline is not None and time.perf_counter() > deadline:
                records.append(
                    {
                        "model": point["model"],
                        "preset": point["entry"]["preset"],
                        "batch": point["batch"],
                        "gen_length": point["gen"],
                        "skipped": "time budget spent",
                    }
                )
                continue
            try:
                records.append(run_point(models[point["model"]], point, args, deadline))
            except (ValueError, torch.cuda.OutOfMemoryError) as err:  # a preset that cannot run this shape
                records.append(
                    {
                        "model": point["model"],
                        "preset": point["entry"]["preset"],
                        "batch": point["batch"],
                        "gen_length": point["gen"],
                        "skipped": f"{type(err).__name__}: {err}",
                    }
                )
            print(json.dumps({k: v for k, v in records[-1].items() if k not in ("eager", "compiled")}), flush=True)
    report = {
        "tag": args.tag,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment(device, getattr(torch, args.dtype)),
        "total_s": time.perf_counter() - start,
        "points": records,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / f"{args.tag}.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
