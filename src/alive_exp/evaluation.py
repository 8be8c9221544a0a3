"""Evaluation that answers the paper's questions: accuracy, pass@k, self-correction, reviewer quality.

For every benchmark suite of every evaluated domain:
- pass@1: one greedy solution per task; pass@k: k sampled solutions (unbiased estimator), and
  `sampled_accuracy` their mean correctness (pass@1 at the sampling temperature, the quantity RL optimizes);
- self-correction (SCoRe): attempt 1 (greedy), the model's own critique without the reference,
  attempt 2 revised under that critique; acc_t1, acc_t2, delta, delta_i_to_c, delta_c_to_i and the
  edit-distance ratio between attempts; `gated_*` the same when attempt 1 is kept wherever the model's
  own critique accepts it (ALIVE's refine rule), `critique_*` how well those blind verdicts match;
- reviewer quality: the reviewer (with reference) judges the sampled solutions of known correctness.

Metrics are named `eval/<benchmark>/...`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from alive_exp import domains
from alive_exp import metrics as M
from alive_exp.domains.hub import HubUnavailable
from alive_exp.roles import RoleTemplates, as_read, parse_critique, revised_text
from alive_exp.rollout import Generator

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    domains: list[str]
    suites: list[str]
    size: int
    pass_k: list[int]
    self_correction: bool
    solver_tokens: int
    reviewer_tokens: int
    temperature: float
    seed: int
    progress: bool = False

    @classmethod
    def from_cfg(cls, cfg) -> EvalSettings:
        b, g = cfg.benchmark, cfg.trainer.generation
        return cls(list(b.eval_domains), list(b.eval_suites), b.eval_size, list(b.pass_k), b.self_correction,
                   g.solver_tokens, g.reviewer_tokens, g.eval_temperature, cfg.seed, bool(cfg.trainer.progress_bar))


class Evaluator:
    """Runs every suite through the policy's roles; `use_adapter(role)` picks the role's adapter."""

    def __init__(self, settings: EvalSettings, generator: Generator, templates: RoleTemplates,
                 solver_prompt: Callable, domain_options: dict[str, dict] | None = None) -> None:
        self.s, self.gen, self.templates, self.solver_prompt = settings, generator, templates, solver_prompt
        self.domain_options = domain_options or {}
        self.tracer = None  # a traces.Tracer: SCoRe chains of the first problems of each suite as MLflow traces
        self.step = 0

    def suites(self):
        for name in self.s.domains:
            domain = domains.get(name, **self.domain_options.get(name, {}))
            for suite, build in domain.benchmarks().items():
                if self.s.suites and suite not in self.s.suites:
                    continue
                try:
                    tasks = build(self.s.size, self.s.seed)
                except HubUnavailable as exc:
                    log.warning("skipping %s: %s", suite, exc)
                    continue
                yield domain, suite, tasks

    def __call__(self, module) -> dict[str, float]:
        out: dict[str, float] = {}
        with EvalProgress(self.s.progress) as bar:
            for domain, suite, tasks in self.suites():
                bar.suite(suite, len(tasks) * self.generations_per_task())
                self.step = getattr(module, "alive_step", 0)
                scores = self.evaluate(module.use_adapter, domain, tasks, bar.advance, suite=suite)
                out.update({f"eval/{suite}/{k}": v for k, v in scores.items()})
        return out

    def generations_per_task(self) -> int:
        """Completions evaluation writes per task: greedy, k samples, their reviews, critique and revision."""
        k = max(self.s.pass_k) if self.s.pass_k else 0
        return 1 + 2 * k + 2 * self.s.self_correction

    def evaluate(self, use_adapter: Callable[[str], None], domain, tasks,
                 on_batch: Callable[[int], None] | None = None, suite: str | None = None) -> dict[str, float]:
        if not tasks:
            return {}
        s = self.s
        prompts = [self.solver_prompt(t) for t in tasks]
        use_adapter("solver")
        greedy = [g[0] for g in self.gen.generate(prompts, n=1, max_new_tokens=s.solver_tokens, temperature=0.0,
                                                  on_batch=on_batch)]
        t1 = [ok for ok, _ in domain.score_many([c.text for c in greedy], tasks)]
        m: dict[str, float] = {"accuracy": M.mean([float(x) for x in t1]), "n_tasks": float(len(tasks))}
        k_max = max(s.pass_k) if s.pass_k else 0
        sampled_texts: list[str] = []
        sampled_ok: list[bool] = []
        if k_max:
            groups = self.gen.generate(prompts, n=k_max, max_new_tokens=s.solver_tokens, temperature=s.temperature,
                                       seed=s.seed + 17, on_batch=on_batch)
            sampled_texts = [c.text for g in groups for c in g]
            sampled_ok = [ok for ok, _ in domain.score_many(sampled_texts, [t for t in tasks for _ in range(k_max)])]
            m["sampled_accuracy"] = M.mean([float(x) for x in sampled_ok])
            for k in s.pass_k:
                per_task = [sum(sampled_ok[i * k_max:(i + 1) * k_max]) for i in range(len(tasks))]
                m[f"pass_at_{k}"] = M.mean([M.pass_at_k(k_max, c, k) for c in per_task])
        if s.self_correction:
            m.update(self.self_correction(use_adapter, domain, tasks, greedy, t1, on_batch, suite))
        if sampled_texts:
            review_tasks = [t for t in tasks for _ in range(k_max)]
            rprompts = [self.templates.render("reviewer", task=t.prompt, reference=t.reference, solution=x)
                        for t, x in zip(review_tasks, sampled_texts)]
            use_adapter("reviewer")
            verdicts = [parse_critique(g[0].text).verdict for g in
                        self.gen.generate(rprompts, n=1, max_new_tokens=s.reviewer_tokens, temperature=0.0,
                                          on_batch=on_batch)]
            m.update({f"reviewer/{k}": v for k, v in M.reviewer_quality(verdicts, sampled_ok).items()})
        return m

    def self_correction(self, use_adapter, domain, tasks, attempt1, t1, on_batch=None,
                        suite: str | None = None) -> dict[str, float]:
        """SCoRe protocol: critique without the reference, then a revision under that critique."""
        s = self.s
        use_adapter("reviewer")
        cprompts = [self.templates.render("reviewer_blind", task=t.prompt, solution=c.text) for t, c in zip(tasks, attempt1)]
        critiques = [g[0].text for g in self.gen.generate(cprompts, n=1, max_new_tokens=s.reviewer_tokens, temperature=0.0,
                                                          on_batch=on_batch)]
        use_adapter("solver")
        # the critique as a refiner reads it in training and in its warm start: a blind reviewer's own working cut
        rprompts = [self.templates.render("refiner", task=t.prompt, solution=c.text,
                                          critique=as_read(k, t.reference))
                    for t, c, k in zip(tasks, attempt1, critiques)]
        attempt2 = [g[0] for g in self.gen.generate(rprompts, n=1, max_new_tokens=s.solver_tokens, temperature=0.0,
                                                    on_batch=on_batch)]
        second = [revised_text(a.text, b.text) for a, b in zip(attempt1, attempt2)]  # a kept solution stands
        t2 = [ok for ok, _ in domain.score_many(second, tasks)]
        sc = M.self_correction(t1, t2)
        sc["edit_distance_ratio"] = M.mean([M.edit_distance_ratio(a.text, b) for a, b in zip(attempt1, second)])
        # ALIVE's inference rule (as in its refine phase): revise only what the model's own critique rejects
        verdicts = [parse_critique(k).verdict for k in critiques]
        if self.tracer is not None and suite is not None:
            self.tracer.self_correction(suite, self.step, tasks, attempt1, t1, critiques, verdicts, attempt2, t2)
        gated = [b if v is False else a for a, b, v in zip(t1, t2, verdicts)]
        sc.update({f"gated_{k}": v for k, v in M.self_correction(t1, gated).items() if k != "acc_t1"})
        sc.update({f"critique_{k}": v for k, v in M.reviewer_quality(verdicts, t1).items()})
        return {f"self_correction/{k}": v for k, v in sc.items()}


class EvalProgress:
    """A rich progress bar per evaluated suite, counting completions written (silent when disabled)."""

    def __init__(self, enabled: bool) -> None:
        self.p, self.task = None, None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(TextColumn("evaluate {task.description}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("completions"), TimeElapsedColumn())

    def __enter__(self) -> EvalProgress:
        if self.p:
            self.p.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.p:
            self.p.stop()

    def suite(self, name: str, total: int) -> None:
        if self.p:
            self.task = self.p.add_task(name, total=total)

    def advance(self, k: int) -> None:
        if self.p and self.task is not None:
            self.p.advance(self.task, k)
