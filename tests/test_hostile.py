"""Hostile solutions: nothing a solution's code can reach makes a failing solution pass.

Each case is a wrong solution (HumanEval/0's `has_close_elements`, or HumanEval/32's `find_zero`) dressed
in a way to fake a pass: exiting early every way Python allows, passing from an atexit hook or a finally,
hunting the interpreter for a secret, writing forged verdicts to every descriptor, patching builtins and
the names the tests use, rigged comparisons, printing a pass, sleeping past the limit. Each goes through
the code domain's real path (`score_many`: the sandbox and the judge) and the rule oracle's critique, as
a fill answer and as a whole-function answer, and must fail; a correct answer in the same shapes passes.
"""

from __future__ import annotations

import os
import secrets
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from alive_exp import sandbox
from alive_exp.domains import Task, get
from alive_exp.domains.code import _humaneval
from alive_exp.oracles import CritiqueRequest, RuleOracle

FENCE = "```"
ISOLATION = sandbox.run_python("pass").isolation

# Function bodies of has_close_elements (in a fill they replace its final `return False`): each is wrong.
BODIES = {
    "sys.exit": "import sys\nsys.exit(0)",
    "os._exit": "import os\nos._exit(0)",
    "raise SystemExit": "raise SystemExit(0)",
    "KeyboardInterrupt": "raise KeyboardInterrupt",
    "exit()": "exit(0)",
    "SIGKILL to itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "SIGINT to itself": "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\nreturn True",
    "SIGKILL to its parent": "import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\nexcept OSError:\n    pass\nreturn True",
    "SIGKILL to all it may": "import os, signal\nos.kill(-1, signal.SIGKILL)\nreturn True",
    "pass from atexit": """
        import atexit, os
        def fake():
            print("All tests passed")
            for fd in range(256):
                try:
                    os.write(fd, b"passed")
                except OSError:
                    pass
        atexit.register(fake)
        raise SystemExit(0)""",
    "pass from finally": "try:\n    return 1 / 0\nfinally:\n    print('All tests passed')\n    import os\n    os._exit(0)",
    "hunt gc and frames for a secret": """
        import gc, os, re, sys
        found, hexes = [], re.compile(rb"[0-9a-f]{32}")
        def look(v):  # a secret a runner would keep: 32 hex digits
            if isinstance(v, (bytes, str)) and len(v) == 32 and hexes.fullmatch(v.encode() if isinstance(v, str) else v):
                found.append(v.encode() if isinstance(v, str) else v)
        for frame in sys._current_frames().values():
            while frame is not None:
                for v in list(frame.f_locals.values()):
                    look(v)
                frame = frame.f_back
        for o in gc.get_objects():
            for v in (o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) and o is not found else ()):
                look(v)
        for fd in range(3, 256):  # the first find, once, wherever it may count
            try:
                os.write(fd, (found or [b"0" * 32])[0])
            except OSError:
                pass
        os._exit(0)""",
    "forged verdicts on every fd": """
        import os
        forged = [b'{"d":[["token","%s"],["passed",true],["kind","passed"],["message",""]]}' % (b"0" * 32),
                  b'{"passed": true}', b'["value",true]', b"passed"]
        for fd in range(256):
            for data in forged:
                try:
                    os.write(fd, len(data).to_bytes(4, "big") + data)
                    os.write(fd, data)
                except OSError:
                    pass
        return True""",
    "answer every call itself": """
        import os, stat
        for fd in range(3, 64):
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    while True:  # this call's reply, then every later call's
                        os.write(fd, (14).to_bytes(4, "big") + b'["value",true]')
                        os.read(fd, int.from_bytes(os.read(fd, 4), "big"))
            except OSError:
                pass
        return True""",
    "a raw reply nested too deep": """
        import os, stat
        for fd in range(3, 64):
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    data = b"[" * 200000 + b"]" * 200000
                    os.write(fd, len(data).to_bytes(4, "big") + data)
            except OSError:
                pass
        return True""",
    "a reply too large": "return 'x' * (10 << 20)",
    "patch builtins": """
        import builtins
        class Yes:
            def __eq__(self, other):
                return True
            __hash__ = object.__hash__
        builtins.type = lambda *a: bool
        builtins.isinstance = lambda *a: True
        builtins.abs = lambda x: 0
        builtins.AssertionError = type("NotAnAssertion", (Exception,), {})
        return Yes()""",
    "comparisons that always agree": """
        class Yes:
            def __eq__(self, other):
                return True
            def __ne__(self, other):
                return False
            def __bool__(self):
                return True
            __hash__ = object.__hash__
        return Yes()""",
    "an int that always agrees": "class Yes(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\nreturn Yes(0)",
    "raise inside a comparison": """
        class Boom:
            def __eq__(self, other):
                raise SystemExit(0)
            __hash__ = object.__hash__
        return [Boom()]""",
    "print what a pass prints": "print('All tests passed')\nprint('passed')\nimport sys\nsys.stdout.flush()\nreturn True",
    "sleep past the limit": "import time\ntime.sleep(60)",
    "a child keeps the socket": "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nos._exit(0)",
}
# Whole programs: what they do at import, before any test runs.
PROGRAMS = {
    "sys.exit at import": "import sys\nsys.exit(0)",
    "os._exit at import": "import os\nos._exit(0)",
    "SIGKILL to itself at import": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "pass from atexit at import": "import atexit\natexit.register(lambda: print('All tests passed'))",
    "patch what the tests use at import": "import builtins, math\nbuiltins.abs = math.fabs = lambda x: 0\n"
                                          "builtins.AssertionError = type('NotAnAssertion', (Exception,), {})",
}
WRONG_DEF = "def has_close_elements(numbers, threshold):\n    return True\n"
CORRECT_BODY = "return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])"


