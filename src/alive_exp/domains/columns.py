"""Column arithmetic: addition with carries and subtraction with borrows, written one line per column.

    Question: 478 + 356          Question: 734 - 256
    8+6=14 c1                    4-6+10=8 b1
    7+5+1=13 c1                  3-5-1+10=7 b1
    4+3+1=8                      7-2-1=4
    Answer: 834                  Answer: 478

Every problem exercises the same ~200 one-digit facts and one procedure (carry, borrow), so an outcome
reward meets each fact many times a step (../shared/ALIVE.md, "a world in which an outcome reward teaches").

The critic names the first wrong column and the kind of error. Before that, a reviewer that sees the
reference compares the answer with it, and a blind one works the columns itself and compares the answer they
give (`own_check`); what a refiner reads has both comparisons' numbers and the working cut, so it says where
to look, not what to write.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from alive_exp.domains.base import HELDOUT_BUCKETS, VALIDATION_BUCKETS, hash_bucket

QUESTION = re.compile(r"^Question: (\d+) ([+-]) (\d+)$")
LINE = re.compile(r"^\s*(\d+(?:\s*[+-]\s*\d+)*)\s*=\s*(-?\d+)(?:\s+([cb])1)?\s*$")
PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands")
OPERATIONS = {"add": "+", "sub": "-"}
_TERM = re.compile(r"[+-]?\s*\d+")


@dataclass(frozen=True)
class Column:
    """One column as it should be written: its terms (signed), the total and whether it carries or borrows."""

    terms: tuple[int, ...]
    total: int
    flag: bool  # c1 (addition carries on) or b1 (subtraction borrowed)
    digits: int  # how many leading terms are the operands' digits (the rest: carry, borrow)

    def line(self, op: str) -> str:
        borrow_in = len(self.terms) - 1 if op == "-" and self.flag else -1  # the +10 a borrowing column adds
        expr = str(self.terms[0]) + "".join(f"{'+' if op == '+' or i == borrow_in else '-'}{abs(t)}"
                                            for i, t in enumerate(self.terms[1:], start=1))
        mark = (" c1" if op == "+" else " b1") if self.flag else ""
        return f"{expr}={self.total}{mark}"


def columns(a: int, op: str, b: int) -> list[Column]:
    """The columns of `a op b`, ones first (subtraction needs a >= b)."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    out, carry = [], 0
    for i in range(max(len(xs), len(ys))):
        x = int(xs[i]) if i < len(xs) else None
        y = int(ys[i]) if i < len(ys) else None
        if op == "+":
            terms = [t for t in (x, y) if t is not None] + ([carry] if carry else [])
            total = sum(terms)
            out.append(Column(tuple(terms), total, total >= 10, sum(t is not None for t in (x, y))))
            carry = int(total >= 10)
        else:
            terms = [x] + ([-y] if y is not None else []) + ([-carry] if carry else [])
            value = sum(terms)
            borrow = value < 0
            terms += [10] if borrow else []
            out.append(Column(tuple(terms), value + 10 * borrow, borrow, 1 + (y is not None)))
            carry = int(borrow)
    return out


def answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def document_text(a: int, op: str, b: int) -> str:
    cols = columns(a, op, b)
    return "\n".join([f"Question: {a} {op} {b}", *(c.line(op) for c in cols), f"Answer: {answer(a, op, b)}"])


def difficulty(a: int, op: str, b: int) -> dict[str, int]:
    """How hard a problem is: the longer operand's digits and how many columns carry (or borrow)."""
    return {"digits": max(len(str(a)), len(str(b))), "carries": sum(c.flag for c in columns(a, op, b))}


