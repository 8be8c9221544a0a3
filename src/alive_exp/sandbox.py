"""Contained executor for model-written Python code, and the judge that decides code verdicts.

Rewards come from running untrusted programs, which must neither fake a pass (`sys.exit(0)` before
the tests, printing a guessed "OK", finding a secret, rigging `__eq__`) nor harm the trainer or the
machine. Two entry points:

- `judge(program, tests)`: how every code verdict is decided. The program runs contained and serves its
  functions over a socket; the tests run in the judge (`sandbox_judge`), a process forked by the launcher
  that holds no model code, under a uid of its own, not dumpable. Only plain values cross, rebuilt in the
  judge, and the verdict goes to a pipe only the judge holds, with a token only it and we know. Nothing
  the program does (exit early, print, write to its fds, patch builtins, hunt frames or /proc) is read as
  a pass; the worst it can do is fail.
- `run_python(code)`: runs a program; passed = it ran to its end and exited 0 (CodeI/O's data draws).

Each run is a fresh `python -I` process; the mechanisms in force are probed once and named in
`SandboxResult.isolation`:

- "judge" (judged runs): as above. Without "uid" the judge shares the program's uid; then only its being
  non-dumpable (the kernel's ptrace rules) keeps the program out of it, and the program could stop it
  (a failure, never a pass).
- "nonce" (`run_python`): a per-run `secrets` nonce reaches the trusted runner through an unlinked file it
  reads and closes before the user code starts, and goes to a dedicated pipe only after that code ends.
  It is in no argv, env var, file or source, so guessing or exiting early cannot pass; code that walks
  the runner's frames can find it, which is why no verdict rests on it.
- "rlimits": CPU, AS, NPROC, FSIZE, CORE=0.
- "reaper": a launcher (`sandbox_launcher`, a fresh single-threaded `python -S` process, so no `preexec_fn`
  or `fork` runs in the threaded trainer) applies every limit below, starts the code in its own session
  and is its child subreaper: orphans come back to it. At the end it SIGKILLs the session (and the uid),
  then reaps until it has no child left, so when `run_python` returns no process of the run exists, not
  even a zombie.
- "uid" (when root): each live run has its own unused uid, so RLIMIT_NPROC binds (root is exempt),
  root's files, processes and /proc/*/environ are out of reach, runs cannot signal each other or the
  launcher, and all left under the uid is SIGKILLed before and after the run. Without it the code
  shares our uid and could stop the launcher; then what it left may outlive the call.
- "netns": unshare(CLONE_NEWNET), only a down loopback. Else "socket-stub": the runner replaces the
  socket constructors, which determined code can get around.
- "mountns": a private size-capped tmpfs is cwd, /tmp, /var/tmp and /dev/shm; interpreter dirs under a
  parent others cannot enter (e.g. /root/.pyenv) are re-exposed in the child's view only. Without it
  cwd is a chowned `mkdtemp` dir on disk, with files capped only by RLIMIT_FSIZE.
"""

from __future__ import annotations

import collections
import contextlib
import marshal
import math
import os
import pwd
import resource
import secrets
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from alive_exp import sandbox_judge
from alive_exp.sandbox_launcher import START_FAILED, exposures, launcher_argv

OUTPUT_CAP = 64 * 1024  # bytes kept per stream; more than this kills the run
UID_BASE, UID_SLOTS = 47000, 512  # uids for sandboxed runs; any with a passwd entry is skipped
MAX_PROCS = 64  # RLIMIT_NPROC per run (per uid, threads included)
FILE_MB = 16  # RLIMIT_FSIZE; the private tmpfs holds 4x this
TEARDOWN_S = 10.0  # the launcher's most time to kill and reap a run after being asked to stop