def _answer(code: str) -> str:
    return f"Answer:\n{FENCE}python\n{textwrap.dedent(code).strip()}\n{FENCE}"


@pytest.fixture(scope="module")
def code():
    return get("code", timeout_s=1.5)


@pytest.fixture(scope="module")
def tasks(code):
    """HumanEval/0 as a whole-function task and as a fill of its final `return False`."""
    p = _humaneval()[0]
    doc = code._humaneval_doc(p)
    start = doc.text.rindex("return False")
    return {"function": code.humaneval_task(p), "fill": code.make_task(doc, start, start + len("return False"))}


def _cases(tasks) -> list[tuple[str, str, object]]:
    cases = [(f"{kind}: {name}", _answer(body), task) for kind, task in tasks.items() for name, body in BODIES.items()]
    cases += [(f"program: {name}", _answer(f"{textwrap.dedent(prog).strip()}\n{WRONG_DEF}"), tasks["function"])
              for name, prog in PROGRAMS.items()]
    return cases


def test_no_hostile_solution_passes(code, tasks):
    cases = _cases(tasks)
    controls = [(f"{kind}: correct", _answer(CORRECT_BODY), task) for kind, task in tasks.items()]
    results = code.score_many([c for _, c, _ in cases + controls], [t for _, _, t in cases + controls])
    passed = [name for (name, _, _), (ok, _) in zip(cases, results) if ok]
    assert passed == [], passed
    assert all(ok for ok, _ in results[len(cases):]), "a correct solution must still pass"
    assert os.getppid() > 1  # we are alive, and so is our parent


def test_the_critic_agrees(code, tasks):
    """The rule oracle's critique runs the answer like verify: the same cases, no verdict 'correct'."""
    cases = [c for c in _cases(tasks) if not c[0].startswith("fill")]
    cases += [(f"{kind}: correct", _answer(CORRECT_BODY), task) for kind, task in tasks.items()]
    oracle = RuleOracle()
    with ThreadPoolExecutor(max_workers=4) as pool:
        critiques = list(pool.map(lambda c: oracle.critique([CritiqueRequest(c[2], c[1], "")])[0], cases))
    verdicts = {name: (c.verdict, c.text) for (name, _, _), c in zip(cases, critiques)}
    wrong = {n: v for n, v in verdicts.items() if v[0] != n.endswith(": correct") or
             ("passes every test" in v[1]) != n.endswith(": correct")}
    assert wrong == {}, wrong
    assert "not a plain value" in verdicts["function: comparisons that always agree"][1]
    assert "did not finish" in verdicts["function: sleep past the limit"][1]


