"""Math domain: documents, spans, tasks, the equivalence verifier and the rule-based critic."""

from __future__ import annotations

import random

import pytest

from alive_exp import domains
from alive_exp.domains.math import working_lines

math = domains.get("math")


@pytest.mark.parametrize(
    "prediction, reference",
    [("\\frac{1}{2}", "0.5"), ("1,000", "1000"), ("\\boxed{7}", "7"), ("7.0", "7"), ("-13", "-13"),
     ("Answer: 42", "42"), ("1/4", "0.25"), ("$12$", "12"), ("2\\sqrt{2}", "\\sqrt{8}")],
)
def test_equivalent_forms_verify(prediction, reference):
    assert math.verify(prediction, reference)


@pytest.mark.parametrize("prediction, reference", [("8", "7"), ("-7", "7"), ("0.51", "0.5"), ("1000", "100")])
def test_wrong_answers_fail(prediction, reference):
    assert not math.verify(prediction, reference)


@pytest.mark.parametrize("garbage", ["", "   ", "no answer here", "Answer:", "\\frac{", "}}}{{{", "Answer: banana"])
def test_unparseable_output_scores_zero_without_raising(garbage):
    assert math.verify(garbage, "7") is False
    correct, answer = math.score(garbage, domains.Task("t", "math", "Question: 3 + 4?", "7"))
    assert correct is False


def test_working_lines_follow_precedence():
    assert working_lines("5 - 3 * 6") == ["3 * 6 = 18", "5 - 18 = -13"]


def test_train_and_test_documents_are_disjoint():
    train = {d.text.splitlines()[0] for d in math.documents("train", 3000, 0)}
    test = [d.text.splitlines()[0] for d in math.documents("test", 200, 0)]
    assert len(test) == 200 and not train & set(test)


def test_reference_solutions_score_full_marks():
    docs = math.documents("train", 100, 1)
    tasks = [math.make_task(d, s, e) for d in docs for s, e in math.candidate_spans(d)]
    assert len(tasks) > 150
    assert all(math.score(math.solution_text(t), t)[0] for t in tasks)
    assert all(domains.MASK in t.prompt or "\n" not in t.prompt for t in tasks)


def test_spans_are_checked():
    doc = math.documents("train", 1, 0)[0]
    assert not math.check_span(doc, "Question").valid
    assert not math.check_span(doc, "not in the document").valid
    assert not math.check_span(doc, "").valid
    for span in math.propose_spans(doc, 3, random.Random(0)):
        assert math.check_span(doc, span).valid


@pytest.mark.parametrize("blind", [False, True])
def test_rule_critic_names_the_wrong_step(blind):
    task = domains.Task("t", "math", "Question: Calculate 5 - 3 * 6.", "-13")
    c = math.critique(task, "3 * 6 = 17\n5 - 17 = -12\nAnswer: -12", blind=blind)
    assert c.verdict is False and "Step 1" in c.text and "17" in c.text
    # it points at the slip without handing on the right value or the reference
    assert "18" not in c.text and "-13" not in c.text
    assert ("The final answer -12 is wrong." in c.text) is not blind
    assert c.text.splitlines()[-1] == "Verdict: incorrect"
    assert math.critique(task, "3 * 6 = 18\n5 - 18 = -13\nAnswer: -13", blind=blind).verdict is True
    assert "never states a final answer" in math.critique(task, "3 * 6 = 18", blind=blind).text


def test_rule_critic_with_the_reference_judges_the_final_answer():
    task = domains.Task("t", "math", "Question: Calculate 5 - 3 * 6.", "-13")
    consistent_but_wrong = "5 - 3 = 2\n2 * 6 = 12\nAnswer: 12"
    assert math.critique(task, consistent_but_wrong).text.startswith("The final answer 12 is wrong.")
    assert "-13" not in math.critique(task, consistent_but_wrong).text
    assert "does not follow from the task" in math.critique(task, consistent_but_wrong, blind=True).text
    # the verdict is the reference check the reviewer is rewarded against, even past a slip on the way
    lucky = "3 * 6 = 17\n5 - 18 = -13\nAnswer: -13"
    assert math.critique(task, lucky).verdict is True and math.critique(task, lucky, blind=True).verdict is False


def test_hide_answer_restricts_the_constructor_to_whole_problems():
    d = domains.get("math", hide="answer")
    doc = next(x for x in d.documents("train", 50, 0) if x.text.count("\n") >= 3)
    answer = doc.text.rsplit(d.answer_prefix, 1)[1].strip()
    assert [doc.text[s:e] for s, e in d.candidate_spans(doc)] == [answer]
    # the final value also ends the working; hiding it means the answer line, so the task is the question
    check = d.check_span(doc, answer)
    assert check.valid and d.make_task(doc, check.start, check.end).prompt == doc.text.splitlines()[0]
    step_value = doc.text.splitlines()[1].split("= ")[1]
    assert "only the final answer" in d.check_span(doc, step_value).reason
    assert len(domains.get("math").candidate_spans(doc)) > 1
    with pytest.raises(ValueError, match="hide"):
        domains.get("math", hide="steps")


def test_fixed_heldout_benchmark_across_seeds():
    d = domains.get("math")
    a, b = d.documents("test", 30, 0), d.documents("test", 30, 100)
    assert len({x.text for x in a} & {x.text for x in b}) >= 28


def test_reasoning_gym_splits_are_hash_buckets_the_same_for_every_seed():
    """Held-out and validation problems are fixed hash buckets of the question: identical for every seed,
    disjoint from each other, and absent from every seed's training pool."""
    from alive_exp.domains.base import split_of

    d = domains.get("math", sources=["basic_arithmetic"])
    first = lambda docs: [x.text.splitlines()[0] for x in docs]  # noqa: E731
    held = first(d.documents("test", 60, 0))
    assert held == first(d.documents("test", 60, 123)) and len(held) == 60
    val = [t.prompt.splitlines()[0] for t in d.benchmarks()["math_validation"](40, 5)]
    assert len(val) == 40 and not set(val) & set(held)
    for seed in (0, 1):
        train = first(d.documents("train", 300, seed))
        assert len(train) == 300 and not set(train) & (set(held) | set(val))
        assert {split_of(q) for q in train} == {"train"}
