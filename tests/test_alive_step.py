"""The ALIVE step: role-specific optimization is real, modes differ where they should, data and budget match."""

from __future__ import annotations

import random
import re

import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient

from alive_exp.alive import Attempt, Proposal
from alive_exp.data import StepIndices
from alive_exp.domains import Critique, Task
from alive_exp.domains import columns as col
from alive_exp.losses import Sample
from alive_exp.module import AliveModule
from alive_exp.roles import ROLES
from alive_exp.rollout import Completion
from alive_exp.train import build, run

PHASES = ["construct", "solve", "probe", "review", "refine", "update"]


def lora(module, role, kind="lora_B"):
    return {n: p.detach().clone() for n, p in module.model.named_parameters() if kind in n and f".{role}." in n}


class LearnOnly(AliveModule):
    """Applies `learn` to prepared samples of chosen roles, to observe what each optimizer touches."""

    prepared: dict[str, list[Sample]] = {}

    def training_step(self, batch, batch_idx):
        self.learn(self.prepared)


def learn_once(module, samples):
    module.prepared = samples
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(StepIndices(module, 1), batch_size=None))


def role_samples(module, role, n=4):
    module.use_adapter(role)
    prompts = ["Solve the task.\nQuestion: Calculate 3 + 4."] * n
    comps = module.generator.generate(prompts, n=1, max_new_tokens=6, seed=0)
    return [Sample(role, c[0].prompt_ids, c[0].completion_ids, advantage=1.0 if i % 2 else -1.0, nll_weight=0.5)
            for i, c in enumerate(comps)]


@pytest.fixture
def learner(small_cfg):
    def make(*overrides):
        cfg = small_cfg(*overrides)
        m = build(cfg, evaluate=False)
        m.__class__ = LearnOnly
        return m

    return make


def test_per_role_optimizers_hold_disjoint_parameters(learner):
    m = learner()
    opts = m.configure_optimizers()
    assert len(opts) == 3
    ids = [{id(p) for g in o.param_groups for p in g["params"]} for o in opts]
    assert all(not (ids[i] & ids[j]) for i in range(3) for j in range(i + 1, 3))
    names = {id(p): n for n, p in m.model.named_parameters()}
    for role, owned in zip(ROLES, ids):
        assert owned and all(f".{role}." in names[i] for i in owned)


@pytest.mark.parametrize("role", ROLES)
def test_a_role_loss_changes_only_that_roles_adapter(learner, role):
    m = learner()
    before = {r: lora(m, r) for r in ROLES}
    learn_once(m, {role: role_samples(m, role)})
    for r in ROLES:
        changed = any(not torch.equal(p, before[r][n]) for n, p in lora(m, r).items())
        assert changed == (r == role), (role, r)


def test_per_role_learning_rates_take_effect(learner):
    m = learner("trainer.optim.solver.lr=1e-2", "trainer.optim.reviewer.lr=1e-4")
    before = {r: lora(m, r) for r in ROLES}
    learn_once(m, {"solver": role_samples(m, "solver"), "reviewer": role_samples(m, "reviewer")})
    # Adam's first step moves each weight by about lr; the largest move tells the rate apart
    moved = {r: max(float((p - before[r][n]).abs().max()) for n, p in lora(m, r).items()) for r in ("solver", "reviewer")}
    assert 5e-3 < moved["solver"] <= 1.1e-2
    assert 5e-5 < moved["reviewer"] <= 1.1e-4


def test_shared_adapter_trains_all_roles_with_one_optimizer(learner):
    m = learner("model.adapters=shared")
    assert len(m.configure_optimizers()) == 1
    before = lora(m, "policy")
    learn_once(m, {"reviewer": role_samples(m, "reviewer")})
    assert any(not torch.equal(p, before[n]) for n, p in lora(m, "policy").items())


def _attempt(correct, verdict, revision_correct=None):
    comp = Completion("p", "4 + 3 = 7\nAnswer: 7", [1, 2], [3, 4], False)
    from alive_exp.domains import Task

    a = Attempt(Task("t", "math", "Question: Calculate 3 + 4.", "7"), "Solve.", comp, correct, "7")
    a.critique = Critique("Step 1 is wrong.\nVerdict: " + ("correct" if verdict else "incorrect"), verdict)
    a.critique_completion, a.critique_prompt = comp, "Review."
    if revision_correct is not None:
        a.revision, a.revision_correct = Completion("r", "3 + 4 = 7\nAnswer: 7", [1], [5, 6], False), revision_correct
    return a


