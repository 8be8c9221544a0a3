"""Pages of raw text: training documents of several problems, the constructor's choice among them, and what it chose."""

from __future__ import annotations

import pytest

from alive_exp import domains
from alive_exp import metrics as M
from alive_exp.alive import Attempt, Proposal
from alive_exp.domains import MASK, SpanCheck
from alive_exp.domains import columns as col
from alive_exp.rollout import Completion


def pages_domain(hide: str, ops=("add",), digits=(2, 3)):
    return domains.get("math", sources=["column_arithmetic"], hide=hide, source_options={
        "column_arithmetic": {"digits": list(digits), "operations": list(ops), "per_page": [4, 8]}})


def questions(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("Question: ")]


def test_training_pages_hold_several_problems_and_no_suite_problem():
    """Held-out, validation and generalization problems are single problems from their own hash buckets: none of
    them is ever on a training page, whatever the seed."""
    d = pages_domain("answer", ops=("add", "sub"))
    suites = {q for name, suite in d.benchmarks().items() for t in suite(300, 0) for q in questions(t.prompt)}
    assert len(suites) > 1000
    sizes = []
    for seed in range(3):
        for page in d.documents("train", 200, seed):
            on_page = questions(page.text)
            sizes.append(len(on_page))
            assert not set(on_page) & suites, page.text
    assert min(sizes) == 4 and max(sizes) == 8
    # the suites stay single problems
    assert all(len(questions(t.prompt)) == 1 and "\n\n" not in t.prompt for t in d.benchmarks()["math_heldout"](50, 0))


def test_a_page_task_hides_one_problem_and_the_others_never_give_it_away():
    d = pages_domain("answer", ops=("add", "sub"))
    for page in d.documents("train", 60, 1):
        blocks = page.text.split(col.PAGE_BREAK)
        assert len(set(questions(page.text))) == len(blocks)  # no problem twice on a page
        answers = [b.splitlines()[-1] for b in blocks]
        assert len(set(answers)) == len(answers)  # and no answer twice
        for s, e in d.candidate_spans(page):
            task = d.make_task(page, s, e)
            (k,) = [i for i, b in enumerate(blocks) if task.prompt.splitlines()[0] == b.splitlines()[0]]
            # the task is that one problem, as if it stood alone: no other problem in what the solver reads
            assert questions(task.prompt) == [blocks[k].splitlines()[0]]
            assert task.reference == page.text[s:e] and d.verify(d.solution_text(task), task.reference)
            masked = page.text[:s] + MASK + page.text[e:]
            rest = masked.split(col.PAGE_BREAK)
            assert [b for i, b in enumerate(rest) if i != k] == [b for i, b in enumerate(blocks) if i != k]
            if task.meta["kind"] == "whole":  # the hidden answer is no other problem's answer on the page
                assert all(b.splitlines()[-1] != f"Answer: {task.reference}" for i, b in enumerate(rest) if i != k)
            assert task.meta["page_problems"] == len(blocks)
            assert task.meta["difficulty"] == col.difficulty(*col.parse_question(blocks[k]))


def test_the_constructor_names_which_problem_of_the_page_to_pose():
    """With hide=answer the constructor's `Span: <answer>` poses exactly the problem whose answer it copied, and a
    span from a question, a column or across two problems is refused with its reason."""
    d = pages_domain("answer")
    page = d.documents("train", 1, 0)[0]
    blocks = page.text.split(col.PAGE_BREAK)
    posed = []
    for b in blocks:
        check = d.check_span(page, b.splitlines()[-1].removeprefix("Answer: "))
        assert check.valid, check
        posed.append(d.make_task(page, check.start, check.end).prompt)
    assert posed == [b.splitlines()[0] for b in blocks]
    # what the oracle constructor writes (the answer's whole line) reads back to the same span, as does the bare value
    for s, e in d.candidate_spans(page):
        assert d.span_text(page, s, e) == f"Answer: {page.text[s:e]}"
        assert (d.check_span(page, d.span_text(page, s, e)).start, d.check_span(page, page.text[s:e]).start) == (s, s)
    assert d.check_span(page, "Answer: 100000").reason == "no answer line of the document reads that value"
    # a column total recurs across a page's problems, so a span naming one could not be told apart: pages need
    # hide=answer; and a page that cannot hold distinct answers is refused, never drawn forever
    with pytest.raises(ValueError, match="hide=answer"):
        pages_domain("any")
    tight = domains.get("math", sources=["column_arithmetic"], hide="answer", source_options={
        "column_arithmetic": {"digits": [1, 1], "operations": ["sub"], "per_page": [12, 12]}})
    with pytest.raises(ValueError, match="distinct answers"):
        tight.documents("train", 1, 0)
    a, op, b = col.parse_question(blocks[1])
    assert d.check_span(page, f"{a} {op} {b}").reason == "span lies in the question"
    assert not d.check_span(page, blocks[0].splitlines()[1].split("=")[1].split()[0]).valid
    across = blocks[0].splitlines()[-1] + col.PAGE_BREAK + blocks[1].splitlines()[0]
    assert d.unsolvable_reason(page, page.text.index(across), page.text.index(across) + len(across)) \
        == "span runs across two problems of the page"


