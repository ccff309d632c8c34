"""README's "Adding a method", followed to the letter in a copy of the repository.

The two files are written from README's tagged code blocks, so the guide cannot drift from what
works; then the suite's generic tests, which take their methods from the registry, must run on the
new method and pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from dllm_accel.paths import REPO_ROOT, shared_dir

GENERIC_TESTS = ["tests/test_combinations.py", "tests/test_eval_lm.py", "tests/test_run_configs.py"]
COPIED = ["dllm_accel", "conf", "tests", "checkpoints", "analysis", "experiments", "pyproject.toml", "README.md"]


def guide_files() -> dict[str, str]:
    text = (REPO_ROOT / "README.md").read_text()
    return dict(re.findall(r"^```\w+ file=(\S+)\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE))


def _pytest(copy, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(copy), "DLLM_ACCEL_SHARED": str(shared_dir())}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=1200)


def test_the_guide_names_one_module_and_one_config():
    assert set(guide_files()) == {"dllm_accel/methods/my_method.py", "conf/method/my_method.yaml"}


@pytest.mark.slow
def test_a_method_added_by_the_guide_runs_under_every_generic_test(tmp_path):
    copy = tmp_path / "repo"
    for name in COPIED:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, copy / name)
    for relative, text in guide_files().items():
        (copy / relative).write_text(text)

    listed = _pytest(copy, "--collect-only", *GENERIC_TESTS, "-k", "my_method")
    per_file = Counter(line.split("::")[0] for line in listed.stdout.splitlines() if "::" in line)
    assert set(per_file) == set(GENERIC_TESTS), listed.stdout[-2000:]

    done = _pytest(copy, "-x", *GENERIC_TESTS, "-k", "my_method")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"{sum(per_file.values())} passed" in done.stdout


def test_a_method_that_counts_no_forward_pass_is_refused():
    import torch

    from dllm_accel import generate
    from dllm_accel.methods.base import ForwardStrategy
    from tests.conftest import tiny_model

    class Uncounted(ForwardStrategy):
        name = "uncounted"

        def forward(self, model, canvas):
            logits, _ = model(canvas.x, positions=canvas.positions, key_mask=canvas.key_mask)
            return model.shift_logits(logits), slice(0, canvas.length)

    with pytest.raises(RuntimeError, match="'uncounted' ran 4 steps but counted no forward pass"):
        generate(tiny_model("llada"), torch.tensor([[5, 6, 7]]), method=Uncounted(), gen_length=4, steps=4)
