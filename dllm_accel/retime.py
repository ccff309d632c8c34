"""``python -m dllm_accel.retime <sweep dir>``: every point of a finished sweep timed again, interleaved.

A sweep times each point once, at its own moment; on a shared CPU the machine's speed drifts
between points, so speed-ups read across the sweep's table can point the wrong way. This replays
the first ``--calls`` generate calls of every point (the prompts, settings and seeds the sweep
used, checked against the ids it recorded) for ``--repeats`` rounds, each round running every
point once in a rotated order, and prints per point the median throughput, the spread of the
rounds, the speed-up over the sweep's vanilla point as the median of same-round ratios, and the
memory the method itself holds: on CPU the peak bytes of tensors alive during one extra, untimed
call (weights and prompt excluded), on a GPU the allocator's peak above what was allocated before.

    python -m dllm_accel.retime outputs/demo/sweep --repeats 5 --calls 2

Accuracy and NFE per token are the sweep's (all its samples). The models of a sweep stay loaded
together: meant for sweeps that fit one machine (``make demo``'s, the tiny models').
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

REPEATS = 5
CALLS = 2
MIB = 1024**2


@dataclass
class Call:
    """One recorded generate call: its left-padded prompts, seed, and the ids the sweep generated."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    seed: int
    expected: list[list[int]]


@dataclass
class Replay:
    """A point's first generate calls, ready to run again on its model."""

    model: Any
    method: str
    options: dict
    settings: dict
    threads: int | None
    calls: list[Call]
    positions: int  # generated positions over the calls: the tok/s numerator
    live_bytes: int | None = field(default=None)

    def _generate(self, call: Call):
        from .api import generate
        from .methods import build_method

        torch.manual_seed(call.seed)
        strategy = build_method(self.method, **self.options)
        device = self.model.device
        mask = None if call.attention_mask is None else call.attention_mask.to(device)
        return generate(self.model, call.input_ids.to(device), mask, method=strategy, **self.settings)

    def run(self) -> float:
        """Seconds for all the calls (synchronized on a GPU); fails if any call generates other ids."""
        if self.threads:
            torch.set_num_threads(self.threads)
        seconds = 0.0
        for call in self.calls:
            _sync(self.model.device)
            start = time.perf_counter()
            out = self._generate(call)
            _sync(self.model.device)
            seconds += time.perf_counter() - start
            if out.sequences[:, call.input_ids.shape[1] :].tolist() != call.expected:
                raise RuntimeError("the replay generated other ids than the sweep recorded")
        return seconds

    def measure_memory(self) -> int:
        """Peak bytes the first call's own tensors held (see the module docstring)."""
        from .measure import LiveTensorPeak

        device = self.model.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            self._generate(self.calls[0])
            return torch.cuda.max_memory_allocated(device) - base
        with LiveTensorPeak() as tracker:
            self._generate(self.calls[0])
        return tracker.peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recorded_calls(records: list[dict], limit: int) -> list[list[dict]]:
    """The run's first ``limit`` generate calls, each the records of one timed batch in batch order."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        if record.get("status") != "ok" or record.get("kind") == "loglikelihood" or "generated_ids" not in record:
            continue
        key = (record["process"], record["timing"]["batch_id"])
        if key not in groups and len(groups) == limit:
            break
        groups.setdefault(key, []).append(record)
    return list(groups.values())


class Models:
    """Each distinct model of a sweep loaded once, with its tokenizer."""

    def __init__(self) -> None:
        self.loaded: dict[tuple, tuple[Any, Any]] = {}

    def get(self, config: dict) -> tuple[Any, Any]:
        from .eval.byte_tokenizer import build_tokenizer
        from .models import load_model
        from .run import _device, scale_rope_theta

        m = config["model"]
        key = (m["path"], m["dtype"], m["device"], m["random_weights"], m["rope_scaling"], m.get("tokenizer"))
        if key not in self.loaded:
            model = load_model(
                m["path"], dtype=m["dtype"], device=_device(m["device"]), random_weights=m["random_weights"]
            )
            scale_rope_theta(model, m["rope_scaling"])
            self.loaded[key] = (model, build_tokenizer(m.get("tokenizer"), m["path"], model.spec))
        return self.loaded[key]


def replay_of(summary: dict, models: Models, calls: int) -> Replay:
    """The point's replay, from its results folder (resolved config and sample records)."""
    from .eval.lm import batch_seed, left_padded
    from .eval.prompting import encode
    from .results import read_samples
    from .run import sampler_settings

    run_dir = Path(summary["run_dir"])
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found (run the retime from the folder the sweep ran in)")
    config = yaml.safe_load(config_path.read_text())
    model, tokenizer = models.get(config)
    groups = recorded_calls(read_samples(run_dir), calls)
    if not groups:
        raise ValueError(f"{run_dir} holds no generated samples to replay")
    settings = {k: v for k, v in sampler_settings(config).items() if v is not None}
    if not (settings.keys() & {"gen_length", "max_new_tokens"}):  # the request's max_gen_toks decided it
        settings["gen_length"] = len(groups[0][0]["generated_ids"])
    replayed = []
    for group in groups:
        ids, mask = left_padded([encode(tokenizer, r["prompt_text"]) for r in group], model.spec.tokens.pad)
        seed = batch_seed(config["seed"], group[0]["task"], group[0]["doc_id"])
        replayed.append(Call(ids, mask if len(group) > 1 else None, seed, [r["generated_ids"] for r in group]))
    return Replay(
        model=model,
        method=config["method"]["name"],
        options=dict(config["method"].get("options") or {}),
        settings=settings,
        threads=config.get("cpu_threads"),
        calls=replayed,
        positions=sum(r["tokens"]["all_positions"] for group in groups for r in group),
    )


