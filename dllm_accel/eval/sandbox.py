"""Run model-generated code isolated by the operating system, with a verdict it cannot forge.

Each check is two sandboxed processes (``sandbox_child.py``): the *solution* runs the model's code,
the *tests* run the benchmark's asserts and call the solution's functions over a pipe. Only the
tests side holds the pipe that says "passed", and it says so only if its last line ran and the
solution answered every call; the solution has no way to reach that pipe, the tests' memory or
the host's files, so printing tokens, exiting early or killing processes can only fail the check.

Isolation (``code_isolation``), chosen once per process:

- ``bwrap`` (bubblewrap): new user, mount, pid, network, ipc, uts and cgroup namespaces; a read-only
  view of ``/usr`` and the interpreter's prefixes only (no ``/etc``, ``/home``, ``/root``, project or
  data); a private size-capped tmpfs as ``/tmp``; an empty environment; no network; no new user
  namespaces; no capabilities; killed with its parent;
- ``unshare`` (util-linux) when bwrap is missing: the same namespaces, and a root built by the child
  itself from the same read-only binds before the program's first line (``sandbox_root.py``), which
  then stays as the namespace's pid 1 so the program cannot outlive the check or the runner;
- ``auto`` (default): the first of those that works here; if none does, executing code is refused
  with a line that says how to enable one;
- ``none``: no isolation (rlimits and the split verdict only), for machines where namespaces are
  impossible; set it explicitly (``code_isolation=none`` or ``DLLM_ACCEL_CODE_ISOLATION=none``).

Everywhere: rlimits on CPU seconds, address space, file size, open files and processes (a pids
cgroup per check when running as root, whom the kernel exempts from the process rlimit); a wall
timeout; stdout and stderr read through pipes and capped; nothing written on the host's disk; a
lifeline pipe whose end makes both sides exit if the runner dies, however it dies.
"""

from __future__ import annotations

import functools
import itertools
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ISOLATION = ("auto", "bwrap", "unshare", "none")
ISOLATION_ENV = "DLLM_ACCEL_CODE_ISOLATION"
OWNER_TAG = "dllm-sandbox-owner="
_OUTPUT_CAP = 4096
_CHILD = Path(__file__).with_name("sandbox_child.py")
_ROOT_SETUP = Path(__file__).with_name("sandbox_root.py")
_PIDS_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
_CGROUP_PREFIX = "dllm_sandbox_"
_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
_ENABLE_HINT = (
    "install bubblewrap (e.g. `apt-get install bubblewrap`) or allow unprivileged user namespaces "
    "(`sysctl kernel.unprivileged_userns_clone=1`); to run model-generated code without isolation anyway, "
    f"set code_isolation=none (or {ISOLATION_ENV}=none)"
)


class SandboxUnavailable(RuntimeError):
    """No isolation method works on this machine and none was explicitly waived."""


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
    stdout: str  # the solution's output (stdout and stderr)
    stderr: str  # the tests' output (the failing assert's traceback)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# ------------------------------------------------------------------ choosing the isolation
def _interpreter_roots() -> list[str]:
    """Directories the interpreter and its packages live in (read-only inside the sandbox)."""
    roots = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix, sys.base_prefix}
    roots.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    keep = [r for r in sorted(roots) if r != "/" and not r.startswith("/usr/") and r != "/usr"]
    return [r for r in keep if not any(r != o and r.startswith(o + "/") for o in keep)]


def _system_dirs() -> list[tuple[str, str]]:
    """(/bin, /lib...) as symlinks or read-only binds, as the host has them."""
    out = []
    for path in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(path):
            out.append(("symlink", path))
        elif os.path.isdir(path):
            out.append(("bind", path))
    return out