def test_redefining_a_helper_the_tests_use_does_not_pass(code):
    """HumanEval/32's tests call the prompt's `poly`: the judge uses its own, from the problem, not the solution's."""
    task = code.humaneval_task(_humaneval()[32])
    cheats = ["def poly(xs, x):\n    return 0\n\ndef find_zero(xs):\n    return 0.0",
              "import math\nmath.fabs = lambda x: 0\n\ndef find_zero(xs):\n    global poly\n    poly = lambda xs, x: 0\n    return 0.0"]
    results = code.score_many([_answer(c) for c in cheats] + [code.solution_text(task)], [task] * 3)
    assert [ok for ok, _ in results] == [False, False, True]


def test_tests_and_verdict_are_out_of_the_programs_reach(code):
    """A program reads all it can (/proc of every process: cmdline, environ, fds, memory; its own fds) and
    finds neither the tests nor anything of the verdict's pipe."""
    marker = f"tests-only-{secrets.token_hex(8)}"
    spy = f"""
        import os
        seen = []
        def grab(path, n=1 << 20):
            try:
                with open(path, "rb") as f:
                    seen.append(f.read(n))
            except Exception:
                pass
        for pid in filter(str.isdigit, os.listdir("/proc")):
            for part in ("cmdline", "environ"):
                grab(f"/proc/{{pid}}/{{part}}")
            if int(pid) != os.getpid():  # memory needs ptrace access: denied for other uids and the judge
                try:
                    with open(f"/proc/{{pid}}/maps") as maps, open(f"/proc/{{pid}}/mem", "rb") as mem:
                        for line in maps:
                            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                            if line.split()[1].startswith("r"):
                                mem.seek(lo)
                                seen.append(mem.read(min(hi - lo, 1 << 24)))
                except Exception:
                    pass
            try:  # others' descriptors (our own, pipes among them, are read below)
                for fd in os.listdir(f"/proc/{{pid}}/fd") if int(pid) != os.getpid() else ():
                    grab(f"/proc/{{pid}}/fd/{{fd}}")
            except OSError:
                pass
        for fd in range(3, 64):
            try:
                seen.append(os.pread(fd, 1 << 20, 0))
            except OSError:
                pass
        print({marker[:11]!r}.encode() + {marker[11:]!r}.encode() in b"".join(seen))
        def answer():
            return 0
    """
    task = code.function_task("spy", "spy", "", "def answer():\n    return 1\n", f"# {marker}\nassert answer() == 1\n", "answer")
    ok, _ = code.score(_answer(spy), task)
    result = code._run(code._plan(task, code.extract_answer(_answer(spy))))
    assert not ok and result.stdout == "False\n", (result.reason, result.stdout, result.stderr)


def test_input_prediction_answers_are_data(code):
    """CodeI/O input predictions: the answer is parsed as JSON in the judge, never run; hostile text is a wrong input."""
    task = Task("parity", "code", "", '{"n": 3}', meta={"kind": "predict_input", "output": "1",
                                                      "code": "def main_solution(n):\n    return n % 2\n"})
    hostile = ['{"n": ' + "[" * 100000 + "]" * 100000 + "}", '{"n": 4}', '{"n": 4, "__class__": 1}', '{"m": 5}',
               '{"n": 4}; import os; os._exit(0)', '__import__("os")._exit(0)', '{"n": "' + "x" * 100000 + '"}',
               '[5]', "null", '{"n": 5.5}']
    answers = hostile + ['{"n": 5}', '{"n": 3}']  # another input with the same output (judged), the recorded one
    results = code.score_many([f"Answer: {h}" for h in answers], [task] * len(answers))
    assert [ok for ok, _ in results] == [False] * len(hostile) + [True, True]


@pytest.mark.skipif("uid" not in ISOLATION, reason="the judge's own uid needs root")
def test_judge_runs_under_a_uid_of_its_own(code):
    """The program cannot signal the judge: it runs under another uid, and the program's kill(-1) misses it."""
    prog = "import os\ndef f():\n    return os.getuid()\n"
    result = sandbox.judge(prog, sandbox.Tests("import os\nassert f() != os.getuid()\n"), timeout_s=5.0)
    assert result.passed and "judge" in result.isolation, result
