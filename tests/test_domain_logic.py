"""Logic domain: splits, spans, tasks, scorer-based verification, the rule critic, and its config."""

from __future__ import annotations

import pytest
from conftest import compose_cfg

from alive_exp.domains import MASK, get


@pytest.fixture(scope="module")
def logic():
    return get("logic")


@pytest.fixture(scope="module")
def train_docs(logic):
    return logic.documents("train", 90, seed=0)


@pytest.fixture(scope="module")
def tasks(logic, train_docs):
    return [logic.make_task(doc, s, e) for doc in train_docs for s, e in logic.candidate_spans(doc)]


def of(tasks, source, whole=True):
    found = [t for t in tasks if t.meta["source"] == source and (t.meta["template"] == MASK) == whole]
    assert found, f"no {source} tasks"
    return found


def test_splits_are_disjoint_and_sized(logic, train_docs):
    test_docs = logic.documents("test", 30, seed=0)
    assert len(train_docs) == 90 and len(test_docs) == 30
    sources = [d.meta["source"] for d in train_docs]
    assert {s: sources.count(s) for s in set(sources)} == {"knights_knaves": 30, "zebra_puzzles": 30,
                                                             "propositional_logic": 30}
    questions = lambda docs: {d.meta["entry"]["question"] for d in docs}  # noqa: E731
    assert not questions(train_docs) & questions(test_docs)
    assert not questions(logic.documents("train", 300, seed=0)) & questions(test_docs)
    # held-out documents are the same for every run seed; training documents are not
    assert questions(logic.documents("test", 30, seed=5)) == questions(test_docs)
    assert not questions(logic.documents("train", 300, seed=5)) & questions(test_docs)
    assert [d.id for d in logic.documents("train", 90, seed=0)] == [d.id for d in train_docs]


def test_knights_documents_explain_each_person(train_docs):
    doc = next(d for d in train_docs if d.meta["source"] == "knights_knaves")
    names = [str(n) for n in doc.meta["entry"]["metadata"]["names"]]
    lines = doc.text.splitlines()
    assert lines[0].startswith("Question: ") and lines[-1].startswith("Answer: ")
    for name in names:
        assert any(ln.startswith(f"{name}'s statement is ") for ln in lines[1:-1])


def test_spans_are_the_answer_or_its_claims(logic, train_docs):
    for doc in train_docs:
        spans = logic.candidate_spans(doc)
        assert spans[-1] == (doc.meta["answer_start"], len(doc.text))
        if doc.meta["source"] == "knights_knaves":
            assert len(spans) == 1 + len(doc.meta["entry"]["metadata"]["names"])
        for s, e in spans:
            check = logic.check_span(doc, doc.text[s:e])
            assert check.valid and (check.start, check.end) == (s, e), (doc.id, doc.text[s:e], check.reason)


def test_spans_outside_the_answer_are_rejected(logic, train_docs):
    doc = next(d for d in train_docs if d.meta["source"] == "zebra_puzzles")
    assert "question" in logic.check_span(doc, "This is a logic puzzle").reason
    a = doc.meta["answer_start"]
    assert logic.unsolvable_reason(doc, a - 1, a - 1) == "span is only whitespace"
    assert not logic.check_span(doc, "   ").valid


def test_tasks_mask_the_span_and_hide_the_working(logic, tasks):
    for task in tasks:
        assert task.reference not in task.prompt.split("\n")[-1] or task.meta["template"] == MASK
        assert "statement is" not in task.prompt  # the working would give the answer away
        if task.meta["template"] == MASK:
            assert task.prompt.startswith("Question: ") and "Answer:" not in task.prompt
        else:
            assert MASK in task.prompt.splitlines()[-1]


def test_reference_solutions_score_correct(logic, tasks):
    assert all(logic.score(logic.solution_text(t), t)[0] for t in tasks)
    assert len(of(tasks, "knights_knaves", whole=False)) == 60


