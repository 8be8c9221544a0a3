"""What every domain provides: documents, span proposals, tasks, a verifier, an oracle critic, benchmarks.

A domain is a small class that implements `Domain`; the registry in `alive_exp.domains`
maps its name to it. The ALIVE step never branches on the domain's name.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MASK = "[MASK]"


@dataclass(frozen=True)
class Document:
    """A piece of raw text the constructor turns into tasks; no labels."""

    id: str
    text: str
    domain: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Task:
    """A problem for the solver; `reference` is the hidden answer (a masked span or a benchmark label)."""

    id: str
    domain: str
    prompt: str
    reference: str
    doc_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class SpanCheck:
    """Whether a proposed span can become a task, and why not when it cannot."""

    valid: bool
    reason: str = ""
    start: int = -1
    end: int = -1


@dataclass(frozen=True)
class Critique:
    """A verbal evaluation of one solution; `verdict` is None when no verdict could be parsed."""

    text: str
    verdict: bool | None
    error: str | None = None


HELDOUT_BUCKETS = range(0, 10)  # 10% of problems: every held-out and generalization suite
VALIDATION_BUCKETS = range(10, 15)  # 5%: what learning rates and sweeps are chosen on


def hash_bucket(key: str) -> int:
    """A fixed bucket 0-99 per problem (sha1 of its text): held-out and validation splits never move with the
    seed, and no seed's training pool holds one of their problems."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 100


def split_of(key: str) -> str:
    """train | heldout | validation, by `hash_bucket`."""
    k = hash_bucket(key)
    return "heldout" if k in HELDOUT_BUCKETS else "validation" if k in VALIDATION_BUCKETS else "train"


def checked_sources(domain: str, sources, known) -> tuple[str, ...]:
    """The configured sources of a domain, or a clear error naming the unknown ones."""
    unknown = set(sources) - set(known)
    if unknown:
        raise ValueError(f"unknown {domain} sources {sorted(unknown)} in benchmark.options.sources; known: {list(known)}")
    return tuple(sources)


def merged_options(defaults: dict[str, dict], overrides: dict[str, dict] | None) -> dict[str, dict]:
    """Per-source generator options: the domain's defaults, updated key by key from the config."""
    out = {k: dict(v) for k, v in defaults.items()}
    for k, v in (overrides or {}).items():
        out[k] = {**out.get(k, {}), **dict(v)}
    return out


