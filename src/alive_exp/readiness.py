"""Is every role ready to be relied on? Each role the critique-based arms rest on, measured on the solver's
own samples, the way RL will use it.

A comparison of scalar and verbal reward is a comparison of signals only if the critic can judge: a verdict
wrong a quarter of the time is a noisy reward whatever words come with it, and a refiner that cannot keep a
right solution turns self-correction into self-destruction. So before RL (the warm start's stopping rule)
and in round 4 of docs/learning_investigation.md, on validation problems:

- `solver_sampled`: the share of the solver's samples (at the experiment's temperature) the reference confirms;
- `reviewer`: balanced agreement of the reviewer *with* the reference with the reference check on those samples
  (the mean of its agreement on right and on wrong ones, so rejecting everything scores 0.5);
- `reviewer_blind`: the same for the reviewer without the reference (the self-critique SCoRe tests);
- `refiner_fixes`: share of wrong samples the refiner (greedy) turns right under the oracle's critique, with the
  reference scrubbed as a refiner reads it;
- `refiner_keeps`: share of right samples that stay right under the oracle's accepting critique;
- `missing_verdicts`: share of reviews, with and without the reference, with no parseable verdict;
- `reviewer_points` / `reviewer_blind_points`: of the wrong samples whose first wrong line the oracle's critique
  locates (`domain.locate_error`), the share whose review, with and without the reference, names that same line
  (what `reward.credit=critique` acts on: a verdict can be right while the words point elsewhere). A figure to
  read, not a floor.
"""

from __future__ import annotations

from dataclasses import dataclass

from alive_exp import metrics as M
from alive_exp.roles import RoleTemplates, as_read, parse_critique, revised_text
from alive_exp.rollout import Generator

FLOORS = ("reviewer", "reviewer_blind", "refiner_fixes", "refiner_keeps")  # at least; missing_verdicts: at most


@dataclass
class Readiness:
    """The figures above and the samples they were measured on (for transcripts)."""

    scores: dict[str, float]
    samples: list[tuple[str, str, bool]]  # (task prompt, solution, right)
    reviews: list[str]
    blind_reviews: list[str]
    revisions: list[tuple[str, str, bool]]  # (critique as read, revision, right)

    def unmet(self, floors: dict[str, float], max_missing: float | None) -> list[str]:
        """The floors these scores miss, as `name score < floor` strings (empty: every role is ready)."""
        out = [f"{k} {self.scores[k]:.3f} < {v}" for k, v in floors.items() if self.scores[k] < v]
        if max_missing is not None and self.scores["missing_verdicts"] > max_missing:
            out.append(f"missing_verdicts {self.scores['missing_verdicts']:.3f} > {max_missing}")
        return out


def check_floors(floors: dict, max_missing: float | None) -> dict[str, float]:
    """Floors from config, or a clear error naming an unknown role."""
    unknown = set(floors) - set(FLOORS)
    if unknown:
        raise ValueError(f"warmstart.role_floors: unknown {sorted(unknown)}; known: {list(FLOORS)}")
    if max_missing is not None and not 0.0 <= float(max_missing) <= 1.0:
        raise ValueError(f"warmstart.max_missing_verdicts={max_missing} must lie in [0, 1]")
    return {str(k): float(v) for k, v in floors.items()}


