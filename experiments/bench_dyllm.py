"""DyLLM on CPU: its speed-up over vanilla next to its FLOP reduction, before and after issue 15.

    .venv/bin/python experiments/bench_dyllm.py --out results/bench/dyllm_cpu
    .venv/bin/python experiments/bench_dyllm.py --quick --out /tmp/dyllm   # a smoke run

Two settings:

- the tiny trained model (``checkpoints/tiny-llada``) at ``experiments/eval_tiny.py``'s settings:
  each task's generation window, every preset's sampler options (DyLLM's: the engine sampler,
  top-p 1.0, EOS early exit), vanilla at the reference settings; passkey at 1024 and the copy and
  arithmetic tasks, DyLLM at threshold 0.99. Passkey generates 3 tokens in 3 steps, all dense
  under the preset's 4 dense steps, so it runs once more with 1 dense step;
- a mid-size random-weight LLaDA (d_model 512, 8 layers, 8 heads, MLP 1536, the tiny vocabulary),
  prompt 256, gen 256, 256 steps, blocks of 32, DyLLM's engine sampler for both methods (no EOS
  exit: random weights would stop at random places).

Three implementations run each sample in turn, in rotating order, ``--rounds`` times: vanilla,
DyLLM as it was before issue 15 (its two modules read from git at ``--before``, run on today's
loop) and DyLLM now. Time is the process's CPU time on one torch thread (the shared machine ran
far more jobs than cores, so wall time measured the other jobs; wall seconds are kept too). Per
method the speed-up is the median over (sample, round) of the paired ratio vanilla time / method
time. Outputs of before and after are compared token for token.

The FLOP reduction is computed from the salient counts the new run recorded, per step and layer,
with the engine's work per layer (spec B.2): q projection and o projection of every query row,
K/V projection and exact attention of the rows salient after the previous layer (at layer 0 the
tokens decoded in the previous step: ``gen_length // steps`` per request), q K^T of every query
row over every key, the PV product of every query row over the salient keys, the FFN of the rows
salient after this layer; the head over every query row. Dense steps and vanilla cost a full
forward. Reduction = vanilla FLOPs / DyLLM FLOPs over the generation.

Other jobs were running on the machine (2 cores shared by 8 people, load average 20+): CPU time,
the alternation and paired ratios are there to survive that, not to hide it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dllm_accel import build_method, generate, load_model, load_tokenizer  # noqa: E402
from dllm_accel.paths import tiny_checkpoint  # noqa: E402
from dllm_accel.synthetic_tasks import held_out_samples  # noqa: E402
from dllm_accel.train import TASKS  # noqa: E402
from dllm_accel.train.evaluate import preset_settings, runnable_presets  # noqa: E402

BEFORE = "88be02a"  # the last commit before issue 15 that touched dllm_accel/methods/dyllm.py
THRESHOLD = 0.99
PASSKEY_NOTE = (
    "Passkey at 1024 generates 3 tokens in 3 steps, all dense under the preset's 4 dense steps (FLOP reduction 1.00:"
    " DyLLM cannot be faster than vanilla there); the num_full_steps=1 row runs its sparse path on the same prompts."
)
MID = {"d_model": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 8, "mlp_hidden_size": 1536}


def load_before(rev: str) -> type:
    """The DyLLM strategy class as it was at ``rev``, unregistered, on today's package."""
    modules = {}
    for name in ("dyllm_kernel", "dyllm"):
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:dllm_accel/methods/{name}.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        source = source.replace("from ..", "from dllm_accel.").replace("from .base", "from dllm_accel.methods.base")
        source = source.replace("from .dyllm_kernel", "from dyllm_before_kernel")
        source = source.replace("from .registry import register\n", "").replace("@register\n", "")
        module = types.ModuleType(f"dyllm_before_{name.split('_')[-1]}" if name != "dyllm" else "dyllm_before")
        module_name = "dyllm_before_kernel" if name == "dyllm_kernel" else "dyllm_before"
        module.__name__ = module_name
        sys.modules[module_name] = module
        exec(compile(source, f"{rev}:{name}.py", "exec"), module.__dict__)
        modules[name] = module
    return modules["dyllm"].DyLLM


def layer_flops(spec, queries: int, keys: int, kv_rows: int, ffn_rows: int, dense: bool) -> float:
    d, hd, kv, m = spec.d_model, spec.n_heads * spec.head_dim, spec.kv_dim, spec.mlp_hidden
    if dense:
        return 2 * keys * d * (hd + 2 * kv) + 2 * keys * hd * d + 4 * keys * keys * hd + 6 * keys * d * m
    projections = 2 * queries * d * hd + 2 * kv_rows * d * 2 * kv + 2 * queries * hd * d
    attention = 4 * kv_rows * keys * hd + 2 * queries * keys * hd + 2 * queries * kv_rows * hd
    return projections + attention + 6 * ffn_rows * d * m