def page(rng: random.Random, size: int, ops: list[str], digits: tuple[int, int]) -> list[tuple[int, str, int]]:
    """`size` training problems for one page of raw text, operations and operand lengths mixed, no two with the
    same question or the same answer: a problem the constructor hides is never given away by another one."""
    out: list[tuple[int, str, int]] = []
    questions, answers = set(), set()
    for _ in range(1000 * size + 1000):
        if len(out) == size:
            return out
        op = rng.choice(ops)
        a, b = problems(rng, 1, op, digits, "train")[0]
        if (a, op, b) in questions or answer(a, op, b) in answers:
            continue
        questions.add((a, op, b))
        answers.add(answer(a, op, b))
        out.append((a, op, b))
    if len(out) == size:
        return out
    raise ValueError(f"column_arithmetic: no page of {size} problems with distinct answers for digits {digits} and "
                     f"operations {ops}; lower per_page or widen digits")


PAGE_BREAK = "\n\n"  # between the problems of a page


def page_text(problems_on_page: list[tuple[int, str, int]]) -> str:
    return PAGE_BREAK.join(document_text(a, op, b) for a, op, b in problems_on_page)


def bucket(a: int, op: str, b: int) -> int:
    """A fixed hash bucket 0-99 per problem: the held-out and validation splits never move with the seed."""
    return hash_bucket(f"{a}{op}{b}")


def problems(rng: random.Random, n: int, op: str, digits: tuple[int, int], split: str,
             longest: int | None = None) -> list[tuple[int, int]]:
    """n problems `a op b` with operands of `digits` (min, max) digits, drawn from one split's buckets;
    with `longest`, the longer operand has exactly that many digits (a suite one column longer than training)."""
    lo, hi = digits
    wanted = {"heldout": HELDOUT_BUCKETS, "validation": VALIDATION_BUCKETS}.get(split)
    out: list[tuple[int, int]] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 1000 * n + 10000:
            raise ValueError(f"column_arithmetic: could not draw {n} {split} problems with digits {digits}")
        da, db = rng.randint(lo, hi), rng.randint(lo, hi)
        if longest is not None and max(da, db) != longest:
            continue
        a, b = rng.randint(10 ** (da - 1), 10 ** da - 1), rng.randint(10 ** (db - 1), 10 ** db - 1)
        if op == "-" and a < b:
            a, b = b, a
        k = bucket(a, op, b)
        if (k in wanted) if wanted is not None else (k not in HELDOUT_BUCKETS and k not in VALIDATION_BUCKETS):
            out.append((a, b))
    return out


def parse_question(text: str) -> tuple[int, str, int] | None:
    m = QUESTION.match(text.splitlines()[0].strip()) if text.strip() else None
    return (int(m.group(1)), m.group(2), int(m.group(3))) if m else None


@dataclass(frozen=True)
class Written:
    """A column line as the solver wrote it."""

    terms: tuple[int, ...]
    total: int
    flag: bool
    text: str


def parse_line(line: str) -> Written | None:
    m = LINE.match(line)
    if not m:
        return None
    terms = tuple(int(t.replace(" ", "")) for t in _TERM.findall(m.group(1)))
    return Written(terms, int(m.group(2)), m.group(3) is not None, line.strip())


def _plus(terms: tuple[int, ...]) -> str:
    return " ".join(f"{'+' if t >= 0 else '-'} {abs(t)}" if i else str(t) for i, t in enumerate(terms))


