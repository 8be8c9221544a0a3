"""Every role ready before RL: what `readiness.measure` counts, the warm start's stopping rule on every role,
and the transcripts that teach reviewers and refiners on the model's own samples."""

from __future__ import annotations

import json
import random
import re

import pytest

from alive_exp import domains, readiness
from alive_exp.roles import KEEP, RoleTemplates, critique_body, revised_text, scrub_reference
from alive_exp.rollout import Completion
from alive_exp.warmstart import Transcripts, build_warmstart
from conftest import compose_cfg

MATH = domains.get("math", sources=["column_arithmetic"])
TEMPLATES = RoleTemplates(**dict(compose_cfg(["+experiment=math"]).roles))


class ScriptedPolicy:
    """A policy whose every role is a rule (the generator's interface, nothing learned): the solver writes the
    reference solution for even problems and a slip for odd ones; the reviewer, refiner and blind reviewer are
    given as functions of the task and solution they read, so each figure `measure` reports is known."""

    def __init__(self, tasks, review, blind_review, refine) -> None:
        self.by_prompt = {TEMPLATES.render("solver", task=t.prompt): (i, t) for i, t in enumerate(tasks)}
        self.tasks = {t.prompt: t for t in tasks}
        self.review, self.blind_review, self.refine = review, blind_review, refine

    def solution(self, task, i):
        good = MATH.solution_text(task)
        return good if i % 2 == 0 else MATH.corrupt(task, good, random.Random(i))

    def text(self, prompt: str) -> str:
        if prompt in self.by_prompt:
            i, task = self.by_prompt[prompt]
            return self.solution(task, i)
        task = self.tasks[next(line for line in prompt.splitlines() if line.startswith("Question:"))]
        solution = prompt.split("\nSolution:\n", 1)[1].split("\nCritique: ", 1)[0].split("\nReference: ", 1)[0]
        if prompt.startswith("Revise"):
            return self.refine(task, solution, prompt.split("\nCritique: ", 1)[1])
        return self.review(task, solution) if "\nReference: " in prompt else self.blind_review(task, solution)

    def generate(self, prompts, *, n=1, **_):
        return [[Completion(p, self.text(p), [], [], False) for _ in range(n)] for p in prompts]


def run_measure(**roles):
    tasks = MATH.benchmarks()["math_validation"](10, 0)
    policy = ScriptedPolicy(tasks, **roles)
    return readiness.measure(policy, MATH, TEMPLATES, tasks, samples_per_task=1, temperature=0.7, seed=0,
                             solver_tokens=64, reviewer_tokens=48)


def oracle_review(task, solution):
    return MATH.critique(task, solution).text


def test_a_policy_that_plays_every_role_like_the_oracle_is_ready():
    r = run_measure(review=oracle_review, blind_review=lambda t, s: MATH.critique(t, s, blind=True).text,
                    refine=lambda t, s, c: MATH.solution_text(t) if "different" in c or "wrong" in c else s)
    assert r.scores["solver_sampled"] == pytest.approx(0.5)
    for key in readiness.FLOORS:
        assert r.scores[key] == pytest.approx(1.0), key
    assert r.scores["missing_verdicts"] == 0.0
    assert r.scores["reviewer_points"] == 1.0 and r.scores["reviewer_blind_points"] == 1.0
    assert not r.unmet({"reviewer": 0.95, "refiner_keeps": 0.95}, 0.02)
    # what the refiner read: the oracle's critique with the reference scrubbed, never the hidden answer
    assert all(t.reference not in critique.split() for (critique, _, _), t in
               zip(r.revisions, [t for t in MATH.benchmarks()["math_validation"](10, 0)]))


def test_a_right_verdict_that_names_the_wrong_line_does_not_point():
    """`reviewer_points`: of the wrong samples, the share whose review names the line the oracle's does; a reviewer
    whose every verdict is right but who always blames the ones column points only where the ones column is wrong."""
    def ones(t, s):
        c = MATH.critique(t, s)
        return c.text if c.verdict else "Reference ?, answer ?: different. Ones column: wrong digits.\nVerdict: incorrect"

    r = run_measure(review=ones, blind_review=lambda t, s: MATH.critique(t, s, blind=True).text, refine=lambda t, s, c: s)
    wrong = [(t, x) for t, x, ok in r.samples if not ok]
    tasks = {t.prompt: t for t in MATH.benchmarks()["math_validation"](10, 0)}
    at = [MATH.locate_error(tasks[p], x, MATH.critique(tasks[p], x).text) for p, x in wrong]
    hit = [MATH.locate_error(tasks[p], x, "Ones column: wrong digits.") == a for (p, x), a in zip(wrong, at) if a is not None]
    assert r.scores["reviewer"] == 1.0 and r.scores["reviewer_blind_points"] == 1.0
    assert r.scores["reviewer_points"] == pytest.approx(sum(hit) / len(hit)) and 0 < len(hit)
    assert r.scores["reviewer_points"] < 1.0


