"""Column arithmetic: documents, spans, suites, the pointing critic, and critiques a solver reads without the answer."""

from __future__ import annotations

import random
import re

import pytest

from alive_exp import domains
from alive_exp.domains import columns as col
from alive_exp.roles import critique_body, scrub_reference

math = domains.get("math", sources=["column_arithmetic"], source_options={"column_arithmetic": {"operations": ["add", "sub"]}})
NUMBER = re.compile(r"\d+")


def numbers(text: str) -> set[str]:
    return set(NUMBER.findall(text))


def tasks_of(docs):
    return [math.make_task(d, s, e) for d in docs for s, e in math.candidate_spans(d)]


def test_working_is_one_line_per_column_with_carries_and_borrows():
    assert col.document_text(478, "+", 356).splitlines() == [
        "Question: 478 + 356", "8+6=14 c1", "7+5+1=13 c1", "4+3+1=8", "Answer: 834"]
    assert col.document_text(734, "-", 256).splitlines() == [
        "Question: 734 - 256", "4-6+10=8 b1", "3-5-1+10=7 b1", "7-2-1=4", "Answer: 478"]
    assert col.document_text(95, "+", 987).splitlines()[-1] == "Answer: 1082"
    assert col.document_text(705, "-", 10).splitlines()[1:3] == ["5-0=5", "0-1+10=9 b1"]


def test_every_candidate_span_is_a_valid_task_whose_reference_solution_scores():
    docs = math.documents("train", 200, 3)
    tasks = tasks_of(docs)
    kinds = {t.meta["kind"] for t in tasks}
    assert kinds == {"whole", "column", "carry"}
    for d in docs:
        for s, e in math.candidate_spans(d):
            check = math.check_span(d, d.text[s:e])
            assert check.valid, (d.text, d.text[s:e], check.reason)
    for t in tasks:
        solution = math.solution_text(t)
        assert math.score(solution, t)[0]
        c = math.critique(t, solution, blind=True)
        assert c.verdict is True, (t.prompt, solution, c.text)


def test_spans_must_be_values_the_working_computes():
    doc = math.documents("train", 1, 0)[0]
    assert not math.check_span(doc, "Question").valid
    assert not math.check_span(doc, "c1 garbage").valid
    term = doc.text.index("\n") + 1  # the first term of the ones column: a digit copied from the question
    assert "column total" in math.unsolvable_reason(doc, term, term + 1)


def test_heldout_suites_are_fixed_disjoint_from_training_and_from_validation():
    train = {d.text.splitlines()[0] for seed in (0, 1) for d in math.documents("train", 3000, seed)}
    suites = math.benchmarks()
    assert set(suites) == {"math_heldout", "math_validation", "math_longer", "math_longer_validation"}  # both ops trained
    assert {"math_sub", "math_sub_validation"} <= set(domains.get("math", sources=["column_arithmetic"]).benchmarks())
    add_only = domains.get("math", sources=["column_arithmetic"])
    assert "math_sub" in add_only.benchmarks()
    held = {t.prompt for t in suites["math_heldout"](300, 0)}
    assert held == {t.prompt for t in suites["math_heldout"](300, 7)}  # the same for every seed
    val = {t.prompt for t in suites["math_validation"](100, 0)}
    assert len(held) >= 290 and len(val) >= 95
    assert not held & train and not val & train and not held & val
    longer = add_only.benchmarks()["math_longer"](100, 0)
    # every problem has one more column than any trained one: its longer operand has 4 digits
    assert all(max(len(x) for x in t.prompt.split()[1::2]) == 4 for t in longer)


