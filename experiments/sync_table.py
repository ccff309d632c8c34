"""Host syncs per denoising step and aten launches per layer of every method preset and policy.

Counted with ``dllm_accel.profiling.OpCounter`` (a ``TorchDispatchMode``: a sync on CPU is a
sync on CUDA) while ``generate`` runs on the tiny checkpoints: every preset of
``conf/method/*.yaml`` and every registered method with its defaults, plus the decoding
policies no preset selects, both families, batch 1 and a left-padded batch of 4, greedy and
sampled (temperature 0.7, seeded).

    python experiments/sync_table.py --out results/bench/syncs.md
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from dllm_accel import generate, load_model
from dllm_accel.generation.settings import SettingsError
from dllm_accel.methods.registry import available_methods
from dllm_accel.paths import REPO_ROOT, tiny_checkpoint
from dllm_accel.profiling import OpCounter, OpCounts

CONF = REPO_ROOT / "conf" / "method"
FAMILIES = ("llada", "dream")
BASE = {"gen_length": 32, "steps": 16, "block_length": 16}
TEMPERATURE = 0.7
# decoding policies no preset selects, run with the vanilla strategy (and the cached Dream block sampler)
POLICIES = {
    "llada": {
        "llada factor": ("vanilla", {"factor": 1.0}),
        "llada random remasking": ("vanilla", {"remasking": "random"}),
        "llada cfg": ("vanilla", {"cfg_scale": 1.0}),
        "llada eos options": ("vanilla", {"logits_eos_inf": True, "confidence_eos_eot_inf": True}),
        "llada constant count": ("vanilla", {"transfer_schedule": "constant"}),
    },
    "dream": {
        "dream maskgit_plus": ("vanilla", {"alg": "maskgit_plus"}),
        "dream topk_margin top_p top_k": ("vanilla", {"alg": "topk_margin", "top_p": 0.9, "top_k": 50}),
        "dream origin": ("vanilla", {"alg": "origin"}),
        "dream alg_temp": ("vanilla", {"alg": "entropy", "alg_temp": 0.5}),
        "dream quota threshold": ("vanilla", {"alg": "confidence_threshold", "threshold": 0.9}),
        "dream constant count": ("vanilla", {"transfer_schedule": "constant"}),
        "dream block sampler (fixed schedule)": ("fast_dllm", {"mode": "dual", "alg": "entropy"}),
    },
}
# the two methods whose shapes follow saliency may sync once per layer (issue 15)
PER_LAYER_ALLOWED = ("dyllm", "combined_dyllm_dual")
# rows whose sampled steps need a second read, and why
SECOND_READ = {
    "dream origin": "origin commits each mask by chance and samples tokens for exactly the chosen ones: "
    "their number sets the official noise shape, so a sampled step reads it after the mask count",
}


@dataclass(frozen=True)
class Case:
    label: str  # preset file name, "method:<name>" for a registered default, or a policy row
    family: str
    method: str
    settings: dict

    @property
    def per_layer_allowed(self) -> bool:
        return self.method in PER_LAYER_ALLOWED

    def reads_per_step(self, temperature: float) -> int:
        """Host syncs a step may make outside the layer loop."""
        return 2 if temperature > 0 and self.label in SECOND_READ else 1


def cases() -> list[Case]:
    """Every preset, every registered method with its defaults, and the extra policy rows, per family."""
    found = []
    for family in FAMILIES:
        for path in sorted(CONF.glob("*.yaml")):
            entry = yaml.safe_load(path.read_text())
            settings = {**BASE, **(entry.get("sampler") or {}), **(entry.get("options") or {})}
            found.append(Case(path.stem, family, entry["name"], settings))
        for name in available_methods():
            found.append(Case(f"method:{name}", family, name, dict(BASE)))
        for label, (method, extra) in POLICIES[family].items():
            found.append(Case(label, family, method, {**BASE, **extra}))
    return found


def prompts(family: str, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random prompts of 12 tokens; a batch of 4 is left-padded to lengths 12, 9, 7 and 12."""
    model_tokens = 400 if family == "llada" else 1500
    ids = torch.randint(10, model_tokens, (batch, 12), generator=torch.Generator().manual_seed(1))
    if batch == 1:
        return ids, None
    mask = torch.ones_like(ids)
    for row, pads in enumerate((0, 3, 5, 0)[:batch]):
        mask[row, :pads] = 0
    return ids, mask


