"""Code domain: splits, spans, tasks, sandboxed verification, the rule critic, and its configs."""

from __future__ import annotations

import random

import pytest
from conftest import compose_cfg

from alive_exp.domains import MASK, Document, get, hub
from alive_exp.domains.code import _humaneval

FENCE = "```"


@pytest.fixture(scope="module")
def code():
    return get("code")


@pytest.fixture(scope="module")
def train_docs(code):
    return code.documents("train", 60, seed=0)


@pytest.fixture(scope="module")
def tasks(code, train_docs):
    """Up to three spans per document: HumanEval body lines and expressions, CodeI/O inputs and outputs."""
    rng = random.Random(0)
    out = []
    for doc in train_docs:
        spans = code.candidate_spans(doc)
        out += [code.make_task(doc, s, e) for s, e in rng.sample(spans, min(3, len(spans)))]
    return out


def by_kind(tasks, kind):
    found = [t for t in tasks if t.meta["kind"] == kind]
    assert found, f"no {kind} tasks"
    return found


def test_splits_are_disjoint_and_sized(code, train_docs):
    test_docs = code.documents("test", 60, seed=0)
    assert len(train_docs) == len(test_docs) == 60
    assert {d.meta["source"] for d in train_docs} == {"humaneval", "codeio"}
    assert not {d.id for d in train_docs} & {d.id for d in test_docs}
    assert not {d.text for d in train_docs} & {d.text for d in test_docs}
    programs = lambda docs: {d.meta["code"] for d in docs if d.meta["source"] == "codeio"}  # noqa: E731
    assert not programs(train_docs) & programs(test_docs)
    # the held-out HumanEval problems are fixed by split_seed, not by the run seed
    heldout = {t.id for t in code.humaneval_tasks(0, seed=0)}
    assert heldout == {t.id for t in code.humaneval_tasks(0, seed=7)} and len(heldout) == 66
    assert not heldout & {d.id for d in get("code", sources=["humaneval"]).documents("train", 2000, seed=3)}


def test_spans_lie_in_the_body_or_the_io_pair(code, train_docs):
    for doc in train_docs:
        spans = code.candidate_spans(doc)
        assert spans
        for s, e in spans:
            check = code.check_span(doc, doc.text[s:e])
            assert check.valid, (doc.id, doc.text[s:e], check.reason)
            if doc.meta["source"] == "humaneval":
                assert s >= doc.meta["body_start"]
                assert doc.text[s:e] == doc.text[s:e].strip()


def test_spans_in_the_prompt_or_blank_are_rejected(code, train_docs):
    doc = next(d for d in train_docs if d.meta["source"] == "humaneval")
    signature = doc.text[: doc.meta["body_start"]].split("def ", 1)[1].split("\n")[0]
    assert "signature or docstring" in code.check_span(doc, "def " + signature).reason
    assert not code.check_span(doc, "   \n  ").valid
    start = doc.meta["body_start"]
    assert code.unsolvable_reason(doc, start, start + 1) == "span is only whitespace"
    io_doc = next(d for d in train_docs if d.meta["source"] == "codeio")
    assert "input or the whole output" in code.check_span(io_doc, "def main_solution").reason


def test_a_body_line_repeated_in_the_docstring_is_found_in_the_body(code):
    text = 'def f(x):\n    """f(x) is return x + 1"""\n    return x + 1\n'
    doc = Document("toy", text, "code", meta={"source": "humaneval", "body_start": text.index('"""\n') + 4,
                                              "entry_point": "f", "tests": "assert f(1) == 2"})
    check = code.check_span(doc, "return x + 1")
    assert check.valid and check.start == text.rindex("return x + 1")


def test_tasks_mask_the_span(tasks):
    for task in tasks:
        assert MASK in task.prompt
        if task.meta["kind"] == "fill":
            assert task.meta["program"].count(MASK) == 1
            assert task.meta["program"].replace(MASK, task.reference) in task.prompt.replace(MASK, task.reference)


def test_reference_solutions_score_correct(code, tasks):
    results = code.score_many([code.solution_text(t) for t in tasks], tasks)
    assert all(ok for ok, _ in results), [t.id for t, (ok, _) in zip(tasks, results) if not ok]
    assert {t.meta["kind"] for t in tasks} == {"fill", "predict_input", "predict_output"}


def test_humaneval_canonical_solutions_pass_all_164(code):
    tasks = [code.humaneval_task(p) for p in _humaneval()]
    results = code.score_many([code.solution_text(t) for t in tasks], tasks)
    assert sum(ok for ok, _ in results) == 164 == len(tasks)


def test_wrong_and_unparseable_answers_fail_without_raising(code, tasks):
    fill = by_kind(tasks, "fill")[:6]
    outputs = by_kind(tasks, "predict_output")[:3]
    garbage = ["", "no answer at all", "Answer:", f"Answer:\n{FENCE}python\n{FENCE}", "Answer: )))(((",
               "Answer: raise SystemExit(0)", f"Answer:\n{FENCE}python\nimport os\nos._exit(0)\n{FENCE}"]
    pairs = [(c, t) for t in fill for c in garbage] + [(c, t) for t in outputs for c in garbage + ["Answer: [1, 2"]]
    results = code.score_many([c for c, _ in pairs], [t for _, t in pairs])
    assert not any(ok for ok, _ in results)
    assert code.score("no answer", fill[0]) == (False, None)
    assert code.verify(None, "x") is False and code.verify("x", "x")  # no task: normalised text


