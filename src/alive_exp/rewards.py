"""Reward modes: the ablation the project exists to run. Each mode is a small class in a registry.

A mode decides three things about the solver and nothing else: the prompt it solves under, the reward
of each solution, and the likelihood targets it learns from. Constructor and reviewer rewards are the
same in every mode, so modes differ only where the ablation says they should.

| mode   | solver reward                     | likelihood targets                         |
|--------|-----------------------------------|--------------------------------------------|
| scalar | programmatic verifier             | none                                       |
| judge  | reviewer verdict                  | none                                       |
| verbal | reviewer verdict                  | revisions the reference confirms (distill) |
| fcp    | none (no policy gradient)         | each solution under its critique           |
| sft    | none (no policy gradient)         | the task's reference solution (a control)  |

`sft` is the supervised control: any arm whose critiques could carry the reference must beat learning
from the reference itself, or its gain may be the labels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from alive_exp.domains import Critique, Domain, Task
from alive_exp.roles import RoleTemplates, as_read, critique_body

REWARD_MODES: dict[str, type[RewardMode]] = {}


def reward_mode(name: str):
    def deco(cls):
        cls.name = name
        REWARD_MODES[name] = cls
        return cls

    return deco


def build(name: str, templates: RoleTemplates, domain_of: Callable[[Task], Domain] | None = None) -> RewardMode:
    """The reward mode called `name`; `domain_of(task)` is the domain a task comes from (its oracle writes the
    feedback FCP conditions on)."""
    if name not in REWARD_MODES:
        raise KeyError(f"unknown reward mode {name!r}; choose one of {', '.join(REWARD_MODES)} (reward=...)")
    return REWARD_MODES[name](templates, domain_of)


def fcp_feedback(critique_text: str, reference: str) -> str:
    """A critique as a feedback-conditioned solver reads it: its body (no verdict line), the reference scrubbed."""
    return as_read(critique_text, reference)


def positive_feedback(domain: Domain, task: Task) -> str:
    """The feedback FCP asks for a right solution with: the domain's own critique of the task's reference
    solution, as FCP's training targets read critiques (`fcp_feedback`). So the condition at rollout and
    evaluation is a text its training examples hold, not a phrase no example has."""
    critique = domain.critique(task, domain.solution_text(task))
    if critique.verdict is not True:
        raise ValueError(f"domain {domain.name!r}: its oracle rejects the reference solution of task {task.id!r} "
                         f"({critique.text!r}), so FCP has no positive feedback to condition on")
    return fcp_feedback(critique.text, task.reference)


@dataclass
class LikelihoodTarget:
    """A (prompt, completion) pair the solver learns by maximum likelihood."""

    prompt: str
    completion: str
    kind: str


class RewardMode(ABC):
    name = ""
    policy_gradient = True
    train_refiner = False  # reinforce revisions under their critique (verbal)
    reads_critiques = False  # its likelihood targets are conditioned on critiques (fcp): they are scrubbed first
    needs_reviews = False  # its solver rewards or targets read the reviewer's verdicts or critiques

    def __init__(self, templates: RoleTemplates, domain_of: Callable[[Task], Domain] | None = None) -> None:
        self.templates, self.domain_of = templates, domain_of

    def solver_prompt(self, task: Task) -> str:
        return self.templates.render("solver", task=task.prompt)

    @abstractmethod
    def solver_rewards(self, prompts: list[str], completions: list[str], *, correct: list[bool],
                       critiques: list[Critique]) -> list[float]:
        """Reward of each of a task's N solutions (TRL's shape: prompts, completions, **columns)."""

    def targets(self, task: Task, solutions: list[str], critiques: list[Critique],
                confirmed_revisions: list[str], reference_solution: str) -> list[LikelihoodTarget]:
        """Likelihood targets for the solver from one task's group (none by default)."""
        return []


@reward_mode("scalar")
class Scalar(RewardMode):
    def solver_rewards(self, prompts, completions, *, correct, critiques):
        return [float(c) for c in correct]


@reward_mode("judge")
class Judge(RewardMode):
    needs_reviews = True

    def solver_rewards(self, prompts, completions, *, correct, critiques):
        return [float(c.verdict is True) for c in critiques]


@reward_mode("verbal")
class Verbal(Judge):
    train_refiner = True

    def targets(self, task, solutions, critiques, confirmed_revisions, reference_solution):
        prompt = self.solver_prompt(task)
        return [LikelihoodTarget(prompt, rev, "distill") for rev in confirmed_revisions]


@reward_mode("fcp")
class FeedbackConditional(RewardMode):
    policy_gradient = False
    reads_critiques = True
    needs_reviews = True

    def __init__(self, templates: RoleTemplates, domain_of: Callable[[Task], Domain] | None = None) -> None:
        super().__init__(templates, domain_of)
        if domain_of is None:
            raise ValueError("reward=fcp needs the tasks' domains (rewards.build(..., domain_of=...)): the feedback it "
                             "solves under is the domain's own critique of a right solution")
        self._positive: dict[tuple[str, str], str] = {}

    def positive(self, task: Task) -> str:
        key = (task.domain, task.id)
        if key not in self._positive:  # one oracle call per task (code domains run the reference's tests)
            self._positive[key] = positive_feedback(self.domain_of(task), task)
        return self._positive[key]

    def solver_prompt(self, task: Task) -> str:
        return self.templates.render("fcp_solver", task=task.prompt, critique=self.positive(task))

    def solver_rewards(self, prompts, completions, *, correct, critiques):
        return [float(c.verdict is True) for c in critiques]

    def targets(self, task, solutions, critiques, confirmed_revisions, reference_solution):
        """Each solution under its critique (already scrubbed of the reference by the step), only where the
        critique has a verdict and says something: a bare or unparseable review conditions on nothing."""
        out = []
        for s, c in zip(solutions, critiques, strict=True):
            body = critique_body(c.text) if c.verdict is not None else ""
            if body:
                out.append(LikelihoodTarget(self.templates.render("fcp_solver", task=task.prompt, critique=body), s, "fcp"))
        return out


@reward_mode("sft")
class Supervised(Scalar):
    """Likelihood on each task's reference solution from its document; the reward is only logged."""

    policy_gradient = False

    def targets(self, task, solutions, critiques, confirmed_revisions, reference_solution):
        return [LikelihoodTarget(self.solver_prompt(task), reference_solution, "sft")]


def learnability(solve_rate: float) -> float:
    """Highest for tasks the solver gets right half the time; zero when always or never solved."""
    return 1.0 - abs(2.0 * solve_rate - 1.0)
