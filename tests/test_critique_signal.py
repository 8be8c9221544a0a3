"""What the critique adds, apart from the critic: the oracle-guided arm (`critic=oracle`), credit where the
critique points (`reward.credit=critique`) and revisions in their task's group (`reward.refinements_in_group`).
Each on constructed groups of real column solutions, tokenized by the run's own tokenizer."""

from __future__ import annotations

import random

import pytest
from mlflow.tracking import MlflowClient

from alive_exp.alive import Attempt
from alive_exp.domains import Critique, Task
from alive_exp.train import build, run
from conftest import WARM120

RIGHT = "8+6=14 c1\n7+5+1=13 c1\n4+3+1=8\nAnswer: 834"
DROPPED = "8+6=14 c1\n7+5=12 c1\n4+3+1=8\nAnswer: 824"  # the tens column drops the carry


def _step(small_cfg, *overrides):
    """A run's step at +experiment=math's generation budgets (the smoke config's are shorter)."""
    return build(small_cfg("trainer.generation.solver_tokens=64", "trainer.generation.reviewer_tokens=72", *overrides),
                 evaluate=False)


def _attempts(s, task, texts):
    """Attempts at `task` whose solutions are `texts`, as the solver would have written them (same budget)."""
    prompt = s.mode.solver_prompt(task)
    comps = [s.gen.written(prompt, t, s.gcfg.solver_tokens) for t in texts]
    scores = s.domain.score_many([c.text for c in comps], [task] * len(comps))
    return [Attempt(task, prompt, c, ok, ans) for c, (ok, ans) in zip(comps, scores)]


def _column_task(s):
    return Task("t478", "math", "Question: 478 + 356", "834", meta={"kind": "whole"})


def _review(a, text, verdict):
    a.critique = Critique(f"{text}\nVerdict: {'correct' if verdict else 'incorrect'}", verdict)
    a.critique_completion, a.critique_prompt = a.completion, "Review."
    return a


def test_the_oracle_critic_writes_every_critique_and_judge_then_rewards_as_scalar(small_cfg):
    """critic=oracle: past any warm-up, the oracle writes every critique under the reviewer's prompts and budget,
    counted as reviewer tokens; with it, reward=judge gives exactly the scalar arm's solver rewards and
    advantages, on right solutions, a model's slips, corrupted ones and the policy's own samples."""
    m = _step(small_cfg, "reward=judge", "critic=oracle", "trainer.warmup_steps=0", "trainer.blind_review_share=0.5")
    s = m.step_impl
    rng = random.Random(0)
    groups = []
    for task in s.domain.heldout_tasks(6, 0):
        right = s.domain.solution_text(task)
        wrong = [w for w in (s.domain.corrupt(task, right, rng) for _ in range(3)) if w]
        groups.append(_attempts(s, task, [right, right, *wrong]))
    groups += s.solve(s.domain.heldout_tasks(2, 1), step=40)  # the policy's own samples (an untrained model)
    s.tokens["reviewer"] = 0
    assert s.review(groups, step=40) is True  # the oracle wrote them, though warm-up is over
    flat = [a for g in groups for a in g]
    assert {a.critic for a in flat} == {"oracle"} and any(a.correct for a in flat) and not all(a.correct for a in flat)
    blind = [a for a in flat if a.blind_critique is not None]
    assert blind and all(a.blind_completion.prompt == a.blind_prompt for a in blind)  # the blind reviewer's prompt
    for a in flat:
        assert a.critique_completion.prompt == a.critique_prompt  # the reviewer's prompt, with the reference
        assert a.critique_completion.n_tokens <= s.gcfg.reviewer_tokens
        assert a.critique.verdict == a.correct  # the oracle's check with the reference is the verifier's
    assert s.tokens["reviewer"] == sum(a.critique_completion.n_tokens for a in flat) + sum(
        a.blind_completion.n_tokens for a in blind) > 0
    judge = s.samples([], groups, warmup=True)["solver"]
    rewards, advantages = [a.reward for a in flat], [x.advantage for x in judge]
    scalar = _step(small_cfg, "reward=scalar").step_impl
    assert [x.advantage for x in scalar.samples([], groups, warmup=True)["solver"]] == advantages
    assert [a.reward for a in flat] == [float(a.correct) for a in flat] == rewards
    # the reviewer learns the oracle's critiques by likelihood, as in warm-up steps
    review = s.samples([], groups, warmup=True)["reviewer"]
    assert review and {x.kind for x in review} == {"oracle"} and all(x.nll_weight == 1.0 for x in review)