def paired_speedup(mine: list[float], vanilla: list[float], positions: int, vanilla_positions: int) -> float:
    """Median over rounds of this point's tok/s over the vanilla point's tok/s in the same round."""
    ratios = [(positions / t) / (vanilla_positions / v) for t, v in zip(mine, vanilla, strict=True)]
    return statistics.median(ratios)


HEADER = (
    f"{'model':<20} {'point':<40} {'task':<18} {'accuracy':>9} {'tok/s':>9} {'spread':>7} {'speed-up':>8} "
    f"{'NFE/tok':>8} {'live MiB':>9}"
)


def legend(repeats: int, calls: int, device: str) -> list[str]:
    memory = (
        "live MiB: peak bytes of tensors alive during one extra, untimed call (weights and prompt excluded; "
        "CPU keeps no allocator statistics)"
        if device != "cuda"
        else "live MiB: the allocator's peak during one extra call, above what was allocated before it"
    )
    return [
        f"re-timed: the first {calls} generate calls of every point (the sweep's prompts, settings and seeds), "
        f"{repeats} rounds, each running every point once in a rotated order",
        "tok/s: median over the rounds; spread: (max - min) / median of the rounds; speed-up: median over the "
        "rounds of tok/s / the vanilla point's tok/s in the same round",
        memory,
        "accuracy and NFE/tok: the sweep's, over all its samples",
    ]


def table(summaries: list[dict], replays: dict[int, Replay | str], timed: dict[int, list[float] | str]) -> list[str]:
    from .eval.report import _fmt, _without, common_settings, point_label, vanilla_of
    from .measure import spread

    shared = common_settings(summaries)
    rows = [HEADER]
    for i, (summary, base) in enumerate(zip(summaries, vanilla_of(summaries), strict=True)):
        name = f"{summary['model']:<20} {_without(point_label(summary), shared):<40} {summary['task']:<18}"
        result = timed.get(i, replays[i])
        if isinstance(result, str):
            rows.append(f"{name} {result}")
            continue
        replay = replays[i]
        rate = replay.positions / statistics.median(result)
        speedup = None
        if base is not None and not isinstance(timed.get(base, replays[base]), str):
            speedup = paired_speedup(result, timed[base], replay.positions, replays[base].positions)
        live = None if replay.live_bytes is None else replay.live_bytes / MIB
        rows.append(
            f"{name} {_fmt(summary['accuracy']['value']):>9} {rate:>9.2f} {spread(result) * 100:>6.0f}% "
            f"{'-' if speedup is None else f'{speedup:.2f}x':>8} "
            f"{_fmt(summary['measurement']['all']['nfe_per_token']):>8} {_fmt(live, '.2f'):>9}"
        )
    common = ["every point: " + " ".join(f"{k}={v}" for k, v in shared.items())] if shared else []
    return [*common, *rows]


def retime(sweep_dir: Path, repeats: int = REPEATS, calls: int = CALLS) -> tuple[str, int]:
    """The re-timed table of a sweep and the number of points that could not be re-timed."""
    from .eval.report import sweep_summaries
    from .measure import interleaved

    summaries = sweep_summaries(sweep_dir)
    if not summaries:
        raise FileNotFoundError(f"no <job>/summary.json under {sweep_dir}: not a finished sweep's folder")
    models = Models()
    replays: dict[int, Replay | str] = {}
    for i, summary in enumerate(summaries):
        try:
            replays[i] = replay_of(summary, models, calls)
        except (OSError, ValueError, KeyError) as err:
            replays[i] = f"FAILED: {type(err).__name__}: {err}"
    # a warm-up round, not counted: first-call costs of each method, and the check of the replayed ids
    warm = interleaved({i: r.run for i, r in replays.items() if not isinstance(r, str)}, 1)
    runnable = {i: replays[i] for i, result in warm.items() if not isinstance(result, str)}
    timed = warm | interleaved({i: r.run for i, r in runnable.items()}, repeats)
    for i, replay in runnable.items():
        if not isinstance(timed[i], str):
            replay.live_bytes = replay.measure_memory()
    device = next(iter(runnable.values())).model.device.type if runnable else "cpu"
    failed = sum(isinstance(timed.get(i, r), str) for i, r in replays.items())
    return "\n".join([*legend(repeats, calls, device), *table(summaries, replays, timed)]), failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a finished multirun's folder (hydra.sweep.dir)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="rounds (default %(default)s)")
    parser.add_argument("--calls", type=int, default=CALLS, help="generate calls per point and round")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.calls < 1:
        print(f"--repeats {args.repeats} and --calls {args.calls} must be >= 1", file=sys.stderr)
        return 2
    try:
        text, failed = retime(args.sweep_dir, args.repeats, args.calls)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    print(text, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
