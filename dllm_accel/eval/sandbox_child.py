"""The code that runs inside a sandbox: one side of a split check (standard library only).

``sandbox.py`` reads this file as text and runs it with ``python -I -c``; it never imports the
project. A check runs in two separate sandboxes joined by two pipes:

- the *solution* side executes the model's code and then answers calls ``[name, args, kwargs]``
  with the value returned (plain data only) or the exception raised;
- the *tests* side executes the benchmark's tests, where every name the solution defined is a
  stub that forwards the call over the pipe. Only this side can report "the tests ran to the
  end", on a pipe the solution has no handle to; a solution that exits, dies, hangs up or
  sends anything malformed makes every later call raise ``SolutionLost`` (a ``BaseException``,
  so ``except Exception`` in a test cannot swallow it) and the check fails.

Values cross as JSON with tags for tuples, sets, dicts, bytes, complex and non-finite floats,
so the tests compare plain Python data: a returned object cannot bring its own ``__eq__``. Any
other object stays on the solution side and crosses as an opaque reference (a tree built by the
solution, a regex match): the tests can pass it back or test it against None, nothing more.
"""

import base64
import builtins
import json
import math
import numbers
import os
import resource
import sys
import threading
import traceback
from array import array

_LINE_LIMIT = 64 * 1024 * 1024
_DEPTH_LIMIT = 200
_LIMIT_NAMES = ("CPU", "AS", "FSIZE", "NOFILE", "CORE", "NPROC")


class SolutionLost(BaseException):
    """The solution process exited, died, hung up or broke the protocol."""


class Unencodable(TypeError):
    """A value that is not plain data (numbers, strings, bytes, containers of them)."""


class Remote:
    """An object that lives on the solution side, known here by its reference number."""

    def __init__(self, ref):
        self.ref = ref

    def __repr__(self):
        return f"<solution object {self.ref}>"


_PLAIN = (str, bool, type(None))  # exact types that cross unchanged (ints when not huge, finite floats)
_BIG_INT_BITS = 1024  # larger ints cross in hex: decimal conversion is quadratic


def _plain(value):
    """Crosses as itself; the common case, checked first (a list of a million floats is a HumanEval+ answer)."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    return kind in _PLAIN or (kind is int and value.bit_length() <= _BIG_INT_BITS)


_PACK_MIN = 256  # a list this long, mostly floats, crosses as raw doubles: JSON's float text is ~1 us each


def _packed(items):
    """A long list of floats (and at most as many ints that a double holds exactly) as base64 doubles,
    with the ints' positions and values beside them so they come back as ints."""
    if len(items) < _PACK_MIN:
        return None
    ints = [i for i, v in enumerate(items) if type(v) is not float]
    if 2 * len(ints) > len(items) or any(type(items[i]) is not int or items[i].bit_length() > 53 for i in ints):
        return None
    raw = base64.b64encode(array("d", items).tobytes()).decode("ascii")
    return {"f64": [raw, ints, [items[i] for i in ints]]}


def _unpacked(body):
    raw, positions, values = body
    doubles = array("d")
    doubles.frombytes(base64.b64decode(raw, validate=True))
    out = doubles.tolist()
    for i, v in zip(positions, values, strict=True):
        if type(i) is not int or type(v) is not int or not 0 <= i < len(out):
            raise ValueError("bad packed list")
        out[i] = v
    return out


