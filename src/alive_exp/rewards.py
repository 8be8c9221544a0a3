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
from dataclasses import dataclass

from alive_exp.domains import Critique, Task
from alive_exp.roles import RoleTemplates, critique_body

REWARD_MODES: dict[str, type[RewardMode]] = {}


def reward_mode(name: str):
    def deco(cls):
        cls.name = name
        REWARD_MODES[name] = cls
        return cls

    return deco


def build(name: str, templates: RoleTemplates) -> RewardMode:
    if name not in REWARD_MODES:
        raise KeyError(f"unknown reward mode {name!r}; choose one of {', '.join(REWARD_MODES)} (reward=...)")
    return REWARD_MODES[name](templates)


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

    def __init__(self, templates: RoleTemplates) -> None:
        self.templates = templates

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

    def solver_prompt(self, task: Task) -> str:
        return self.templates.render("fcp_solver", task=task.prompt, critique=self.templates.fcp_positive)

    def solver_rewards(self, prompts, completions, *, correct, critiques):
        return [float(c.verdict is True) for c in critiques]

    def targets(self, task, solutions, critiques, confirmed_revisions, reference_solution):
        return [
            LikelihoodTarget(self.templates.render("fcp_solver", task=task.prompt, critique=critique_body(c.text)), s, "fcp")
            for s, c in zip(solutions, critiques, strict=True)
            if c.text
        ]


@reward_mode("sft")
class Supervised(Scalar):
    """Likelihood on each task's reference solution from its document; the reward is only logged."""

    policy_gradient = False

    def targets(self, task, solutions, critiques, confirmed_revisions, reference_solution):
        return [LikelihoodTarget(self.solver_prompt(task), reference_solution, "sft")]


def learnability(solve_rate: float) -> float:
    """Highest for tasks the solver gets right half the time; zero when always or never solved."""
    return 1.0 - abs(2.0 * solve_rate - 1.0)