def column_error(i: int, op: str, want: list[Column], got: Written | None) -> str | None:
    """What is wrong with the line written for column i, in a few words, or None when it is right."""
    place = PLACES[min(i, len(PLACES) - 1)].capitalize() + " column"
    prev = f"the {PLACES[i - 1]} column" if i else "no column"
    carry = "carry" if op == "+" else "borrow"
    w = want[i]
    if got is None:
        return f"{place} skipped: it has no line."
    if got.terms == w.terms:
        if got.total != w.total:
            return f"{place}: {_plus(got.terms)} is not {got.total} (wrong {'sum' if op == '+' else 'difference'})."
        if got.flag != w.flag:
            if op == "+":
                return f"{place}: {got.total} " + ("carries, but no carry is marked." if w.flag
                                                  else "does not carry, but a carry is marked.")
            return f"{place}: " + ("it borrowed, but no borrow is marked." if w.flag else "marks a borrow it did not take.")
        return None
    n = w.digits
    if got.terms[:n] != w.terms[:n]:
        if i + 1 < len(want) and got.terms[:want[i + 1].digits] == want[i + 1].terms[:want[i + 1].digits]:
            return f"{place} skipped: the line works the next column."
        return f"{place}: wrong digits."
    unit = 1 if op == "+" else -1
    rest_w, rest_g = list(w.terms[n:]), list(got.terms[n:])
    if rest_w.count(unit) > rest_g.count(unit):
        return f"{place}: the {carry} from {prev} is dropped."
    if rest_g.count(unit) > rest_w.count(unit):
        if rest_g.count(unit) >= 2:
            return f"{place}: the {carry} is added twice."
        return f"{place}: adds a {carry} that {prev} did not make."
    if op == "-" and (10 in rest_w) != (10 in rest_g):
        return f"{place}: " + ("must borrow." if 10 in rest_w else "borrows though it need not.")
    return f"{place}: wrong terms."


def first_error(task_prompt: str, completion: str) -> str | None:
    """The first error of the working in words, or None when every column it writes is right.

    The working is the prompt's complete column lines followed by the completion's, checked column by column
    against the question. A whole problem (prompt = the question alone) must work every column; a task that
    hides a column or a carry is checked up to the lines it wrote.
    """
    q = parse_question(task_prompt)
    if q is None:
        return None
    a, op, b = q
    want = columns(a, op, b)
    prompt_lines = task_prompt.splitlines()[1:]
    given = [ln for ln in prompt_lines if "[MASK]" not in ln]
    body = [ln for ln in completion.splitlines() if ln.strip() and not ln.startswith("Answer:")]
    written = [parse_line(ln) for ln in given + body]
    whole = not prompt_lines
    for i in range(len(want) if whole else min(len(want), max(len(written), 1))):
        err = column_error(i, op, want, written[i] if i < len(written) else None)
        if err:
            return err
    if len(written) > len(want):
        return "The working has more lines than the numbers have columns."
    return None


_NAMED = re.compile(r"\b(" + "|".join(p.capitalize() for p in PLACES) + r") column(?::| skipped)")


def error_line(task_prompt: str, completion: str, critique: str) -> int | None:
    """Offset in `completion` of the line `critique` says is the first wrong one, the way `first_error` and
    `critique_text` name it: "<Place> column: ..." or "<Place> column skipped" (that column's line, or the
    answer line when the working stops before it), "the answer line", "more lines than ... columns" (the
    first extra line). None when it names no line the completion has (e.g. "No 'Answer:' line")."""
    q = parse_question(task_prompt)
    if q is None:
        return None
    given = [ln for ln in task_prompt.splitlines()[1:] if "[MASK]" not in ln]
    body, answer_at, at = [], None, 0
    for ln in completion.splitlines(keepends=True):  # the lines `first_error` reads, with where each starts
        if ln.startswith("Answer:"):
            answer_at = at if answer_at is None else answer_at
        elif ln.strip():
            body.append(at)
        at += len(ln)
    named = _NAMED.search(critique)
    if named:
        j = PLACES.index(named.group(1).lower()) - len(given)
        return None if j < 0 else body[j] if j < len(body) else answer_at
    if "the answer line" in critique:
        return answer_at
    if "more lines than" in critique:
        j = len(columns(*q)) - len(given)
        return body[j] if 0 <= j < len(body) else None
    return None


def digit_pairs(reference: str, answer: str) -> str:
    """The reviewer's comparison, one digit pair at a time, up to the first that differs (`-`: a number ended):
    `digit_pairs("834", "824")` is `8 8, 3 2`. Each same-or-different decision is then between two adjacent
    tokens, which the tiny model learns far faster than a comparison of two whole numbers (docs/
    learning_investigation.md, round 4: 0.94 against 0.75 balanced agreement after 400 reviewer steps)."""
    out = []
    for i in range(max(len(reference), len(answer))):
        x, y = reference[i] if i < len(reference) else "-", answer[i] if i < len(answer) else "-"
        out.append(f"{x} {y}")
        if x != y:
            break
    return ", ".join(out)


