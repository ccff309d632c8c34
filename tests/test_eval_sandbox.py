"""Hostile generated code fails its sample and changes nothing on the host, through the scoring path."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest
from hostile_corpus import ATTACKS, bodies, indent
from sandbox_as_user import NOBODY, interpreter_for, make_venv, run_checks_as, site_packages

from dllm_accel.eval import code_tasks, sandbox
from dllm_accel.eval.data import default_data_dir, read_jsonl
from dllm_accel.eval.sandbox import Limits, SandboxUnavailable, run_check
from dllm_accel.eval.sandbox_child import importable

LIMITS = Limits(timeout_s=3.0, memory_mb=1024, file_size_mb=4)
SECRET = "wandb-secret-3f9a1c"
DATA = default_data_dir()


def _sandbox_pids(owner: int | None = None) -> set[str]:
    """Sandbox processes started by ``owner`` (this process by default; other test runs may share the host)."""
    tag = f"{sandbox.OWNER_TAG}{owner or os.getpid()}".encode() + b"\0"
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if tag in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.add(pid)
            except OSError:
                continue
    return found


def _sandbox_pids_left(owner: int, within_s: float = 20.0) -> set[str]:
    """``owner``'s sandbox processes still alive ``within_s`` after it ended: the kernel tears a
    pid namespace down asynchronously, so a loaded machine may show a dying one for a moment."""
    deadline = time.monotonic() + within_s
    while (left := _sandbox_pids(owner)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


class Host:
    """Canary files, a secret in the environment and in a file, a listener on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "host"
        self.dir.mkdir()
        self.canary = self.dir / "canary.txt"
        self.canary.write_text("intact")
        self.secret_file = root / "secret.txt"
        self.secret_file.write_text(SECRET)
        self.site = sysconfig.get_paths()["purelib"]
        self.site_before = set(os.listdir(self.site))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
                self.connections += 1
                conn.close()
            except OSError:
                continue

    def paths(self) -> dict[str, str]:
        return {
            "CANARY": str(self.canary),
            "HOST_DIR": str(self.dir),
            "SECRET_FILE": str(self.secret_file),
            "SITE": self.site,
            "PORT": str(self.listener.getsockname()[1]),
        }

    def effects(self) -> list[str]:
        """Every change a sandboxed program made to the host."""
        found = []
        if not self.canary.is_file() or self.canary.read_text() != "intact":
            found.append("canary changed")
        if sorted(p.name for p in self.dir.iterdir()) != ["canary.txt"]:
            found.append(f"files appeared: {sorted(p.name for p in self.dir.iterdir())}")
        if set(os.listdir(self.site)) != self.site_before:
            found.append("site-packages changed")
        if Path("/tmp/pwned").exists():
            found.append("/tmp/pwned")
        if self.connections:
            found.append(f"{self.connections} connections to 127.0.0.1")
        return found

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.listener.close()


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    h = Host(tmp_path)
    yield h
    h.close()


def test_a_correct_solution_passes_and_a_wrong_one_fails():
    assert run_check("def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3\n", LIMITS).passed
    wrong = run_check("def add(a, b):\n    return a - b\n", "assert add(1, 2) == 3\n", LIMITS)
    assert wrong.status == "failed" and "AssertionError" in wrong.stderr


def test_values_cross_with_their_types():
    solution = (
        "def echo(x):\n    return x\n"
        "class Tree:\n    pass\n"
        "root = Tree()\n"
        "def is_tree(t):\n    return isinstance(t, Tree)\n"
    )
    tests = (
        "import math\n"
        "for v in [1, 2**5000, -0.5, (1, [2, (3,)]), {1, 2}, frozenset({3}), {'a': (1,)}, b'x', 1+2j, None, True, '']:\n"
        "    assert echo(v) == v and type(echo(v)) is type(v), v\n"
        "assert math.isinf(echo(float('inf'))) and math.isnan(echo(float('nan')))\n"
        "assert is_tree(root) and not is_tree(1) and echo(root) is not None\n"
        "# long lists of floats cross packed: values, signs and the ints among them kept\n"
        "long = [1, 3, -0.0, 2**53, 1e308, 5e-324] + [i / 7 for i in range(1000)] + [float('inf')]\n"
        "back = echo(long)\n"
        "assert back == long and [type(x) for x in back] == [type(x) for x in long]\n"
        "assert math.copysign(1, back[2]) == -1 and echo([float('nan')] * 300 + [0.5])[0] != 0\n"
        "assert echo([2**60] + [0.5] * 300)[0] == 2**60 and echo([True] + [0.5] * 300)[0] is True\n"
    )
    result = run_check(solution, tests, LIMITS)
    assert result.passed, result


def test_a_packed_list_is_checked_before_it_is_believed():
    from dllm_accel.eval.sandbox_child import decode, encode

    packed = encode([7] + [0.5] * 300)
    assert decode(packed) == [7] + [0.5] * 300
    raw, positions, values = packed["f64"]
    for bad in ([raw[:-4], positions, values], [raw, [301], values], [raw, [-1], values], [raw, [0.0], values],
                [raw, positions, ["7"]], [raw, positions, []], ["%%%", positions, values]):
        with pytest.raises((ValueError, TypeError)):
            decode({"f64": bad})


