"""Contained executor for model-written Python code.

Rewards come from running untrusted programs, which must neither fake a pass (`sys.exit(0)` before
the tests, printing a guessed "OK") nor harm the trainer or the machine. Each run is a fresh
`python -I` process; the mechanisms in force are probed once and named in `SandboxResult.isolation`:

- "nonce": a per-run `secrets` nonce reaches the trusted runner through an unlinked file it reads and
  closes before the user code starts, and goes to a dedicated pipe only after that code ends. It is
  in no argv, env var, file or source, so guessing or exiting early cannot pass. (Same process, so
  code that walks the runner's frames could find it: this stops accidents and cheap hacks.)
- "rlimits": CPU, AS, NPROC, FSIZE, CORE=0.
- "reaper": a launcher (a fresh single-threaded `python -S` process, so no `preexec_fn` or `fork` runs in
  the threaded trainer) applies every limit below, starts the code in its own session and is its child
  subreaper: orphans come back to it. At the end it SIGKILLs the session (and the uid), then reaps until
  it has no child left, so when `run_python` returns no process of the run exists, not even a zombie.
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
TEARDOWN_S = 10.0  # the launcher's most time to kill and reap a run after being asked to stop
_CLONE_NEWNS, _CLONE_NEWNET = 0x00020000, 0x40000000
_START_FAILED = 125  # the launcher's exit code when it could not start the run (as env(1) and unshare(1))

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

# Trusted launcher, run as root with `-I -S -c` (stdlib builtins only: it starts in ~10 ms). Its one
# argument is the marshalled config from `_execute`; the same interpreter reads it, so the format matches.
_LAUNCHER = r"""
import ctypes, marshal, os, resource, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4  # variadic: it reads unsigned longs
NOSUID, NODEV, BIND, MOVE, REC, PRIVATE, DETACH = 2, 4, 4096, 8192, 16384, 1 << 18, 2
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, START_FAILED = 1, 36, 125
SCRATCH = ("/var/tmp", "/dev/shm", "/tmp")

def check(ok, what):
    if not ok:
        raise OSError(ctypes.get_errno(), what)

def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) == 0, "mount " + target)

def setup_mounts(workdir, uid, tmpfs_mb, exposures, kept_dirs):
    # In our new mount namespace: re-expose the interpreter, then a private tmpfs everywhere writable.
    mount(None, "/", None, REC | PRIVATE)  # nothing we mount leaks back to the host
    stages = []
    for i, (_, path) in enumerate(exposures):
        stage = os.path.join(workdir, f".stage{i}")
        os.mkdir(stage)
        mount(path, stage, None, BIND | REC)
        stages.append((stage, path))
    for hidden in dict.fromkeys(h for h, _ in exposures):
        mount("tmpfs", hidden, "tmpfs", NOSUID | NODEV, "mode=0755,size=1m")
    for stage, path in stages:
        os.makedirs(path, exist_ok=True)
        mount(stage, path, None, MOVE)
        os.rmdir(stage)
    mount("tmpfs", workdir, "tmpfs", NOSUID | NODEV, f"mode=0700,uid={uid},gid={uid},size={tmpfs_mb}m")
    os.chdir(workdir)  # enter the tmpfs; "." names it even after /tmp is covered
    kept = []  # an interpreter (virtualenv) that lives under a scratch dir must survive covering it
    for i, path in enumerate(kept_dirs):
        os.mkdir(f".keep{i}")
        mount(path, os.path.abspath(f".keep{i}"), None, BIND | REC)
        kept.append((f".keep{i}", path))
    for scratch in SCRATCH:
        if os.path.isdir(scratch):
            mount(".", scratch, None, BIND | (REC if kept else 0))
    os.chdir("/tmp")  # the same tmpfs, under a path that exists in the child's view
    for stage, path in kept:
        os.makedirs(path, mode=0o755, exist_ok=True)
        mount(os.path.abspath(stage), path, None, BIND | REC)
        for scratch in SCRATCH:  # the staging copies are no business of the sandboxed code
            libc.umount2(os.path.join(scratch, stage).encode(), DETACH)
        try:
            os.rmdir(stage)
        except OSError:
            pass