class Domain(ABC):
    """One mechanism for every domain; subclasses fill in the domain-specific parts."""

    name: str = ""
    #: answer line the solver ends with; the parser reads what follows it
    answer_prefix: str = "Answer:"

    def __init__(self, **unknown: Any) -> None:
        """Subclasses take their options by name and pass the rest here: a leftover is a typo, an error."""
        if unknown:
            import inspect

            named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            known = sorted({k for c in type(self).__mro__ if "__init__" in vars(c)
                            for k, prm in inspect.signature(vars(c)["__init__"]).parameters.items()
                            if k != "self" and prm.kind in named})
            raise ValueError(f"unknown option(s) {sorted(unknown)} for domain {self.name!r} (benchmark.options); "
                             f"known: {', '.join(known)}")

    # -- raw text ---------------------------------------------------------------------------
    def vocabulary(self) -> list[str]:
        """Extra text the tiny model's tokenizer learns from (every source's documents, critique phrases)."""
        return []

    @abstractmethod
    def documents(self, split: str, size: int, seed: int) -> list[Document]:
        """Raw documents for `split` ("train" or "test"); disjoint across splits for one seed."""

    # -- constructor ------------------------------------------------------------------------
    @abstractmethod
    def candidate_spans(self, doc: Document) -> list[tuple[int, int]]:
        """Character ranges worth masking, for the rule-based masker and the oracle constructor."""

    def propose_spans(self, doc: Document, k: int, rng: random.Random) -> list[str]:
        """The rule-based masker: up to k distinct span texts drawn from the candidates."""
        cands = self.candidate_spans(doc)
        rng.shuffle(cands)
        out: list[str] = []
        for s, e in cands:
            text = doc.text[s:e]
            if text not in out:
                out.append(text)
            if len(out) == k:
                break
        return out

    def check_span(self, doc: Document, span: str, min_chars: int = 1, max_chars: int = 200) -> SpanCheck:
        """A span is valid when it occurs verbatim, lies within bounds and leaves a solvable task."""
        span = span.strip()
        if not span:
            return SpanCheck(False, "empty span")
        if not (min_chars <= len(span) <= max_chars):
            return SpanCheck(False, f"length {len(span)} outside [{min_chars}, {max_chars}]")
        start = self.locate_span(doc, span)
        if start < 0:
            return SpanCheck(False, "span does not occur verbatim in the document")
        end = start + len(span)
        if end - start >= 0.9 * len(doc.text):
            return SpanCheck(False, "span covers nearly the whole document")
        why = self.unsolvable_reason(doc, start, end)
        if why:
            return SpanCheck(False, why)
        return SpanCheck(True, "", start, end)

    def span_text(self, doc: Document, start: int, end: int) -> str:
        """What a constructor writes after `Span:` to hide doc.text[start:end] (the oracle constructor's target);
        `check_span` reads it back to the same range. The text itself by default."""
        return doc.text[start:end]

    def locate_span(self, doc: Document, span: str) -> int:
        """Where a proposed span sits in the document (-1 when absent); the first occurrence by default."""
        return doc.text.find(span)

    def unsolvable_reason(self, doc: Document, start: int, end: int) -> str:
        """Domain hook: a non-empty reason when masking [start, end) leaves no solvable task."""
        return ""

    @abstractmethod
    def make_task(self, doc: Document, start: int, end: int) -> Task:
        """The task that hides doc.text[start:end]; the hidden text is the reference."""

    # -- solver -----------------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        """The final answer in a solver's output: text after the last answer line, or None."""
        idx = completion.rfind(self.answer_prefix)
        if idx < 0:
            return None
        answer = completion[idx + len(self.answer_prefix):].strip().splitlines()
        return answer[0].strip() if answer and answer[0].strip() else None

    @abstractmethod
    def verify(self, prediction: str, reference: str, *, task: Task | None = None) -> bool:
        """Programmatic check of a final answer against the reference; never raises on bad input."""

    def score(self, completion: str, task: Task) -> tuple[bool, str | None]:
        """(correct, parsed answer) for a full solver completion; unparseable output is incorrect."""
        answer = self.extract_answer(completion)
        if answer is None:
            return False, None
        return self.verify(answer, task.reference, task=task), answer

    def score_many(self, completions: list[str], tasks: list[Task]) -> list[tuple[bool, str | None]]:
        """Batch form of `score`; domains that execute code override it to run in parallel."""
        return [self.score(c, t) for c, t in zip(completions, tasks, strict=True)]

    # -- oracle -----------------------------------------------------------------------------
    @abstractmethod
    def critique(self, task: Task, completion: str, *, blind: bool = False) -> Critique:
        """Rule-based oracle critic: says in words what is wrong (or right) and ends in a verdict.

        `blind`: the critique is for a reviewer that does not see the reference (self-critique); domains
        whose critique reads differently with the reference in view use it.
        """

    def locate_error(self, task: Task, completion: str, critique: str) -> int | None:
        """Where `critique` (any reviewer's text, not only the oracle's) says `completion` first goes wrong: the
        character offset of the start of the line it names, or None when it names none this domain can find
        (`reward.credit=critique` then falls back to the whole completion). None by default."""
        return None

    def corrupt(self, task: Task, solution: str, rng: random.Random) -> str | None:
        """A deliberately wrong variant of a correct solution (for reviewer and refiner warm-up), or None.

        Default: change the final answer; domains with structured working override it with a realistic slip.
        """
        answer = self.extract_answer(solution)
        if answer is None:
            return None
        digits = [i for i, ch in enumerate(answer) if ch.isdigit()]
        if digits:
            i = rng.choice(digits)
            wrong = answer[:i] + str((int(answer[i]) + rng.randint(1, 9)) % 10) + answer[i + 1:]
        else:
            words = answer.split()
            wrong = " ".join(reversed(words)) if len(words) > 1 else answer + "s"
        if wrong == answer:
            return None
        head = solution[: solution.rfind(self.answer_prefix)]
        return f"{head}{self.answer_prefix} {wrong}"

    def solution_text(self, task: Task) -> str:
        """A correct worked solution for `task` in the solver's format (warm start, oracle demos)."""
        return f"{self.answer_prefix} {task.reference}"

    # -- evaluation -------------------------------------------------------------------------
    def benchmarks(self) -> dict[str, Callable[[int, int], list[Task]]]:
        """Benchmark suites: name -> (size, seed) -> tasks. Default: held-out documents, answer masked."""
        return {f"{self.name}_heldout": self.heldout_tasks}

    def heldout_tasks(self, size: int, seed: int) -> list[Task]:
        return self.answer_tasks(self.documents("test", size, seed))

    def answer_tasks(self, docs: list[Document]) -> list[Task]:
        """One task per document: its last candidate span (the answer) hidden."""
        tasks = []
        for doc in docs:
            cands = self.candidate_spans(doc)
            if cands:
                s, e = cands[-1]
                tasks.append(self.make_task(doc, s, e))
        return tasks


def verdict_line(correct: bool) -> str:
    """The line every critique ends with; `alive_exp.roles.parse_critique` reads it back."""
    return f"Verdict: {'correct' if correct else 'incorrect'}"