def test_an_object_with_its_own_equality_cannot_pass():
    solution = "class Any:\n    def __eq__(self, other):\n        return True\ndef f():\n    return Any()\n"
    assert run_check(solution, "assert f() == 3\n", LIMITS).status == "failed"


def test_a_test_that_swallows_exceptions_still_fails_when_the_solution_exits():
    solution = "import os\ndef f():\n    os._exit(0)\n"
    tests = "for _ in range(3):\n    try:\n        f()\n    except BaseException:\n        pass\n"
    assert run_check(solution, tests, LIMITS).status == "failed"


def _humaneval_doc() -> dict:
    return read_jsonl(DATA / "humaneval" / "HumanEval.jsonl.gz")[0]


def _mbpp_doc() -> dict:
    return next(r for r in read_jsonl(DATA / "mbpp" / "mbpp.jsonl.gz") if r["task_id"] == 11)


def _completions(path: str, attacks: dict[str, str]) -> tuple[list[dict], list[str]]:
    if path.startswith("humaneval"):
        doc = _humaneval_doc()
        return [doc] * len(attacks), [indent(code) for code in attacks.values()]
    doc = _mbpp_doc()
    return [doc] * len(attacks), [f"def remove_Occ(s, ch):\n{indent(code)}" for code in attacks.values()]


@pytest.mark.slow
@pytest.mark.parametrize("path", ["humaneval_papers", "humaneval_lm_eval", "mbpp"])
def test_the_hostile_corpus_is_contained_on_every_scoring_path(path, host):
    assert len(ATTACKS) >= 33
    attacks = bodies(host.paths())
    docs, completions = _completions(path, attacks)
    postprocess = "lm_eval" if path == "humaneval_lm_eval" else "papers"
    code_tasks.configure_execution(workers=4, timeout_s=LIMITS.timeout_s, humaneval_postprocess=postprocess)
    before = _sandbox_pids()
    start = time.monotonic()
    try:
        execute = code_tasks.execute_mbpp if path == "mbpp" else code_tasks.execute_humaneval
        verdicts = [v[0] for v in execute([[c] for c in completions], docs)]
    finally:
        code_tasks.configure_execution()
    elapsed = time.monotonic() - start
    forged = [name for name, v in zip(attacks, verdicts, strict=True) if v["status"] == "passed"]
    leaked = [name for name, v in zip(attacks, verdicts, strict=True) if SECRET in v["stdout"] + v["stderr"]]
    assert forged == [] and leaked == []
    assert all(len(v["stdout"]) <= 4096 and len(v["stderr"]) <= 4096 for v in verdicts)
    assert elapsed < len(attacks) * (LIMITS.timeout_s + 2)
    time.sleep(0.5)
    assert _sandbox_pids() - before == set()
    time.sleep(LIMITS.timeout_s + 6)  # the forked survivor would have written by now
    assert host.effects() == []
    assert not any(p.name.startswith(sandbox._CGROUP_PREFIX + str(os.getpid())) for p in _cgroups())


def _cgroups() -> list[Path]:
    base = sandbox._pids_base()
    return list(base.iterdir()) if base is not None else []


def test_the_canonical_solution_still_passes_under_the_sandbox():
    doc = _humaneval_doc()
    code_tasks.configure_execution(workers=1, humaneval_postprocess="lm_eval")
    try:
        (verdict,) = code_tasks.execute_humaneval([[doc["canonical_solution"]]], [doc])
    finally:
        code_tasks.configure_execution()
    assert verdict[0]["status"] == "passed"


@pytest.mark.parametrize("mode", ["bwrap", "unshare"])
def test_each_isolation_contains_writes_and_secrets(mode, host):
    if sandbox._probe(mode) is not None:
        pytest.skip(f"{mode} cannot isolate here")
    paths = host.paths()
    for name in ("write_outside", "secret_file", "parent_environ", "pth_planting", "early_os_exit"):
        code = bodies(paths)[name]
        result = run_check(f"def f():\n{indent(code)}", "assert f() == 1\n", LIMITS, isolation=mode)
        assert result.status != "passed" and SECRET not in result.stdout, (mode, name, result)
    assert host.effects() == []


def test_without_any_isolation_code_is_refused_with_one_line(monkeypatch):
    monkeypatch.setattr(sandbox, "_probe", lambda mode: f"{mode} is not installed")
    sandbox.resolve_isolation.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable) as err:
            run_check("x = 1\n", "assert x == 1\n", LIMITS, isolation="auto")
        assert "\n" not in str(err.value) and "code_isolation=none" in str(err.value)
        assert run_check("x = 1\n", "assert x == 1\n", LIMITS, isolation="none").passed
    finally:
        sandbox.resolve_isolation.cache_clear()