def encode(value, depth=0, refer=None):
    """Plain data as JSON-ready values; containers other than lists are tagged objects; other
    objects become references through ``refer`` (or raise ``Unencodable`` without one)."""
    if _plain(value):
        return value
    if depth > _DEPTH_LIMIT:
        raise Unencodable("value nested too deeply")
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [v if _plain(v) else encode(v, depth + 1, refer) for v in value]
        if isinstance(value, list):
            return _packed(items) or items
        return {"tuple" if isinstance(value, tuple) else "set" if isinstance(value, set) else "frozenset": items}
    if isinstance(value, dict):
        return {"dict": [[encode(k, depth + 1, refer), encode(v, depth + 1, refer)] for k, v in value.items()]}
    if isinstance(value, Remote):
        return {"ref": value.ref}
    if isinstance(value, (bool, str)):
        return (bool if isinstance(value, bool) else str)(value)
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return encode(value.item(), depth + 1, refer)
    if isinstance(value, numbers.Integral):
        number = int(value)
        return number if _plain(number) else {"int": hex(number)}
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else {"float": repr(number)}
    if isinstance(value, numbers.Complex):
        return {"complex": [encode(float(value.real)), encode(float(value.imag))]}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    if refer is not None:
        return {"ref": refer(value)}
    raise Unencodable(f"a value of type {type(value).__name__} is not plain data")


_JSON_SCALARS = (str, bool, int, float, type(None))


def decode(data, depth=0, resolve=Remote):
    """The inverse of ``encode``; a reference becomes ``resolve(number)``."""
    if type(data) in _JSON_SCALARS:
        return data
    if depth > _DEPTH_LIMIT:
        raise ValueError("value nested too deeply")
    if type(data) is list:
        return [v if type(v) in _JSON_SCALARS else decode(v, depth + 1, resolve) for v in data]
    if type(data) is not dict or len(data) != 1:
        raise ValueError("a tagged value has exactly one tag")
    ((tag, body),) = data.items()
    if tag == "ref":
        if type(body) is not int:
            raise ValueError("bad reference")
        return resolve(body)
    if tag == "int":
        return int(body, 16)
    if tag == "f64":
        return _unpacked(body)
    if tag == "float":
        if body not in ("inf", "-inf", "nan"):
            raise ValueError("bad float")
        return float(body)
    if tag == "complex":
        return complex(float(body[0]), float(body[1]))
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag == "dict":
        return {decode(k, depth + 1, resolve): decode(v, depth + 1, resolve) for k, v in body}
    kinds = {"tuple": tuple, "set": set, "frozenset": frozenset}
    if tag not in kinds or type(body) is not list:
        raise ValueError(f"unknown tag {tag!r}")
    return kinds[tag](decode(body, depth + 1, resolve))


def send(stream, message):
    for output in (sys.stdout, sys.stderr):  # the program's own output, before it can be cut off
        try:
            output.flush()
        except BaseException:
            pass
    stream.write(json.dumps(message).encode("utf-8") + b"\n")
    stream.flush()


def apply_limits(spec):
    for name, value in zip(_LIMIT_NAMES, spec.split(","), strict=True):
        if value != "-":
            resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(value), int(value)))


def describe(err):
    try:
        return f"{type(err).__name__}: {err}"[:2000]
    except BaseException:
        return type(err).__name__


def manifest(namespace, refer):
    """What the tests may use of the solution: callables and modules by name, values as data or references."""
    names = {}
    for name, value in list(namespace.items()):
        if name.startswith("__"):
            continue
        if type(value).__name__ == "module":
            names[name] = {"module": value.__name__}
        elif callable(value):
            names[name] = {"call": True}
        else:
            try:
                names[name] = {"value": encode(value, refer=refer)}
            except Unencodable:
                continue
    return names


def solution_side(source, inbox, outbox):
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(source, "solution.py", "exec"), namespace)
    except BaseException as err:
        traceback.print_exc()
        send(outbox, {"failed": describe(err)})
        return
    objects = []

    def refer(value):
        objects.append(value)
        return len(objects) - 1

    def resolve(ref):
        return objects[ref]

    send(outbox, {"names": manifest(namespace, refer)})
    for line in inbox:
        try:
            name, args, kwargs = json.loads(line)
            result = namespace[name](*decode(args, resolve=resolve), **decode(kwargs, resolve=resolve))
            reply = {"value": encode(result, refer=refer)}
        except BaseException as err:
            reply = {"raised": type(err).__name__, "message": describe(err)}
        send(outbox, reply)