def bwrap_argv(limits: Limits) -> list[str]:
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
    argv += ["--cap-drop", "ALL", "--clearenv", "--hostname", "sandbox", "--uid", "65534", "--gid", "65534"]
    for name, value in _ENV.items():
        argv += ["--setenv", name, value]
    argv += ["--ro-bind", "/usr", "/usr"]
    for kind, path in _system_dirs():
        argv += ["--symlink", os.readlink(path), path] if kind == "symlink" else ["--ro-bind", path, path]
    argv += ["--dev", "/dev", "--proc", "/proc"]
    argv += ["--size", str(limits.file_size_mb * 4 * 1024 * 1024), "--tmpfs", "/tmp"]
    # after the private /tmp, so an interpreter or venv that lives under /tmp stays visible (read-only)
    for root in _interpreter_roots():
        argv += ["--ro-bind", root, root]
    return [*argv, "--chdir", "/tmp"]


def unshare_argv(limits: Limits, lifeline: int = -1) -> list[str]:
    """util-linux ``unshare``; the child builds its read-only root itself (``sandbox_root.py``) and stays
    as the namespace's first process, which ends the namespace when ``lifeline`` reaches its end."""
    binds = ",".join(["/usr", *(p for kind, p in _system_dirs() if kind == "bind"), *_interpreter_roots()])
    links = ",".join(f"{p}={os.readlink(p)}" for kind, p in _system_dirs() if kind == "symlink")
    setup = _ROOT_SETUP.read_text()
    return [
        "unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child", "--net", "--ipc",
        "--uts", "--mount-proc", sys.executable, "-I", "-c", setup, binds, links, str(limits.file_size_mb * 4),
        str(lifeline),
    ]  # fmt: skip


def _probe(mode: str) -> str | None:
    """None if ``mode`` runs a trivial program here, else the reason it does not."""
    launcher = {"bwrap": "bwrap", "unshare": "unshare"}[mode]
    if shutil.which(launcher) is None:
        return f"{launcher} is not installed"
    limits = Limits(timeout_s=20.0)
    prefix = bwrap_argv(limits) if mode == "bwrap" else unshare_argv(limits)
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-I", "-c", "print('ok')"],
            env=dict(_ENV),
            capture_output=True,
            timeout=limits.timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{launcher} failed: {err}"
    if done.returncode != 0 or done.stdout.strip() != b"ok":
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return f"{launcher} cannot create namespaces here ({lines[-1] if lines else f'exit {done.returncode}'})"
    return None


@functools.cache
def resolve_isolation(mode: str = "auto") -> str:
    """The isolation actually used for ``mode``; raises ``SandboxUnavailable`` (one line) if none works."""
    if mode not in ISOLATION:
        raise ValueError(f"code_isolation={mode!r} is not one of {', '.join(ISOLATION)}")
    if mode == "none":
        return "none"
    reasons = []
    for candidate in ("bwrap", "unshare") if mode == "auto" else (mode,):
        reason = _probe(candidate)
        if reason is None:
            return candidate
        reasons.append(reason)
    raise SandboxUnavailable(f"cannot isolate model-generated code: {'; '.join(reasons)}. To enable it, {_ENABLE_HINT}")


def default_isolation() -> str:
    return os.environ.get(ISOLATION_ENV, "auto")


# ------------------------------------------------------------------ process limits
def _user_process_count() -> int:
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                continue
    return count


def _limit_values(limits: Limits, nproc: bool) -> str:
    """rlimits for the child, in its order: CPU, AS, FSIZE, NOFILE, CORE, NPROC (``-`` = unchanged)."""
    mib = 1024 * 1024
    values = [int(limits.timeout_s) + 1, limits.memory_mb * mib, limits.file_size_mb * mib, limits.open_files, 0]
    return ",".join(map(str, values)) + "," + (str(_user_process_count() + limits.processes) if nproc else "-")


_counter = itertools.count()