# Trusted runner, passed with -c: it holds no secret; the nonce arrives with the code through an fd. In a
# judged run (serve_fd >= 0) there is no nonce: the first line is the size of `sandbox_judge`'s compiled
# code, which comes before the program and serves the program's functions to the judge once it has run.
_RUNNER = r"""
import os, sys
def _boot(src_fd, done_fd, stub_net, serve_fd=-1):
    with os.fdopen(src_fd, "rb") as f:
        nonce, _, src = f.read().partition(b"\n")
    if serve_fd >= 0:
        import marshal
        wire = {}
        exec(marshal.loads(src[:int(nonce)]), wire)
        src = src[int(nonce):]
    if stub_net:
        import socket, _socket
        def _denied(*a, **k):
            raise PermissionError("network access is disabled in this sandbox")
        _socket.socket = socket.socket = socket.create_connection = socket.fromfd = _denied
    with open("main.py", "wb") as f:  # for the source lines in tracebacks; it holds no secret
        f.write(src)
    sys.argv = ["main.py"]
    g = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
    exec(compile(src, "main.py", "exec"), g)
    if serve_fd >= 0:
        wire["serve"](serve_fd, g, "main.py")
    else:
        os.write(done_fd, nonce)
_boot(*map(int, sys.argv[1:]))
"""
# stdlib-only, compiled once here: the judge runs it, and the program's runner for `serve`
_JUDGE = compile(Path(sandbox_judge.__file__).read_text(encoding="utf-8"), "sandbox_judge.py", "exec")
_JUDGE_BYTES = marshal.dumps(_JUDGE)
VERDICT_CAP = 64 * 1024  # a pipe's buffer: the judge writes its verdict in one go and exits