class Link:
    """The tests' end of the pipe pair; once the solution is lost, every call fails."""

    def __init__(self, requests, replies):
        self.requests, self.replies, self.lost = requests, replies, None

    def receive(self):
        line = self.replies.readline(_LINE_LIMIT)
        if not line.endswith(b"\n"):
            self.fail("the solution exited or hung up")
        try:
            message = json.loads(line)
        except ValueError:
            self.fail("the solution sent a malformed reply")
        if not isinstance(message, dict):
            self.fail("the solution sent a malformed reply")
        return message

    def fail(self, reason):
        self.lost = self.lost or reason
        raise SolutionLost(self.lost)

    def call(self, name, args, kwargs):
        if self.lost:
            raise SolutionLost(self.lost)
        try:
            send(self.requests, [name, encode(list(args)), encode(kwargs)])
        except OSError:
            self.fail("the solution hung up")
        message = self.receive()
        if "value" in message:
            try:
                return decode(message["value"])
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                self.fail("the solution sent a malformed value")
        kind = getattr(builtins, str(message.get("raised")), None)
        text = str(message.get("message", ""))
        if isinstance(kind, type) and issubclass(kind, Exception) and kind.__module__ == "builtins":
            raise kind(text)
        self.fail(f"the solution raised {text}")


class Stub:
    """A name the solution defined; calling it runs the solution's code on the other side."""

    def __init__(self, link, name):
        self._link, self.__name__ = link, name

    def __call__(self, *args, **kwargs):
        return self._link.call(self.__name__, args, kwargs)


# modules the tests may import by a name the solution sends: the standard library and numpy, less
# the ones that act on import (a package's __main__, GUIs, browsers, test runners)
_NO_IMPORT = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc", "webbrowser",
              "unittest", "lib2to3", "ensurepip", "venv", "pip", "test", "doctest", "pdb", "code", "trace"}  # fmt: skip


def importable(name):
    parts = name.split(".")
    top = parts[0]
    allowed = top in getattr(sys, "stdlib_module_names", ()) or top == "numpy"
    return allowed and top not in _NO_IMPORT and "__main__" not in parts


def tests_side(source, link, verdict_fd):
    first = link.receive()
    if "names" not in first:
        sys.stderr.write(f"solution failed: {first.get('failed', 'no manifest')}\n")
        return 1
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for name, entry in first["names"].items():
        if not isinstance(name, str) or not isinstance(entry, dict) or hasattr(builtins, name):
            continue  # a solution's ``abs`` or ``len`` must not answer for the tests' own checks
        if "call" in entry:
            namespace[name] = Stub(link, name)
        elif "module" in entry and isinstance(entry["module"], str) and importable(entry["module"]):
            try:
                namespace[name] = __import__(entry["module"], fromlist=["_"])
            except ImportError:
                continue
        elif "value" in entry:
            namespace[name] = decode(entry["value"])
    try:
        exec(compile(source, "tests.py", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        return 1
    if link.lost:
        sys.stderr.write(f"solution lost: {link.lost}\n")
        return 1
    os.write(verdict_fd, b"passed")
    return 0


def watch_lifeline(fd):
    """Exit when the runner is gone: it holds the write end of this pipe and never writes."""

    def wait():
        try:
            os.read(fd, 1)
        finally:
            os._exit(3)

    threading.Thread(target=wait, daemon=True).start()


def main():
    sys.set_int_max_str_digits(0)
    role, source_fd, in_fd, out_fd, verdict_fd, lifeline_fd, limits = sys.argv[1:8]
    watch_lifeline(int(lifeline_fd))
    apply_limits(limits)
    with os.fdopen(int(source_fd), "rb") as handle:
        source = handle.read().decode("utf-8")
    inbox, outbox = os.fdopen(int(in_fd), "rb"), os.fdopen(int(out_fd), "wb")
    if role == "solution":
        solution_side(source, inbox, outbox)
        return 0
    return tests_side(source, Link(outbox, inbox), int(verdict_fd))


if __name__ == "__main__":
    sys.exit(main())