class PidsCgroup:
    """A pids cgroup for one check (root only: the kernel does not apply RLIMIT_NPROC to root)."""

    def __init__(self, limit: int) -> None:
        self.path: Path | None = None
        base = _pids_base()
        if base is None:
            return
        path = base / f"{_CGROUP_PREFIX}{os.getpid()}_{next(_counter)}"
        try:
            path.mkdir()
            (path / "pids.max").write_text(str(limit))
        except OSError:
            return
        self.path = path

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started from inside the cgroup (so every process it forks is counted)."""
        if self.path is None:
            return argv
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def close(self) -> None:
        if self.path is not None:
            _remove_cgroup(self.path)


@functools.cache
def _pids_base() -> Path | None:
    if os.getuid() != 0:
        return None
    for root in _PIDS_ROOTS:
        v1 = root.name == "pids" and (root / "cgroup.procs").is_file()
        if v1 or _has_pids(root):
            own = _own_cgroup(root)
            if own is not None and os.access(own, os.W_OK):
                _remove_stale(own)
                return own
    return None


def _has_pids(root: Path) -> bool:
    controllers = root / "cgroup.subtree_control"
    return controllers.is_file() and "pids" in controllers.read_text().split()


def _own_cgroup(root: Path) -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if ("pids" in controllers.split(",") and root.name == "pids") or (controllers == "" and root.name != "pids"):
            return root / path.lstrip("/")
    return None


def _remove_cgroup(path: Path, wait_s: float = 20.0) -> None:
    """Kill what is left in the cgroup and remove it, waiting while a fork bomb's processes die."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            pids = (path / "cgroup.procs").read_text().split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not pids:
                path.rmdir()
                return
        except FileNotFoundError:
            return
        except OSError:
            pass
        time.sleep(0.02)


def _remove_stale(base: Path) -> None:
    """Cgroups left by a runner that was killed before it could remove them."""
    for path in base.glob(f"{_CGROUP_PREFIX}*_*"):
        owner = path.name.removeprefix(_CGROUP_PREFIX).split("_")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _remove_cgroup(path)


# ------------------------------------------------------------------ one check
def _spawn(
    mode: str, group: PidsCgroup, role: str, limits: Limits, fds: tuple[int, ...], output: int
) -> subprocess.Popen:
    inner = [sys.executable, "-I", "-c", _CHILD.read_text(), role, *map(str, fds)]
    inner.append(_limit_values(limits, nproc=os.getuid() != 0 or group.path is None))
    inner.append(f"{OWNER_TAG}{os.getpid()}")  # names the runner on the command line (ps, tests)
    prefix = {"bwrap": bwrap_argv(limits), "unshare": unshare_argv(limits, lifeline=fds[-1])}.get(mode, [])
    argv = [*prefix, *inner]
    return subprocess.Popen(
        group.wrap(argv),
        env=dict(_ENV),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        pass_fds=tuple(fd for fd in fds if fd >= 0),
        start_new_session=True,
        cwd="/",
    )


