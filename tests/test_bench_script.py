"""The GPU benchmark script runs end to end at tiny sizes on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from dllm_accel.paths import REPO_ROOT


@pytest.mark.slow
def test_bench_vanilla_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO_ROOT / "experiments" / "bench_vanilla.py"), "--smoke", "--device", "cpu",
           "--dtype", "float32", "--prompt", "16", "--gen", "16", "--steps", "8", "--block", "8", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    records = json.loads(out.read_text())
    assert [r["model"] for r in records] == ["llada_8b", "dream_7b", "llada_moe_7b", "llada2_mini"]
    assert all(r["tokens_per_second"] > 0 for r in records)
    # LLaDA2's block sampler stops a block when its threshold rule has filled it, so its NFE varies
    assert [r["nfe"] for r in records[:3]] == [8, 8, 8] and 0 < records[3]["nfe"] <= 8 * 3


@pytest.mark.slow
def test_bench_methods_smoke(tmp_path):
    cmd = [sys.executable, str(REPO_ROOT / "experiments" / "bench_methods.py"), "--smoke", "--models", "llada_8b",
           "--presets", "vanilla", "fast_dllm_dual", "--out-dir", str(tmp_path), "--tag", "smoke"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert report["environment"]["torch"] and report["args"]["repeats"] == 2
    points = report["points"]
    assert {(p["preset"], p["batch"]) for p in points} == {(m, b) for m in ("vanilla", "fast_dllm_dual") for b in (1, 2)}
    for point in points:
        eager = point["eager"]
        assert eager["repeats"] == 2 and eager["seconds_min"] <= eager["seconds_median"] <= eager["seconds_max"]
        assert eager["generated_tokens"] == 16 * point["batch"] and eager["same_output_every_run"]
        assert eager["tpf"] == 16 / eager["nfe"]
    vanilla = next(p for p in points if p["preset"] == "vanilla")
    assert vanilla["eager"]["nfe"] == 16
    assert "| llada_8b | fast_dllm_dual |" in (tmp_path / "smoke.md").read_text()


def test_every_benchmarked_family_has_a_tiny_twin_for_the_smoke_run():
    sys.path.insert(0, str(REPO_ROOT / "experiments"))
    from bench_vanilla import FULL_SIZE

    assert {"llada_8b", "dream_7b", "llada_moe_7b", "llada2_mini"} <= set(FULL_SIZE)
    for name, entry in FULL_SIZE.items():
        if "full" in entry:
            assert (REPO_ROOT / entry["base"] / "config.json").is_file(), name
            assert (REPO_ROOT / entry["full"] / "config.json").is_file(), name


def test_bench_official_process_clock_leaves_out_time_off_the_core():
    sys.path.insert(0, str(REPO_ROOT / "experiments"))
    import bench_official
    import torch

    def waits(prompt):
        time.sleep(0.3)  # off the core: another job holding it looks the same to this process
        return prompt

    prompt = torch.zeros(1, 2, dtype=torch.long)
    wall, _ = bench_official.timed(waits, prompt, "wall")
    cpu, out = bench_official.timed(waits, prompt, "process")
    assert wall >= 0.3 and cpu < 0.1 and out is prompt


def test_bench_official_refuses_a_process_clock_off_the_cpu(capsys):
    sys.path.insert(0, str(REPO_ROOT / "experiments"))
    import bench_official

    with pytest.raises(SystemExit) as stop:
        bench_official.main(["--clock", "process", "--device", "cuda"])
    assert stop.value.code == 2
    assert "--clock process times CPU runs only (got --device cuda)" in capsys.readouterr().err


def test_dyllm_overhead_records_every_product_of_a_pass_and_replays_them():
    sys.path.insert(0, str(REPO_ROOT / "experiments"))
    import torch
    from dyllm_overhead import PRODUCTS, ProductRecorder

    from dllm_accel.models import load_model

    model = load_model(REPO_ROOT / "checkpoints" / "tiny-llada", dtype=torch.float32)
    ids, positions = torch.randint(0, 250, (1, 12)), torch.arange(12)
    recorder = ProductRecorder()
    with torch.no_grad(), recorder:
        logits = model.logits(model.trunk(ids, positions))
    # per layer: q, k, v, o, attention, gate, up, down; then the head
    assert len(recorder.calls) == 8 * model.spec.n_layers + 1
    assert {func.overloadpacket for func, _, _ in recorder.calls} <= PRODUCTS
    func, args, kwargs = recorder.calls[-1]
    assert torch.equal(func(*args, **kwargs).reshape(logits.shape), logits)


# pyproject's dependencies that the lent GPU machine's image lacks (device README, KINDS.md): the GPU check
# runs under that image's python3, which has torch, transformers, safetensors, pandas, pytest, but none of these
ABSENT_ON_THE_GPU_MACHINE = ("lm_eval", "hydra", "hydra_plugins", "omegaconf", "submitit", "wandb", "datasets", "math_verify")
WITHOUT_THEM = f"""
import sys

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT_ON_THE_GPU_MACHINE!r}:
            raise ImportError(name + " is not on the GPU machine")

sys.meta_path.insert(0, Absent())
"""


@pytest.mark.slow
def test_the_gpu_check_runs_without_the_evaluation_stack(tmp_path):
    """``gpu_check.sh``'s benchmark and GPU tests import nothing that the GPU machine's image lacks."""
    bench = str(REPO_ROOT / "experiments" / "bench_methods.py")
    run = WITHOUT_THEM + (
        f"import runpy\nsys.argv = [{bench!r}, '--smoke', '--models', 'llada_8b', '--presets', 'vanilla', 'dyllm', "
        f"'--out-dir', {str(tmp_path)!r}, '--tag', 'smoke']\nrunpy.run_path({bench!r}, run_name='__main__')"
    )
    collect = WITHOUT_THEM + (
        "import pytest\nsys.exit(pytest.main(['--collect-only', '-q', '-m', 'gpu', '-p', 'xdist', "
        "'tests/test_compile.py', 'tests/test_dyllm.py']))"
    )
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": str(REPO_ROOT)}
    for code in (run, collect):
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "smoke.json").is_file()