def test_rejecting_everything_is_chance_and_a_refiner_that_copies_keeps_but_never_fixes():
    r = run_measure(review=lambda t, s: "Wrong.\nVerdict: incorrect", blind_review=lambda t, s: "Wrong.",
                    refine=lambda t, s, c: s)
    assert r.scores["reviewer"] == pytest.approx(0.5)  # every wrong one caught, every right one rejected
    assert r.scores["reviewer_blind"] == pytest.approx(0.0)  # no verdict is never an agreement
    assert r.scores["missing_verdicts"] == pytest.approx(0.5)  # half the reviews (the blind ones) have none
    assert r.scores["refiner_fixes"] == 0.0 and r.scores["refiner_keeps"] == 1.0
    unmet = r.unmet({"reviewer": 0.95, "refiner_fixes": 0.4, "refiner_keeps": 0.95}, 0.02)
    assert unmet == ["reviewer 0.500 < 0.95", "refiner_fixes 0.000 < 0.4", "missing_verdicts 0.500 > 0.02"]


def test_a_refiner_that_says_keep_keeps_and_one_that_miscopies_does_not():
    keep = run_measure(review=oracle_review, blind_review=lambda t, s: MATH.critique(t, s, blind=True).text,
                       refine=lambda t, s, c: MATH.solution_text(t) if "different" in c else KEEP)
    assert keep.scores["refiner_keeps"] == 1.0 and keep.scores["refiner_fixes"] == 1.0
    assert revised_text("a\nAnswer: 1", f"  {KEEP}\n") == "a\nAnswer: 1" and revised_text("x", "y") == "y"
    miscopy = run_measure(review=oracle_review, blind_review=lambda t, s: MATH.critique(t, s, blind=True).text,
                          refine=lambda t, s, c: s.replace("Answer: ", "Answer: 1"))
    assert miscopy.scores["refiner_keeps"] == 0.0


def test_role_floors_name_unknown_roles():
    with pytest.raises(ValueError, match="revewer"):
        readiness.check_floors({"revewer": 0.9}, None)


def test_refiner_transcripts_keep_what_is_right_and_fix_what_is_not():
    stream = Transcripts(MATH, TEMPLATES, MATH.documents("train", 200, 0), {"refiner": 1.0}, seed=0)
    kept = fixed = 0
    for _ in range(300):
        prompt, completion = stream.example()
        solution = prompt.split("\nSolution:\n", 1)[1].split("\nCritique: ", 1)[0]
        task = stream.last_task
        if MATH.critique(task, solution, blind=True).verdict:
            assert completion == KEEP  # an accepted solution is kept: the refiner says so, it does not copy it
            kept += 1
        else:
            assert completion == MATH.solution_text(task)
            fixed += 1
    assert kept > 80 and fixed > 80


def test_reviewer_transcripts_judge_the_models_own_samples():
    stream = Transcripts(MATH, TEMPLATES, MATH.documents("train", 200, 0), {"reviewer": 1.0}, seed=0, own_share=0.5)
    own = {}
    for _ in range(20):
        task = stream.task()[3]
        own[task.prompt] = "8+1=9\nAnswer: 9"  # a sample no corrupter writes
        stream.own.append((task, own[task.prompt]))
    seen = 0
    for _ in range(200):
        prompt, critique = stream.example()
        task = stream.last_task
        solution = prompt.split("\nSolution:\n", 1)[1].split("\nReference: ", 1)[0]
        if own.get(task.prompt) == solution:
            seen += 1
            assert critique == MATH.critique(task, solution).text and f"Reference {task.reference}," in critique
    assert 70 < seen < 130