def generation_flops(spec, trace, length: int, gen: int, per_step: int) -> float:
    """DyLLM's FLOPs over one batch-1 generation from its trace (kinds and salient counts)."""
    head = 2 * spec.d_model * spec.vocab_size
    total = 0.0
    for record in trace:
        if record.kind == "full":
            total += spec.n_layers * layer_flops(spec, length, length, length, length, True) + head * length
            continue
        queries = gen if record.kind == "pruned" else length
        counts = [int(c.sum()) for c in record.counts]
        kv_rows = per_step
        for layer in range(spec.n_layers):
            total += layer_flops(spec, queries, length, kv_rows, counts[layer], False)
            kv_rows = counts[layer]
        total += head * queries
    return total


def vanilla_flops(spec, steps: int, length: int) -> float:
    head = 2 * spec.d_model * spec.vocab_size
    return steps * (spec.n_layers * layer_flops(spec, length, length, length, length, True) + head * length)


def case_flops(spec, prompt: torch.Tensor, vanilla: dict, dyllm: dict, nfe_vanilla: int, trace) -> tuple[float, float]:
    """Vanilla's and DyLLM's FLOPs over one case (DyLLM's from the trace of its run)."""
    length, gen = prompt.shape[1] + vanilla["gen_length"], vanilla["gen_length"]
    per_step = dyllm["gen_length"] // dyllm.get("steps", dyllm["gen_length"])
    return vanilla_flops(spec, nfe_vanilla, length), generation_flops(spec, trace, length, gen, per_step)


def timed(model, prompt, method, settings) -> tuple[float, torch.Tensor, object]:
    """CPU seconds of this process (one torch thread: the machine's other jobs do not count), and wall."""
    started, wall = time.process_time(), time.perf_counter()
    out = generate(model, prompt, method=method, **settings)
    timed.wall = time.perf_counter() - wall
    return time.process_time() - started, out.sequences, out


def compare(model, cases: list[tuple[str, torch.Tensor, dict, dict]], before_cls, rounds: int) -> dict:
    """Every case (label, prompt, vanilla settings, dyllm settings) x rounds, methods rotating."""
    rows = []
    for label, prompt, vanilla, dyllm in cases:
        options = {k: v for k, v in dyllm.items() if k in before_cls.Config.__dataclass_fields__}
        sampler = {k: v for k, v in dyllm.items() if k not in options}
        walls = {"vanilla": [], "before": [], "after": []}
        clocks = {"vanilla": [], "before": [], "after": []}
        for r in range(rounds):
            order = ["vanilla", "before", "after"]
            order = order[r % 3 :] + order[: r % 3]
            for name in order:
                if name == "vanilla":
                    wall, seq_v, out_v = timed(model, prompt, "vanilla", vanilla)
                elif name == "before":
                    wall, seq_b, _ = timed(model, prompt, before_cls(before_cls.Config(**options)), sampler)
                else:
                    after = build_method("dyllm", **options)
                    wall, seq_a, out_a = timed(model, prompt, after, sampler)
                walls[name].append(wall)
                clocks[name].append(timed.wall)
        length = prompt.shape[1] + vanilla["gen_length"]
        f_vanilla, f_dyllm = case_flops(model.spec, prompt, vanilla, dyllm, out_v.nfe, after.trace)
        fractions = after.salient_fractions
        rows.append(
            {
                "case": label,
                "length": length,
                "cpu_seconds": walls,
                "wall_seconds": clocks,
                "speedup_after": [v / a for v, a in zip(walls["vanilla"], walls["after"], strict=True)],
                "speedup_before": [v / b for v, b in zip(walls["vanilla"], walls["before"], strict=True)],
                "after_over_before": [b / a for b, a in zip(walls["before"], walls["after"], strict=True)],
                "flops_vanilla": f_vanilla,
                "flops_dyllm": f_dyllm,
                "flop_reduction": f_vanilla / f_dyllm,
                "nfe_vanilla": out_v.nfe,
                "nfe_dyllm": out_a.nfe,
                "salient_fraction_mean": float(fractions.mean()) if fractions.numel() else None,
                "sparse_steps": int(fractions.shape[0]),
                "before_equals_after": bool(torch.equal(seq_b, seq_a)),
            }
        )
        row = rows[-1]
        print(
            f"{label:28s} speed-up after {statistics.median(row['speedup_after']):.2f}x "
            f"before {statistics.median(row['speedup_before']):.2f}x  FLOP reduction {row['flop_reduction']:.2f}x "
            f"salient {row['salient_fraction_mean']}  same tokens {row['before_equals_after']}",
            flush=True,
        )
    return rows


