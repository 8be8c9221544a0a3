"""Contained executor for model-written Python code.

Rewards come from running untrusted programs, which must neither fake a pass (`sys.exit(0)` before
the tests, printing a guessed "OK") nor harm the trainer or the machine. Each run is a fresh
`python -I` process; the mechanisms in force are probed once and named in `SandboxResult.isolation`:

- "nonce": a per-run `secrets` nonce reaches the trusted runner through an unlinked file it reads and
  closes before the user code starts, and goes to a dedicated pipe only after that code ends. It is
  in no argv, env var, file or source, so guessing or exiting early cannot pass. (Same process, so
  code that walks the runner's frames could find it: this stops accidents and cheap hacks.)
- "rlimits": CPU, AS, NPROC, FSIZE, CORE=0. "pgroup": own session, the group SIGKILLed at the end.
- "uid" (when root): each live run has its own unused uid, so RLIMIT_NPROC binds (root is exempt),
  root's files, processes and /proc/*/environ are out of reach, runs cannot signal each other, and all
  left under the uid is SIGKILLed afterwards.
- "netns": unshare(CLONE_NEWNET), only a down loopback. Else "socket-stub": the runner replaces the
  socket constructors, which determined code can get around.
- "mountns": a private size-capped tmpfs is cwd, /tmp, /var/tmp and /dev/shm; interpreter dirs under a
  parent others cannot enter (e.g. /root/.pyenv) are re-exposed in the child's view only. Without it
  cwd is a chowned `mkdtemp` dir on disk, with files capped only by RLIMIT_FSIZE.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import math
import os
import pwd
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

OUTPUT_CAP = 64 * 1024  # bytes kept per stream; more than this kills the run
UID_BASE, UID_SLOTS = 47000, 512  # uids for sandboxed runs; any with a passwd entry is skipped
MAX_PROCS = 64  # RLIMIT_NPROC per run (per uid, threads included)
FILE_MB = 16  # RLIMIT_FSIZE; the private tmpfs holds 4x this
_CLONE_NEWNS, _CLONE_NEWNET = 0x00020000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 2, 4, 4096, 8192, 16384, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]

# Trusted runner, passed with -c: it holds no secret; the nonce arrives with the code through an fd.
_RUNNER = r"""
import os, sys
def _boot(src_fd, done_fd, stub_net):
    with os.fdopen(src_fd, "rb") as f:
        nonce, _, src = f.read().partition(b"\n")
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
    os.write(done_fd, nonce)
_boot(*map(int, sys.argv[1:4]))
"""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run; `passed` means it ran to its end and exited 0, nothing weaker."""

    passed: bool
    timed_out: bool
    returncode: int | None
    stdout: str
    stderr: str
    reason: str = ""
    duration_s: float = 0.0
    isolation: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Plan:
    drop_uid: bool
    netns: bool
    mountns: bool

    def names(self) -> tuple[str, ...]:
        net = "netns" if self.netns else "socket-stub"
        return ("nonce", "rlimits", "pgroup") + ("uid",) * self.drop_uid + (net,) + ("mountns",) * self.mountns


def _exposures() -> list[tuple[str, str]]:
    """(hidden ancestor, interpreter dir) pairs: dirs the sandbox uid could not reach otherwise."""
    exe_dir = os.path.dirname(os.path.realpath(sys.executable))
    dirs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, exe_dir)}
    dirs = {d for d in dirs if not any(d.startswith(o + os.sep) for o in dirs)}  # nested dirs come along
    ancestors = lambda d: [d[:i] for i, c in enumerate(d + os.sep) if c == os.sep and i]  # noqa: E731 - /a, /a/b, ...
    hidden = {d: next((a for a in ancestors(d) if not os.stat(a).st_mode & 0o001), None) for d in sorted(dirs)}
    return [(h, d) for d, h in hidden.items() if h]


_SCRATCH = ("/var/tmp", "/dev/shm", "/tmp")
_MNT_DETACH = 2


def _under_scratch() -> list[str]:
    """Interpreter dirs (a virtualenv, say) inside /tmp-like dirs that the sandbox covers with its tmpfs."""
    dirs = {os.path.realpath(sys.prefix), os.path.dirname(os.path.abspath(sys.executable))}
    inside = sorted(d for d in dirs if any(d.startswith(s + os.sep) for s in _SCRATCH))
    return [d for d in inside if not any(d.startswith(o + os.sep) for o in inside)]  # nested dirs come along


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731 - ctypes wants bytes or NULL
    if _libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}")