def drop_to(uid):
    os.setgroups([])  # root's supplementary groups must not survive
    os.setgid(uid)
    os.setuid(uid)

def kill_uid(uid):
    # kill(-1) issued as uid reaches exactly its processes, all under the kernel's tasklist lock, so a
    # fork racing with it fails too; the helper is our child, and we are single-threaded: fork is safe.
    pid = os.fork()
    if pid == 0:
        try:
            drop_to(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)

def children():
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: read every parent pid
        found = []
        for p in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{p}/stat") as f:
                    if int(f.read().rpartition(")")[2].split()[1]) == me:
                        found.append(int(p))
            except OSError:
                pass
        return found

def start_run(uid, limits, argv):
    # The forked child: own session, no root, the limits, then the runner. Never returns.
    try:
        os.setsid()
        if uid >= 0:
            drop_to(uid)
        for res, value in limits:  # after the drop: lowering a limit needs no privilege
            resource.setrlimit(res, (value, value))
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execv(argv[0], argv)
    except BaseException as exc:
        os.write(2, f"failed to start: {exc}\n".encode())
    finally:
        os._exit(START_FAILED)

def main(parent, uid, flags, mounts, limits, argv):
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # we die of the run's signal at the end, coreless
        check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, "prctl")  # the run's orphans come to us, not init
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0, "prctl")  # a vanished trainer = a timeout
        if os.getppid() != parent:
            os._exit(START_FAILED)
        if uid >= 0:
            kill_uid(uid)  # a crashed earlier trainer may have left processes under it
        if flags:
            check(libc.unshare(flags) == 0, "unshare")
        if mounts:
            setup_mounts(*mounts)
    except OSError as exc:
        os.write(2, f"failed to start: {exc}\n".encode())
        os._exit(START_FAILED)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])  # a stop request waits for a run to stop
    run = os.fork()
    if run == 0:
        start_run(uid, limits, argv)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(run, signal.SIGKILL))  # the trainer's stop request
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
    end = os.waitid(os.P_PID, run, os.WEXITED | os.WNOWAIT)  # unreaped: its pid (the session id) stays ours
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # from here on that pid is reaped and may be reused
    try:
        os.killpg(run, signal.SIGKILL)  # the run's session, in one go
    except OSError:
        pass
    if uid >= 0:
        kill_uid(uid)  # whatever left the session still has the uid
    while True:  # orphans come to us, so once we have no child left, no process of the run is left
        for pid in children():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.001)  # SIGKILLed, not dead yet
        except ChildProcessError:
            break
    if end.si_code == os.CLD_EXITED:
        os._exit(end.si_status)
    if end.si_status != signal.SIGKILL:
        signal.signal(end.si_status, signal.SIG_DFL)
    os.kill(os.getpid(), end.si_status)  # die as the run died, so the trainer sees -signal
    os._exit(128 + end.si_status)

main(*marshal.loads(bytes.fromhex(sys.argv[1])))
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
        return ("nonce", "rlimits", "reaper") + ("uid",) * self.drop_uid + (net,) + ("mountns",) * self.mountns


def _exposures() -> list[tuple[str, str]]:
    """(hidden ancestor, interpreter dir) pairs: dirs the sandbox uid could not reach otherwise."""
    exe_dir = os.path.dirname(os.path.realpath(sys.executable))
    dirs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, exe_dir)}
    dirs = {d for d in dirs if not any(d.startswith(o + os.sep) for o in dirs)}  # nested dirs come along
    ancestors = lambda d: [d[:i] for i, c in enumerate(d + os.sep) if c == os.sep and i]  # noqa: E731 - /a, /a/b, ...
    hidden = {d: next((a for a in ancestors(d) if not os.stat(a).st_mode & 0o001), None) for d in sorted(dirs)}
    return [(h, d) for d, h in hidden.items() if h]


_SCRATCH = ("/var/tmp", "/dev/shm", "/tmp")