@pytest.mark.parametrize("fault", col.FAULTS)
def test_each_kind_of_slip_is_named_at_its_column(fault):
    a, b = 478, 356  # carries in the ones and tens columns
    lines, final = col.faulty_working(a, "+", b, 1, fault, 2)
    solution = "\n".join([*lines, f"Answer: {final}"])
    task = math.make_task(domains.Document("d", col.document_text(a, "+", b), "math"),
                          *math.candidate_spans(domains.Document("d", col.document_text(a, "+", b), "math"))[-1])
    for blind in (False, True):
        c = math.critique(task, solution, blind=blind)
        # with the reference in view the critique first compares the answer with it, then names the column
        # blind, it first works the columns itself and compares the answer they give with the solution's
        same = "same" if final == "834" else "different"
        lead = (f"8+6=14 c1\n7+5+1=13 c1\n4+3+1=8\nMine 834, answer {final}: {col.digit_pairs('834', final)}: {same}. "
                if blind else f"Reference 834, answer {final}: {col.digit_pairs('834', final)}: different. ")
        assert c.verdict is False and c.text.startswith(lead + "Tens column"), (fault, c.text)
    words = {"wrong_sum": "wrong sum", "carry_dropped": "dropped", "carry_twice": "twice", "carry_mark": "carr",
             "skip": "skipped"}
    assert words[fault] in math.critique(task, solution).text


def test_critiques_use_the_reference_they_see_and_a_reader_never_gets_it():
    """A reviewer that sees the reference compares the answer with it first (so no example lets it ignore the
    `Reference:` line); a blind one works the columns itself first and compares the answer they give; any
    critique as a refiner or FCP solver reads it (scrubbed: no reference, no digit pairs, no reviewer's working)
    quotes only numbers of the task and the solution."""
    rng = random.Random(0)
    tasks = tasks_of(math.documents("train", 300, 5))
    seen = 0
    for t in tasks:
        good = math.solution_text(t)
        for solution in (good, math.corrupt(t, good, rng)):
            if solution is None:
                continue
            answer = math.extract_answer(solution)
            seeing = math.critique(t, solution).text
            pairs = "" if answer is None else col.digit_pairs(t.reference, answer) + ": "
            assert seeing.startswith(f"Reference {t.reference}, answer {answer if answer is not None else 'missing'}: "
                                     f"{pairs}{'same' if math.score(solution, t)[0] else 'different'}."), seeing
            blind = math.critique(t, solution, blind=True).text
            worked = "\n".join(math.solution_text(t).splitlines()[:-1])
            whole = len(t.prompt.splitlines()) == 1  # a hidden column or carry: the working is half given, no check
            assert (blind.startswith(worked) if whole else not blind.startswith(worked)), blind
            assert not whole or blind.startswith(f"{worked}\nMine {t.reference}, answer {answer if answer is not None else 'missing'}: "
                                    f"{pairs}{'same' if math.score(solution, t)[0] else 'different'}."), blind
            blind_read = scrub_reference(critique_body(blind), t.reference)[0]
            assert not whole or blind_read.startswith(f"Mine ?, answer {'?' if math.score(solution, t)[0] else answer or 'missing'}:"
                                         f" {'same' if math.score(solution, t)[0] else 'different'}."), blind_read
            read = scrub_reference(critique_body(seeing), t.reference)[0]
            # the digit pairs quote the reference's digits: a reader gets the verdict of the comparison only
            assert read.startswith(f"Reference ?, answer {'?' if math.score(solution, t)[0] else answer or 'missing'}: "
                                   f"{'same' if math.score(solution, t)[0] else 'different'}."), read
            for text in (blind_read, read):
                extra = numbers(text) - numbers(t.prompt) - numbers(solution)
                assert not extra, (t.prompt, solution, text)
                if not math.verify(solution, t.reference):
                    # the hidden answer appears only where the solution itself wrote it
                    assert t.reference not in numbers(text) or t.reference in numbers(solution)
            seen += 1
    assert seen > 500


@pytest.mark.parametrize("reference,answer,pairs", [("834", "824", "8 8, 3 2"), ("834", "834", "8 8, 3 3, 4 4"),
                                                    ("1034", "34", "1 3"), ("83", "834", "8 8, 3 3, - 4"),
                                                    ("834", "83", "8 8, 3 3, 4 -")])
