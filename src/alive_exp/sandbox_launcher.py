"""The trusted launcher that sits between the trainer and every sandboxed run.

`sandbox._execute` starts `_LAUNCHER` as its own `python -I -S -B -c` process for each run, with the
command line from `launcher_argv`. It is a separate process for two reasons:

- The trainer is threaded, and `fork` or `preexec_fn` in a threaded process can deadlock the child on a
  lock another thread held. Everything that must happen between fork and exec (namespaces, mounts,
  dropping to the run's uid, rlimits, a new session) happens here instead, in a fresh single-threaded
  interpreter where forking is safe.
- It is the run's child subreaper: orphans come back to it, and at the end it SIGKILLs the run's session
  (and uid), then reaps until it has no child left. When it exits, no process of the run exists, not
  even a zombie; its exit status is the run's (`START_FAILED` if the run could not start).

In a judged run it forks the judge first (`start_judge`: its own session and uid, not dumpable, nothing
open but the spec, its end of the socket and the verdict pipe), closes those fds, then forks the run. The
judge's exit ends the run; the exit status is then the run's if it had ended by itself, else 0.

The program is a source string, not code of this package: under `-I -S` it imports only the stdlib and
none of alive_exp. The policy (which limits, which isolation) is decided in `sandbox`.
"""

from __future__ import annotations

import marshal
import os
import sys

# START_FAILED and _SCRATCH are spelled out again inside _LAUNCHER, which cannot import this module.
START_FAILED = 125  # the launcher's exit code when it could not start the run (as env(1) and unshare(1))
_CLONE_NEWNS, _CLONE_NEWNET = 0x00020000, 0x40000000
_SCRATCH = ("/var/tmp", "/dev/shm", "/tmp")

# Trusted launcher, run as root with `-I -S -c` (stdlib builtins only: it starts in ~10 ms). Its one
# argument is the marshalled config from `launcher_argv`; the same interpreter reads it, so the format matches.
_LAUNCHER = r"""
import ctypes, marshal, os, resource, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4  # variadic: it reads unsigned longs
NOSUID, NODEV, BIND, MOVE, REC, PRIVATE, DETACH = 2, 4, 4096, 8192, 16384, 1 << 18, 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, START_FAILED = 1, 4, 36, 125
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

def start_judge(uid, limits, code, fds):
    # The forked judge: its own session and uid, not dumpable (so no process but root's may ptrace it or
    # open its /proc/<pid>/mem, fd or environ), nothing open but its own fds, then the judge. Never returns.
    try:
        launcher = os.getppid()
        os.setsid()
        if uid >= 0:
            drop_to(uid)
        check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0, "prctl")
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0, "prctl")  # no launcher, no verdict
        if os.getppid() != launcher:
            os._exit(START_FAILED)
        for res, value in limits:
            resource.setrlimit(res, (value, value))
        null = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):  # what the tests print goes nowhere
            os.dup2(null, std)
        low = 3
        for fd in sorted(fds):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, os.sysconf("SC_OPEN_MAX"))
        os.chdir("/")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        judge = {"__name__": "judge"}
        exec(code, judge)
        judge["judge"](*fds)
    except BaseException as exc:  # no verdict: the run fails
        os.write(2, f"the judge failed: {exc!r}\n".encode())
    finally:
        os._exit(0)

def main(parent, uid, flags, mounts, limits, argv, judge):
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # we die of the run's signal at the end, coreless
        check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, "prctl")  # the run's orphans come to us, not init
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0, "prctl")  # a vanished trainer = a timeout
        if os.getppid() != parent:
            os._exit(START_FAILED)
        for owner in (uid, judge[0] if judge else -1):
            if owner >= 0:
                kill_uid(owner)  # a crashed earlier trainer may have left processes under it
        if flags:
            check(libc.unshare(flags) == 0, "unshare")
        if mounts:
            setup_mounts(*mounts)
    except OSError as exc:
        os.write(2, f"failed to start: {exc}\n".encode())
        os._exit(START_FAILED)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])  # a stop request waits for a run to stop
    judged = 0
    if judge:  # the judge first, and its fds closed here before the run forks: the run never holds them
        judged = os.fork()
        if judged == 0:
            start_judge(*judge)
        for fd in judge[3]:
            os.close(fd)
    run = os.fork()
    if run == 0:
        start_run(uid, limits, argv)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the fds were the children's: the judge must see the run hang up
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(p, signal.SIGKILL) for p in (run, judged) if p])  # the trainer's stop request
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
    if judged:  # the judge's end is the run's: it has its verdict, or never will
        os.waitid(os.P_PID, judged, os.WEXITED | os.WNOWAIT)  # unreaped too: its pid stays ours
        end = os.waitid(os.P_PID, run, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # None: still running
    else:
        end = os.waitid(os.P_PID, run, os.WEXITED | os.WNOWAIT)  # unreaped: its pid (the session id) stays ours
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # from here on that pid is reaped and may be reused
    try:
        os.killpg(run, signal.SIGKILL)  # the run's session, in one go
    except OSError:
        pass
    if uid >= 0:
        kill_uid(uid)  # whatever left the session still has the uid (the judge's orphans come to us)
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
    if end is None:  # a judged run still serving when the judge was done: we stopped it
        os._exit(0)
    if end.si_code == os.CLD_EXITED:
        os._exit(end.si_status)
    if end.si_status != signal.SIGKILL:
        signal.signal(end.si_status, signal.SIG_DFL)
    os.kill(os.getpid(), end.si_status)  # die as the run died, so the trainer sees -signal
    os._exit(128 + end.si_status)

main(*marshal.loads(bytes.fromhex(sys.argv[1])))
"""