def tiny_cases(samples: int) -> tuple[object, list]:
    model = load_model(REPO / "checkpoints" / "tiny-llada", dtype=torch.float32)
    tokenizer = load_tokenizer(REPO / "checkpoints" / "tiny-llada")
    entry = next(e for e in runnable_presets() if e["preset"] == "dyllm")
    cases = []
    for task, length in (("passkey", 1024), ("copy", None), ("arithmetic", None)):
        spec = TASKS[task]
        vanilla = preset_settings({"name": "vanilla"}, spec)
        dyllm = {**preset_settings(entry, spec), "threshold": THRESHOLD}
        for i, sample in enumerate(held_out_samples(task, samples, length)):
            ids = torch.tensor([tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]])
            cases.append((f"tiny {task}{'@' + str(length) if length else ''} #{i}", ids, vanilla, dyllm))
            if task == "passkey":  # its 3 steps are all dense at the preset's 4: also with 1 dense step
                sparse = {**dyllm, "num_full_steps": 1}
                cases.append((f"tiny passkey@1024 num_full_steps=1 #{i}", ids, vanilla, sparse))
    return model, cases


def mid_cases(samples: int, gen: int, prompt_length: int) -> tuple[object, list]:
    config = json.loads((tiny_checkpoint("llada") / "config.json").read_text())
    config.update(MID)
    directory = Path(tempfile.mkdtemp())
    (directory / "config.json").write_text(json.dumps(config))
    model = load_model(directory, dtype=torch.float32, random_weights=True, seed=0)
    sampler = {"sampler": "dyllm", "top_p": 1.0, "gen_length": gen, "steps": gen, "block_length": 32}
    dyllm = {**sampler, "threshold": THRESHOLD, "num_full_steps": 4, "prune_period": 4, "kernel": "fixed"}
    generator = torch.Generator().manual_seed(0)
    cases = []
    for i in range(samples):
        ids = torch.randint(0, model.spec.tokens.eos - 1, (1, prompt_length), generator=generator)
        cases.append((f"mid d512x8 p{prompt_length} g{gen} #{i}", ids, sampler, dyllm))
    return model, cases


def summarise(rows: list[dict]) -> list[str]:
    lines = [
        "| case | length | DyLLM speed-up now | before | now / before | FLOP reduction | speed-up / FLOP reduction |"
        " salient fraction | sparse steps | same tokens as before |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["case"].split(" #")[0], []).append(row)
    for name, group in groups.items():
        after = statistics.median(x for r in group for x in r["speedup_after"])
        before = statistics.median(x for r in group for x in r["speedup_before"])
        gain = statistics.median(x for r in group for x in r["after_over_before"])
        reduction = sum(r["flops_vanilla"] for r in group) / sum(r["flops_dyllm"] for r in group)
        fractions = [r["salient_fraction_mean"] for r in group if r["salient_fraction_mean"] is not None]
        fraction = f"{statistics.mean(fractions):.3f}" if fractions else "-"
        same = sum(r["before_equals_after"] for r in group)
        lines.append(
            f"| {name} ({len(group)} samples) | {group[0]['length']} | {after:.2f}x | {before:.2f}x | {gain:.2f}x |"
            f" {reduction:.2f}x | {after / reduction:.2f} | {fraction} | {statistics.mean(r['sparse_steps'] for r in group):.0f} |"
            f" {same}/{len(group)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "dyllm_cpu")
    parser.add_argument("--samples", type=int, default=6, help="tiny-model samples per task")
    parser.add_argument("--mid-samples", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--quick", action="store_true", help="2 tiny samples, 1 round, a mid run of gen 64")
    parser.add_argument("--only", choices=("tiny", "mid"), help="one of the two settings")
    parser.add_argument("--gen", type=int, default=256, help="mid-size model: tokens generated (= steps)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    before_cls = load_before(args.before)
    samples, rounds, gen = (2, 1, 64) if args.quick else (args.samples, args.rounds, args.gen)
    rows = []
    with torch.no_grad():
        if args.only != "mid":
            model, cases = tiny_cases(samples)
            generate(model, cases[0][1], method="vanilla", **cases[0][2])  # warm-up
            rows += compare(model, cases, before_cls, rounds)
        if args.only != "tiny":
            model, cases = mid_cases(args.mid_samples, gen, 256)
            rows += compare(model, cases, before_cls, rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "before": args.before,
        "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "threshold": THRESHOLD,
        "rounds": rounds,
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
        "note": "process CPU time; medians of paired ratios",
    }
    (args.out / "bench_dyllm.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        f"DyLLM on CPU ({meta['threads']} threads, torch {meta['torch']}, commit {meta['commit']}, before = {meta['before']});"
        f" threshold {THRESHOLD}; {rounds} rounds; {meta['note']}; load average {meta['load_average']['start']:.1f}"
        f" at the start, {meta['load_average']['end']:.1f} at the end.",
        "",
        *summarise(rows),
    ]
    if args.only != "mid":
        lines += ["", PASSKEY_NOTE]
    (args.out / "bench_dyllm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