def measure(gen: Generator, domain, templates: RoleTemplates, tasks, *, samples_per_task: int, temperature: float,
            seed: int, solver_tokens: int, reviewer_tokens: int, adapter=None) -> Readiness:
    """Every role on `tasks`: the solver samples `samples_per_task` solutions each at `temperature` (seeded), then
    reviewer, blind reviewer and refiner work on those samples greedily. `adapter(role)` switches a per-role
    adapter where the policy has them (None: one set of weights plays every role, as in the warm start)."""
    use = adapter or (lambda role: None)
    use("solver")
    groups = gen.generate([templates.render("solver", task=t.prompt) for t in tasks], n=samples_per_task,
                          max_new_tokens=solver_tokens, temperature=temperature, seed=seed)
    flat_tasks = [t for t, g in zip(tasks, groups) for _ in g]
    texts = [c.text for g in groups for c in g]
    right = [ok for ok, _ in domain.score_many(texts, flat_tasks)]
    use("reviewer")
    review_prompts = [templates.render("reviewer", task=t.prompt, reference=t.reference, solution=x)
                      for t, x in zip(flat_tasks, texts)]
    blind_prompts = [templates.render("reviewer_blind", task=t.prompt, solution=x) for t, x in zip(flat_tasks, texts)]
    outs = gen.generate(review_prompts + blind_prompts, n=1, max_new_tokens=reviewer_tokens, temperature=0.0)
    reviews = [g[0].text for g in outs[:len(texts)]]
    blind = [g[0].text for g in outs[len(texts):]]
    verdicts = [parse_critique(r).verdict for r in reviews]
    blind_verdicts = [parse_critique(r).verdict for r in blind]
    # the refiner under the oracle's critique with the reference, scrubbed as a refiner reads it
    shown = [as_read(domain.critique(t, x).text, t.reference) for t, x in zip(flat_tasks, texts)]
    use("solver")
    refine_prompts = [templates.render("refiner", task=t.prompt, solution=x, critique=c)
                      for t, x, c in zip(flat_tasks, texts, shown)]
    revised = [g[0].text for g in gen.generate(refine_prompts, n=1, max_new_tokens=solver_tokens, temperature=0.0)]
    revised_ok = [ok for ok, _ in domain.score_many([revised_text(x, r) for x, r in zip(texts, revised)], flat_tasks)]
    # where the first wrong line is, by the oracle, and whether each review names it
    oracle_at = [None if ok else domain.locate_error(t, x, domain.critique(t, x).text)
                 for t, x, ok in zip(flat_tasks, texts, right)]

    def points(written: list[str]) -> float:
        hits = [domain.locate_error(t, x, r) == at for t, x, r, at in zip(flat_tasks, texts, written, oracle_at)
                if at is not None]
        return M.mean([float(h) for h in hits])

    fixes = [b for a, b in zip(right, revised_ok) if not a]
    keeps = [b for a, b in zip(right, revised_ok) if a]
    scores = {
        "solver_sampled": M.mean([float(x) for x in right]),
        "reviewer": M.reviewer_quality(verdicts, right)["balanced_agreement"],
        "reviewer_blind": M.reviewer_quality(blind_verdicts, right)["balanced_agreement"],
        "refiner_fixes": M.mean([float(x) for x in fixes]),
        "refiner_keeps": M.mean([float(x) for x in keeps]),
        "missing_verdicts": M.mean([float(v is None) for v in verdicts + blind_verdicts]),
        "reviewer_points": points(reviews),
        "reviewer_blind_points": points(blind),
        "samples": float(len(texts)),
        "right_samples": float(sum(right)),
    }
    return Readiness(scores, [(t.prompt, x, ok) for t, x, ok in zip(flat_tasks, texts, right)], reviews, blind,
                     list(zip(shown, revised, revised_ok)))


def greedy_solutions(gen: Generator, domain, templates: RoleTemplates, tasks, solver_tokens: int):
    """The solver's greedy solution of each task, and whether the reference confirms it."""
    outs = [g[0].text for g in gen.generate([templates.render("solver", task=t.prompt) for t in tasks], n=1,
                                            max_new_tokens=solver_tokens, temperature=0.0)]
    return outs, [ok for ok, _ in domain.score_many(outs, tasks)]