_MODELS: dict[str, torch.nn.Module] = {}


def tiny(family: str):
    if family not in _MODELS:
        _MODELS[family] = load_model(tiny_checkpoint(family), dtype=torch.float32)
    return _MODELS[family]


def count(case: Case, batch: int, temperature: float, record_sites: bool = True) -> OpCounts | str:
    """Counts of one generate call, or the one-line reason the combination is refused (before any
    forward: an error after a step ran is a failure and propagates)."""
    model = tiny(case.family)
    ids, mask = prompts(case.family, batch)
    settings = {**case.settings, "temperature": temperature}
    torch.manual_seed(0)
    counter = OpCounter(model, record_sites=record_sites)
    try:
        with counter:
            generate(model, ids, mask, method=case.method, **settings)
    except (SettingsError, ValueError) as err:
        if counter.steps:
            raise
        return f"refused: {err}"
    return counter.counts


def table(rows: list[tuple[Case, int, float, OpCounts | str]]) -> str:
    lines = [
        "| preset / policy | family | batch | temperature | syncs/step mean | max | in layers (max/layer) | setup syncs | finish syncs | launches/layer | launches/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, batch, temperature, counts in rows:
        head = f"| {case.label} | {case.family} | {batch} | {temperature:g} |"
        if isinstance(counts, str):
            lines.append(f"{head} {counts.split(':')[0]} | | | | | | |")
            continue
        lines.append(
            f"{head} {counts.mean_syncs_per_step:.2f} | {counts.max_syncs_per_step} | {counts.max_syncs_per_layer} | "
            f"{counts.setup.syncs} | {counts.finish.syncs} | {counts.launches_per_layer:.1f} | {counts.launches_per_step:.0f} |"
        )
    return "\n".join(lines)


def parse(text: str) -> dict[tuple[str, str], list[list[str]]]:
    """A table written by ``table`` -> {(label, family): [row cells]}."""
    rows: dict[tuple[str, str], list[list[str]]] = {}
    for line in text.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10:
            rows.setdefault((cells[0], cells[1]), []).append(cells)
    return rows


def _span(rows: list[list[str]] | None, column: int) -> str:
    values = [float(r[column]) for r in rows or [] if r[column] and not r[column].startswith("refused")]
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:.2f}" if low == high else f"{low:.2f}-{high:.2f}"


def compare(before: str, after: str) -> str:
    """Per preset and family: syncs per step (mean over batch 1/4, greedy/sampled), max inside
    the layer loop, launches per layer; before -> after."""
    old, new = parse(before), parse(after)
    lines = [
        "| preset / policy | syncs per step LLaDA | syncs per step Dream | max per layer | launches per layer LLaDA / Dream |",
        "|---|---|---|---|---|",
    ]
    labels = list(dict.fromkeys(label for label, _ in new))
    for label in labels:
        cells = []
        for family in FAMILIES:
            cells.append(f"{_span(old.get((label, family)), 4)} -> {_span(new.get((label, family)), 4)}")
        in_layers = [_span(side.get((label, f)), 6) for side in (old, new) for f in FAMILIES]
        launches = [_span(side.get((label, f)), -2) for side in (old, new) for f in FAMILIES]
        lines.append(
            f"| {label} | {cells[0]} | {cells[1]} | {in_layers[0]}/{in_layers[1]} -> {in_layers[2]}/{in_layers[3]} | "
            f"{launches[0]}/{launches[1]} -> {launches[2]}/{launches[3]} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    parser.add_argument("--sites", action="store_true", help="print where each sync comes from")
    parser.add_argument("--only", default=None, help="labels containing this string")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="summarise two tables, then stop")
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(args.compare[0].read_text(), args.compare[1].read_text()))
        return 0
    torch.set_num_threads(1)
    rows = []
    for case in cases():
        if args.only and args.only not in case.label:
            continue
        for batch in (1, 4):
            for temperature in (0.0, TEMPERATURE):
                counts = count(case, batch, temperature)
                rows.append((case, batch, temperature, counts))
                if args.sites and not isinstance(counts, str):
                    print(f"# {case.label} {case.family} b{batch} t{temperature}: {counts.summary()}")
                    for (where, op), n in counts.sites.most_common():
                        print(f"    {n:5d}  {op:22s} {where}")
    text = table(rows)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