def _kill(proc: subprocess.Popen, wait_s: float = 10.0) -> None:
    """Kill a sandbox and return once every process in it is gone.

    The launcher's child is its pid namespace's first process, whose death ends every process in the
    namespace; under ``unshare`` it runs the program itself, which can leave the process group, clear
    its parent-death signal and exec away the lifeline watcher, so it is killed by pid (a pids cgroup,
    which only root gets, would catch it too). Its exit completes only after the namespace is empty.
    """
    firsts = _children(proc.pid)
    for pid in firsts:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    deadline = time.monotonic() + wait_s
    while any(map(_alive, firsts)) and time.monotonic() < deadline:
        time.sleep(0.01)


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        return [int(c) for t in tasks for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except OSError:  # gone, or a kernel without /proc/<pid>/task/<tid>/children
        return []


def _alive(pid: int) -> bool:
    """Running or dying (a zombie has finished: its namespace is empty)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _drain(outputs: dict[int, bytearray], until_closed: int, deadline: float) -> bool:
    """Read the output pipes (keeping a capped prefix of each) until ``until_closed`` reaches EOF;
    False if the deadline came first."""
    selector = selectors.DefaultSelector()
    for fd in outputs:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in selector.select(timeout=min(remaining, 0.5)):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(key.fd)
                    if key.fd == until_closed:
                        return True
                elif len(outputs[key.fd]) < _OUTPUT_CAP:
                    outputs[key.fd] += chunk[: _OUTPUT_CAP - len(outputs[key.fd])]
    finally:
        selector.close()


class _Fds:
    """Pipe ends of one check, each closed exactly once."""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def pipe(self) -> tuple[int, int]:
        read, write = os.pipe()
        self.open.update((read, write))
        return read, write

    def close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self.open:
                self.open.discard(fd)
                os.close(fd)

    def feed(self, fd: int, text: str) -> None:
        """Write a source text into its pipe and close it (the child reads it before anything else)."""
        try:
            os.set_blocking(fd, True)
            view = memoryview(text.encode("utf-8"))
            while view:
                view = view[os.write(fd, view) :]
        except BrokenPipeError:
            pass
        self.close(fd)


def run_check(solution: str, tests: str, limits: Limits = Limits(), isolation: str | None = None) -> ExecResult:
    """Execute ``solution``, then ``tests`` against it, each in its own sandbox; passed only if the
    tests ran to their last line and the solution answered every call."""
    mode = resolve_isolation(isolation or default_isolation())
    fds = _Fds()
    groups = [PidsCgroup(limits.processes), PidsCgroup(limits.processes)]
    procs: list[subprocess.Popen] = []
    try:
        solution_src, tests_src, calls, replies, verdict, lifeline = (fds.pipe() for _ in range(6))
        solution_out, tests_out = fds.pipe(), fds.pipe()
        sides = (
            ("solution", (solution_src[0], calls[0], replies[1], -1, lifeline[0]), solution_out[1]),
            ("tests", (tests_src[0], replies[0], calls[1], verdict[1], lifeline[0]), tests_out[1]),
        )
        for group, (role, child_fds, output) in zip(groups, sides, strict=True):
            procs.append(_spawn(mode, group, role, limits, child_fds, output))
        fds.close(*sides[0][1], *sides[1][1], sides[0][2], sides[1][2])
        fds.feed(solution_src[1], solution)
        fds.feed(tests_src[1], tests)
        outputs = {solution_out[0]: bytearray(), tests_out[0]: bytearray()}
        finished = _drain(outputs, tests_out[0], time.monotonic() + limits.timeout_s)
        if finished:
            try:
                procs[1].wait(timeout=max(0.1, limits.timeout_s))
            except subprocess.TimeoutExpired:
                finished = False
        for proc in procs:
            _kill(proc)
        stdout = outputs[solution_out[0]].decode("utf-8", errors="replace")
        stderr = outputs[tests_out[0]].decode("utf-8", errors="replace")
        if not finished:
            return ExecResult("timeout", None, stdout, stderr)
        os.set_blocking(verdict[0], False)
        try:
            said = os.read(verdict[0], 16)
        except BlockingIOError:
            said = b""
        passed = said == b"passed" and procs[1].returncode == 0
        return ExecResult("passed" if passed else "failed", procs[1].returncode, stdout, stderr)
    finally:
        for proc in procs:
            if proc.returncode is None:
                _kill(proc)
        for group in groups:
            group.close()
        fds.close(*list(fds.open))


def run_checks(
    checks: list[tuple[str, str]], limits: Limits = Limits(), workers: int = 4, isolation: str | None = None
) -> list[ExecResult]:
    """Run many (solution, tests) checks, ``workers`` at a time, results in input order."""
    if not checks:
        return []
    resolve_isolation(isolation or default_isolation())  # refuse before starting anything
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda c: run_check(c[0], c[1], limits, isolation), checks))
