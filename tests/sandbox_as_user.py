"""Sandbox checks run by another user (non-root, e.g. 65534) or another interpreter (a venv under /tmp).

The runner is ``dllm_accel/eval/sandbox.py`` loaded by path (it needs only the standard library), so
any Python 3.10+ the user can execute will do; checks go in and results come out as JSON through
pipes, so the user needs no access to the test's files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dllm_accel.eval import sandbox
from dllm_accel.eval.sandbox import ExecResult, Limits

NOBODY = 65534
RUNNER = """
import dataclasses, importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("sandbox", sys.argv[1])
sandbox = importlib.util.module_from_spec(spec)
sys.modules["sandbox"] = sandbox
spec.loader.exec_module(sandbox)
job = json.load(sys.stdin)
try:
    results = sandbox.run_checks([tuple(c) for c in job["checks"]], sandbox.Limits(**job["limits"]),
                                 job["workers"], job["isolation"])
except sandbox.SandboxUnavailable as error:
    print(json.dumps({"unavailable": str(error)}))
else:
    print(json.dumps({"results": [dataclasses.asdict(r) for r in results], "uid": os.getuid()}))
"""


def as_user(uid: int | None) -> list[str]:
    """The command prefix that runs a program as ``uid`` (nothing for the current user)."""
    if uid is None:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def interpreter_for(uid: int) -> str | None:
    """A Python 3.10+ that ``uid`` can execute: this one if its folders are open to it, else the system's."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        return None
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if candidate and os.path.exists(candidate):
            # the binary itself must be reachable: a path through a closed folder (/root/.pyenv) may still
            # start some other python here, but not inside the sandbox
            code = "import os, sys; assert sys.version_info >= (3, 10) and os.access(os.path.realpath(sys.executable), 1)"
            probe = [*as_user(uid), candidate, "-I", "-c", code]
            if subprocess.run(probe, capture_output=True, cwd="/").returncode == 0:
                return candidate
    return None


def make_venv(interpreter: str, folder: Path, owner: int | None = None) -> Path:
    """A bare venv of ``interpreter`` in ``folder`` (owned by ``owner``); returns its python."""
    subprocess.run([interpreter, "-m", "venv", "--without-pip", str(folder)], check=True, capture_output=True)
    if owner is not None:
        for path in (folder, *folder.rglob("*")):
            os.chown(path, owner, owner, follow_symlinks=False)
    return folder / "bin" / "python"


def site_packages(python: Path) -> str:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@dataclasses.dataclass
class Outcome:
    results: list[ExecResult] | None
    unavailable: str | None
    runner_pid: int
    uid: int | None


def run_checks_as(
    checks: list[tuple[str, str]],
    python: str,
    uid: int | None = None,
    limits: Limits | None = None,
    workers: int = 2,
    isolation: str = "unshare",
    env: dict[str, str] | None = None,
) -> Outcome:
    """``sandbox.run_checks`` in a runner process started by ``python`` as ``uid``."""
    job = {"checks": checks, "limits": dataclasses.asdict(limits or Limits()), "workers": workers, "isolation": isolation}
    command = [*as_user(uid), python, "-I", "-c", RUNNER, str(Path(sandbox.__file__))]
    runner = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env if env is not None else dict(os.environ), cwd="/", text=True)
    out, err = runner.communicate(json.dumps(job), timeout=600)
    if runner.returncode != 0:
        raise RuntimeError(f"runner exited {runner.returncode}: {err[-2000:]}")
    answer = json.loads(out)
    results = [ExecResult(**r) for r in answer["results"]] if "results" in answer else None
    return Outcome(results, answer.get("unavailable"), runner.pid, answer.get("uid"))
