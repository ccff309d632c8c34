"""``python -m dllm_accel.run --help``, answered from the ``conf/`` tree without importing torch.

Hydra's own help composes every config group (tens of seconds with this many method presets);
it stays available as ``--hydra-help``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CONF = Path(__file__).resolve().parents[1] / "conf"
HELP_FLAGS = {"-h", "--help"}
GROUPS = ("model", "method", "task", "experiment", "hydra/launcher")


def wants_help(argv: list[str]) -> bool:
    return bool(HELP_FLAGS & set(argv))


def options(group: str, conf: Path = CONF) -> list[str]:
    """A group's options; a sub-folder (presets, an experiment's point groups) shows as one entry."""
    root = conf / group
    plain = sorted(p.stem for p in root.glob("*.yaml"))
    folders = sorted(f"{p.name}/... ({sum(1 for _ in p.rglob('*.yaml'))})" for p in root.iterdir() if p.is_dir())
    return plain + folders


def defaults(conf: Path = CONF) -> dict[str, str]:
    """The group choices ``conf/config.yaml`` makes when the command line makes none."""
    chosen = {}
    for entry in yaml.safe_load((conf / "config.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            (key, value), = entry.items()
            if key in GROUPS:
                chosen[key] = value
    return chosen


def help_text(conf: Path = CONF) -> str:
    chosen = defaults(conf)
    lines = [
        "usage: python -m dllm_accel.run [group=option ...] [key=value ...]",
        "       python -m dllm_accel.run -m method=vanilla,fast_dllm_dual task=gsm8k   (a sweep, one run per point)",
        "",
        "Evaluates one model x method x task point through lm-eval, records every sample in the results",
        "store (a rerun skips finished samples) and prints a summary row.",
        "With no arguments: " + " ".join(f"{k}={v}" for k, v in chosen.items()) + " (CPU, seconds).",
        "",
        "Config groups (conf/<group>/<option>.yaml):",
    ]
    for group in GROUPS:
        found = options(group, conf)
        lines.append(f"  {group} ({len(found)}): {', '.join(found)}")
    lines += [
        "",
        "Settings: sampler.<name>=... (gen_length, steps, block_length, temperature, threshold, ...),",
        "method.options.<name>=..., task.limit=N, batch_size=N, results_root=DIR, tracking=none|offline|online.",
        "  --cfg job        print the composed config for these overrides and exit",
        "  --hydra-help     Hydra's own flags (multirun, launchers, logging)",
    ]
    return "\n".join(lines)