def _under_scratch() -> list[str]:
    """Interpreter dirs (a virtualenv, say) inside /tmp-like dirs that the sandbox covers with its tmpfs."""
    dirs = {os.path.realpath(sys.prefix), os.path.dirname(os.path.abspath(sys.executable))}
    inside = sorted(d for d in dirs if any(d.startswith(s + os.sep) for s in _SCRATCH))
    return [d for d in inside if not any(d.startswith(o + os.sep) for o in inside)]  # nested dirs come along


def _limits(timeout_s: float, memory_mb: int) -> list[tuple[int, int]]:
    wanted = {resource.RLIMIT_CPU: math.ceil(timeout_s) + 1, resource.RLIMIT_AS: memory_mb << 20,
              resource.RLIMIT_NPROC: MAX_PROCS, resource.RLIMIT_FSIZE: FILE_MB << 20, resource.RLIMIT_CORE: 0}
    hard = {res: resource.getrlimit(res)[1] for res in wanted}  # without root a hard limit can only go down
    return [(r, v if hard[r] == resource.RLIM_INFINITY else min(v, hard[r])) for r, v in wanted.items()]


def _launcher_argv(plan: _Plan, uid: int | None, workdir: str, timeout_s: float, memory_mb: int,
                   runner: list[str]) -> list[str]:
    """The launcher's command line: everything it needs, marshalled (no secret is in it)."""
    flags = (_CLONE_NEWNET if plan.netns else 0) | (_CLONE_NEWNS if plan.mountns else 0)
    owner = os.getuid() if uid is None else uid
    mounts = (workdir, owner, 4 * FILE_MB, _exposures(), _under_scratch()) if plan.mountns else ()
    config = (os.getpid(), -1 if uid is None else uid, flags, mounts, _limits(timeout_s, memory_mb), runner)
    return [sys.executable, "-I", "-S", "-B", "-c", _LAUNCHER, marshal.dumps(config).hex()]


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


def _execute(code: str, timeout_s: float, memory_mb: int, plan: _Plan) -> SandboxResult:
    start, nonce = time.monotonic(), secrets.token_hex(16).encode()
    result = lambda *fields: SandboxResult(*fields, time.monotonic() - start, plan.names())  # noqa: E731
    with contextlib.ExitStack() as cleanup:  # unwinds in reverse: close, remove dir, free uid
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
            fds = (src.fileno(), done_w)
            runner = [sys.executable, "-I", "-B", "-c", _RUNNER, *map(str, fds), str(int(not plan.netns))]
            try:  # no preexec_fn: the launcher is a fresh process, safe however many threads call us
                proc = subprocess.Popen(_launcher_argv(plan, uid, workdir, timeout_s, memory_mb, runner),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        cwd=workdir, env=env, pass_fds=fds, start_new_session=True)
            finally:
                os.close(done_w)  # else our own copy would keep the pipe open
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            return result(False, False, None, "", "", f"failed to start: {exc}")
        try:
            out, err, problem = _collect(proc, start + timeout_s)
        finally:
            rc = _finish(proc)  # on any path: never leave a run behind
        try:
            token = os.read(done_r, 4096)
        except BlockingIOError:  # a writer outlived a launcher we had to kill
            token = b""
        passed = not problem and rc == 0 and token == nonce
        text = lambda b: b.decode("utf-8", "replace")  # noqa: E731
        if rc == _START_FAILED and err.startswith(b"failed to start: ") and not problem:
            problem = text(err).splitlines()[0]
        reason = problem or ("passed" if passed else f"exit code {rc}" if rc else "exited before the end")
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
    """Run `code` contained; never raises on bad code. passed = reached its end and exited 0. Returns only
    once every process the code started is gone (see "reaper" above)."""
    return _execute(code, timeout_s, memory_mb, _plan())


def run_many(codes: list[str], *, timeout_s: float = 5.0, memory_mb: int = 512,
             workers: int | None = None) -> list[SandboxResult]:
    """Run many programs, `workers` at a time (default: CPU count); results keep the input order."""
    plan = _plan()  # probe before the threads start
    with ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda c: _execute(c, timeout_s, memory_mb, plan), codes))