def _step(small_cfg, mode):
    return build(small_cfg(f"reward={mode}"), evaluate=False).step_impl


def test_scalar_ignores_the_reviewer_for_solver_reward(small_cfg):
    s = _step(small_cfg, "scalar")
    group = [_attempt(True, False), _attempt(False, True), _attempt(True, None), _attempt(False, False)]
    s.samples([], [group], warmup=False)
    assert [a.reward for a in group] == [1.0, 0.0, 1.0, 0.0]
    judge = _step(small_cfg, "judge")
    group = [_attempt(True, False), _attempt(False, True), _attempt(True, None), _attempt(False, False)]
    judge.samples([], [group], warmup=False)
    assert [a.reward for a in group] == [0.0, 1.0, 0.0, 0.0]


def test_verbal_distills_confirmed_revisions_and_credits_the_reviewer(small_cfg):
    s = _step(small_cfg, "verbal")
    group = [_attempt(False, False, revision_correct=True), _attempt(False, False, revision_correct=False),
             _attempt(True, True), _attempt(True, True)]
    out = s.samples([], [group], warmup=False)
    distill = [x for x in out["solver"] if x.kind == "distill"]
    assert len(distill) == 1 and distill[0].nll_weight == s.rcfg.distill_coef
    assert distill[0].completion_ids[:-1] == s.gen.tokenizer("3 + 4 = 7\nAnswer: 7", add_special_tokens=False)["input_ids"]
    # the critique that led to a correct revision earns the instructive bonus
    assert s.reviewer_reward(group[0]) == pytest.approx(1.0 + s.rcfg.reviewer_instructive)
    assert s.reviewer_reward(group[1]) == pytest.approx(1.0)
    # rejecting a right solution earns nothing, even when the revision stays right
    assert s.reviewer_reward(_attempt(True, False, revision_correct=True)) == 0.0
    scalar = _step(small_cfg, "scalar").samples([], [group], warmup=False)
    assert not [x for x in scalar["solver"] if x.kind == "distill"]


def test_reviewer_agreement_is_class_balanced(small_cfg):
    """A reviewer that rejects everything must not beat one that accepts everything because most solutions are wrong."""
    s = _step(small_cfg, "scalar")
    flat = [_attempt(True, None), _attempt(False, None), _attempt(False, None), _attempt(False, None)]
    w = s.agreement_weights(flat)
    assert w == {True: pytest.approx(2.0), False: pytest.approx(2 / 3)}
    reject = sum(s.reviewer_reward(_attempt(a.correct, False), w[a.correct]) for a in flat)
    accept = sum(s.reviewer_reward(_attempt(a.correct, True), w[a.correct]) for a in flat)
    assert reject == pytest.approx(accept) == pytest.approx(2.0)
    unbalanced = _step(small_cfg, "scalar")
    unbalanced.rcfg.reviewer_balance = False
    assert unbalanced.agreement_weights(flat) == {True: 1.0, False: 1.0}


