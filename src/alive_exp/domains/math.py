"""Math: worked solutions from reasoning-gym (offline) or GSM8K / MATH-500 (hub), verified by equivalence.

A document reads

    Question: Calculate 5 - 3 * 6.
    3 * 6 = 18
    5 - 18 = -13
    Answer: -13

Masking the answer leaves the question alone (the working would give it away); masking a number in
the working keeps the text before it, so the solver computes the next step.
"""

from __future__ import annotations

import ast
import logging
import operator
import re
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from typing import Any

from alive_exp.domains import columns as col
from alive_exp.domains import hub
from alive_exp.domains.base import (HELDOUT_BUCKETS, MASK, VALIDATION_BUCKETS, Critique, Document, Domain, SpanCheck,
                                    Task, checked_sources, merged_options, split_of, verdict_line)

log = logging.getLogger(__name__)

RG_SOURCES = {"basic_arithmetic", "gsm_symbolic"}  # reasoning-gym's, split by a hash of the question
HELDOUT_SEED = 1_000_000_007  # reasoning-gym seeds item i with seed + i: far from every training pool
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_CARRY = re.compile(r"(?<= [cb])1$", re.M)  # a column's carry (c1) or borrow (b1) mark
_STEP = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/×x])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")
_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "×": operator.mul, "x": operator.mul}