def test_pages_leave_other_documents_whole():
    """A document that is not a page of column problems is one problem, blank lines or not."""
    d = domains.get("math", sources=["basic_arithmetic"], hide="answer")
    doc = d.documents("train", 1, 0)[0]
    para = type(doc)(id="p", text=doc.text.replace("\n", "\n\n", 1), domain="math")
    assert d.candidate_spans(para) == [(len(para.text) - len(doc.text.splitlines()[-1]) + len("Answer: "), len(para.text))]
    with pytest.raises(ValueError, match="per_page"):
        domains.get("math", sources=["column_arithmetic"], source_options={"column_arithmetic": {"per_page": [0, 3]}})


def _attempts(task, right: int, n: int = 4):
    comp = Completion(prompt="", text="", prompt_ids=[], completion_ids=[], truncated=False)
    return [Attempt(task, "", comp, i < right, None) for i in range(n)]


def test_what_the_constructor_chose_against_uniform_posing():
    """posed_* is the mean over the posed tasks, uniform_* the expectation over every candidate of the same pages,
    learnability 1 - |2p - 1| per group; the probe's figures are means of its pairs."""
    d = pages_domain("answer")
    page = d.documents("train", 1, 5)[0]
    tasks = [d.make_task(page, s, e) for s, e in d.candidate_spans(page)]
    hardest = max(tasks, key=lambda t: (t.meta["difficulty"]["carries"], t.meta["difficulty"]["digits"]))
    proposals = [Proposal(page, hardest.reference, SpanCheck(True, ""), task=hardest)]
    m = M.constructor_choice(d, proposals, [_attempts(hardest, right=2)], probed=[(1.0, 0.5), (0.0, 0.5)])
    assert m["constructor/posed_carries"] == hardest.meta["difficulty"]["carries"]
    assert m["constructor/posed_digits"] == hardest.meta["difficulty"]["digits"]
    assert m["constructor/uniform_carries"] == pytest.approx(sum(t.meta["difficulty"]["carries"] for t in tasks) / len(tasks))
    assert m["constructor/uniform_digits"] == pytest.approx(sum(t.meta["difficulty"]["digits"] for t in tasks) / len(tasks))
    assert m["constructor/posed_learnability"] == 1.0  # 2 of 4 right
    assert (m["constructor/probed_pages"], m["constructor/uniform_learnability"],
            m["constructor/probed_posed_learnability"], m["constructor/learnability_gain"]) == (2.0, 0.5, 0.5, 0.0)
    m = M.constructor_choice(d, proposals, [_attempts(hardest, right=4)], probed=[])
    assert m["constructor/posed_learnability"] == 0.0 and "constructor/uniform_learnability" not in m
    assert "constructor/fallback_share" not in m  # the rule masker posed: every task is its choice


