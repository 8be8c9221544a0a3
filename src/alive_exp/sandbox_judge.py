"""The judge: trusted code that decides a judged run's verdict, in a process that holds no model code.

A judged run (`sandbox.judge`) is two processes that share one socket and nothing else:

- the program, sandboxed as ever: the model's code runs to its end, then `serve` answers calls to its
  functions over the socket;
- the judge, forked by the launcher under a uid of its own, not dumpable (no ptrace, no /proc/<pid>/mem,
  fd or environ for anyone but root), with no descriptor of the program's: it runs the trusted tests, and
  every call to a function of the program (the candidate, the entry point) goes over the socket.

Only plain values cross: None, bool, int, float, complex, str, bytes, and lists, tuples, sets, frozensets
and dicts of them, as tagged JSON. The judge builds them afresh (`decode`), so no object of the program's
(a rigged `__eq__`, a raising `__hash__`) ever reaches a comparison in the tests. What the program
prints, its exit status, its atexit hooks and whatever it writes to its descriptors decide nothing: the
verdict is the judge's, written to a pipe only the judge holds, with the per-run token it was handed.

This module is stdlib-only source: the launcher runs it (in the judge) and `sandbox` prepends it to the
program's runner (for `serve`), both under `python -I`, where alive_exp cannot be imported.
"""

import builtins
import marshal
import os
import sys

try:  # json's C parts: the json package itself imports re, which would double the cost of a run's start
    from _json import encode_basestring_ascii as _quote
    from _json import make_scanner as _make_scanner
except ImportError:  # an interpreter without them
    from json.encoder import encode_basestring_ascii as _quote
    from json.scanner import make_scanner as _make_scanner

MAX_MESSAGE = 8 << 20  # bytes in one call or reply; more is a broken run, never a long wait
VERDICT_CHARS = 2000  # per text field of the verdict, which must fit a pipe's buffer in one write
_NOT_JUDGEABLE = (SystemExit, KeyboardInterrupt, GeneratorExit)  # raised by the solution: never what a test expects


def _number(x):
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "Infinity" if x > 0 else "-Infinity"
    return float.__repr__(x)


def encode(x, name="the function"):
    """x as JSON text; a TypeError for anything but a plain value (the type rule of every judged run)."""
    t = type(x)
    if t is str:
        return _quote(x)
    if t is int:
        return int.__repr__(x)  # a ValueError past sys.get_int_max_str_digits()
    if t is float:
        return _number(x)
    if t is bool or x is None:
        return "true" if x is True else "false" if x is False else "null"
    if t is list:
        return "[" + ",".join([encode(v, name) for v in x]) + "]"
    if t is tuple or t is set or t is frozenset:
        tag = "t" if t is tuple else "s" if t is set else "f"
        return '{"' + tag + '":[' + ",".join([encode(v, name) for v in x]) + "]}"
    if t is dict:
        return '{"d":[' + ",".join(["[" + encode(k, name) + "," + encode(v, name) + "]" for k, v in x.items()]) + "]}"
    if t is bytes:
        return '{"b":"' + x.hex() + '"}'
    if t is complex:
        return '{"c":[' + _number(x.real) + "," + _number(x.imag) + "]}"
    raise TypeError(f"{name} returned an object of type {t.__name__}, not a plain value" if name else
                    f"an object of type {t.__name__} is not a plain value")


def _plain(obj):
    """The parser's object hook: a tagged object back to the plain value it stands for, built here."""
    if len(obj) == 1:
        ((tag, v),) = obj.items()
        if type(v) is list:
            if tag == "t":
                return tuple(v)
            if tag == "s":
                return set(v)
            if tag == "f":
                return frozenset(v)
            if tag == "d" and all(type(p) is list and len(p) == 2 for p in v):
                return dict(v)
            if tag == "c" and len(v) == 2 and all(type(n) in (int, float) for n in v):
                return complex(*v)
        elif tag == "b" and type(v) is str:
            return bytes.fromhex(v)
    raise ValueError("not a plain value")


class _Parser:  # what json's scanner reads off its context
    strict, object_hook, object_pairs_hook, memo = True, _plain, None, {}
    parse_float, parse_int, parse_constant = float, int, float


_scan = _make_scanner(_Parser)


def decode(text):
    """The plain value that `encode` wrote; an exception (never a value) for anything else."""
    value, end = _scan(text, 0)
    if end != len(text):
        raise ValueError("text after the value")
    return value


def send(fd, text):
    data = text.encode("ascii")
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"a message of {len(data)} bytes (at most {MAX_MESSAGE})")
    view = memoryview(len(data).to_bytes(4, "big") + data)
    while view:
        view = view[os.write(fd, view):]


