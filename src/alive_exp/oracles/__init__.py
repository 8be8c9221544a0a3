"""Oracles write critiques during warm-up: rule-based (the domain's critic), a local HF model, or HTTP.

Every oracle maps a list of `CritiqueRequest` to a list of `Critique` of the same length. Failures
(timeouts, malformed replies) come back as a `Critique` with `error` set and `verdict=None`; they are
counted by the step and never raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from alive_exp.domains import Critique, Task, get


@dataclass(frozen=True)
class CritiqueRequest:
    """One solution to critique; `prompt` is the rendered reviewer prompt (task, reference unless blind, solution)."""

    task: Task
    solution: str
    prompt: str
    blind: bool = False


class Oracle(Protocol):
    name: str

    def critique(self, requests: list[CritiqueRequest]) -> list[Critique]: ...


class RuleOracle:
    """The domain's rule-based critic: it knows the reference and names the mistake in words."""

    name = "rule"

    def critique(self, requests: list[CritiqueRequest]) -> list[Critique]:
        return [get(r.task.domain).critique(r.task, r.solution, blind=r.blind) for r in requests]