def test_the_warm_start_stops_only_when_every_role_holds_its_floor(small_cfg):
    """A floor no role can reach keeps the build going to its last step (every check recording what was unmet);
    floors every role holds stop it at the first check where the solver's do."""
    base = ["warmstart.enabled=true", "warmstart.steps=4", "warmstart.batch_size=8", "warmstart.check_from=2",
            "warmstart.check_every=2", "warmstart.check_size=2", "warmstart.eval_size=2", "warmstart.stop_accuracy=0.0",
            "warmstart.stop_floors.math_longer_validation=0.0", "warmstart.readiness_samples=1",
            "hardware.torch_threads=1", "warmstart.own_samples_from=1", "warmstart.own_samples_every=2",
            "warmstart.own_samples_pool=4", "warmstart.max_missing_verdicts=1.0"]
    floors = {k: 0.0 for k in readiness.FLOORS}
    never = json.loads((build_warmstart(small_cfg(*base, *(f"warmstart.role_floors.{k}={v}" for k, v in floors.items()),
                                                  "warmstart.role_floors.reviewer=1.01"), progress=False)
                        / "metrics.json").read_text())
    assert never["steps"] == 4 and never["floors_met_at"] is None
    assert [c["step"] for c in never["validation_checks"]] == [2, 4]
    assert all(c["unmet"].startswith("reviewer ") and "role/reviewer" in c for c in never["validation_checks"])
    met = json.loads((build_warmstart(small_cfg(*base, *(f"warmstart.role_floors.{k}={v}" for k, v in floors.items())),
                                      progress=False) / "metrics.json").read_text())
    assert met["steps"] == 2 and met["floors_met_at"] == 2
    for key in ("reviewer", "reviewer_blind", "refiner_fixes", "refiner_keeps", "missing_verdicts", "solver_sampled"):
        assert 0.0 <= met[key] <= 1.0, key


def test_role_floors_without_a_solver_stop_are_refused(small_cfg):
    with pytest.raises(ValueError, match="stop_accuracy"):
        build_warmstart(small_cfg("warmstart.enabled=true", "warmstart.stop_accuracy=null",
                                  "warmstart.role_floors={reviewer: 0.9}"), progress=False)


def test_scrubbed_critique_is_what_refiners_read():
    task = MATH.benchmarks()["math_validation"](1, 0)[0]
    critique = MATH.critique(task, MATH.solution_text(task)).text
    assert f"Reference {task.reference}," in critique
    assert task.reference not in scrub_reference(critique_body(critique), task.reference)[0].split()


def test_a_kept_solution_is_the_second_attempt_in_scores_protocol_and_the_gated_one():
    """Evaluation's self-correction reads a refiner's `KEEP` as the first attempt standing: a refiner that keeps
    everything changes nothing (delta 0, no edits), one that writes `KEEP` wrongly never scores it as an answer."""
    from alive_exp.evaluation import EvalSettings, Evaluator

    tasks = MATH.benchmarks()["math_validation"](10, 0)
    settings = EvalSettings(["math"], [], 10, [], True, 64, 72, 0.7, 0)
    for refine, expected_t2 in ((lambda t, s, c: KEEP, [True, False] * 5),
                                (lambda t, s, c: MATH.solution_text(t), [True] * 10)):
        policy = ScriptedPolicy(tasks, review=oracle_review, blind_review=lambda t, s: MATH.critique(t, s, blind=True).text,
                                refine=refine)
        first = [policy.generate([TEMPLATES.render("solver", task=t.prompt)])[0][0] for t in tasks]
        t1 = [ok for ok, _ in MATH.score_many([c.text for c in first], tasks)]
        ev = Evaluator(settings, policy, TEMPLATES, solver_prompt=None)
        sc = ev.self_correction(lambda role: None, MATH, tasks, first, t1)
        assert sc["self_correction/acc_t1"] == pytest.approx(0.5)
        assert sc["self_correction/acc_t2"] == pytest.approx(sum(expected_t2) / 10)
        if expected_t2 == t1:
            assert sc["self_correction/edit_distance_ratio"] == 0.0 and sc["self_correction/delta"] == 0.0


def test_evaluations_refiner_reads_a_blind_critique_as_training_shows_it():
    """The second attempt of evaluation's self-correction reads the model's own blind critique as a refiner read
    every critique in the warm start and in training: the reviewer's worked columns cut, its value blanked."""
    from alive_exp.evaluation import EvalSettings, Evaluator

    tasks = MATH.benchmarks()["math_validation"](10, 0)
    read = []
    policy = ScriptedPolicy(tasks, review=oracle_review, blind_review=lambda t, s: MATH.critique(t, s, blind=True).text,
                            refine=lambda t, s, c: read.append(c) or KEEP)
    first = [policy.generate([TEMPLATES.render("solver", task=t.prompt)])[0][0] for t in tasks]
    t1 = [ok for ok, _ in MATH.score_many([c.text for c in first], tasks)]
    Evaluator(EvalSettings(["math"], [], 10, [], True, 64, 112, 0.7, 0), policy, TEMPLATES,
              solver_prompt=None).self_correction(lambda role: None, MATH, tasks, first, t1)
    assert len(read) == 10 and all("Mine ?, answer " in c for c in read)
    assert not any(re.search(r"^\d+[+-]\d+", c, re.M) for c in read)  # no worked column
