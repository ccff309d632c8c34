"""Hostile generated code fails its sample and harms neither the runner nor the host."""

from __future__ import annotations

import os
import time

import pytest

from dllm_accel.eval.sandbox import Limits, run_program, run_programs

LIMITS = Limits(timeout_s=2.0, memory_mb=1024, file_size_mb=4)
HOSTILE = {
    "infinite_loop": "while True:\n    pass\n",
    "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
    "multiprocessing": "import multiprocessing\nmultiprocessing.Process(target=print).start()\n",
    "subprocess": "import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])\n",
    "memory_bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(10**8))\n",
    "huge_output": "import sys\nwhile True:\n    sys.stdout.write('x' * 100000)\n",
    "early_exit": "import sys\nsys.exit(0)\nassert False\n",
    "early_os_exit": "import os\nos._exit(0)\n",
    "exit_builtin": "exit(0)\nraise AssertionError\n",
    "socket_connect": "import socket\ns = socket.socket()\ns.connect(('1.1.1.1', 80))\n",
    "ctypes_escape": "import ctypes\nctypes.CDLL(None).fork()\n",
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
}


def test_a_program_that_runs_to_the_end_passes():
    result = run_program("assert sum(range(4)) == 6\nprint('done')\n", LIMITS)
    assert result.passed and result.returncode == 0 and "done" in result.stdout


def test_a_failing_assert_fails():
    result = run_program("assert 1 == 2\n", LIMITS)
    assert result.status == "failed" and "AssertionError" in result.stderr


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_programs_fail_without_harm(name):
    start = time.monotonic()
    result = run_program(HOSTILE[name], LIMITS)
    assert result.status in ("failed", "timeout"), (name, result)
    assert time.monotonic() - start < LIMITS.timeout_s + 5
    assert len(result.stdout) <= 4096 and len(result.stderr) <= 4096


def test_deleting_files_is_refused_and_the_target_survives(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    program = f"import os, shutil\nos.remove({str(target)!r})\nshutil.rmtree({str(tmp_path)!r})\n"
    result = run_program(program, LIMITS)
    assert result.status == "failed" and "not allowed" in result.stderr
    assert target.read_text() == "keep me"


def test_the_infinite_loop_times_out_and_leaves_no_process():
    before = set(os.listdir("/proc"))
    result = run_program(HOSTILE["infinite_loop"], Limits(timeout_s=1.0))
    assert result.status == "timeout"
    leftovers = [p for p in set(os.listdir("/proc")) - before if p.isdigit() and _is_sandbox(p)]
    assert leftovers == []


def _is_sandbox(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"DLLM_SANDBOX" in handle.read()
    except OSError:
        return False


def test_runs_continue_after_hostile_programs_and_keep_input_order():
    programs = [HOSTILE["memory_bomb"], "x = 1\n", HOSTILE["early_exit"], "assert True\n"]
    results = run_programs(programs, LIMITS, workers=2)
    assert [r.passed for r in results] == [False, True, False, True]