def _setup_mounts(workdir: str, uid: int, exposures: list[tuple[str, str]]) -> None:
    """In the child's new mount namespace: re-expose the interpreter, then a private tmpfs everywhere writable."""
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we mount leaks back to the host
    stages = []
    for i, (_, path) in enumerate(exposures):
        stage = os.path.join(workdir, f".stage{i}")
        os.mkdir(stage)
        _mount(path, stage, None, _MS_BIND | _MS_REC)
        stages.append((stage, path))
    for hidden in dict.fromkeys(h for h, _ in exposures):
        _mount("tmpfs", hidden, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
    for stage, path in stages:
        os.makedirs(path, exist_ok=True)
        _mount(stage, path, None, _MS_MOVE)
        os.rmdir(stage)
    _mount("tmpfs", workdir, "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=0700,uid={uid},gid={uid},size={4 * FILE_MB}m")
    os.chdir(workdir)  # enter the tmpfs; "." names it even after /tmp is covered
    # an interpreter (virtualenv) that lives under a scratch dir must survive covering it
    kept = []
    for i, path in enumerate(_under_scratch()):
        stage = os.path.abspath(f".keep{i}")
        os.mkdir(stage)
        _mount(path, stage, None, _MS_BIND | _MS_REC)
        kept.append((f".keep{i}", path))
    for scratch in _SCRATCH:
        if os.path.isdir(scratch):
            _mount(".", scratch, None, _MS_BIND | (_MS_REC if kept else 0))
    os.chdir("/tmp")  # the same tmpfs, under a path that exists in the child's view
    for stage, path in kept:
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(os.path.abspath(stage), path, None, _MS_BIND | _MS_REC)
        for scratch in _SCRATCH:  # the staging copies are no business of the sandboxed code
            _libc.umount2(os.path.join(scratch, stage).encode(), _MNT_DETACH)
        with contextlib.suppress(OSError):
            os.rmdir(stage)


def _child_setup(plan: _Plan, uid: int | None, workdir: str, timeout_s: float, memory_mb: int):
    """preexec_fn: runs as root in the forked child; limits first, then namespaces, then drop the uid."""
    wanted = {resource.RLIMIT_CPU: math.ceil(timeout_s) + 1, resource.RLIMIT_AS: memory_mb << 20,
              resource.RLIMIT_NPROC: MAX_PROCS, resource.RLIMIT_FSIZE: FILE_MB << 20, resource.RLIMIT_CORE: 0}
    hard = {res: resource.getrlimit(res)[1] for res in wanted}  # without root a hard limit can only go down
    limits = [(r, v if hard[r] == resource.RLIM_INFINITY else min(v, hard[r])) for r, v in wanted.items()]
    exposures = _exposures() if plan.mountns else []
    flags = (_CLONE_NEWNET if plan.netns else 0) | (_CLONE_NEWNS if plan.mountns else 0)

    def setup() -> None:
        os.umask(0o022)
        for res, value in limits:
            resource.setrlimit(res, (value, value))
        if flags and _libc.unshare(flags) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        if plan.mountns:
            _setup_mounts(workdir, os.getuid() if uid is None else uid, exposures)
        if uid is not None:
            os.setgroups([])  # root's supplementary groups must not survive
            os.setgid(uid)
            os.setuid(uid)

    return setup


_uid_lock = threading.Lock()
_idle_uids = collections.deque(range(UID_BASE, UID_BASE + UID_SLOTS))  # least recently used first
_swept: set[int] = set()


def _acquire_uid() -> int:
    """A free uid, least recently used first: a killed run's zombies count toward NPROC until init reaps them."""
    with _uid_lock:
        while _idle_uids:
            uid = _idle_uids.popleft()
            with contextlib.suppress(KeyError):
                pwd.getpwuid(uid)
                continue  # a real account: never run as it, never kill its processes
            break
        else:
            raise RuntimeError("no free sandbox uid")
        fresh = uid not in _swept
        _swept.add(uid)
    if fresh:
        _kill_uid(uid)  # a crashed earlier parent may have left processes under it
    return uid


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _idle_uids.append(uid)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process owned by uid: kill(-1) issued as uid reaches exactly those, no pid races.

    One kill(-1) signals them all under the kernel's tasklist lock, so a fork racing with it fails too.
    """
    pid = os.fork()
    if pid == 0:
        with contextlib.suppress(BaseException):
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        os._exit(0)
    os.waitpid(pid, 0)


def _collect(proc: subprocess.Popen, deadline: float) -> tuple[bytes, bytes, str]:
    """Read stdout/stderr (OUTPUT_CAP each) until EOF, the deadline, the cap, or the main process exits."""
    out, err, problem = bytearray(), bytearray(), ""
    bufs = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and not problem:
            left = deadline - time.monotonic()
            # WNOWAIT leaves the zombie unreaped, so its pid (our pgid) cannot be reused before killpg
            exited = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            ready = sel.select(0 if exited else max(0.0, min(left, 0.05)))
            if left <= 0 or (exited and not ready):  # out of time, or a descendant still holds the pipes
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


def _reap(proc: subprocess.Popen, uid: int | None) -> int:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group, stragglers included
    rc = proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    if uid is not None:
        _kill_uid(uid)  # whatever left the group (setsid) still has our uid
    return rc


def _execute(code: str, timeout_s: float, memory_mb: int, plan: _Plan) -> SandboxResult:
    start, nonce = time.monotonic(), secrets.token_hex(16).encode()
    result = lambda *fields: SandboxResult(*fields, time.monotonic() - start, plan.names())  # noqa: E731
    with contextlib.ExitStack() as cleanup:  # unwinds in reverse: reap, close, remove dir, free uid
        try:
            uid = _acquire_uid() if plan.drop_uid else None
            if uid is not None:
                cleanup.callback(_release_uid, uid)
            workdir = tempfile.mkdtemp(prefix="alive-sbx-")
            cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
            if uid is not None and not plan.mountns:
                os.chown(workdir, uid, uid)
            src = cleanup.enter_context(tempfile.TemporaryFile())  # unlinked: only the fd we pass reaches it
            src.write(nonce + b"\n" + code.encode("utf-8", "surrogatepass"))
            src.flush()
            src.seek(0)
            done_r, done_w = os.pipe()
            cleanup.callback(os.close, done_r)
            os.set_blocking(done_r, False)
            home = "/tmp" if plan.mountns else workdir
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
            argv = [sys.executable, "-I", "-B", "-c", _RUNNER, str(src.fileno()), str(done_w), str(int(not plan.netns))]
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        cwd=workdir, env=env, pass_fds=(src.fileno(), done_w), start_new_session=True,
                                        preexec_fn=_child_setup(plan, uid, workdir, timeout_s, memory_mb))
            finally:
                os.close(done_w)  # else our own copy would keep the pipe open
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            return result(False, False, None, "", "", f"failed to start: {exc}")
        try:
            out, err, problem = _collect(proc, start + timeout_s)
        finally:
            rc = _reap(proc, uid)  # on any path: never leave a run behind
        try:
            token = os.read(done_r, 4096)
        except BlockingIOError:  # a writer we could not kill (no uid) still holds the pipe
            token = b""
        passed = not problem and rc == 0 and token == nonce
        reason = problem or ("passed" if passed else f"exit code {rc}" if rc else "exited before the end")
        text = lambda b: b.decode("utf-8", "replace")  # noqa: E731
        return result(passed, problem == "timeout", rc, text(out), text(err), reason)


_plan_lock = threading.Lock()
_chosen: _Plan | None = None


def _plan() -> _Plan:
    """Strongest configuration that actually runs here, probed once with a trivial program."""
    global _chosen
    with _plan_lock:
        if _chosen is None:
            root, reachable = os.geteuid() == 0, not _exposures()
            options = dict.fromkeys([_Plan(True, True, True), _Plan(reachable, True, False), _Plan(False, True, False),
                                     _Plan(reachable, False, False)] if root else [_Plan(False, True, False)])
            _chosen = next((p for p in options if _execute("print('ok')", 10.0, 512, p).stdout == "ok\n"),
                           _Plan(False, False, False))
        return _chosen


def run_python(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> SandboxResult:
    """Run `code` contained; never raises on bad code. passed = reached its end and exited 0."""
    return _execute(code, timeout_s, memory_mb, _plan())


def run_many(codes: list[str], *, timeout_s: float = 5.0, memory_mb: int = 512,
             workers: int | None = None) -> list[SandboxResult]:
    """Run many programs, `workers` at a time (default: CPU count); results keep the input order."""
    plan = _plan()  # probe before the threads start
    with ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda c: _execute(c, timeout_s, memory_mb, plan), codes))