def _shares(size: int, k: int) -> list[int]:
    """`size` split over k sources as evenly as possible."""
    return [size // k + (i < size % k) for i in range(k)]


def _fmt(x: float | int) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


def working_lines(expression: str) -> list[str]:
    """One line per operation, in evaluation order: `a op b = c`."""
    tree = ast.parse(expression, mode="eval").body
    lines: list[str] = []

    def reduce(node: ast.AST) -> float:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -reduce(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = reduce(node.left), reduce(node.right)
            c = _OPS[type(node.op)](a, b)
            lines.append(f"{_fmt(a)} {_SYMBOL[type(node.op)]} {_fmt(b)} = {_fmt(c)}")
            return c
        raise ValueError(f"unsupported expression {expression!r}")

    reduce(tree)
    return lines


def _plain_number(text: str) -> float | None:
    """Fast path for the common case: a plain number, maybe with commas, $ or a trailing period."""
    t = text.strip().strip("$").rstrip(".").replace(",", "")
    m = re.fullmatch(r"\\boxed\{(.*)\}", t)
    t = m.group(1).strip() if m else t
    try:
        return float(t)
    except ValueError:
        return None


@lru_cache(maxsize=65536)
def equivalent(prediction: str, reference: str) -> bool:
    """Mathematical equivalence: `\\frac{1}{2}` == `0.5`, `1,000` == `1000`, `\\boxed{7}` == `7`."""
    a, b = _plain_number(prediction), _plain_number(reference)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    try:
        from math_verify import parse, verify

        gold = parse(reference if "$" in reference else f"${reference}$")
        pred = parse(prediction if "$" in prediction else f"${prediction}$")
        return bool(gold) and bool(pred) and bool(verify(gold, pred))
    except Exception as exc:  # math-verify raises on exotic input; a failed parse is a wrong answer
        log.debug("math-verify failed on %r vs %r: %s", prediction, reference, exc)
        return False


class MathDomain(Domain):
    name = "math"

    SOURCE_DEFAULTS: dict[str, dict] = {
        "basic_arithmetic": dict(
            min_terms=2, max_terms=3, min_digits=1, max_digits=2, operators=("+", "-", "*"),
            allow_parentheses=False, allow_negation=False,
        ),
        "gsm_symbolic": {},
        # ours: one line per column; digits = [min, max] per operand; operations trained (add, sub); per_page =
        # [min, max] problems per training document (a page of raw text; [1, 1]: one problem a document)
        "column_arithmetic": dict(digits=[2, 3], operations=["add"], per_page=[1, 1]),
        # a raw corpus through `datasets` (the paper's Big-Math, WebInstruct): each row becomes a document by
        # `template` (its fields are the row's columns); a problem is held out iff its text hashes into
        # heldout_share, so held-out problems are the same for every seed
        "hub_corpus": dict(path=None, name=None, split="train", data_files=None,
                           template="Question: {problem}\nAnswer: {answer}", heldout_share=0.02),
    }

    def __init__(
        self,
        sources: tuple[str, ...] | list[str] = ("basic_arithmetic",),
        source_options: dict[str, dict] | None = None,
        hub_benchmarks: tuple[str, ...] | list[str] = (),
        hide: str = "any",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if hide not in ("any", "answer"):
            raise ValueError(f"math: hide must be 'any' or 'answer', got {hide!r}")
        self.hide = hide  # answer: the constructor may hide only the final answer (tasks = whole problems)
        self.sources = checked_sources("math", sources, self.SOURCE_DEFAULTS)
        self.source_options = merged_options(self.SOURCE_DEFAULTS, source_options)
        self.columns = self._column_options()
        if self.columns["per_page"] != (1, 1) and hide != "answer":
            # a column total or carry is written as its bare value, which recurs across a page's problems: the
            # span a constructor names could not be told from the same value in another problem
            raise ValueError("column_arithmetic.per_page (pages of several problems) needs benchmark.options.hide=answer")
        self.hub_benchmarks = tuple(hub_benchmarks)

    def _column_options(self) -> dict[str, Any]:
        opts = dict(self.source_options["column_arithmetic"])
        unknown = set(opts) - {"digits", "operations", "per_page"}
        if unknown:
            raise ValueError(f"unknown column_arithmetic option(s) {sorted(unknown)} in "
                             "benchmark.options.source_options.column_arithmetic; known: digits, operations, per_page")
        digits, ops, per_page = list(opts["digits"]), list(opts["operations"]), list(opts["per_page"])
        if len(per_page) != 2 or not 1 <= per_page[0] <= per_page[1] <= 16:
            raise ValueError(f"column_arithmetic.per_page must be [min, max] with 1 <= min <= max <= 16, got {per_page}")
        if len(digits) != 2 or not 1 <= digits[0] <= digits[1] <= 6:
            raise ValueError(f"column_arithmetic.digits must be [min, max] with 1 <= min <= max <= 6, got {digits}")
        if not ops or set(ops) - set(col.OPERATIONS):
            raise ValueError(f"column_arithmetic.operations must be a non-empty subset of {list(col.OPERATIONS)}, got {ops}")
        return {"digits": (int(digits[0]), int(digits[1])), "operations": [col.OPERATIONS[o] for o in ops],
                "per_page": (int(per_page[0]), int(per_page[1]))}

    def _pages(self, n: int, seed: int) -> list[Document]:
        """n training pages of `per_page` problems each (raw text holds many problems): the constructor's choice of
        span is a choice of which problem to pose. Drawn from the training buckets only, like single problems."""
        import random

        lo, hi = self.columns["per_page"]
        ops, digits = self.columns["operations"], self.columns["digits"]
        rng = random.Random(f"pages-{seed}-{''.join(ops)}-{digits}-{lo}-{hi}")
        return [Document(id=f"columns-page-{seed}-{i}", text=col.page_text(col.page(rng, rng.randint(lo, hi), ops, digits)),
                         domain=self.name, meta={"source": "column_arithmetic"}) for i in range(n)]

    def _columns(self, n: int, seed: int, split: str, ops=None, digits=None, longest=None) -> list[Document]:
        """Column-arithmetic documents of one split (train | heldout | validation); operations alternate."""
        import random

        ops, digits = ops or self.columns["operations"], digits or self.columns["digits"]
        rng = random.Random(f"columns-{split}-{seed}-{''.join(ops)}-{digits}" + (f"-{longest}" if longest else ""))
        per_op = [n // len(ops) + (i < n % len(ops)) for i in range(len(ops))]
        pairs = [(a, op, b) for op, k in zip(ops, per_op) for a, b in col.problems(rng, k, op, digits, split, longest)]
        if split == "train":
            rng.shuffle(pairs)
        return [Document(id=f"columns-{split}-{a}{op}{b}", text=col.document_text(a, op, b), domain=self.name,
                         meta={"source": "column_arithmetic"}) for a, op, b in pairs]

    def vocabulary(self) -> list[str]:
        """Column working and the column critic's phrases, so the tiny tokenizer has words for them."""
        import random

        rng, texts = random.Random(0), []
        for op in col.OPERATIONS.values():
            for d in self._columns(300, 0, "train", [op], (1, 4)):
                task = self.make_task(d, *self.candidate_spans(d)[-1])
                wrong = col.corrupt(task.prompt, self.solution_text(task), rng, self.extract_answer) or ""
                texts += [d.text, wrong, self.critique(task, wrong).text,
                          self.critique(task, self.solution_text(task), blind=True).text]
        return texts

    # -- documents ------------------------------------------------------------------------------
    def _generate(self, source: str, size: int, seed: int) -> list[Document]:
        import reasoning_gym as rg

        opts = dict(self.source_options.get(source, {}))
        if "operators" in opts:
            opts["operators"] = tuple(opts["operators"])
        ds = rg.create_dataset(source, seed=seed, size=size, **opts)
        docs = []
        for i in range(size):
            item = ds[i]
            question = item["question"].strip()
            answer = str(item["answer"]).strip()
            if source == "gsm_symbolic":
                cot = item["metadata"].get("answer_cot", "")
                steps = [ln.strip() for ln in cot.splitlines() if ln.strip() and not ln.startswith("####")]
            else:
                steps = working_lines(item["metadata"]["expression"])
            text = "\n".join([f"Question: {question}", *steps, f"{self.answer_prefix} {answer}"])
            docs.append(Document(id=f"{source}-{seed}-{i}", text=text, domain=self.name, meta={"source": source}))
        return docs

    def documents(self, split: str, size: int, seed: int) -> list[Document]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        docs: list[Document] = []
        for source, n in zip(self.sources, _shares(size, len(self.sources))):
            if source == "column_arithmetic" and split == "train" and self.columns["per_page"] != (1, 1):
                docs += self._pages(n, seed)
            elif source == "column_arithmetic":  # a hash split: held-out problems are the same for every seed
                docs += self._columns(n, seed if split == "train" else 0, "train" if split == "train" else "heldout")
            elif source == "hub_corpus":
                docs += hub.corpus_documents(self.source_options["hub_corpus"], set(self.SOURCE_DEFAULTS["hub_corpus"]),
                                             n, seed, split, self)
            else:
                docs += self._drawn(source, n, seed, "train" if split == "train" else "heldout")
        return docs

    def _drawn(self, source: str, n: int, seed: int, split: str) -> list[Document]:
        """n reasoning-gym problems of one hash split (`base.split_of` on the question line): training pools
        from the run's seed, held-out and validation problems from one fixed stream, so every seed tests on
        the same problems and none of them is in any seed's training pool."""
        held = {"heldout": len(HELDOUT_BUCKETS), "validation": len(VALIDATION_BUCKETS)}
        share = held.get(split, 100 - sum(held.values())) / 100  # of the 100 hash buckets
        stream = seed if split == "train" else HELDOUT_SEED
        size = int(n / share * 1.2) + 20
        for _ in range(6):
            kept = [d for d in self._generate(source, size, stream) if split_of(d.text.splitlines()[0]) == split]
            if len(kept) >= n:
                return kept[:n]
            size *= 2
        log.warning("math/%s: only %d %s problems in %d drawn", source, len(kept), split, size // 2)
        return kept

    # -- constructor ----------------------------------------------------------------------------
    # A page (training documents with column_arithmetic.per_page) is problems separated by a blank line; every
    # span lies in one problem, and the task it makes is that problem's, as if the problem stood alone.
    @staticmethod
    def _problems(text: str) -> list[tuple[int, int]]:
        """(start, end) of each problem of a document: one, or those of a page of column problems (other documents,
        a hub corpus's with paragraphs included, are one problem whatever blank lines they hold)."""
        if col.PAGE_BREAK not in text or col.parse_question(text) is None:
            return [(0, len(text))]
        out, start = [], 0
        while True:
            end = text.find(col.PAGE_BREAK, start)
            if end < 0:
                return out + [(start, len(text))]
            out.append((start, end))
            start = end + len(col.PAGE_BREAK)

    def _problem_at(self, doc: Document, pos: int) -> tuple[int, Document]:
        """The problem of a page that holds position pos, as a document of its own, and where it starts."""
        problems = self._problems(doc.text)
        if len(problems) == 1:
            return 0, doc
        s, e = next(((s, e) for s, e in problems if s <= pos <= e), (0, len(doc.text)))
        return s, Document(id=doc.id, text=doc.text[s:e], domain=doc.domain, meta=doc.meta)

    def candidate_spans(self, doc: Document) -> list[tuple[int, int]]:
        """Results of working steps and the final answer (last); never numbers in the question. On a page, those
        of every problem, in page order."""
        return [(s + a, s + b) for s, e in self._problems(doc.text) for a, b in self._spans(doc.text[s:e])]

    def _spans(self, text: str) -> list[tuple[int, int]]:
        spans = []
        offset = 0
        for i, line in enumerate(text.splitlines(keepends=True)):
            if i > 0:
                if line.startswith(self.answer_prefix):
                    a = offset + len(self.answer_prefix) + 1
                    spans.append((a, offset + len(line.rstrip("\n"))))
                elif "=" in line:
                    rhs = line.index("=") + 1
                    m = _NUMBER.search(line, rhs)
                    if m:
                        spans.append((offset + m.start(), offset + m.end()))
                    spans += [(offset + c.start(), offset + c.end()) for c in _CARRY.finditer(line)]
            offset += len(line)
        if self.hide == "answer":
            return [sp for sp in spans if self._on_answer_line(text, sp[0])]
        return spans

    def span_text(self, doc: Document, start: int, end: int) -> str:
        """On a page of several problems an answer is named by its whole line (`Answer: 722`): a constructor then
        copies the value that follows one `Answer:` line, not a bare number it must tell from column totals. A
        single problem's answer is written as itself."""
        if self._on_answer_line(doc.text, start) and len(self._problems(doc.text)) > 1:
            return f"{self.answer_prefix} {doc.text[start:end]}"
        return doc.text[start:end]

    def check_span(self, doc: Document, span: str, min_chars: int = 1, max_chars: int = 200) -> SpanCheck:
        """A bare span (`722`) as every domain reads it, or an answer line (`Answer: 722`): that line's value is
        hidden."""
        text = span.strip()
        if not text.startswith(self.answer_prefix):
            return super().check_span(doc, span, min_chars, max_chars)
        value = text[len(self.answer_prefix):].strip()
        if not value:
            return SpanCheck(False, "empty span")
        if not (min_chars <= len(value) <= max_chars):
            return SpanCheck(False, f"length {len(value)} outside [{min_chars}, {max_chars}]")
        for s, e in self._spans_with_answers(doc):
            if doc.text[s:e] == value:
                why = self.unsolvable_reason(doc, s, e)
                return SpanCheck(False, why) if why else SpanCheck(True, "", s, e)
        return SpanCheck(False, "no answer line of the document reads that value")

    def _spans_with_answers(self, doc: Document) -> list[tuple[int, int]]:
        return [(s, e) for s, e in self.candidate_spans(doc) if self._on_answer_line(doc.text, s)]

    def _on_answer_line(self, text: str, pos: int) -> bool:
        return text.startswith(self.answer_prefix, text.rfind("\n", 0, pos) + 1)

    def locate_span(self, doc: Document, span: str) -> int:
        # with hide=answer a value that also ends the working means the answer line: its last occurrence
        if self.hide == "answer" and len(self._problems(doc.text)) == 1:
            return doc.text.rfind(span)
        if self._is_columns(doc.text):  # the first occurrence that is a value the working computes (a page's answers
            starts = sorted(s for s, e in self.candidate_spans(doc) if doc.text[s:e] == span)  # are distinct)
            return starts[0] if starts else doc.text.find(span)
        return doc.text.find(span)

    @staticmethod
    def _is_columns(text: str) -> bool:
        return col.parse_question(text) is not None

    def unsolvable_reason(self, doc: Document, start: int, end: int) -> str:
        offset, one = self._problem_at(doc, start)
        if end - offset > len(one.text):
            return "span runs across two problems of the page"
        start, end = start - offset, end - offset
        if "\n" not in one.text[:start]:
            return "span lies in the question"
        if self._is_columns(one.text) and (start, end) not in self.candidate_spans(one):
            return "span is not a column total, a carry mark or the answer"
        if not any(ch.isdigit() for ch in one.text[start:end]):
            return "span holds no number to compute"
        if self.hide == "answer" and not self._on_answer_line(one.text, start):
            return "only the final answer may be hidden (benchmark.options.hide=answer)"
        return ""

    def make_task(self, doc: Document, start: int, end: int) -> Task:
        """The task hiding doc.text[start:end]: the problem that holds it, as if it stood alone (a page's other
        problems are other tasks, not context this one needs; evaluation's problems stand alone too)."""
        offset, one = self._problem_at(doc, start)
        task = self._problem_task(one, start - offset, end - offset)
        if one is doc:
            return task
        return replace(task, id=f"{doc.id}@{start}", meta={**task.meta, "page_problems": len(self._problems(doc.text))})

    def _problem_task(self, doc: Document, start: int, end: int) -> Task:
        text = doc.text
        line_start = text.rfind("\n", 0, start) + 1
        reference = text[start:end].strip()
        question = text.split("\n", 1)[0]
        if self._on_answer_line(text, start):
            prompt = question
            solution = text.split("\n", 1)[1]
        else:
            line_end = text.find("\n", end)
            line_end = len(text) if line_end < 0 else line_end
            prompt = text[:start] + MASK + text[end:line_end]
            step = text[line_start:line_end]
            solution = f"{step}\n{self.answer_prefix} {reference}"
        meta = {"solution": solution, "kind": self.span_kind(text, start)}
        parsed = col.parse_question(text)
        if parsed is not None:  # what the constructor's choice is measured by (constructor/posed_*)
            meta["difficulty"] = col.difficulty(*parsed)
        return Task(id=f"{doc.id}@{start}", domain=self.name, prompt=prompt, reference=reference, doc_id=doc.id, meta=meta)

    def span_kind(self, text: str, start: int) -> str:
        """whole (the answer: a whole problem) | carry (a carry or borrow mark) | column (a column total) | step."""
        if self._on_answer_line(text, start):
            return "whole"
        if not self._is_columns(text):
            return "step"
        return "carry" if text[start - 2:start] in (" c", " b") else "column"

    def _column_suite(self, size: int, split: str, ops: list[str], digits: tuple[int, int],
                      longest: int | None = None) -> list[Task]:
        docs = self._columns(size, 0, split, ops, digits, longest)
        return [self.make_task(d, *self.candidate_spans(d)[-1]) for d in docs]

    # -- solver ---------------------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        boxed = re.findall(r"\\boxed\{([^{}]*)\}", completion)
        if boxed:
            return boxed[-1].strip()
        return super().extract_answer(completion)

    def verify(self, prediction: str, reference: str, *, task: Task | None = None) -> bool:
        if not isinstance(prediction, str) or not prediction.strip():
            return False
        answer = self.extract_answer(prediction) if (self.answer_prefix in prediction or "\\boxed" in prediction) else prediction
        return answer is not None and equivalent(answer.strip(), str(reference).strip())

    def solution_text(self, task: Task) -> str:
        return task.meta.get("solution") or f"{self.answer_prefix} {task.reference}"

    def corrupt(self, task: Task, solution: str, rng) -> str | None:
        """A realistic slip: one step's result is off, and every later step carries the wrong value on."""
        if col.parse_question(task.prompt) is not None:
            return col.corrupt(task.prompt, solution, rng, self.extract_answer)
        lines = solution.splitlines()
        steps = [i for i, ln in enumerate(lines) if _STEP.search(ln)]
        if not steps:
            return super().corrupt(task, solution, rng)
        k = rng.choice(steps)
        changed: dict[str, str] = {}
        for i in range(k, len(lines)):
            m = _STEP.search(lines[i])
            if m:
                a, op, b, c = m.groups()
                a, b = changed.get(a, a), changed.get(b, b)
                value = _APPLY[op](float(a), float(b)) if op in _APPLY else float(a) / float(b) if float(b) else 0.0
                if i == k:
                    value += rng.choice([-1, 1]) * rng.randint(1, 10)
                new = _fmt(value)
                if new != c:
                    changed[c] = new
                lines[i] = f"{a} {op} {b} = {new}"
            elif lines[i].startswith(self.answer_prefix):
                old = lines[i][len(self.answer_prefix):].strip()
                lines[i] = f"{self.answer_prefix} {changed.get(old, old)}"
        wrong = "\n".join(lines)
        return wrong if wrong != solution else None

    # -- oracle ---------------------------------------------------------------------------------
    def critique(self, task: Task, completion: str, *, blind: bool = False) -> Critique:
        """Points at the first wrong step or column and says what kind of error it is.

        With the reference in view (a reviewer's critique) it first compares the final answer with the
        reference, and the verdict is that check; blind (self-critique) a column critique first works the
        problem itself (`columns.own_check`), and the verdict is what the working shows. A refiner or an FCP solver reads a
        critique with the reference scrubbed out (`roles.scrub_reference`), so it learns where to look,
        not what to write.
        """
        answer = self.extract_answer(completion)
        ok = answer is not None and self.verify(answer, task.reference)
        if col.parse_question(task.prompt) is not None:
            text, blind_verdict = col.critique_text(task.prompt, completion, answer, ok, task.meta.get("kind", "whole"),
                                                    None if blind else task.reference)
            verdict = blind_verdict if blind else ok  # with the reference: the answer's check (a lucky slip passes)
            return Critique(f"{text}\n{verdict_line(verdict)}", verdict)
        if answer is None:
            text = f"The solution never states a final answer on an '{self.answer_prefix}' line."
            return Critique(f"{text}\n{verdict_line(False)}", False)
        slip = self._first_slip(completion)
        if not blind:
            lead = f"The final answer {answer} is {'right' if ok else 'wrong'}."
            text = f"{lead} {slip}" if slip else lead
            return Critique(f"{text}\n{verdict_line(ok)}", ok)
        if slip:
            return Critique(f"{slip}\n{verdict_line(False)}", False)
        if ok:
            return Critique(f"Each step checks out and the final answer {answer} is right.\n{verdict_line(True)}", True)
        text = (
            f"The arithmetic shown is consistent, but the final answer {answer} does not follow from the task: "
            "a step is missing or an operation was applied in the wrong order (multiplication before addition)."
        )
        return Critique(f"{text}\n{verdict_line(False)}", False)

    def locate_error(self, task: Task, completion: str, critique: str) -> int | None:
        """The column or answer line a column critique names (`columns.error_line`); for worked steps, the line of
        the step "Step n is wrong" names."""
        if col.parse_question(task.prompt) is not None:
            return col.error_line(task.prompt, completion, critique)
        named = re.search(r"\bStep (\d+) is wrong", critique)
        steps = list(_STEP.finditer(completion))
        if not named or not 1 <= int(named.group(1)) <= len(steps):
            return None
        return completion.rfind("\n", 0, steps[int(named.group(1)) - 1].start()) + 1

    @staticmethod
    def _first_slip(completion: str) -> str | None:
        for n, m in enumerate(_STEP.finditer(completion), start=1):
            a, op, b, c = m.groups()
            true = _APPLY[op](float(a), float(b)) if op in _APPLY else (float(a) / float(b) if float(b) else None)
            if true is not None and abs(true - float(c)) > 1e-6:
                return f"Step {n} is wrong: {a} {op} {b} is not {c}."
        return None

    # -- evaluation -----------------------------------------------------------------------------
    def benchmarks(self) -> dict[str, Callable[[int, int], list[Task]]]:
        suites: dict[str, Callable[[int, int], list[Task]]] = {"math_heldout": self.heldout_tasks}
        if self.sources == ("column_arithmetic",):
            lo, hi = self.columns["digits"]
            trained = self.columns["operations"]
            suites["math_validation"] = lambda size, seed: self._column_suite(size, "validation", trained, (lo, hi))
            # never trained on: the longer operand one digit longer than any trained (one more column), and the
            # other operation (the cross-domain analogue); each has a validation twin (validation buckets), which
            # the warm start's stopping rule may read (`warmstart.stop_floors`), never the held-out suite
            for split, tag in (("heldout", ""), ("validation", "_validation")):
                suites[f"math_longer{tag}"] = (lambda size, seed, _s=split:
                                               self._column_suite(size, _s, trained, (lo, hi + 1), hi + 1))
                for name, op in col.OPERATIONS.items():
                    if op not in trained:
                        suites[f"math_{name}{tag}"] = (lambda size, seed, _op=op, _s=split:
                                                       self._column_suite(size, _s, [_op], (lo, hi)))
        elif set(self.sources) <= RG_SOURCES:  # validation problems from their own hash buckets
            suites["math_validation"] = lambda size, seed: self.answer_tasks(
                [d for source, n in zip(self.sources, _shares(size, len(self.sources)))
                 for d in self._drawn(source, n, 0, "validation")])
        for name in self.hub_benchmarks:
            suites[name] = lambda size, seed, _n=name: hub.math_benchmark(_n, size, seed, self)
        return suites