def exposures() -> list[tuple[str, str]]:
    """(hidden ancestor, interpreter dir) pairs: dirs the sandbox uid could not reach otherwise."""
    exe_dir = os.path.dirname(os.path.realpath(sys.executable))
    dirs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, exe_dir)}
    dirs = {d for d in dirs if not any(d.startswith(o + os.sep) for o in dirs)}  # nested dirs come along
    ancestors = lambda d: [d[:i] for i, c in enumerate(d + os.sep) if c == os.sep and i]  # noqa: E731 - /a, /a/b, ...
    hidden = {d: next((a for a in ancestors(d) if not os.stat(a).st_mode & 0o001), None) for d in sorted(dirs)}
    return [(h, d) for d, h in hidden.items() if h]


def _under_scratch() -> list[str]:
    """Interpreter dirs (a virtualenv, say) inside /tmp-like dirs that the sandbox covers with its tmpfs."""
    dirs = {os.path.realpath(sys.prefix), os.path.dirname(os.path.abspath(sys.executable))}
    inside = sorted(d for d in dirs if any(d.startswith(s + os.sep) for s in _SCRATCH))
    return [d for d in inside if not any(d.startswith(o + os.sep) for o in inside)]  # nested dirs come along


def launcher_argv(runner: list[str], *, uid: int | None, workdir: str, netns: bool, mountns: bool,
                  tmpfs_mb: int, limits: list[tuple[int, int]],
                  judge: tuple[int | None, object, tuple[int, ...]] | None = None) -> list[str]:
    """The launcher's command line: everything it needs, marshalled (no secret is in it). `judge`, for a
    judged run: the judge's uid, its compiled code (`sandbox_judge`) and the fds it alone keeps (spec, socket, verdict)."""
    flags = (_CLONE_NEWNET if netns else 0) | (_CLONE_NEWNS if mountns else 0)
    owner = os.getuid() if uid is None else uid
    mounts = (workdir, owner, tmpfs_mb, exposures(), _under_scratch()) if mountns else ()
    judged = () if judge is None else (-1 if judge[0] is None else judge[0], limits, judge[1], judge[2])
    config = (os.getpid(), -1 if uid is None else uid, flags, mounts, limits, runner, judged)
    return [sys.executable, "-I", "-S", "-B", "-c", _LAUNCHER, marshal.dumps(config).hex()]