def _read(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def receive(fd):
    """One message; EOFError when the other side has hung up, another exception when it is not one."""
    size = int.from_bytes(_read(fd, 4), "big")
    if size > MAX_MESSAGE:
        raise ValueError(f"a message of {size} bytes (at most {MAX_MESSAGE})")
    return decode(_read(fd, size).decode("ascii"))


# -- the program's side: untrusted process, so nothing here is relied on -----------------------------
def serve(fd, namespace, filename):
    """Answer the judge's calls to functions in `namespace` until it hangs up. The run is killed as soon as
    the judge is done, which may be the moment it has a reply: what the program printed goes out first."""
    def flush():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass

    while True:
        flush()
        try:
            name, args, kwargs = receive(fd)
        except EOFError:
            return
        try:
            if name not in namespace:
                raise NameError(f"name {name!r} is not defined")
            reply = '["value",' + encode(namespace[name](*args, **kwargs), name) + "]"
            flush()
            send(fd, reply)
            continue
        except BaseException as exc:  # the judge decides what a raised exception means
            tb, line = exc.__traceback__, 0
            while tb is not None:
                if tb.tb_frame.f_code.co_filename == filename:
                    line = tb.tb_lineno
                tb = tb.tb_next
            try:
                text = str(exc)[:VERDICT_CHARS]
            except BaseException:
                text = ""
            kind = type(exc).__name__
        flush()
        send(fd, encode(["raised", kind, text, line]))


# -- the judge's side: trusted ------------------------------------------------------------------------
class Lost(BaseException):
    """The program cannot be judged any further (it hung up, sent no reply, or the tests passed it what
    cannot cross). A BaseException, so a test's `except Exception` cannot swallow it, and sticky besides."""


class RemoteError(Exception):
    """An exception the solution raised whose class is not a builtin one."""


class Program:
    """The program's end of the socket, as callables the tests use like the functions themselves."""

    def __init__(self, fd):
        self.fd, self.lost, self.raised = fd, "", None  # raised: (exception, its name, text, program line)

    def function(self, name):
        def call(*args, **kwargs):
            return self.call(name, args, kwargs)

        call.__name__ = call.__qualname__ = name
        return call

    def call(self, name, args, kwargs):
        if self.lost:
            raise Lost(self.lost)
        try:
            message = "[" + encode(name) + "," + encode(args, "") + "," + encode(kwargs, "") + "]"
        except (TypeError, ValueError, RecursionError) as exc:
            return self._lose(f"the tests pass {name} a value that cannot cross to the sandbox ({exc})")
        if len(message) > MAX_MESSAGE:
            return self._lose(f"the tests pass {name} more than {MAX_MESSAGE} bytes of arguments")
        try:
            send(self.fd, message)
            reply = receive(self.fd)
        except (EOFError, OSError):
            return self._lose(f"the program stopped answering a call to {name}")
        except Exception as exc:  # not a message: size, JSON, tags
            return self._lose(f"the program answered a call to {name} with something other than a plain value ({type(exc).__name__})")
        if type(reply) is list and len(reply) == 2 and reply[0] == "value":
            return reply[1]
        if not (type(reply) is list and len(reply) == 4 and reply[0] == "raised" and type(reply[1]) is str
                and type(reply[2]) is str and type(reply[3]) is int):
            return self._lose(f"the program answered a call to {name} with something other than a reply")
        _, kind, text, line = reply
        cls = getattr(builtins, kind, None)
        if isinstance(cls, type) and issubclass(cls, _NOT_JUDGEABLE):
            return self._lose(f"{name} raised {kind}" + (f": {text}" if text else ""))
        exc = None
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                exc = cls(text)
            except Exception:  # e.g. UnicodeDecodeError wants five arguments
                exc = None
        exc = exc if exc is not None else RemoteError(f"{kind}: {text}")
        self.raised = (exc, kind, text, line)
        raise exc

    def _lose(self, why):
        self.lost = why
        raise Lost(why)


def _names(code):
    """Every name a code object and the ones nested in it look up (globals and attributes alike)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names(const)
    return names


def _line(exc, filename, source):
    """The last line of `source` (compiled as `filename`) in exc's traceback."""
    tb, line = exc.__traceback__, ""
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            lines = source.splitlines()
            line = lines[tb.tb_lineno - 1].strip() if 0 < tb.tb_lineno <= len(lines) else ""
        tb = tb.tb_next
    return line


def verdict(spec, fd):
    """Run the spec's prelude and tests against the program behind fd; the verdict as a dict."""
    program, ns = Program(fd), {"__name__": "__main__", "__builtins__": builtins}
    try:
        prelude = compile(spec["prelude"], "prelude.py", "exec")
        tests = compile(spec["source"], "tests.py", "exec")
        used = _names(tests) - set(spec["calls"])
        if used & _names(prelude):  # the tests may use what it defines (HumanEval's poly); else skip its imports
            exec(prelude, ns)
        remote = set(spec["calls"]) | {n for n in used if n not in ns and not hasattr(builtins, n)}
        ns.update({n: program.function(n) for n in remote})
        exec(tests, ns)
    except BaseException as exc:
        if program.lost:
            return {"passed": False, "kind": "lost", "message": program.lost}
        if program.raised and exc is program.raised[0]:
            _, kind, text, line = program.raised
            return {"passed": False, "kind": "raised", "message": f"{kind}: {text}" if text else kind,
                    "program_line": line}
        text = str(exc)
        return {"passed": False, "kind": "check" if isinstance(exc, AssertionError) else "error",
                "message": f"{type(exc).__name__}: {text}" if text else type(exc).__name__,
                "test_line": _line(exc, "tests.py", spec["source"]) or _line(exc, "prelude.py", spec["prelude"])}
    if program.lost:  # the tests swallowed the Lost itself
        return {"passed": False, "kind": "lost", "message": program.lost}
    return {"passed": True, "kind": "passed", "message": ""}


def judge(spec_fd, sock_fd, verdict_fd):
    """The judge's whole life: read the spec, judge, hang up on the program, write the verdict."""
    with os.fdopen(spec_fd, "rb") as f:
        spec = marshal.loads(f.read())  # written by the trainer: trusted
    try:
        found = verdict(spec, sock_fd)
    finally:
        os.close(sock_fd)  # the program sees EOF and ends
    found = {k: v[:VERDICT_CHARS] if type(v) is str else v for k, v in found.items()}
    os.write(verdict_fd, encode({"token": spec["token"], **found}).encode("ascii"))
