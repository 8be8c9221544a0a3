"""Logic: reasoning-gym puzzles (knights and knaves, zebra puzzles, propositional logic) with their answers.

A knights-and-knaves document reads

    Question: A very special island is inhabited only by knights and knaves. ... (Format your answer like ...)
    Victoria's statement is true, so Victoria is a knight.
    Jacob's statement is false, so Jacob is a knave.
    Answer: Victoria is a knight, and Jacob is a knave.

Zebra and propositional-logic documents are the question and the answer line. Spans lie in the answer:
the whole answer (the task is the question alone, as in math) or a part of it such as one claim,
"Jacob is a knave" (the task is the question plus the answer line with the claim masked; the working
would give it away). An answer is filled into the answer line and the line scored by reasoning-gym's
scorer: 1.0 is correct. Propositional logic has no single answer: any valid, non-trivial conclusion is.

Splits: a problem is held out iff its question hashes into `heldout_share`, and held-out problems come
from a seed stream of their own, so train and test are disjoint for every seed and pool size.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from functools import lru_cache
from typing import Any

from alive_exp.domains.base import MASK, Critique, Document, Domain, Task, checked_sources, merged_options, verdict_line

log = logging.getLogger(__name__)

SOURCES = ("knights_knaves", "zebra_puzzles", "propositional_logic")
_TEST_STREAM = 1_000_000_007
_CLAIM = re.compile(r"[A-Z][a-z]+ is an? \w+")


@lru_cache(maxsize=32)
def _dataset(source: str, stream: int, options: str = "{}"):
    import reasoning_gym as rg

    return rg.create_dataset(source, seed=stream, size=10**9, **json.loads(options))  # items drawn lazily by index


@lru_cache(maxsize=65536)
def _item(source: str, stream: int, options: str, idx: int) -> dict[str, Any]:
    return _dataset(source, stream, options)[idx]


def _score(source: str, answer: str, entry: dict[str, Any]) -> float:
    try:
        return float(_dataset(source, 0).score_answer(answer, entry))
    except Exception:  # a scorer choking on garbage means a wrong answer, never a crash
        return 0.0


def _clean(answer: str) -> str:
    """Drop the wrapping a solver adds around an answer: quotes, backticks, bold, a final period."""
    return answer.strip().strip("`*\"'").strip().rstrip(".").strip()


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


class LogicDomain(Domain):
    name = "logic"

    def __init__(
        self,
        sources: tuple[str, ...] | list[str] = SOURCES,
        source_options: dict[str, dict] | None = None,
        heldout_share: float = 0.2,
        split_seed: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.sources = checked_sources(self.name, sources, SOURCES)
        # zebra puzzles of 3 people x 3 traits generate in ~13 ms; reasoning-gym's default 4 x 4 takes ~50 ms
        self.source_options = merged_options({"zebra_puzzles": {"num_people": 3, "num_characteristics": 3}},
                                             source_options)
        self.heldout_share, self.split_seed = heldout_share, split_seed

    # -- documents ------------------------------------------------------------------------------
    def documents(self, split: str, size: int, seed: int) -> list[Document]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        k = len(self.sources)
        return [d for i, s in enumerate(self.sources) for d in self._documents(s, split, size // k + (i < size % k), seed)]

    def _heldout(self, question: str) -> bool:
        digest = hashlib.sha1(f"{self.split_seed}:{question}".encode()).hexdigest()
        return int(digest[:8], 16) / 16**8 < self.heldout_share

    def _documents(self, source: str, split: str, n: int, seed: int) -> list[Document]:
        stream = seed if split == "train" else _TEST_STREAM  # held-out: the same documents for every run seed
        options = json.dumps(self.source_options.get(source, {}), sort_keys=True)
        docs: list[Document] = []
        seen: set[str] = set()
        limit = 20 * n + 200
        for idx in range(limit):
            if len(docs) >= n:
                break
            item = _item(source, stream, options, idx)
            question = item["question"].strip()
            if question in seen or self._heldout(question) != (split == "test"):
                continue
            doc = self._document(source, item, f"{source}-{stream}-{idx}")
            if doc is not None:
                seen.add(question)
                docs.append(doc)
        if len(docs) < n:
            log.warning("logic/%s: only %d of %d %s documents within %d draws", source, len(docs), n, split, limit)
        return docs

    def _document(self, source: str, item: dict[str, Any], doc_id: str) -> Document | None:
        question, meta = item["question"].strip(), item["metadata"]
        entry = {"question": question, "answer": item["answer"], "metadata": meta}
        working: list[str] = []
        if source == "knights_knaves":
            working = self._knights_working(meta)
            answer = str(item["answer"]).strip()
        elif source == "propositional_logic":
            answer = str(meta["example_answer"]).strip()  # reasoning-gym's answer is None: any valid conclusion
            if _score(source, answer, entry) < 1.0:
                return None
        else:
            answer = str(item["answer"]).strip()
        head = f"Question: {question}"
        text = "\n".join([head, *working, f"{self.answer_prefix} {answer}"])
        return Document(
            id=doc_id, text=text, domain=self.name,
            meta={"source": source, "entry": entry, "question_end": len(head), "answer_start": len(text) - len(answer)},
        )

    @staticmethod
    def _knights_working(meta: dict[str, Any]) -> list[str]:
        """One line per inhabitant: the truth of their statement under the solution fixes their role."""
        from reasoning_gym.logic.knights_knaves import KnightsKnavesDataset

        terms, solution = meta["knight_knave_terms"], meta["solution"]
        lines = []
        for name, statement, knight in zip(meta["names"], meta["statements"], solution):
            true = bool(KnightsKnavesDataset.test_satisfiability(statement, solution))
            lines.append(f"{name}'s statement is {'true' if true else 'false'}, so {name} is "
                         f"{terms['a_knight'] if knight else terms['a_knave']}.")
        return lines

    # -- constructor ----------------------------------------------------------------------------
    def candidate_spans(self, doc: Document) -> list[tuple[int, int]]:
        """Each claim of a knights-and-knaves answer, then the whole answer (last, for held-out tasks)."""
        a = doc.meta["answer_start"]
        claims = _CLAIM.finditer(doc.text, a) if doc.meta["source"] == "knights_knaves" else []
        return [(m.start(), m.end()) for m in claims] + [(a, len(doc.text))]

    def locate_span(self, doc: Document, span: str) -> int:
        # the last occurrence: the question and working come first and repeat the claims
        return doc.text.rfind(span)

    def unsolvable_reason(self, doc: Document, start: int, end: int) -> str:
        span = doc.text[start:end]
        if not span.strip():
            return "span is only whitespace"
        if start < doc.meta["answer_start"]:
            return "span lies in the question or the working; hide the answer or one claim of it"
        if not any(ch.isalnum() for ch in span):
            return "span holds nothing to infer"
        return ""

    def make_task(self, doc: Document, start: int, end: int) -> Task:
        text, a = doc.text, doc.meta["answer_start"]
        question, reference = text[: doc.meta["question_end"]], text[start:end].strip()
        if (start, end) == (a, len(text)):
            prompt, template, solution = question, MASK, text[len(question) + 1:]
        else:
            template = text[a:start] + MASK + text[end:]
            prompt = f"{question}\n{self.answer_prefix} {template}"
            solution = f"{self.answer_prefix} {reference}"
        return Task(
            id=f"{doc.id}@{start}", domain=self.name, prompt=prompt, reference=reference, doc_id=doc.id,
            meta={"source": doc.meta["source"], "entry": doc.meta["entry"], "template": template, "solution": solution},
        )

    # -- solver ---------------------------------------------------------------------------------
    def _filled(self, task: Task, answer: str) -> str:
        return task.meta["template"].replace(MASK, _clean(answer), 1)

    def verify(self, prediction: str, reference: str, *, task: Task | None = None) -> bool:
        if not isinstance(prediction, str) or not prediction.strip():
            return False
        if self.answer_prefix in prediction:
            prediction = self.extract_answer(prediction) or ""
        if task is None or "entry" not in task.meta:
            return bool(prediction.strip()) and _norm(prediction) == _norm(reference)
        return _score(task.meta["source"], self._filled(task, prediction), task.meta["entry"]) >= 1.0

    def solution_text(self, task: Task) -> str:
        return task.meta.get("solution") or f"{self.answer_prefix} {task.reference}"

    # -- oracle ---------------------------------------------------------------------------------
    def critique(self, task: Task, completion: str, *, blind: bool = False) -> Critique:
        """Names the first wrong claim (knights), the misplaced person (zebra) or why a conclusion fails."""
        answer = self.extract_answer(completion)
        if answer is None:
            text, ok = f"The solution never states an answer on an '{self.answer_prefix}' line.", False
        else:
            ok = self.verify(answer, task.reference, task=task)
            text = f'The answer "{answer}" is right.' if ok else self._mistake(task, answer)
        return Critique(f"{text}\n{verdict_line(ok)}", ok)

    def _mistake(self, task: Task, answer: str) -> str:
        source = task.meta.get("source")
        if source == "knights_knaves":
            return self._knights_mistake(task, answer)
        if source == "propositional_logic":
            return self._conclusion_mistake(task, answer)
        if source == "zebra_puzzles":
            names = re.search(r"unique name: ([^\n]+)", task.meta["entry"]["question"])
            people = [n.strip() for n in names.group(1).split(",")] if names else []
            if people and _clean(answer).lower() not in people:
                return f'"{answer}" is not one of the people in the puzzle: {", ".join(people)}.'
            return f"The clues do not put {answer} there; place each person clue by clue and read the answer off the grid."
        return f'The answer "{answer}" is wrong.'

    def _knights_mistake(self, task: Task, answer: str) -> str:
        meta = task.meta["entry"]["metadata"]
        terms, filled = meta["knight_knave_terms"], self._filled(task, answer)
        for name, knight in zip(map(str, meta["names"]), meta["solution"]):
            said = {w.lower() for w in re.findall(rf"\b{re.escape(name)}\s+is\s+(?:an?\s+)?(\w+)", filled, re.I)}
            truth = terms["knight"] if knight else terms["knave"]
            if not said:
                return f"The answer does not say whether {name} is {terms['a_knight']} or {terms['a_knave']}."
            wrong = sorted(said - {truth})
            if wrong:
                return (f"{name} is not {_a(wrong[0])}: in the only consistent assignment {name}'s statement is "
                        f"{'true' if knight else 'false'}, so {name} is {_a(truth)}.")
        return (f'The answer "{answer}" does not match the consistent assignment: name every inhabitant once, '
                f"as {terms['a_knight']} or {terms['a_knave']}.")

    def _conclusion_mistake(self, task: Task, answer: str) -> str:
        entry, filled = task.meta["entry"], self._filled(task, answer)
        score = _score("propositional_logic", filled, entry)
        variables = sorted(entry["metadata"]["variables"])
        if score == 0.0:
            return (f"The conclusion {filled} is not a formula over the premises' variables ({', '.join(variables)}) "
                    "written with ¬ ∧ ∨ → ↔.")
        if score < 0.1:
            counter = self._counterexample(entry, filled, variables)
            if counter:
                values = ", ".join(f"{k} = {v}" for k, v in counter.items())
                return f"The conclusion {filled} does not follow: with {values} every premise holds but it is false."
            return f"The conclusion {filled} does not follow from the premises."
        return f"The conclusion {filled} is trivial: a lone variable or a tautology says nothing the premises add."

    @staticmethod
    def _counterexample(entry: dict[str, Any], conclusion: str, variables: list[str]) -> dict[str, bool] | None:
        from reasoning_gym.logic.propositional_logic import Expression

        try:
            premises = [Expression.from_string(p) for p in entry["metadata"]["premises"]]
            claim = Expression.from_string(conclusion)
            for values in itertools.product([True, False], repeat=len(variables)):
                world = dict(zip(variables, values))
                if all(p.evaluate(world) for p in premises) and not claim.evaluate(world):
                    return world
        except Exception:  # an unparseable or exotic formula: no counterexample to show
            return None
        return None