def test_wrong_and_unparseable_answers_fail_without_raising(logic, tasks):
    for task in tasks:
        for completion in ["", "no answer", "Answer:", "Answer: ((((", "Answer: \x00\ufffd", "Answer: X is a Y"]:
            assert logic.score(completion, task)[0] is False
    knights = of(tasks, "knights_knaves")[0]
    flipped = knights.reference.replace("knight", "@").replace("knave", "knight").replace("@", "knave")
    assert not logic.score(f"Answer: {flipped}", knights)[0]
    assert logic.verify(None, "x") is False
    assert logic.verify("Jacob is a knave.", "jacob is a knave")  # no task: normalised text


def test_lenient_about_wrapping_but_not_content(logic, tasks):
    zebra = of(tasks, "zebra_puzzles")[0]
    assert logic.score(f'Answer: "{zebra.reference.capitalize()}."', zebra)[0]
    claim = of(tasks, "knights_knaves", whole=False)[0]
    assert logic.score(f"Answer: {claim.reference}.", claim)[0]
    name = claim.reference.split()[0]
    assert not logic.score(f"Answer: {name} is a dragon", claim)[0]


def test_knights_critic_names_the_wrong_person(logic, tasks):
    task = of(tasks, "knights_knaves")[0]
    meta = task.meta["entry"]["metadata"]
    name, knight = str(meta["names"][-1]), meta["solution"][-1]
    terms = meta["knight_knave_terms"]
    right, wrong = (terms["knight"], terms["knave"]) if knight else (terms["knave"], terms["knight"])
    answer = task.reference.replace(f"{name} is a {right}", f"{name} is a {wrong}").replace(
        f"{name} is an {right}", f"{name} is an {wrong}")
    critique = logic.critique(task, f"Answer: {answer}")
    assert critique.verdict is False and critique.text.startswith(f"{name} is not ")
    assert critique.text.endswith("Verdict: incorrect")
    missing = logic.critique(task, f"Answer: {task.reference.split(',')[0]}")
    assert "does not say whether" in missing.text and missing.verdict is False


def test_critic_agrees_with_verification(logic, tasks):
    props = of(tasks, "propositional_logic")
    negated = [logic.critique(t, f"Answer: ¬{t.reference}").text for t in props]
    assert any("does not follow: with" in text and "every premise holds" in text for text in negated)
    prop = props[0]
    assert "trivial" in logic.critique(prop, f"Answer: {prop.meta['entry']['metadata']['variables'][0]}").text
    zebra = of(tasks, "zebra_puzzles")[0]
    assert "not one of the people" in logic.critique(zebra, "Answer: zorro").text
    assert "never states an answer" in logic.critique(zebra, "I think so").text
    for task in tasks[::7]:
        for completion in [logic.solution_text(task), "Answer: nobody", "nothing", f"Answer: {task.reference[:-3]}"]:
            critique = logic.critique(task, completion)
            assert critique.verdict == logic.score(completion, task)[0]
            assert critique.text.endswith("Verdict: correct" if critique.verdict else "Verdict: incorrect")


def test_heldout_benchmark_is_question_only(logic):
    (name, build), = logic.benchmarks().items()
    assert name == "logic_heldout"
    tasks = build(6, 0)
    assert len(tasks) == 6 and all(t.meta["template"] == MASK and "Answer:" not in t.prompt for t in tasks)
    assert all(logic.score(logic.solution_text(t), t)[0] for t in tasks)


def test_config_composes():
    cfg = compose_cfg(["+experiment=logic"])
    assert cfg.benchmark.domain == "logic" and list(cfg.benchmark.eval_domains) == ["logic"]
    domain = get(cfg.benchmark.domain, **cfg.benchmark.options)
    assert domain.source_options["zebra_puzzles"] == {"num_people": 3, "num_characteristics": 3}
    assert compose_cfg(["+experiment=cross_domain", "benchmark=logic"]).benchmark.domain == "logic"
