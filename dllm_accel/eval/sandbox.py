"""Run untrusted generated code: one subprocess per program, never in the evaluating process.

Layers, each of which holds on its own:
- a fresh temporary directory as cwd and HOME, removed afterwards;
- rlimits: CPU seconds, address space, file size, open files (and processes where the
  kernel enforces it, i.e. when not root);
- a new session, so a timeout kills the program and everything it started;
- a new network namespace where the OS allows it (no interfaces, so no network);
- inside the interpreter, an audit hook that refuses process creation, signals, sockets,
  ctypes and file deletion before the program's first line runs;
- output goes to files capped by the file-size limit, and only a bounded prefix is read.

A program passes only if it ran to its last line: the wrapper prints a per-run nonce after
the program returns, so ``exit(0)`` or ``os._exit(0)`` half way is a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

_OUTPUT_CAP = 4096

# Executed by the child interpreter: install the guard, run the program, then print the nonce.
_WRAPPER = r"""
import os, resource, sys
_nonce = os.environ.pop("DLLM_SANDBOX_NONCE")
for _name, _value in zip(("CPU", "AS", "FSIZE", "NOFILE", "CORE", "NPROC"), os.environ.pop("DLLM_SANDBOX_LIMITS").split(",")):
    if _value != "-":
        resource.setrlimit(getattr(resource, "RLIMIT_" + _name), (int(_value), int(_value)))
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).unshare(0x40000000)
except (OSError, AttributeError):
    pass
_blocked = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.kill",
            "os.killpg", "os.remove", "os.unlink", "os.rmdir", "os.rename", "os.truncate", "shutil.rmtree",
            "subprocess.Popen", "_posixsubprocess.fork_exec", "pty.spawn", "socket.", "ctypes.", "os.chmod",
            "os.chown", "signal.pthread_kill")
def _guard(event, args):
    if event.startswith(_blocked):
        raise PermissionError(f"sandbox: {event} is not allowed")
sys.addaudithook(_guard)
del _guard
with open("program.py", encoding="utf-8") as _f:
    _source = _f.read()
_globals = {"__name__": "__main__", "__builtins__": __builtins__}
exec(compile(_source, "program.py", "exec"), _globals)
sys.stdout.flush()
sys.__stdout__.write("\n" + _nonce + "\n")
sys.__stdout__.flush()
"""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_mb: int = 2048
    file_size_mb: int = 16
    processes: int = 64
    open_files: int = 256


@dataclass
class ExecResult:
    status: str  # passed | failed | timeout
    returncode: int | None
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _user_process_count() -> int:
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                continue
    return count


def _limit_values(limits: Limits) -> str:
    """rlimits for the wrapper, in its order: CPU, AS, FSIZE, NOFILE, CORE, NPROC (``-`` = unchanged)."""
    mib = 1024 * 1024
    # root is exempt from RLIMIT_NPROC; otherwise it counts every process of the user
    nproc = "-" if os.getuid() == 0 else str(_user_process_count() + limits.processes)
    values = [int(limits.timeout_s) + 1, limits.memory_mb * mib, limits.file_size_mb * mib, limits.open_files, 0]
    return ",".join(map(str, values)) + "," + nproc


def _read_capped(path: Path) -> str:
    with open(path, "rb") as handle:
        return handle.read(_OUTPUT_CAP).decode("utf-8", errors="replace")


def _ends_with(path: Path, nonce: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - len(nonce) - 8))
        return handle.read().decode("ascii", errors="replace").rstrip().endswith(nonce)


def run_program(program: str, limits: Limits = Limits()) -> ExecResult:
    """Execute ``program`` in a fresh sandboxed interpreter and say whether it ran to the end."""
    nonce = secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="dllm_sandbox_"))
    try:
        (workdir / "program.py").write_text(program, encoding="utf-8")
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "DLLM_SANDBOX_NONCE": nonce,
            "DLLM_SANDBOX_LIMITS": _limit_values(limits),
        }
        with open(workdir / "stdout", "wb") as out, open(workdir / "stderr", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _WRAPPER],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                returncode = proc.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)
        stdout, stderr = _read_capped(workdir / "stdout"), _read_capped(workdir / "stderr")
        if timed_out:
            return ExecResult("timeout", None, stdout, stderr)
        finished = returncode == 0 and _ends_with(workdir / "stdout", nonce)
        return ExecResult("passed" if finished else "failed", returncode, stdout.replace(nonce, ""), stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_programs(programs: list[str], limits: Limits = Limits(), workers: int = 4) -> list[ExecResult]:
    """Run many programs, ``workers`` at a time, results in input order."""
    if not programs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))
