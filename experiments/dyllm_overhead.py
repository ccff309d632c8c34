"""Where DyLLM's time goes on the tiny trained model (CPU), and why its FLOP savings do not show there.

    .venv/bin/python experiments/dyllm_overhead.py --out results/bench/dyllm_cpu_tiny/overhead.md

One held-out sample per task at ``experiments/eval_tiny.py``'s settings (``bench_dyllm.py``'s cases), three
runs alternated ``--rounds`` times on one torch thread, process CPU time: vanilla at its reference settings,
vanilla under DyLLM's sampler (the engine sampler, EOS early exit) and DyLLM. The first two differ only in
the sampler, the last two only in the method. One profiled run of each splits the time into matrix products,
the CPU body of DyLLM's context operator, and the loop's own Python (``denoise.step``'s self time). Beside it,
a dense pass over R rows for several R: the per-pass cost that does not shrink with the rows.

The ceiling table bounds what any implementation on this CPU could reach: every matrix product and attention
call of one generation is recorded (with its tensors) and replayed back to back, so the products' own time is
known without the work around them. DyLLM runs every op of a vanilla layer (on fewer rows) and its own on top,
so its other work costs at least vanilla's scaled by how much of it remains when a pass has one row (the floor,
measured on a dense pass). Its speed-up is then at most ``vanilla / (DyLLM's products + floor x vanilla's other
work)`` however the rest is implemented: an upper bound, since the floor is applied to vanilla's sampler and loop
too, which do not shrink with the rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dyllm import case_flops, tiny_cases  # noqa: E402

from dllm_accel import build_method, generate  # noqa: E402
from dllm_accel.methods.dyllm import DyLLMConfig  # noqa: E402

RUNS = ("vanilla", "vanilla, DyLLM's sampler", "dyllm")
aten = torch.ops.aten
PRODUCTS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten._scaled_dot_product_flash_attention_for_cpu}


def runner(model, prompt: torch.Tensor, vanilla: dict, dyllm: dict):
    options = {k: v for k, v in dyllm.items() if k in DyLLMConfig.__dataclass_fields__}
    sampler = {k: v for k, v in dyllm.items() if k not in options}

    def run(name: str):
        if name == RUNS[2]:
            run.method = build_method("dyllm", **options)
            return generate(model, prompt, method=run.method, **sampler)
        return generate(model, prompt, method="vanilla", **(vanilla if name == RUNS[0] else sampler))

    return run


class ProductRecorder(TorchDispatchMode):
    """Keeps every matrix product and attention call (op, arguments) that runs under it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in PRODUCTS:
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def products_ms(work, reps: int) -> float:
    """Median milliseconds of ``work()``'s products replayed back to back (their tensors as recorded)."""
    recorder = ProductRecorder()
    with torch.no_grad(), recorder:
        work()
    times = []
    with torch.no_grad():
        for _ in range(reps):
            started = time.process_time()
            for func, args, kwargs in recorder.calls:
                func(*args, **kwargs)
            times.append(time.process_time() - started)
    return statistics.median(times) * 1e3