def test_a_learned_constructors_choice_is_what_it_posed_not_the_fallback():
    """With a learned constructor, a document without a valid proposal gets the rule masker's task: that task is
    counted in `fallback_share`, never as the constructor's choice."""
    d = pages_domain("answer")
    chosen_page, fallback_page = d.documents("train", 2, 5)
    comp = Completion(prompt="", text="Span: x", prompt_ids=[], completion_ids=[1], truncated=False)
    chosen = d.make_task(chosen_page, *d.candidate_spans(chosen_page)[0])
    fallback = d.make_task(fallback_page, *d.candidate_spans(fallback_page)[-1])
    proposals = [Proposal(chosen_page, chosen.reference, SpanCheck(True, ""), comp, task=chosen),
                 Proposal(fallback_page, "x", SpanCheck(False, "span does not occur"), comp)]
    m = M.constructor_choice(d, proposals, [_attempts(chosen, right=2), _attempts(fallback, right=4)], probed=[])
    assert m["constructor/fallback_share"] == 0.5 and m["constructor/posed_learnability"] == 1.0
    assert m["constructor/posed_carries"] == chosen.meta["difficulty"]["carries"]
    page_tasks = [d.make_task(chosen_page, s, e) for s, e in d.candidate_spans(chosen_page)]
    assert m["constructor/uniform_carries"] == pytest.approx(M.mean([t.meta["difficulty"]["carries"] for t in page_tasks]))
    m = M.constructor_choice(d, proposals[1:], [_attempts(fallback, right=4)], probed=[])
    assert m == {"constructor/fallback_share": 1.0}  # nothing it chose: no posed figures, not zeros


def test_the_uniform_probe_solves_a_uniformly_posed_task_on_a_share_of_the_pages(small_cfg):
    """On round(share x documents) pages whose posed task was solved, one task the rule masker poses is solved N
    times with the solver's adapter, counted as probe tokens and never trained on; the rule constructor's tasks
    are the uniform ones, so it needs no probe."""
    from alive_exp.rewards import learnability
    from alive_exp.train import build

    opts = ["benchmark.options.source_options.column_arithmetic.per_page=[4,8]", "trainer.docs_per_step=8",
            "trainer.max_tasks_per_step=8", "trainer.uniform_probe_share=0.25", "trainer.constructor=learned"]
    m = build(small_cfg(*opts), evaluate=False)
    s = m.step_impl
    docs = m.corpus.for_step(0)
    assert all(len(questions(d.text)) >= 4 for d in docs)
    _, tasks = s.construct(docs, 0)
    attempts = s.solve(tasks, 0)
    solver_tokens = s.tokens["solver"]
    # the random model proposes no valid span: pretend each document's task was the constructor's own choice
    proposals = [Proposal(d, g[0].task.reference, SpanCheck(True, ""), g[0].completion, task=g[0].task)
                 for d in docs for g in attempts if g[0].task.doc_id == d.id]
    assert not s.probe(docs, [], attempts, 0)  # no task it chose itself: nothing to compare
    probed = s.probe(docs, proposals, attempts, 0)
    assert len(probed) == 2 and s.tokens["probe"] > 0 and s.tokens["solver"] == solver_tokens
    posed = {learnability(sum(a.correct for a in g) / len(g)) for g in attempts}
    assert all(p in posed and 0.0 <= u <= 1.0 for p, u in probed)
    rule = build(small_cfg(*opts, "trainer.constructor=rule"), evaluate=False).step_impl
    assert rule.probe(docs, proposals, attempts, 0) == []
    off = build(small_cfg(*opts, "trainer.uniform_probe_share=0"), evaluate=False).step_impl
    assert off.probe(docs, proposals, attempts, 0) == []


def test_a_page_long_transcript_gets_its_own_micro_batch():
    """Warm-start micro-batches hold at most `chunk` sequences and `token_budget` padded tokens: the few constructor
    transcripts that hold a page never pad the short ones to their length; every sequence is in one micro-batch."""
    from alive_exp.warmstart import micro_batches

    lengths = [40 + i % 20 for i in range(61)] + [350, 380, 900]
    batches = micro_batches(lengths, chunk=16, token_budget=2048)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 16 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 2048) for b in batches)
    short = [b for b in batches if any(lengths[i] < 100 for i in b)]
    assert all(max(lengths[i] for i in b) < 100 for b in short) and len(short) == 4
    assert [900] in [[lengths[i] for i in b] for b in batches]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    by_count = sum(len(c) * max(c) for c in (sorted(lengths)[k:k + 16] for k in range(0, len(lengths), 16)))
    assert padded < 0.7 * by_count