def test_logged_reviewer_rewards_are_the_ones_it_was_trained_on(small_cfg):
    module = build(small_cfg("reward=scalar"), evaluate=False)
    s = module.step_impl
    # one right solution of four: agreement is class-weighted (2 and 2/3), unlike a plain agreement rate
    group = [_attempt(True, True), _attempt(False, True), _attempt(False, False), _attempt(False, False)]
    samples = s.samples([], [group], warmup=False)
    w = s.agreement_weights(group)
    trained = [s.reviewer_reward(a, w[a.correct], s.fix_rate(group)) for a in group]
    assert [a.review_reward for a in group] == pytest.approx(trained)
    m = module.step_metrics([], [group], samples, {}, warmup=False)
    assert m["reviewer/reward_mean"] == pytest.approx(sum(trained) / 4) == pytest.approx((2 + 4 / 3) / 4)
    module.alive_step = 1  # transcripts are kept every trainer.log_transcripts_every steps, from the first
    module.record(m, [], [group])
    rewards = [t["reward"] for t in module.transcripts if t["phase"] == "review"]
    assert rewards == pytest.approx(trained)


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_blind_review_share_adds_reviews_without_the_reference(small_cfg, share):
    s = build(small_cfg("trainer.warmup_steps=1", f"trainer.blind_review_share={share}"), evaluate=False).step_impl
    attempts = [[_attempt(i % 2 == 0, None) for i in range(20)]]
    for a in attempts[0]:
        a.critique = None
    assert s.review(attempts, step=0)  # warm-up: the oracle writes the critiques, whatever the prompt
    flat = attempts[0]
    # every solution is reviewed with the reference: that verdict is the one the step acts on
    assert all("Reference: 7" in a.critique_prompt and a.critique.text.startswith("The final answer 7 is right.")
               for a in flat)
    blind = [a for a in flat if a.blind_critique is not None]
    # the oracle writes each critique for the prompt it answers: a blind one neither sees nor cites the reference
    assert all("Reference:" not in a.blind_prompt and "reference" not in a.blind_critique.text for a in blind)
    assert len(blind) == {0.0: 0, 1.0: len(flat)}.get(share, len(blind)) and (share != 0.5 or 0 < len(blind) < len(flat))
    samples = s.samples([], attempts, warmup=True)["reviewer"]
    assert len(samples) == len(flat) + len(blind)  # warm-up: likelihood on both kinds of critique


def test_blind_reviews_earn_agreement_with_their_own_baseline(small_cfg):
    s = build(small_cfg("trainer.blind_review_share=1.0"), evaluate=False).step_impl
    flat = [_attempt(i % 2 == 0, True) for i in range(8)]
    for i, a in enumerate(flat):  # blind verdicts: right on the first half only
        a.blind_critique, a.blind_completion = Critique("v", a.correct if i < 4 else not a.correct), a.critique_completion
    samples = s.samples([], [flat], warmup=False)["reviewer"]
    assert len(samples) == 16
    blind_adv = [x.advantage for x in samples[8:]]
    assert all(x > 0 for x in blind_adv[:4]) and all(x < 0 for x in blind_adv[4:])
    assert s.reviewer_reward(flat[0], blind=True) == 1.0 and s.reviewer_reward(flat[4], blind=True) == 0.0


def test_instructive_bonus_does_not_pay_for_rejecting_everything(small_cfg):
    s = _step(small_cfg, "verbal")

    def batch(verdict):
        # two wrong solutions (the refiner fixes one when asked), two right ones
        out = [_attempt(False, verdict, revision_correct=True if verdict is False else None),
               _attempt(False, verdict, revision_correct=False if verdict is False else None),
               _attempt(True, verdict, revision_correct=True if verdict is False else None),
               _attempt(True, verdict, revision_correct=True if verdict is False else None)]
        return out

    def total(flat, fix_rate):
        w = s.agreement_weights(flat)
        return sum(s.reviewer_reward(a, w[a.correct], fix_rate) for a in flat)

    rejected = batch(False)
    assert s.fix_rate(rejected) == 0.5
    accepted = batch(True)
    # accepting everything earns the bonus at the fix rate the rejections achieved
    assert total(rejected, s.fix_rate(rejected)) == pytest.approx(total(accepted, 0.5))
    right = [_attempt(False, False, revision_correct=True), _attempt(False, False, revision_correct=False),
             _attempt(True, True), _attempt(True, True)]
    assert total(right, s.fix_rate(right)) > total(rejected, 0.5) + 1.0


def test_fcp_conditions_on_critiques(small_cfg):
    s = _step(small_cfg, "fcp")
    group = [_attempt(True, True), _attempt(False, False)]
    out = s.samples([], [group], warmup=False)
    fcp = [x for x in out["solver"] if x.kind == "fcp"]
    assert len(fcp) == 2 and all(x.advantage == 0 for x in out["solver"])
    decoded = s.gen.tokenizer.decode(fcp[1].prompt_ids)
    assert "Feedback: Step 1 is wrong." in decoded and "Verdict" not in decoded
    # FCP learns only from critiques with a parsed verdict and a body: a bare verdict or no verdict teaches nothing
    bare, unparsed = _attempt(True, True), _attempt(False, False)
    bare.critique, unparsed.critique = Critique("Verdict: correct", True), Critique("Step 1 is wrong.", None)
    out = s.samples([], [[bare, unparsed]], warmup=False)
    assert not [x for x in out["solver"] if x.kind == "fcp"]