def test_answer_formats(code):
    assert code.extract_answer("blah\nAnswer: `x + 1`\n") == "x + 1"
    assert code.extract_answer(f"Answer:\n{FENCE}python\nfor i in r:\n    s += i\n{FENCE}\nbye") == "for i in r:\n    s += i"
    assert code.extract_answer(f"Here:\n{FENCE}py\nreturn 1\n{FENCE}") == "return 1"
    assert code.extract_answer(f"Answer:\n{FENCE}python\nreturn 1") == "return 1"  # cut off before the fence closed
    assert code.extract_answer("nothing") is None


def test_a_multi_line_fill_is_reindented(code):
    p = _humaneval()[0]
    text = p["prompt"] + p["canonical_solution"]
    body = text.index("    for idx, elem in enumerate(numbers):") + 4
    end = text.index("return True") + len("return True")
    doc = Document("he0", text, "code", meta={"source": "humaneval", "body_start": len(p["prompt"]),
                                              "entry_point": p["entry_point"], "tests": p["test"] + "\ncheck(has_close_elements)"})
    task = code.make_task(doc, body, end)
    assert code.score(code.solution_text(task), task)[0]
    assert FENCE in code.solution_text(task)


def test_faked_equality_does_not_pass(code):
    task = code.humaneval_task(_humaneval()[0])
    cheat = f"Answer:\n{FENCE}python\nclass A:\n    def __eq__(self, other):\n        return True\nreturn A()\n{FENCE}"
    ok, _ = code.score(cheat, task)
    assert not ok
    assert "not a plain value" in code.critique(task, cheat).text


def test_critic_names_the_problem_and_agrees_with_verification(code, tasks):
    code = get("code", timeout_s=1.0)  # the infinite loop below runs twice
    task = code.humaneval_task(_humaneval()[0])
    cases = {
        "nothing here": "gives no code",
        "Answer: return (": "does not parse",
        f"Answer:\n{FENCE}python\n    return False\n{FENCE}": "A check fails: `assert candidate(",
        f"Answer:\n{FENCE}python\n    return 1 / 0\n{FENCE}": "ZeroDivisionError",
        f"Answer:\n{FENCE}python\n    while True:\n        pass\n{FENCE}": "did not finish",
        code.solution_text(task): "passes every test",
    }
    for completion, words in cases.items():
        critique = code.critique(task, completion)
        assert words in critique.text, (completion, critique.text)
        assert critique.text.endswith("Verdict: correct" if critique.verdict else "Verdict: incorrect")
        assert critique.verdict == code.score(completion, task)[0]
    predict = by_kind(tasks, "predict_output")[0]
    assert "not valid JSON" in code.critique(predict, "Answer: {oops").text
    assert code.critique(predict, code.solution_text(predict)).verdict is True
    guess = by_kind(tasks, "predict_input")[0]
    assert "JSON object" in code.critique(guess, "Answer: 3").text


def test_benchmarks(code, monkeypatch):
    suites = code.benchmarks()
    assert set(suites) == {"humaneval", "codeio_heldout", "mbpp"}
    humaneval = suites["humaneval"](4, 0)
    assert len(humaneval) == 4 and all(t.meta["kind"] == "function" for t in humaneval)
    io = suites["codeio_heldout"](4, 0)
    assert len(io) == 4 and all(t.meta["kind"] == "predict_output" for t in io)
    assert [t.prompt for t in suites["codeio_heldout"](4, 7)] == [t.prompt for t in io]  # the same for every seed
    assert all(ok for ok, _ in code.score_many([code.solution_text(t) for t in humaneval + io], humaneval + io))
    row = {"task_id": 2, "prompt": "Write a function to find the shared elements of two lists.",
           "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n", "test_imports": [],
           "test_list": ["assert set(similar_elements((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))"]}
    monkeypatch.setattr(hub, "load_rows", lambda name, size, seed: [row])
    (mbpp,) = suites["mbpp"](1, 0)
    assert mbpp.meta["entry_point"] == "similar_elements"
    assert code.score(code.solution_text(mbpp), mbpp)[0]
    assert not code.score(f"Answer:\n{FENCE}python\ndef similar_elements(a, b):\n    return ()\n{FENCE}", mbpp)[0]


def test_hub_benchmark_is_unavailable_offline(code, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubUnavailable):
        code.benchmarks()["mbpp"](2, 0)


@pytest.mark.parametrize("experiment,domain,evaluated", [("code", "code", ["code"]),
                                                         ("cross_domain", "math", ["math", "code", "logic"])])
def test_configs_compose(experiment, domain, evaluated):
    cfg = compose_cfg([f"+experiment={experiment}"])
    assert cfg.benchmark.domain == domain and list(cfg.benchmark.eval_domains) == evaluated
    assert get(cfg.benchmark.domain, **cfg.benchmark.options).name == domain
    if experiment == "code":
        assert cfg.trainer.generation.solver_tokens >= 128
    assert compose_cfg(["+experiment=cross_domain", "benchmark=code"]).benchmark.domain == "code"