def own_check(task_prompt: str, final: str | None) -> str:
    """A blind reviewer's own check of a whole problem, written before its judgment: the columns worked out the
    way the solver writes them, then the answer they give against the solution's, digit pair by digit pair, as a
    reviewer that sees the reference compares (`Mine 834, answer 824: 8 8, 3 2: different. `). Judging without
    the reference is then solving plus the comparison, two skills the warm start teaches anyway; asked to spot an
    error in the solution's own lines instead, the tiny model's blind reviewer stayed at chance, accepting every
    solution (docs/learning_investigation.md, round 4, addendum). Empty where the task is not a whole problem
    (a hidden column or carry: the working is half given). What a refiner or FCP solver reads has the working
    and the value cut (`roles.scrub_reference`): it would hand over the answer."""
    q = parse_question(task_prompt)
    if q is None or len(task_prompt.strip().splitlines()) != 1:
        return ""
    a, op, b = q
    mine = str(answer(a, op, b))
    working = "\n".join(c.line(op) for c in columns(a, op, b))
    if final is None:
        return f"{working}\nMine {mine}, answer missing: different. "
    return f"{working}\nMine {mine}, answer {final}: {digit_pairs(mine, str(final))}: " + \
        ("same. " if str(final) == mine else "different. ")


def critique_text(task_prompt: str, completion: str, final: str | None, ok: bool, masked_kind: str,
                  reference: str | None = None) -> tuple[str, bool]:
    """(critique, blind verdict) for one solution of a column task; `ok` is the check against the reference.

    Blind (`reference` None), on a whole problem the critique first works the columns and compares the answer they
    give with the solution's (`own_check`); with the reference in view, it first compares the final answer with
    the reference, digit pair by digit pair (the check a reviewer that sees the reference must make). Then it
    points at the first wrong column. What a refiner or an FCP solver reads is that critique with the reference,
    the digit pairs and the reviewer's own working scrubbed out (`roles.scrub_reference`): it says where to look,
    not what to write.
    """
    lead = own_check(task_prompt, final) if reference is None else ""
    if reference is not None:
        pairs = "" if final is None else digit_pairs(str(reference), str(final)) + ": "
        lead = (f"Reference {reference}, answer {final if final is not None else 'missing'}: {pairs}"
                f"{'same' if ok else 'different'}. ")
    if final is None:
        return f"{lead}No 'Answer:' line.", False
    error = first_error(task_prompt, completion)
    if error:
        return lead + error, False
    if ok:
        return lead + ("Each column checks out." if reference is not None else
                       "Each column checks out and the answer is right."), True
    if masked_kind == "whole":
        return lead + "Columns right, but the answer line does not put their digits together.", False
    return lead + f"Working right, but the answer line does not give the hidden {masked_kind}.", False


FAULTS = ("wrong_sum", "carry_dropped", "carry_twice", "carry_mark", "skip")


