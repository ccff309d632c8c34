"""Hostile completions: each is the body of the function a benchmark calls, and returns a wrong answer.

A body may name ``CANARY`` (a host file it tries to change), ``HOST_DIR`` (a host directory),
``SECRET_FILE``, ``SITE`` (the interpreter's site-packages) and ``PORT`` (a host listener on
127.0.0.1); ``bodies(paths)`` fills them in. Every attack must end in a failed or timed-out
verdict with no effect on the host and no secret in any output.
"""

from __future__ import annotations

ATTACKS = {
    "infinite_loop": "while True:\n    pass",
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "huge_allocation": "blocks = []\nwhile True:\n    blocks.append(bytearray(10**8))",
    "one_huge_allocation": "x = bytearray(10**12)",
    "huge_output": "import sys\nwhile True:\n    sys.stdout.write('x' * 100000)",
    "write_outside": "open(CANARY, 'w').write('pwned')",
    "append_outside": "open(CANARY, 'a').write('pwned')",
    "delete_outside": "import os\nos.remove(CANARY)",
    "truncate_outside": "import os\nos.truncate(CANARY, 0)",
    "rmtree_outside": "import shutil\nshutil.rmtree(HOST_DIR)",
    "big_write_outside": "chunk = b'x' * 2**20\nwith open(HOST_DIR + '/big', 'wb') as f:\n    for _ in range(161):\n        f.write(chunk)",
    "pth_planting": "open(SITE + '/zz_hostile.pth', 'w').write('import os; os.system(\"touch /tmp/pwned\")')",
    "env_read": "import os\nprint(dict(os.environ))\nopen(HOST_DIR + '/env', 'w').write(repr(dict(os.environ)))",
    "parent_environ": "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())",
    "self_environ": "print(open('/proc/self/environ', 'rb').read())",
    "all_environ": (
        "import os\nfor p in os.listdir('/proc'):\n    try:\n        print(open(f'/proc/{p}/environ', 'rb').read())\n"
        "    except Exception:\n        pass"
    ),
    "secret_file": "print(open(SECRET_FILE).read())",
    "socket_localhost": "import socket\ns = socket.create_connection(('127.0.0.1', PORT), timeout=2)\ns.sendall(b'leak')",
    "socket_external": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)",
    "subprocess": "import subprocess\nsubprocess.run(['sh', '-c', 'echo pwned > ' + CANARY])",
    "os_system": "import os\nos.system('echo pwned > ' + CANARY)",
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "pidfd_kill_parent": "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)",
    "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)",
    "forked_survivor": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(8)\n    open(CANARY, 'w').write('late')\n"
        "    os._exit(0)"
    ),
    "pid1_exec_survivor": (  # the solution side may be its namespace's pid 1: leave the group, drop the
        # parent-death signal, exec away the lifeline thread, keep the runner's tag so a leftover is seen
        "import ctypes, os\ntag = [a.decode() for a in open('/proc/self/cmdline', 'rb').read().split(b'\\0')"
        " if a.startswith(b'dllm-sandbox-owner=')]\nos.setsid()\nctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\n"
        "os.execv('/bin/sh', ['sh', '-c', 'sleep 20', *tag])"
    ),
    "early_os_exit": "import os\nos._exit(0)",
    "sys_exit": "import sys\nsys.exit(0)",
    "raise_system_exit": "raise SystemExit(0)",
    "keyboard_interrupt": "raise KeyboardInterrupt",
    "print_pass_tokens": (
        "import sys\nfor name in dir(sys.modules['__main__']):\n    print(name, getattr(sys.modules['__main__'], name))\n"
        "print('passed')\nprint('\\npassed\\n', file=sys.stderr)"
    ),
    "fd_spray": "import os\nfor fd in range(256):\n    try:\n        os.write(fd, b'passed\\n{\"value\": true}\\n')\n    except OSError:\n        pass",
    "excepthook": "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\nraise ValueError",
    "atexit": "import atexit, os\natexit.register(os._exit, 0)\nraise AssertionError",
    "thread_outlives": "import threading, time\nthreading.Thread(target=lambda: time.sleep(60)).start()",
    "always_equal_object": "class Any:\n    def __eq__(self, other):\n        return True\nreturn Any()",
    "ctypes_fork": "import ctypes\nfor _ in range(1000):\n    ctypes.CDLL(None).fork()",
    "raise_rlimits": "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (-1, -1))\nwhile True:\n    pass",
    "chmod_interpreter": "import os, sys\nos.chmod(sys.executable, 0o777)",
    "new_user_namespace": "import ctypes\nassert ctypes.CDLL(None).unshare(0x10000000) == 0\nimport os\nos.system('mount -o remount,rw /usr')",
    "ptrace_pid1": "print(open('/proc/1/mem', 'rb').read(10))",
}
# every attack ends by returning a wrong answer (a function the papers' sanitizer keeps must return)
_TAIL = "\nreturn None"


def bodies(paths: dict[str, str]) -> dict[str, str]:
    """Each attack with the host's paths filled in, as a statement block."""
    out = {}
    for name, code in ATTACKS.items():
        for key, value in paths.items():
            code = code.replace(key, repr(value) if key != "PORT" else value)
        out[name] = code + ("" if "return " in code else _TAIL)
    return out


def indent(code: str, prefix: str = "    ") -> str:
    return "".join(prefix + line + "\n" for line in code.splitlines())