def test_an_oracle_critique_over_the_reviewers_budget_is_cut_as_a_sample_would_be(small_cfg):
    m = _step(small_cfg, "reward=judge", "critic=oracle", "trainer.generation.reviewer_tokens=6")
    s = m.step_impl
    group = _attempts(s, _column_task(s), [RIGHT, DROPPED])
    s.review([group], step=5)
    assert all(a.critique_completion.truncated and a.critique_completion.n_tokens == 6 for a in group)
    assert all(a.critique.verdict is None for a in group)  # the verdict line did not fit: no verdict, as sampled
    assert s.truncated["reviewer"] == [True, True]
    # warm-up critiques are targets to learn: whole, whatever the budget (counted all the same)
    warm = _step(small_cfg, "reward=judge", "trainer.warmup_steps=10", "trainer.generation.reviewer_tokens=6").step_impl
    group = _attempts(warm, _column_task(warm), [RIGHT, DROPPED])
    warm.review([group], step=5)
    assert [a.critique.verdict for a in group] == [True, False] and not any(warm.truncated["reviewer"])
    assert warm.tokens["reviewer"] == sum(a.critique_completion.n_tokens for a in group) > 12


def test_credit_where_the_critique_points(small_cfg):
    """reward.credit=critique: a rejected solution's tokens before the line its critique names carry no
    negative advantage, the named line onward carry the solution's; an accepting or unlocated critique, or
    credit=outcome, leaves the whole-completion advantage."""
    m = _step(small_cfg, "reward=judge", "reward.credit=critique")
    s = m.step_impl
    task = _column_task(s)
    group = _attempts(s, task, [RIGHT, DROPPED, DROPPED, DROPPED])
    _review(group[0], "Reference 834, answer 834: 8 8, 3 3, 4 4: same. Each column checks out.", True)
    _review(group[1], "Reference 834, answer 824: 8 8, 3 2: different. Tens column: the carry from the ones "
                      "column is dropped.", False)
    _review(group[2], "The working is wrong somewhere.", False)  # names no line: unlocated
    _review(group[3], "Columns right, but the answer line does not put their digits together.", False)
    out = {id(x.completion_ids): x for x in s.samples([], [group], warmup=False)["solver"]}
    samples = [out[id(a.completion.completion_ids)] for a in group]
    assert samples[0].advantage > 0 and samples[0].token_advantages is None
    ids, adv = group[1].completion.completion_ids, samples[1].advantage
    assert adv < 0
    k = samples[1].token_advantages.count(0.0)
    assert samples[1].token_advantages == [0.0] * k + [adv] * (len(ids) - k)
    assert s.gen.tokenizer.decode(ids[:k]) == "8+6=14 c1\n"  # the ones column's line: right, so not pushed down
    assert s.gen.tokenizer.decode(ids[k:], skip_special_tokens=True).startswith("7+5=12")
    assert samples[2].token_advantages is None
    k3 = samples[3].token_advantages.count(0.0)
    assert s.gen.tokenizer.decode(ids[:k3]) == "8+6=14 c1\n7+5=12 c1\n4+3+1=8\n"  # up to the answer line
    m.step_metrics([], [group], {"solver": list(out.values()), "reviewer": [], "constructor": []}, {}, False)
    assert s.located == 2
    outcome = _step(small_cfg, "reward=judge").step_impl
    assert all(x.token_advantages is None for x in outcome.samples([], [group], warmup=False)["solver"])
    with pytest.raises(ValueError, match="reward.credit=critique"):
        _step(small_cfg, "reward=scalar", "reward.credit=critique")