def test_a_killed_runner_leaves_no_sandbox_processes(tmp_path):
    script = (
        "from dllm_accel.eval.sandbox import run_check, Limits\n"
        "run_check('import time\\ntime.sleep(60)\\n', 'x = 1\\n', Limits(timeout_s=60))\n"
    )
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    runner = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 30
    while len(_sandbox_pids(runner.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_sandbox_pids(runner.pid)) >= 2
    time.sleep(0.5)
    runner.kill()
    runner.wait()
    assert _sandbox_pids_left(runner.pid) == set()


def test_a_solution_cannot_answer_for_the_tests_builtins_or_import_for_them():
    solution = "def abs(x):\n    return 0\ndef f():\n    return 5\n"
    result = run_check(solution, "assert abs(f() - 3) < 1e-6\n", LIMITS)
    assert result.status == "failed" and "AssertionError" in result.stderr
    assert run_check("def f():\n    return 3\n", "assert abs(f() - 3) < 1e-6\n", LIMITS).passed
    assert importable("math") and importable("numpy.linalg") and importable("collections.abc")
    assert not any(map(importable, ["unittest.__main__", "json.__main__", "antigravity", "idlelib", "os2"]))


def test_an_interpreter_under_tmp_is_bound_after_the_private_tmp(monkeypatch):
    """A checkout (and its venv) under /tmp, as CI may clone it, must not be hidden by the sandbox's /tmp."""
    from dllm_accel.eval import sandbox as module

    monkeypatch.setattr(module, "_interpreter_roots", lambda: ["/tmp/ci/repo/.venv"])
    argv = module.bwrap_argv(module.Limits())
    assert argv.index("/tmp/ci/repo/.venv") > argv.index("--tmpfs")


@pytest.fixture
def open_tmp():
    """A folder under /tmp that another user may enter (pytest's own is closed to everyone but its owner)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="dllm_sandbox_test_", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


PASS_AND_FAIL = [("def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3\n"),
                 ("def add(a, b):\n    return a - b\n", "assert add(1, 2) == 3\n")]


@pytest.mark.parametrize("mode", ["bwrap", "unshare"])
def test_an_interpreter_under_tmp_runs_checks(mode, open_tmp):
    """The runner's venv under /tmp (a CI clone) stays visible inside: each side starts from it."""
    if sandbox._probe(mode) is not None:
        pytest.skip(f"{mode} cannot isolate here: {sandbox._probe(mode)}")
    python = make_venv(sys.executable, open_tmp / "venv")
    outcome = run_checks_as(PASS_AND_FAIL, str(python), limits=LIMITS, isolation=mode)
    assert outcome.unavailable is None, outcome.unavailable
    assert [r.status for r in outcome.results] == ["passed", "failed"]


# attacks whose reach differs for a non-root runner: its files, its venv, its processes, its namespaces
NON_ROOT_ATTACKS = ("pid1_exec_survivor", "write_outside", "delete_outside", "rmtree_outside", "pth_planting", "env_read",
                    "parent_environ", "secret_file", "kill_parent", "kill_everything", "fork_bomb",
                    "early_os_exit", "chmod_interpreter", "new_user_namespace")


@pytest.mark.parametrize("mode", ["unshare", "bwrap"])
def test_each_isolation_contains_a_non_root_runner(mode, open_tmp):
    """As uid 65534, with its own venv and host files it could write: the same containment as root."""
    python = interpreter_for(NOBODY)
    if python is None:
        pytest.skip("needs root (to switch to uid 65534), setpriv and a Python 3.10+ that uid 65534 can run")
    venv = make_venv(python, open_tmp / "venv", owner=NOBODY)
    host = Host(open_tmp)
    try:
        host.site, host.site_before = site_packages(venv), set(os.listdir(site_packages(venv)))
        for path in (host.dir, host.canary, host.secret_file):
            os.chown(path, NOBODY, NOBODY)
        attacks = bodies(host.paths())
        doc = _humaneval_doc()
        checks = [code_tasks.humaneval_check(doc, doc["canonical_solution"]), code_tasks.humaneval_check(doc, "    pass")]
        checks += [code_tasks.humaneval_check(doc, indent(attacks[name])) for name in NON_ROOT_ATTACKS]
        env = {"PATH": "/usr/bin:/bin", "WANDB_API_KEY": SECRET}
        outcome = run_checks_as(checks, str(venv), uid=NOBODY, limits=LIMITS, isolation=mode, env=env)
        if outcome.unavailable:
            pytest.skip(f"{mode} cannot isolate as uid 65534 here: {outcome.unavailable}")
        assert outcome.uid == NOBODY
        (canonical, empty, *hostile) = outcome.results
        assert canonical.status == "passed" and empty.status == "failed", (canonical, empty)
        assert [n for n, r in zip(NON_ROOT_ATTACKS, hostile, strict=True) if r.status == "passed"] == []
        assert not any(SECRET in r.stdout + r.stderr for r in outcome.results)
        assert _sandbox_pids_left(outcome.runner_pid) == set()
        assert host.effects() == []
    finally:
        host.close()
