"""The GPU benchmark script runs end to end at tiny sizes on CPU."""

from __future__ import annotations

import json
import subprocess
import sys

from dllm_accel.paths import REPO_ROOT


def test_bench_vanilla_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO_ROOT / "experiments" / "bench_vanilla.py"), "--smoke", "--device", "cpu",
           "--dtype", "float32", "--prompt", "16", "--gen", "16", "--steps", "8", "--block", "8", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    records = json.loads(out.read_text())
    assert [r["model"] for r in records] == ["llada_8b", "dream_7b"]
    assert all(r["nfe"] == 8 and r["tokens_per_second"] > 0 for r in records)