def split(run, name: str) -> dict[str, float]:
    """Milliseconds of one profiled run: matrix products, DyLLM's context operator (its own code), loop Python."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(name)
    self_ms = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    total = sum(self_ms.values())
    return {
        "total": total,
        "mm": sum(v for k, v in self_ms.items() if k in ("aten::mm", "aten::bmm", "aten::addmm")),
        "context_op": self_ms.get("dllm_accel::dyllm_context", 0.0),
        "loop_python": self_ms.get("denoise.step", 0.0),
    }


def dense_pass_ms(model, rows: int, reps: int = 100) -> float:
    ids, positions = torch.randint(0, 250, (1, rows)), torch.arange(rows)
    with torch.no_grad():
        for _ in range(5):
            model.logits(model.trunk(ids, positions))
        started = time.process_time()
        for _ in range(reps):
            model.logits(model.trunk(ids, positions))
    return (time.process_time() - started) / reps * 1e3


def other_work_ms(model, rows: int, reps: int) -> float:
    """A dense pass's time over ``rows`` rows less its products': the work that shrinks little with the rows."""
    ids, positions = torch.randint(0, 250, (1, rows)), torch.arange(rows)
    return dense_pass_ms(model, rows, reps) - products_ms(lambda: model.logits(model.trunk(ids, positions)), reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, cases = tiny_cases(1)
    lines = [
        "# DyLLM on the tiny trained model: where the time goes (CPU, one thread, process time)",
        "",
        f"`experiments/dyllm_overhead.py --rounds {args.rounds}`: one held-out sample per task, the three runs "
        "alternated, median ms per generation; speed-ups are vanilla's time over the run's.",
        "",
        "| case | positions | DyLLM NFE | vanilla ms | vanilla + DyLLM's sampler ms | DyLLM ms | DyLLM speed-up "
        "| of which the sampler | of which the method |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    profiles, ceilings = {}, []
    one_row = other_work_ms(model, 1, 20)
    for label, prompt, vanilla, dyllm in cases:
        run = runner(model, prompt, vanilla, dyllm)
        times = {name: [] for name in RUNS}
        nfe = {}
        for r in range(args.rounds):
            for name in RUNS[r % 3 :] + RUNS[: r % 3]:
                started = time.process_time()
                nfe[name] = run(name).nfe
                times[name].append((time.process_time() - started) * 1e3)
        ms = {name: statistics.median(v) for name, v in times.items()}
        v, s, d = ms[RUNS[0]], ms[RUNS[1]], ms[RUNS[2]]
        lines.append(
            f"| {label} | {prompt.shape[1] + vanilla['gen_length']} | {nfe[RUNS[2]]} | {v:.1f} | {s:.1f} | {d:.1f} "
            f"| {v / d:.2f}x | {v / s:.2f}x | {s / d:.2f}x |"
        )
        print(lines[-1], flush=True)
        if label.startswith("tiny copy"):
            profiles = {name: split(run, name) for name in RUNS}
        cv, cd = (products_ms(partial(run, name), args.rounds) for name in (RUNS[0], RUNS[2]))
        f_vanilla, f_dyllm = case_flops(model.spec, prompt, vanilla, dyllm, nfe[RUNS[0]], run.method.trace)
        reduction = f_vanilla / f_dyllm
        # how much of a pass's other work remains at 1 row (at most all of it)
        floor = min(1.0, one_row / other_work_ms(model, prompt.shape[1] + vanilla["gen_length"], 20))
        bound = v / (cd + floor * (v - cv))
        ceilings.append(
            f"| {label} | {reduction:.2f}x | {0.7 * reduction:.2f}x | {cv:.1f} | {cd:.1f} | {cv / cd:.2f}x "
            f"| {v - cv:.1f} | {d - cd:.1f} | {floor:.2f} | {bound:.2f}x ({bound / reduction:.0%}) |"
        )
    lines += [
        "",
        "What the products allow (ms: each run's products replayed back to back, the median of as many repeats as"
        " rounds; other work is the run's median time less its products; floor: a dense pass's other work over 1 row"
        " over that over all the case's positions; ceiling: vanilla / (DyLLM's products + floor x vanilla's other"
        " work)):",
        "",
        "| case | FLOP reduction | 70% of it | vanilla products | DyLLM products | products ratio"
        " | vanilla's other work | DyLLM's other work | floor | DyLLM's ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *ceilings,
    ]
    lines += ["", "One profiled run of the copy case (ms, self CPU time):", "",
              "| run | total | matrix products | DyLLM context operator | loop Python (`denoise.step` self) |",
              "|---|---|---|---|---|"]
    for name, p in profiles.items():
        lines.append(f"| {name} | {p['total']:.1f} | {p['mm']:.1f} | {p['context_op']:.1f} | {p['loop_python']:.1f} |")
    lines += ["", "A dense pass (trunk, final norm, head) over R rows:", "", "| R | ms | x the 1-row pass |", "|---|---|---|"]
    one = dense_pass_ms(model, 1)
    for rows in (1, 8, 32, 80, 1027):
        ms = one if rows == 1 else dense_pass_ms(model, rows, 100 if rows < 500 else 10)
        lines.append(f"| {rows} | {ms:.3f} | {ms / one:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