def test_fcp_solves_under_the_domains_own_critique_of_a_right_solution(small_cfg):
    """The feedback FCP is conditioned on at rollout and at evaluation is what its training examples hold for a
    right solution: the domain's critique of the reference solution as FCP reads it (no verdict, no reference)."""
    from alive_exp.rewards import fcp_feedback

    m = build(small_cfg("reward=fcp"))
    domain = m.domain
    for task in domain.benchmarks()["math_heldout"](6, 0):
        positive = fcp_feedback(domain.critique(task, domain.solution_text(task)).text, task.reference)
        assert positive and task.reference not in positive.split()
        want = m.step_impl.templates.render("fcp_solver", task=task.prompt, critique=positive)
        assert m.step_impl.mode.solver_prompt(task) == want and m.evaluator.solver_prompt(task) == want
    # a right solution's critique, as the step hands it to FCP's targets, is that same feedback
    right = _column_attempt(True, "", True)
    right.task = task
    right.critique = domain.critique(task, domain.solution_text(task))
    (target,) = [x for x in m.step_impl.samples([], [[right]], warmup=False)["solver"] if x.kind == "fcp"]
    assert m.step_impl.gen.tokenizer.decode(target.prompt_ids).count(m.step_impl.mode.positive(task)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["scalar", "judge", "verbal", "fcp"])
def test_every_mode_runs_and_logs_the_step_metrics(small_cfg, mode):
    cfg = small_cfg(f"reward={mode}", "trainer.max_steps=2", "trainer.warmup_steps=1", "trainer.checkpoint_every=0",
                    "benchmark.pass_k=[2]")
    out = run(cfg)
    keys = set(out)
    for role in ROLES:
        assert {f"{role}/loss", f"{role}/reward_mean", f"tokens/{role}", f"invalid/{role}"} <= keys
    assert {f"time/{p}" for p in PHASES} <= keys and "tokens/refine" in keys
    assert {"constructor/valid_rate", "reviewer/agreement", "reviewer/precision", "reviewer/recall",
            "refine/success_rate", "constructor/solve_rate_hist/0"} <= keys
    assert {f"eval/math_heldout/self_correction/{k}" for k in ("delta", "gated_delta", "critique_agreement")} <= keys
    assert 0.0 <= out["eval/math_heldout/sampled_accuracy"] <= out["eval/math_heldout/pass_at_2"]
    client = MlflowClient(cfg.logger.tracking_uri)
    refine_tokens = [m.value for m in client.get_metric_history(out["mlflow_run_id"], "tokens/refine")]
    # the warm-up step's oracle judges the random model's solutions incorrect, so verbal refines them
    assert (max(refine_tokens) > 0) == (mode == "verbal")


def test_modes_see_the_same_documents_tasks_and_solver_budget(small_cfg):
    steps = {mode: build(small_cfg(f"reward={mode}"), evaluate=False) for mode in ("scalar", "verbal")}
    for step in range(3):
        docs = {mode: [d.id for d in m.corpus.for_step(step)] for mode, m in steps.items()}
        assert docs["scalar"] == docs["verbal"]
    tasks, budgets = {}, {}
    for mode, m in steps.items():
        _, ts = m.step_impl.construct(m.corpus.for_step(0), 0)
        attempts = m.step_impl.solve(ts, 0)
        tasks[mode] = [(t.id, t.prompt, t.reference) for t in ts]
        budgets[mode] = ([len(g) for g in attempts], m.step_impl.gcfg.solver_tokens, m.step_impl.tokens["solver"])
    assert tasks["scalar"] == tasks["verbal"] and tasks["scalar"]
    assert budgets["scalar"] == budgets["verbal"]