def faulty_working(a: int, op: str, b: int, at: int, fault: str, delta: int) -> tuple[list[str], str] | None:
    """The working a solver with one slip writes: `fault` in column `at`, every later column carried on from
    what was written. (lines, answer), or None when the fault does not apply to that column."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    lines, digits, carry = [], [], 0
    sign = 1 if op == "+" else -1
    for i in range(max(len(xs), len(ys))):
        here = fault if i == at else None
        if here == "skip":
            continue
        x = int(xs[i]) if i < len(xs) else None
        y = int(ys[i]) if i < len(ys) else None
        owed = [sign] * carry
        if here == "carry_dropped":
            if not carry:
                return None
            owed = []
        elif here == "carry_twice":
            if not carry:
                return None
            owed = [sign, sign]
        terms = [t for t in (x, y if op == "+" else (None if y is None else -y)) if t is not None] + owed
        value = sum(terms)
        flag = value >= 10 if op == "+" else value < 0
        if op == "-" and flag:
            terms.append(10)
            value += 10
        if here == "wrong_sum":
            value = max(0, value + delta) if value + delta != value else value + abs(delta)
        if here == "carry_mark":
            flag = not flag
        # a faulty borrow mark still leaves the written difference as it is
        written = Column(tuple(terms), value, flag, 2)
        lines.append(written.line(op))
        digits.append(value % 10)
        carry = int(flag)
    if op == "+":
        text = ("1" if carry else "") + "".join(str(d) for d in reversed(digits))
    else:
        text = "".join(str(d) for d in reversed(digits)).lstrip("0") or "0"
    return lines, text


ANSWER_FAULTS = ("answer_line", "no_answer", "extra_line")  # the working right, the answer not: a model's own slips


def answer_fault(a: int, op: str, b: int, fault: str, rng: random.Random) -> str:
    """A whole solution whose columns are right but whose answer is not: the answer line misreads the columns
    (a digit changed, two swapped, the carry-out dropped), is missing, or follows an extra column line."""
    cols = columns(a, op, b)
    lines = [c.line(op) for c in cols]
    right = str(answer(a, op, b))
    if fault == "no_answer":
        return "\n".join(lines)
    if fault == "extra_line":
        x, y = rng.randint(1, 9), rng.randint(0, 9)  # a column past the last, its digit written before the answer
        extra = Column((x, y) if op == "+" else (max(x, y), -min(x, y)), x + y if op == "+" else abs(x - y), False, 2)
        return "\n".join([*lines, extra.line(op), f"Answer: {extra.total % 10 or x}{right}"])
    kind = rng.choice(("digit", "swap", "carry_out"))
    if kind == "carry_out" and op == "+" and len(right) > len(str(max(a, b))):
        wrong = right[1:]
    elif kind == "swap" and len(right) > 1:
        i = rng.randrange(len(right) - 1)
        wrong = right[:i] + right[i + 1] + right[i] + right[i + 2:]
    else:
        i = rng.randrange(len(right))
        wrong = right[:i] + str((int(right[i]) + rng.randint(1, 9)) % 10) + right[i + 1:]
    wrong = wrong.lstrip("0") or "0"
    return "\n".join([*lines, f"Answer: {wrong}"])


def corrupt(task_prompt: str, solution: str, rng: random.Random, answer_of: Callable[[str], str | None]) -> str | None:
    """A deliberately wrong solution of a column task (reviewer and refiner warm-up): one realistic slip.

    `answer_of` reads a solution's final answer (the domain's parser)."""
    q = parse_question(task_prompt)
    if q is None:
        return None
    a, op, b = q
    n_cols = len(columns(a, op, b))
    given = [ln for ln in task_prompt.splitlines()[1:] if "[MASK]" not in ln]
    whole = len(task_prompt.splitlines()) == 1
    for _ in range(20):
        at = rng.randrange(n_cols) if whole else len(given)
        fault = rng.choice(FAULTS + ANSWER_FAULTS if whole else FAULTS[:4])
        if fault in ANSWER_FAULTS:
            wrong = answer_fault(a, op, b, fault, rng)
            if answer_of(wrong) != answer_of(solution):
                return wrong
            continue
        out = faulty_working(a, op, b, at, fault, rng.choice([-3, -2, -1, 1, 2, 3]))
        if out is None:
            continue
        lines, final = out
        if whole:
            wrong = "\n".join([*lines, f"Answer: {final}"])
        else:
            line = lines[at] if at < len(lines) else None
            if line is None:
                continue
            mask_line = task_prompt.splitlines()[-1]
            w = parse_line(line)
            hidden = ("1" if w.flag else "0") if re.search(r" [cb]\[MASK\]$", mask_line) else str(w.total)
            wrong = f"{line}\nAnswer: {hidden}"
        if answer_of(wrong) != answer_of(solution):  # a slip the answer shows, never a lucky one
            return wrong
    return None