@dataclass(frozen=True)
class Tests:
    """Trusted tests for a program, run by the judge (see `sandbox_judge`): `prelude` first (the problem's
    own helpers, e.g. HumanEval's `poly`), then `source`. Each name in `calls`, and each name the tests use
    that neither they, the prelude nor the builtins define, is a function of the program, called over the
    socket with plain values."""

    source: str
    prelude: str = ""
    calls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failure:
    """The judge's account of a failed run. kind: "check" (an assert of the tests failed), "raised" (the
    solution raised), "error" (the tests raised on what they got), "lost" (the program stopped answering,
    answered with no plain value, or raised SystemExit and the like)."""

    kind: str
    message: str
    test_line: str = ""  # the tests' line that failed
    program_line: int = 0  # the program's line where the solution raised, as the program reports it


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run. `passed`: for `run_python`, it ran to its end and exited 0; for `judge`, the judge
    ran every test to its end against it. Nothing weaker."""

    passed: bool
    timed_out: bool
    returncode: int | None
    stdout: str
    stderr: str
    reason: str = ""
    duration_s: float = 0.0
    isolation: tuple[str, ...] = ()
    failure: Failure | None = field(default=None)  # judged runs that the judge failed


@dataclass(frozen=True)
class _Plan:
    drop_uid: bool
    netns: bool
    mountns: bool

    def names(self) -> tuple[str, ...]:
        net = "netns" if self.netns else "socket-stub"
        return ("nonce", "rlimits", "reaper") + ("uid",) * self.drop_uid + (net,) + ("mountns",) * self.mountns


def _limits(timeout_s: float, memory_mb: int) -> list[tuple[int, int]]:
    wanted = {resource.RLIMIT_CPU: math.ceil(timeout_s) + 1, resource.RLIMIT_AS: memory_mb << 20,
              resource.RLIMIT_NPROC: MAX_PROCS, resource.RLIMIT_FSIZE: FILE_MB << 20, resource.RLIMIT_CORE: 0}
    hard = {res: resource.getrlimit(res)[1] for res in wanted}  # without root a hard limit can only go down
    return [(r, v if hard[r] == resource.RLIM_INFINITY else min(v, hard[r])) for r, v in wanted.items()]


_uid_lock = threading.Lock()
_idle_uids = collections.deque(range(UID_BASE, UID_BASE + UID_SLOTS))  # least recently used first


def _acquire_uid() -> int:
    """A free uid; the launcher clears any process a crashed earlier trainer left under it."""
    with _uid_lock:
        while _idle_uids:
            uid = _idle_uids.popleft()
            with contextlib.suppress(KeyError):
                pwd.getpwuid(uid)
                continue  # a real account: never run as it, never kill its processes
            return uid
        raise RuntimeError("no free sandbox uid")


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _idle_uids.append(uid)


def _collect(proc: subprocess.Popen, deadline: float) -> tuple[bytes, bytes, str]:
    """Read stdout/stderr (OUTPUT_CAP each) until EOF, the deadline, the cap, or the launcher exits."""
    out, err, problem = bytearray(), bytearray(), ""
    bufs = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and not problem:
            left = deadline - time.monotonic()
            # WNOWAIT leaves the zombie for Popen to reap, so a signal to its pid cannot reach a stranger
            exited = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            ready = sel.select(0 if exited else max(0.0, min(left, 0.05)))
            if left <= 0 or (exited and not ready):  # out of time, or a writer outlived the launcher
                problem = "timeout" if left <= 0 else ""
                break
            for key, _ in ready:
                chunk, buf = os.read(key.fd, 65536), bufs[key.fd]
                if not chunk:
                    sel.unregister(key.fd)
                if len(buf) + len(chunk) > OUTPUT_CAP:
                    problem = "output limit exceeded"
                buf += chunk[: OUTPUT_CAP - len(buf)]
    return bytes(out), bytes(err), problem


def _finish(proc: subprocess.Popen) -> int:
    """Ask the launcher to end the run (a no-op if it has); it exits once no process of the run is left."""
    proc.terminate()
    try:
        rc = proc.wait(timeout=TEARDOWN_S)
    except subprocess.TimeoutExpired:  # only code sharing our uid (no "uid") can stall it, e.g. with SIGSTOP
        proc.kill()
        rc = proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return rc


def _unlinked(cleanup: contextlib.ExitStack, data: bytes):
    """A file only the fd we pass reaches: no name, no argv, no env var."""
    f = cleanup.enter_context(tempfile.TemporaryFile())
    f.write(data)
    f.flush()
    f.seek(0)
    return f


def _read_all(fd: int) -> bytes:
    """What the pipe holds once its writers are gone; b"" if one is still alive (a launcher we had to kill)."""
    data = b""
    with contextlib.suppress(BlockingIOError):
        while len(data) <= VERDICT_CAP and (chunk := os.read(fd, 65536)):
            data += chunk
        return data
    return b""


def _verdict(data: bytes, token: str) -> dict | None:
    """The judge's verdict, if `data` is one and carries this run's token."""
    try:
        found = sandbox_judge.decode(data.decode("ascii"))
    except Exception:  # noqa: BLE001 - whatever is not the judge's verdict is no verdict
        return None
    return found if isinstance(found, dict) and found.get("token") == token else None


def _failure(verdict: dict) -> Failure:
    field_of = lambda k, t, empty: verdict.get(k) if type(verdict.get(k)) is t else empty  # noqa: E731
    return Failure(field_of("kind", str, ""), field_of("message", str, ""), field_of("test_line", str, ""),
                   field_of("program_line", int, 0))


def _execute(code: str, timeout_s: float, memory_mb: int, plan: _Plan, tests: Tests | None = None) -> SandboxResult:
    start, token = time.monotonic(), secrets.token_hex(16)
    nonce = b"" if tests else token.encode()  # a judged run's program gets no secret at all
    names = ("judge",) + plan.names()[1:] if tests else plan.names()
    result = lambda *fields, failure=None: SandboxResult(*fields, time.monotonic() - start, names, failure)  # noqa: E731
    with contextlib.ExitStack() as cleanup:  # unwinds in reverse: close, remove dir, free uid
        try:
            uid = _acquire_uid() if plan.drop_uid else None
            if uid is not None:
                cleanup.callback(_release_uid, uid)
            judge_uid = _acquire_uid() if plan.drop_uid and tests else None  # so the run cannot signal the judge
            if judge_uid is not None:
                cleanup.callback(_release_uid, judge_uid)
            workdir = tempfile.mkdtemp(prefix="alive-sbx-")
            cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
            if uid is not None and not plan.mountns:
                os.chown(workdir, uid, uid)
            head = str(len(_JUDGE_BYTES)).encode() + b"\n" + _JUDGE_BYTES if tests else nonce + b"\n"
            src = _unlinked(cleanup, head + code.encode("utf-8", "surrogatepass"))
            done_r, done_w = os.pipe()  # judged: the verdict's pipe, written by the judge alone
            cleanup.callback(os.close, done_r)
            os.set_blocking(done_r, False)
            ours = [done_w]  # our copies of what only the launcher's children may hold, closed once it starts
            home = "/tmp" if plan.mountns else workdir
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
            stub = str(int(not plan.netns))
            judge = None
            if tests is None:
                fds = (src.fileno(), done_w)
                runner = [sys.executable, "-I", "-B", "-c", _RUNNER, *map(str, fds), stub]
            else:
                serve_fd, judge_fd = (s.detach() for s in socket.socketpair())
                spec = {"token": token, "prelude": tests.prelude, "source": tests.source, "calls": list(tests.calls)}
                spec_file = _unlinked(cleanup, marshal.dumps(spec))
                ours += [serve_fd, judge_fd]
                judge = (judge_uid, _JUDGE, (spec_file.fileno(), judge_fd, done_w))
                fds = (src.fileno(), serve_fd, *judge[2])
                runner = [sys.executable, "-I", "-B", "-c", _RUNNER, str(src.fileno()), "-1", stub, str(serve_fd)]
            try:  # no preexec_fn: the launcher is a fresh process, safe however many threads call us
                argv = launcher_argv(runner, uid=uid, workdir=workdir, netns=plan.netns, mountns=plan.mountns,
                                     tmpfs_mb=4 * FILE_MB, limits=_limits(timeout_s, memory_mb), judge=judge)
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, cwd=workdir, env=env, pass_fds=fds,
                                        start_new_session=True)
            finally:
                for fd in ours:  # else our own copies would keep the pipe and the socket open
                    os.close(fd)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            return result(False, False, None, "", "", f"failed to start: {exc}")
        try:
            out, err, problem = _collect(proc, start + timeout_s)
        finally:
            rc = _finish(proc)  # on any path: never leave a run behind
        text = lambda b: b.decode("utf-8", "replace")  # noqa: E731
        if rc == START_FAILED and err.startswith(b"failed to start: ") and not problem:
            problem = text(err).splitlines()[0]
        if tests is None:
            passed = not problem and rc == 0 and _read_all(done_r) == nonce
            reason = problem or ("passed" if passed else f"exit code {rc}" if rc else "exited before the end")
            return result(passed, problem == "timeout", rc, text(out), text(err), reason)
        verdict = _verdict(_read_all(done_r), token)
        passed = not problem and verdict is not None and verdict.get("passed") is True
        reason = problem or ("passed" if passed else "no verdict" if verdict is None else "failed")
        failure = _failure(verdict) if verdict is not None and not passed else None
        return result(passed, problem == "timeout", rc, text(out), text(err), reason, failure=failure)


_plan_lock = threading.Lock()
_chosen: _Plan | None = None


def _plan() -> _Plan:
    """Strongest configuration that actually runs here, probed once with a trivial program."""
    global _chosen
    with _plan_lock:
        if _chosen is None:
            root, reachable = os.geteuid() == 0, not exposures()
            options = dict.fromkeys([_Plan(True, True, True), _Plan(reachable, True, False), _Plan(False, True, False),
                                     _Plan(reachable, False, False)] if root else [_Plan(False, True, False)])
            _chosen = next((p for p in options if _execute("print('ok')", 10.0, 512, p).stdout == "ok\n"),
                           _Plan(False, False, False))
        return _chosen


def run_python(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> SandboxResult:
    """Run `code` contained; never raises on bad code. passed = reached its end and exited 0. Returns only
    once every process the code started is gone (see "reaper" above)."""
    return _execute(code, timeout_s, memory_mb, _plan())


def run_many(codes: list[str], *, timeout_s: float = 5.0, memory_mb: int = 512,
             workers: int | None = None) -> list[SandboxResult]:
    """Run many programs, `workers` at a time (default: CPU count); results keep the input order."""
    return _many([(c, None) for c in codes], timeout_s, memory_mb, workers)


def judge(program: str, tests: Tests, *, timeout_s: float = 5.0, memory_mb: int = 512) -> SandboxResult:
    """Run `program` contained and `tests` against it in the judge; passed = every test ran to its end there.
    Never raises on bad code; returns once every process of the run is gone."""
    return _execute(program, timeout_s, memory_mb, _plan(), tests)


def judge_many(runs: list[tuple[str, Tests]], *, timeout_s: float = 5.0, memory_mb: int = 512,
               workers: int | None = None) -> list[SandboxResult]:
    """`judge` for many (program, tests) pairs, `workers` at a time; results keep the input order."""
    return _many(runs, timeout_s, memory_mb, workers)


def _many(runs: list[tuple[str, Tests | None]], timeout_s: float, memory_mb: int,
          workers: int | None) -> list[SandboxResult]:
    plan = _plan()  # probe before the threads start
    with ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda r: _execute(r[0], timeout_s, memory_mb, plan, r[1]), runs))