def test_a_critique_locates_steps_and_columns_written_by_any_reviewer(small_cfg):
    s = _step(small_cfg).step_impl
    task = _column_task(s)
    at = s.domain.locate_error(task, DROPPED, "Tens column: the carry from the ones column is dropped.\nVerdict: incorrect")
    assert DROPPED[at:].startswith("7+5=12")
    assert DROPPED[s.domain.locate_error(task, DROPPED, "Hundreds column skipped: it has no line."):].startswith("4+3+1")
    assert s.domain.locate_error(task, DROPPED, "No 'Answer:' line.") is None
    masked = Task("m", "math", "Question: 478 + 356\n8+6=14 c1\n7+5+1=[MASK]", "13", meta={"kind": "column"})
    assert s.domain.locate_error(masked, "7+5=12 c1\nAnswer: 12", "Tens column: the carry is dropped.") == 0
    steps = Task("s", "math", "Question: Calculate 3 + 4 * 2.", "11")
    work = "4 * 2 = 8\n3 + 8 = 12\nAnswer: 12"
    assert work[s.domain.locate_error(steps, work, "Step 2 is wrong: 3 + 8 is not 12."):].startswith("3 + 8")
    assert s.domain.locate_error(steps, work, "Step 7 is wrong.") is None


def test_refinements_join_their_tasks_group_and_rescue_an_all_wrong_one(small_cfg):
    """Critique-GRPO: with every solution wrong a group has no outcome signal; its revisions join it, under the
    solver's prompt, so the right one is pushed up and the wrong solutions down. Counted per step."""
    m = _step(small_cfg, "reward=verbal", "reward.refinements_in_group=true")
    s = m.step_impl
    task = _column_task(s)
    group = [_review(a, "Tens column: the carry from the ones column is dropped.", False)
             for a in _attempts(s, task, [DROPPED] * 3)]
    revisions = _attempts(s, task, [RIGHT, DROPPED, DROPPED])
    for a, r in zip(group, revisions):
        a.revision, a.revision_correct = r.completion, r.correct
    solver = s.samples([], [group], warmup=False)["solver"]
    refined = [x for x in solver if x.kind == "refined"]
    assert len(refined) == 3 and all(x.shaping == s.rcfg.refinement_shaping > 0 for x in refined)
    assert all(x.prompt_ids == group[0].completion.prompt_ids for x in refined)  # the solver's prompt
    assert s.gen.tokenizer.decode(refined[0].completion_ids, skip_special_tokens=True) == RIGHT
    assert refined[0].advantage > 0 > refined[1].advantage
    assert all(a.advantage < 0 for a in group)
    metrics = m.step_metrics([], [group], {"solver": solver, "reviewer": [], "constructor": []}, {}, False)
    assert metrics["solver/all_wrong_groups"] == 1.0 and metrics["solver/rescued_groups"] == 1.0
    assert metrics["solver/refined_in_group"] == 3.0
    plain = _step(small_cfg, "reward=verbal").step_impl
    pg = [x for x in plain.samples([], [group], warmup=False)["solver"] if x.kind == "pg"]
    assert all(x.advantage == 0 for x in pg) and all(a.advantage == 0 for a in group)  # no signal without them
    with pytest.raises(ValueError, match="refinements_in_group"):
        _step(small_cfg, "reward=judge", "reward.refinements_in_group=true")


@pytest.mark.slow
def test_an_oracle_guided_verbal_run_with_both_options_trains_and_logs_them(small_cfg):
    cfg = small_cfg(*WARM120, "reward=verbal", "critic=oracle", "reward.credit=critique", "reward.refinements_in_group=true",
                    "trainer.max_steps=2", "trainer.checkpoint_every=0", "trainer.eval_at_end=false")
    out = run(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    history = lambda key: [x.value for x in client.get_metric_history(out["mlflow_run_id"], key)]  # noqa: E731
    assert history("train/warmup") == [1.0, 1.0]  # the oracle wrote every step's critiques
    assert all(v > 0 for v in history("tokens/reviewer"))
    for key in ("solver/located_critiques", "solver/located_share", "solver/all_wrong_groups",
                "solver/rescued_groups", "solver/refined_in_group"):
        assert len(history(key)) == 2, key
    assert max(history("solver/located_share")) > 0  # the oracle names the first wrong column