def test_verbal_refines_under_blind_critiques_too_and_reinforces_what_stays_right(small_cfg):
    s = build(small_cfg("reward=verbal", "trainer.blind_review_share=1.0"), evaluate=False).step_impl
    right, wrong = _attempt(True, True), _attempt(False, True)
    for a, blind_verdict in ((right, False), (wrong, False)):  # the blind reviewer rejects both
        a.blind_critique, a.blind_completion = Critique("Step 1 is wrong.\nVerdict: incorrect", blind_verdict), a.critique_completion
    s.refine([[right, wrong]], step=0)
    # the reference critiques accepted both, so only the blind rejections were revised
    assert right.revision is None and wrong.revision is None
    assert right.blind_revision is not None and wrong.blind_revision is not None
    right.blind_revision_correct, wrong.blind_revision_correct = True, False
    refine = [x for x in s.samples([], [[right, wrong]], warmup=False)["solver"] if x.kind == "refine"]
    assert [x.advantage > 0 for x in refine] == [True, False]


def _column_attempt(correct: bool, critique: str, verdict: bool):
    from alive_exp.domains import Task

    text = "8+6=14 c1\n7+5=12 c1\n4+3+1=8\nAnswer: 824" if not correct else "8+6=14 c1\n7+5+1=13 c1\n4+3+1=8\nAnswer: 834"
    comp = Completion("p", text, [1, 2], [3, 4], False)
    a = Attempt(Task("t", "math", "Question: 478 + 356", "834", meta={"kind": "whole"}), "Solve.", comp, correct,
                text.rsplit(" ", 1)[1])
    a.critique, a.critique_completion, a.critique_prompt = Critique(critique, verdict), comp, "Review."
    return a


def test_no_refiner_or_fcp_prompt_holds_the_reference_when_the_reviewer_quotes_it(small_cfg):
    quoting = "Tens column: the carry is dropped; the answer is 834, not 824.\nVerdict: incorrect"
    s = _step(small_cfg, "verbal")
    group = [_column_attempt(False, quoting, False), _column_attempt(False, quoting, False)]
    s.refine([group], step=0)
    assert all(a.revision is not None for a in group)
    for a in group:
        assert "834" not in a.revision.prompt and "Tens column: the carry is dropped" in a.revision.prompt
    assert s.reference_leaks == 2
    fcp = _step(small_cfg, "fcp")
    out = fcp.samples([], [[_column_attempt(False, quoting, False), _column_attempt(True, "Right.\nVerdict: correct", True)]],
                      warmup=False)
    prompts = [fcp.gen.tokenizer.decode(x.prompt_ids) for x in out["solver"] if x.kind == "fcp"]
    assert len(prompts) == 2 and all("834" not in p for p in prompts) and fcp.reference_leaks == 1


def test_a_refiner_never_reads_a_blind_reviewers_own_working(small_cfg):
    """A blind column review works the problem itself first (`columns.own_check`): the working and the answer it
    gave are cut from what a refiner reads, whether right (it would hand over the answer) or wrong (so RL shows the
    refiner what the warm start did)."""
    for mine, working in (("834", "8+6=14 c1\n7+5+1=13 c1\n4+3+1=8"), ("844", "8+6=14 c1\n7+5+1=14 c1\n4+3+1=8")):
        blind = f"{working}\nMine {mine}, answer 824: 8 8, 3 2: different. Tens column: the carry is dropped.\nVerdict: incorrect"
        s = _step(small_cfg, "verbal")
        group = [_column_attempt(False, blind, False)]
        s.refine([group], step=0)
        prompt = group[0].revision.prompt
        assert "Mine ?, answer 824: different. Tens column: the carry is dropped." in prompt, prompt
        read = prompt.split("Critique:", 1)[1]
        assert mine not in prompt and not any(col.parse_line(ln) for ln in read.splitlines()), read