class StoppingRule:
    """When the warm start stops: at the first check where greedy accuracy on `<domain>_validation` reaches
    `warmstart.stop_accuracy`, every suite of `stop_floors` its floor (e.g. a generalization suite's validation
    twin, so the warm start can start on it), and, with `role_floors`, every role its floor on the solver's own
    samples of validation problems (`measure`). Later conditions are only scored once the earlier hold. Read off
    the domain's validation suites, never a held-out one; a function of the weights, never of the clock."""

    def __init__(self, cfg, gen: Generator, templates: RoleTemplates, domain) -> None:
        w = cfg.warmstart
        self.cfg, self.gen, self.templates, self.domain = cfg, gen, templates, domain
        self.role_floors = check_floors(dict(w.role_floors or {}), w.max_missing_verdicts)
        self.solver_holds = False  # the solver's floors held at the latest check (the role phase runs while they do)
        if w.stop_accuracy is None:
            if w.stop_floors or self.role_floors or w.max_missing_verdicts is not None:
                raise ValueError("warmstart.stop_floors, role_floors and max_missing_verdicts need "
                                 "warmstart.stop_accuracy set")
            self.wanted = {}
            return
        name = f"{cfg.benchmark.domain}_validation"
        suites = domain.benchmarks()
        if name not in suites:
            raise ValueError(f"warmstart.stop_accuracy needs a validation suite; domain {cfg.benchmark.domain!r} with "
                             f"these options has none (suites: {sorted(suites)}). Set warmstart.stop_accuracy=null.")
        self.wanted = {name: float(w.stop_accuracy), **{str(k): float(v) for k, v in w.stop_floors.items()}}
        unknown = [k for k in self.wanted if k not in suites or not k.endswith("_validation")]
        if unknown:
            raise ValueError(f"warmstart.stop_floors: {unknown} are not validation suites of domain "
                             f"{cfg.benchmark.domain!r} (validation suites: "
                             f"{sorted(k for k in suites if k.endswith('_validation'))})")
        self.tasks = {k: suites[k](int(w.check_size), 0) for k in self.wanted}

    @property
    def enabled(self) -> bool:
        return bool(self.wanted)

    def __call__(self, step: int, score_all: bool = False) -> tuple[bool, dict[str, float]]:
        """(stop?, the scores of this check, with `unmet` naming what failed). `score_all`: score every suite and
        role even after a floor failed (learning curves: scripts/warmstart_curve.py)."""
        g, w = self.cfg.trainer.generation, self.cfg.warmstart
        scores: dict[str, float] = {}
        unmet: list[str] = []
        for k, floor in self.wanted.items():
            _, correct = greedy_solutions(self.gen, self.domain, self.templates, self.tasks[k], g.solver_tokens)
            scores[k] = sum(correct) / max(len(self.tasks[k]), 1)
            if scores[k] < floor:
                unmet.append(f"{k} {scores[k]:.3f} < {floor}")
                if not score_all:
                    break
        self.solver_holds = not unmet
        if (score_all or not unmet) and (self.role_floors or w.max_missing_verdicts is not None or score_all):
            name = f"{self.cfg.benchmark.domain}_validation"
            ready = measure(self.gen, self.domain, self.templates, self.tasks[name],
                            samples_per_task=int(w.readiness_samples), temperature=g.temperature, seed=step,
                            solver_tokens=g.solver_tokens, reviewer_tokens=g.reviewer_tokens)
            scores.update({f"role/{k}": v for k, v in ready.scores.items()})
            unmet += ready.unmet(self.role_floors, w.max_missing_verdicts)
        if unmet:
            scores["unmet"] = "; ".join(unmet)
        return not unmet, scores


def describe(scores: dict[str, float]) -> str:
    """One line a researcher reads: each role's readiness (the keys `measure` writes, plus held-out accuracy)."""
    parts = []
    if "heldout_accuracy" in scores:
        parts.append(f"solver {100 * scores['heldout_accuracy']:.1f}% held-out (greedy), "
                     f"{100 * scores['solver_sampled']:.1f}% of samples right")
    parts += [f"reviewer {scores['reviewer']:.2f} with the reference, {scores['reviewer_blind']:.2f} blind "
              "(balanced agreement)",
              *([f"first wrong line named {scores['reviewer_points']:.2f} with the reference, "
                 f"{scores['reviewer_blind_points']:.2f} blind"] if "reviewer_points" in scores else []),
              f"refiner fixes {scores['refiner_fixes']:.2f}, keeps {scores['refiner_keeps']:.2f}",
              f"missing verdicts {scores['missing_verdicts']:.3f}"]
    return "; ".join(parts)