def test_the_comparison_goes_digit_pair_by_pair_to_the_first_difference(reference, answer, pairs):
    assert col.digit_pairs(reference, answer) == pairs
    text = f"Reference {reference}, answer {answer}: {pairs}: {'same' if reference == answer else 'different'}. Ones."
    read, quoted = scrub_reference(text, reference)
    assert pairs not in read and quoted >= 2 and read.startswith("Reference ?, answer ")


def test_the_reviewer_with_the_reference_tells_apart_what_the_blind_one_cannot():
    """A right answer line after right columns, a wrong answer line after right columns and a dropped carry get
    three different critiques with the reference; the one with a wrong answer line is caught only by comparing."""
    doc = domains.Document("d", col.document_text(478, "+", 356), "math")
    task = math.make_task(doc, *math.candidate_spans(doc)[-1])
    right = "8+6=14 c1\n7+5+1=13 c1\n4+3+1=8\nAnswer: 834"
    answer_line = "8+6=14 c1\n7+5+1=13 c1\n4+3+1=8\nAnswer: 843"
    dropped = "8+6=14 c1\n7+5=12 c1\n4+3+1=8\nAnswer: 824"
    texts = [math.critique(task, s).text for s in (right, answer_line, dropped)]
    assert len(set(texts)) == 3 and [math.critique(task, s).verdict for s in (right, answer_line, dropped)] == [True, False, False]
    assert "Reference 834, answer 834: 8 8, 3 3, 4 4: same" in texts[0]
    assert "Reference 834, answer 843: 8 8, 3 4: different" in texts[1]
    assert "Tens column" in texts[2] and "dropped" in texts[2]


def test_corrupted_solutions_include_the_models_own_kinds_of_error():
    """Right columns under a wrong answer line, no answer line, an extra line: errors a model makes that no
    single-column slip shows."""
    rng = random.Random(3)
    tasks = tasks_of(math.documents("train", 200, 2))
    critiques = [math.critique(t, w, blind=True).text for t in tasks
                 for w in [math.corrupt(t, math.solution_text(t), rng)] if w is not None]
    for words in ("answer line does not put", "No 'Answer:' line", "more lines than"):
        assert any(words in c for c in critiques), words


def test_corrupted_solutions_are_wrong_and_rejected():
    rng = random.Random(1)
    tasks = tasks_of(math.documents("train", 100, 2))
    wrong = [(t, math.corrupt(t, math.solution_text(t), rng)) for t in tasks]
    wrong = [(t, w) for t, w in wrong if w is not None]
    assert len(wrong) > 0.9 * len(tasks)
    for t, w in wrong:
        assert not math.score(w, t)[0]
        assert math.critique(t, w).verdict is False and math.critique(t, w, blind=True).verdict is False


def test_unknown_column_options_fail_naming_the_key():
    with pytest.raises(ValueError, match="digts"):
        domains.get("math", sources=["column_arithmetic"], source_options={"column_arithmetic": {"digts": [2, 3]}})
    with pytest.raises(ValueError, match="operations"):
        domains.get("math", sources=["column_arithmetic"], source_options={"column_arithmetic": {"operations": ["mul"]}})


def test_suites_fit_their_token_budgets(small_cfg):
    """No oracle solution or critique of any suite is cut off by the experiment's generation budgets."""
    from alive_exp.train import build

    m = build(small_cfg(), evaluate=False)
    exp = small_cfg("trainer.generation.solver_tokens=64", "trainer.generation.reviewer_tokens=112").trainer.generation
    from conftest import compose_cfg

    real = compose_cfg(["+experiment=math"]).trainer.generation
    assert (real.solver_tokens, real.reviewer_tokens) == (exp.solver_tokens, exp.reviewer_tokens)
    rng = random.Random(0)
    domain = m.domain
    for name, build_suite in domain.benchmarks().items():
        for t in build_suite(100, 0):
            good = domain.solution_text(t)
            assert len(m.generator.encode_completion(good)) <= real.solver_tokens, (name, good)
            for sol in (good, domain.corrupt(t, good, rng) or good):
                for blind in (False, True):
                    text = domain.critique(t, sol, blind=blind).text
                    assert len(m.generator.encode_completion(text)) <= real.reviewer_tokens, (name, text)