@pytest.mark.parametrize("kind", ["refiner", "fcp_solver"])
def test_warm_start_refiner_and_fcp_transcripts_never_hold_the_reference(small_cfg, kind):
    """The reviewer's critiques quote the reference (it must use it); what a refiner or FCP solver reads never
    does, whether the transcript is about a corrupted solution or one of the model's own samples."""
    from alive_exp import domains
    from alive_exp.roles import RoleTemplates
    from alive_exp.warmstart import Transcripts

    cfg = small_cfg()
    domain = domains.get("math", sources=["column_arithmetic"])
    templates = RoleTemplates(**dict(cfg.roles))
    stream = Transcripts(domain, templates, domain.documents("train", 300, 0), {kind: 1.0}, seed=0, own_share=0.5)
    own_rng = random.Random(1)
    stream.own = [(t, domain.corrupt(t, domain.solution_text(t), own_rng) or domain.solution_text(t))
                  for t in (stream.task()[3] for _ in range(50))]
    leaks, quoted, mine, worked = 0, 0, 0, 0
    for _ in range(400):
        prompt, _ = stream.example()
        reference = stream.last_task.reference
        if kind == "refiner":
            head, critique = prompt.split("\nCritique: ", 1)
            solution = head.split("\nSolution:\n", 1)[1]
        else:
            critique = prompt.split("Feedback: ", 1)[1].split("\nSolve the task.", 1)[0]
            solution = ""
        assert critique.strip()
        quoted += "Reference ?," in critique  # the reviewer's comparison, its reference scrubbed
        mine += "Mine ?," in critique  # a blind reviewer's own check, its working and answer cut
        # the critique it is conditioned on quotes only the task and the solution, never the hidden answer, and
        # holds no worked column (a blind reviewer's working would hand it over)
        leaks += reference in set(re.findall(r"\d+", critique)) - set(re.findall(r"\d+", solution))
        worked += any(col.parse_line(ln) for ln in critique.splitlines())
    assert leaks == 0 and worked == 0 and quoted > 50
    assert mine > 20 if kind == "refiner" else mine == 0  # FCP reads the critiques of the reviewer with the reference


def test_revisions_share_one_baseline_across_the_step_so_a_lone_revision_learns(small_cfg):
    s = _step(small_cfg, "verbal")
    # two tasks, each with one revised solution: one revision fixed it, the other did not
    fixed, failed = _attempt(False, False, revision_correct=True), _attempt(False, False, revision_correct=False)
    failed.task = Task("u", "math", "Question: Calculate 2 + 5.", "7")
    out = s.samples([], [[fixed, _attempt(True, True)], [failed, _attempt(True, True)]], warmup=False)
    refine = [x for x in out["solver"] if x.kind == "refine"]
    assert [x.advantage for x in refine] == pytest.approx([0.5, -0.5])  # per task, both would be 0


def test_the_task_cut_is_a_seeded_draw_and_cut_proposals_are_not_scored(small_cfg):
    s = build(small_cfg("trainer.constructor=rule", "trainer.max_tasks_per_step=3", "trainer.spans_per_doc=1"),
              evaluate=False).step_impl
    docs = s.domain.documents("train", 12, 0)
    kept = {step: [t.doc_id for t in s.construct(docs, step)[1]] for step in range(4)}
    assert all(len(k) == 3 for k in kept.values())
    assert kept[0] == [t.doc_id for t in s.construct(docs, 0)[1]]  # seeded by (seed, step)
    assert len({tuple(k) for k in kept.values()}) > 1 and any(k != [d.id for d in docs[:3]] for k in kept.values())
    # a learned constructor's cut proposals get no reward and no sample
    learned = build(small_cfg("trainer.max_tasks_per_step=2", "trainer.spans_per_doc=1"), evaluate=False).step_impl
    proposals = [Proposal(d, "x", learned.domain.check_span(d, learned.domain.propose_spans(d, 1, random.Random(0))[0]),
                          Completion("c", "x", [1], [2], False)) for d in docs[:4]]
    for p in proposals:
        p.task = learned.domain.make_task(p.doc, p.check.start, p.check.end)
    for p in proposals[2:]:
        p.cut = True
    attempts = [[_attempt(True, True), _attempt(False, True)] for _ in range(2)]
    for g, p in zip(attempts, proposals):
        for a in g:
            a.task = p.task
    out = learned.samples(proposals, attempts, warmup=False)
    assert len(out["constructor"]) == 2 and all(p.reward == 0.0 for p in proposals[2:])


def test_a_fallback_span_obeys_the_span_length_limits(small_cfg):
    s = build(small_cfg("trainer.span_max_chars=1"), evaluate=False).step_impl
    doc = s.domain.documents("train", 1, 0)[0]
    spans = s.domain.propose_spans(doc, 8, random.Random(0))
    assert all(len(x) > 1 for x in spans)  # every rule span of a column problem is longer than one character
    s.use_adapter = lambda role: None
    s._sample = lambda *a, **k: [[Completion("c", "no span here", [1], [2], False)] * 2]  # an unparseable proposal
    _, tasks = s.construct([doc], 0)
    assert tasks == []
