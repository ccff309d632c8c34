"""A sweep point's name: its method preset and the values its overrides set.

Five ``keep_ratio`` points of one sweep all run the ``sparse_dllm`` preset; what tells them
apart is what the command line or the experiment's sweep changed. The summary table, the
results folder and the W&B run name, tags and group all use ``Point`` so they agree
(``sparse_dllm keep_ratio=0.25``). Overrides that pick the model, the task or the experiment
have their own columns; settings that cannot change a result are left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# override keys (their last component) that name no difference between points of one sweep
_OWN_COLUMN = {"experiment", "model", "task", "method"}
# settings that change no result (``task.limit`` only selects documents: a longer run resumes a shorter one)
_NEUTRAL = {
    "results_root", "tracking", "wandb_project", "print_summary", "code_workers", "cpu_threads", "data_dir",
    "task.limit",
}  # fmt: skip
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")
MAX_SLUG = 96


@dataclass(frozen=True)
class Point:
    preset: str
    settings: tuple[str, ...] = ()  # "keep_ratio=0.25", or a point file's name (``len256_vanilla``)

    @property
    def label(self) -> str:
        return " ".join((self.preset, *self.settings))

    @property
    def slug(self) -> str:
        """The label as one folder-name component (no separators or spaces)."""
        return _UNSAFE.sub("_", "-".join((self.preset, *self.settings)))[:MAX_SLUG]

    @property
    def overrides(self) -> dict[str, str]:
        return dict(s.split("=", 1) for s in self.settings if "=" in s)

    @classmethod
    def from_overrides(cls, preset: str, overrides: list[str] | tuple[str, ...]) -> Point:
        """``method.options.keep_ratio=0.25`` -> ``keep_ratio=0.25``; a point-file group
        (``+experiment/<table>/methods=len256_vanilla``) -> its file name."""
        settings = []
        for override in overrides:
            key, _, value = override.lstrip("+~").partition("=")
            if key.startswith("hydra") or key in _NEUTRAL:
                continue
            if "/" in key:  # a point file of an experiment: its name says what it sets
                if key.rsplit("/", 1)[-1] not in _OWN_COLUMN:
                    settings.append(value)
            elif key not in _OWN_COLUMN:
                settings.append(f"{key.rsplit('.', 1)[-1]}={value}")
        return cls(preset, tuple(settings))


def hydra_point(config: dict) -> Point:
    """The point of the Hydra job running now (preset = the ``method`` choice), or the bare method."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return Point(config["method"]["name"])
    hydra = HydraConfig.get()
    preset = hydra.runtime.choices.get("method") or config["method"]["name"]
    return Point.from_overrides(preset, list(hydra.overrides.task))
