"""The ALIVE step: construct -> solve -> review -> refine -> learn, one optimizer per role.

One policy plays constructor, solver and reviewer. Per step, over a batch of raw documents:

1. construct  the constructor proposes M spans per document; valid ones become tasks
2. solve      the solver samples N solutions per task
3. review     the reviewer critiques each solution against the reference (the oracle during warm-up),
              and a share of them again without it (blind: the self-critique used at test time)
4. refine     solutions judged incorrect are revised under their critique (when the mode refines)
5. learn      each role updates its own adapter with its own optimizer

Rewards per role live in `rewards.py`; losses in `losses.py`; generation in `rollout.py`; optimizers,
checkpoints and metrics plumbing in `module.py`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from alive_exp.domains import Critique, Document, SpanCheck, Task
from alive_exp.losses import Sample, group_advantages
from alive_exp.oracles import CritiqueRequest
from alive_exp.rewards import learnability
from alive_exp.roles import critique_body, parse_critique, parse_span, revised_text, scrub_reference
from alive_exp.rollout import Completion, phase_seed


@dataclass
class Proposal:
    doc: Document
    span: str | None
    check: SpanCheck
    completion: Completion | None = None  # None when the rule masker proposed it
    task: Task | None = None
    reward: float = 0.0
    cut: bool = False  # a valid task left out by `trainer.max_tasks_per_step`: never solved, so never scored


def learned_tasks(proposals: list[Proposal]) -> set[str]:
    """Ids of the tasks a learned constructor posed itself this step (valid proposals solved, not cut), as against
    those the rule masker's fallback posed for documents without a valid proposal."""
    return {p.task.id for p in proposals if p.completion is not None and p.task is not None and not p.cut}


@dataclass
class Attempt:
    task: Task
    prompt: str
    completion: Completion
    correct: bool
    answer: str | None
    critique: Critique | None = None
    critique_completion: Completion | None = None
    critique_prompt: str = ""
    critic: str = ""  # who wrote this attempt's critiques: "oracle" (warm-up steps, critic=oracle) or "reviewer"
    # a second, blind review (no reference) for a share of attempts: trains the self-critique SCoRe tests
    blind_critique: Critique | None = None
    blind_completion: Completion | None = None
    blind_prompt: str = ""
    revision: Completion | None = None
    revision_correct: bool = False
    blind_revision: Completion | None = None  # revised under the blind critique, as at test time
    blind_revision_correct: bool = False
    reward: float = 0.0
    advantage: float = 0.0  # the solver's policy-gradient advantage for this solution (0 without one)
    revision_leaks: int = 0  # reference quotations blanked from the critique its revision read
    blind_revision_leaks: int = 0
    # the rewards the reviewer was trained on for this attempt's reviews (class-weighted, with the instructive
    # bonus); None in warm-up steps (likelihood on oracle critiques) and without reviews
    review_reward: float | None = None
    blind_review_reward: float | None = None


@dataclass
class StepResult:
    proposals: list[Proposal]
    attempts: list[list[Attempt]]  # per task, N attempts
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class AliveStep:
    """The five phases over one batch of documents; `module.AliveModule` calls it and applies `learn`."""

    def __init__(self, *, cfg, domain, generator, templates, reward_mode, oracle, use_adapter) -> None:
        self.cfg, self.domain, self.gen, self.templates = cfg, domain, generator, templates
        self.mode, self.oracle, self.use_adapter = reward_mode, oracle, use_adapter
        self.tr, self.gcfg, self.rcfg = cfg.trainer, cfg.trainer.generation, cfg.reward
        self.tokens = {"constructor": 0, "solver": 0, "reviewer": 0, "refine": 0, "probe": 0}
        # per kind of generation this step: each completion's length and whether it hit its token limit
        self.lengths: dict[str, list[int]] = {k: [] for k in self.tokens}
        self.truncated: dict[str, list[bool]] = {k: [] for k in self.tokens}
        self.reference_leaks = 0  # quotations of the reference blanked from critiques a solver reads, this step
        self.located = 0  # rejecting critiques whose first wrong line was found (reward.credit=critique), this step

    def shown(self, critique: Critique, task: Task) -> Critique:
        """The critique as a refiner or a feedback-conditioned solver reads it: the reference blanked out."""
        text, leaks = scrub_reference(critique.text, task.reference)
        self.reference_leaks += leaks
        return Critique(text, critique.verdict, critique.error)

    def _sample(self, role: str, prompts: list[str], n: int, max_new: int, step: int, phase: str,
                count_as: str | None = None) -> list[list[Completion]]:
        self.use_adapter(role)
        out = self.gen.generate(prompts, n=n, max_new_tokens=max_new, temperature=self.gcfg.temperature,
                                top_p=self.gcfg.top_p, seed=phase_seed(self.cfg.seed, step, phase))
        self._count(count_as or role, [c for group in out for c in group])
        return out

    def _count(self, kind: str, completions: list[Completion]) -> None:
        self.tokens[kind] += sum(c.n_tokens for c in completions)
        self.lengths[kind] += [c.n_tokens for c in completions]
        self.truncated[kind] += [c.truncated for c in completions]

    # 1. construct ---------------------------------------------------------------------------------
    def construct(self, docs: list[Document], step: int) -> tuple[list[Proposal], list[Task]]:
        m, rng = self.tr.spans_per_doc, random.Random(phase_seed(self.cfg.seed, step, "rule-masker"))
        proposals: list[Proposal] = []
        if self.tr.constructor == "learned":
            prompts = [self.templates.render("constructor", document=d.text) for d in docs]
            groups = self._sample("constructor", prompts, m, self.gcfg.constructor_tokens, step, "construct")
            for doc, group in zip(docs, groups):
                for comp in group:
                    parsed = parse_span(comp.text)
                    check = (self.domain.check_span(doc, parsed.span, self.tr.span_min_chars, self.tr.span_max_chars)
                             if parsed.span else SpanCheck(False, parsed.reason))
                    proposals.append(Proposal(doc, parsed.span, check, comp))
        else:
            for doc in docs:
                for span in self.domain.propose_spans(doc, m, rng):
                    proposals.append(Proposal(doc, span, self.domain.check_span(doc, span)))
        tasks: dict[str, Task] = {}
        for p in proposals:
            if p.check.valid:
                p.task = self.domain.make_task(p.doc, p.check.start, p.check.end)
                tasks.setdefault(p.task.id, p.task)
        # every document still yields a task: invalid proposals fall back to the rule masker's first span that
        # passes the same check as a learned one (trainer.span_min_chars / span_max_chars)
        for doc in docs:
            if not any(p.task for p in proposals if p.doc is doc):
                for span in self.domain.propose_spans(doc, max(m, 4), rng):
                    check = self.domain.check_span(doc, span, self.tr.span_min_chars, self.tr.span_max_chars)
                    if check.valid:
                        task = self.domain.make_task(doc, check.start, check.end)
                        tasks.setdefault(task.id, task)
                        break
        kept = list(tasks.values())
        if len(kept) > self.tr.max_tasks_per_step:  # a seeded draw across documents, not the first ones
            cut_rng = random.Random(phase_seed(self.cfg.seed, step, "task-cut"))
            keep = sorted(cut_rng.sample(range(len(kept)), self.tr.max_tasks_per_step))
            kept = [kept[i] for i in keep]
            ids = {t.id for t in kept}
            for p in proposals:
                p.cut = p.task is not None and p.task.id not in ids
        return proposals, kept

    def probe(self, docs: list[Document], proposals: list[Proposal], attempts: list[list[Attempt]],
              step: int) -> list[tuple[float, float]]:
        """What uniform posing would have given on the same pages: on a seeded share (`trainer.uniform_probe_share`)
        of the step's documents where a task the learned constructor posed (a valid proposal, not the fallback)
        was solved, the rule masker poses one task and the solver samples N solutions of it (metrics only,
        counted as `tokens/probe`, never trained on). Returns per probed document (learnability of the task(s)
        the constructor posed there, learnability of the uniform one). Learned constructor only: the rule
        masker's tasks are the uniform ones."""
        share = float(self.tr.uniform_probe_share)
        if self.tr.constructor != "learned" or share <= 0:
            return []
        chosen_ids = learned_tasks(proposals)
        posed: dict[str, list[float]] = {}
        for g in attempts:
            if g[0].task.id in chosen_ids:
                posed.setdefault(g[0].task.doc_id, []).append(learnability(sum(a.correct for a in g) / len(g)))
        rng = random.Random(phase_seed(self.cfg.seed, step, "uniform-probe"))
        candidates = [d for d in docs if d.id in posed and len(self.domain.candidate_spans(d)) > 1]
        chosen = rng.sample(candidates, min(len(candidates), max(1, round(share * len(docs)))))
        tasks: list[tuple[str, Task]] = []
        for doc in chosen:
            for span in self.domain.propose_spans(doc, 1, rng):  # as trainer.constructor=rule poses
                check = self.domain.check_span(doc, span)
                if check.valid:
                    tasks.append((doc.id, self.domain.make_task(doc, check.start, check.end)))
        if not tasks:
            return []
        n = self.tr.solutions_per_task
        groups = self._sample("solver", [self.mode.solver_prompt(t) for _, t in tasks], n, self.gcfg.solver_tokens,
                              step, "uniform-probe", count_as="probe")
        scores = iter(self.domain.score_many([c.text for g in groups for c in g], [t for _, t in tasks for _ in range(n)]))
        out = []
        for (doc_id, _), g in zip(tasks, groups):
            rate = sum(next(scores)[0] for _ in g) / len(g)
            out.append((sum(posed[doc_id]) / len(posed[doc_id]), learnability(rate)))
        return out

    # 2. solve --------------------------------------------------------------------------------------
    def solve(self, tasks: list[Task], step: int) -> list[list[Attempt]]:
        prompts = [self.mode.solver_prompt(t) for t in tasks]
        groups = self._sample("solver", prompts, self.tr.solutions_per_task, self.gcfg.solver_tokens, step, "solve")
        flat_t = [t for t, g in zip(tasks, groups) for _ in g]
        scores = self.domain.score_many([c.text for g in groups for c in g], flat_t)
        it = iter(scores)
        return [[Attempt(t, p, c, *next(it)) for c in g] for t, p, g in zip(tasks, prompts, groups)]

    # 3. review -------------------------------------------------------------------------------------
    def review(self, attempts: list[list[Attempt]], step: int) -> bool:
        """Fill in a critique for every attempt (and a blind one for a share); True when the oracle wrote them.

        The critique with the reference is the one the step acts on (verdict reward, refinement). A share of
        attempts, `trainer.blind_review_share`, is reviewed once more without the reference, the way the model
        must critique itself at test time; those reviews train the reviewer and nothing else, so the solver's
        reward never rests on a verdict that could not see the reference.
        """
        if not self.tr.reviews:  # solver-only: no critiques are written or trained (scalar and sft only)
            return False
        flat = [a for g in attempts for a in g]
        rng = random.Random(phase_seed(self.cfg.seed, step, "blind-review"))
        blind = [a for a in flat if rng.random() < self.tr.blind_review_share]
        for a in flat:
            a.critique_prompt = self.templates.render("reviewer", task=a.task.prompt, reference=a.task.reference,
                                                      solution=a.completion.text)
        for a in blind:
            a.blind_prompt = self.templates.render("reviewer_blind", task=a.task.prompt, solution=a.completion.text)
        requests = [(a, False) for a in flat] + [(a, True) for a in blind]
        prompts = [a.blind_prompt if b else a.critique_prompt for a, b in requests]
        arm = self.cfg.critic.writer == "oracle"  # the oracle-guided arm: every step, as a self-critic would
        warmup = step < self.tr.warmup_steps or arm
        if warmup:  # the oracle writes them under the reviewer's prompts, counted as its tokens; in the arm they
            # are the critiques the step acts on, so they keep the reviewer's budget too (warm-up critiques are
            # targets to learn, whole)
            written = self.oracle.critique([CritiqueRequest(a.task, a.completion.text, p, b)
                                            for (a, b), p in zip(requests, prompts)])
            budget = self.gcfg.reviewer_tokens if arm else None
            completions = [self.gen.written(p, c.text, budget) for p, c in zip(prompts, written)]
            self._count("reviewer", completions)
            critiques = [c if not comp.truncated else parse_critique(comp.text) for c, comp in zip(written, completions)]
        else:
            groups = self._sample("reviewer", prompts, 1, self.gcfg.reviewer_tokens, step, "review")
            completions = [g[0] for g in groups]
            critiques = [parse_critique(c.text) for c in completions]
        for (a, b), c, comp in zip(requests, critiques, completions):
            a.critic = "oracle" if warmup else "reviewer"
            if b:
                a.blind_critique, a.blind_completion = c, comp
            else:
                a.critique, a.critique_completion = c, comp
        return warmup

    # 4. refine -------------------------------------------------------------------------------------
    def refine(self, attempts: list[list[Attempt]], step: int) -> None:
        if not self.rcfg.refine:
            return
        # rejected under the reference critique, and (self-correction, as tested) under the blind one
        flat = [a for g in attempts for a in g]
        todo = [(a, a.critique, False) for a in flat if a.critique is not None and a.critique.verdict is False]
        todo += [(a, a.blind_critique, True) for a in flat if a.blind_critique is not None and a.blind_critique.verdict is False]
        if not todo:
            return
        prompts, leaks = [], []
        for a, c, _ in todo:
            before = self.reference_leaks
            prompts.append(self.templates.render("refiner", task=a.task.prompt, solution=a.completion.text,
                                                 critique=critique_body(self.shown(c, a.task).text)))
            leaks.append(self.reference_leaks - before)
        groups = self._sample("solver", prompts, 1, self.gcfg.solver_tokens, step, "refine", count_as="refine")
        scores = self.domain.score_many([revised_text(a.completion.text, g[0].text) for (a, _, _), g in zip(todo, groups)],
                                        [a.task for a, _, _ in todo])
        for (a, _, blind), g, (ok, _), leak in zip(todo, groups, scores, leaks):
            if blind:
                a.blind_revision, a.blind_revision_correct, a.blind_revision_leaks = g[0], ok, leak
            else:
                a.revision, a.revision_correct, a.revision_leaks = g[0], ok, leak

    # 5. rewards -> samples for learn: one function per role's reward ---------------------------------
    def samples(self, proposals: list[Proposal], attempts: list[list[Attempt]], warmup: bool) -> dict[str, list[Sample]]:
        """What each role learns from this step."""
        solver = self.solver_samples(attempts) + self.refine_samples(attempts)
        return {"constructor": self.constructor_samples(proposals, attempts), "solver": solver,
                "reviewer": self.reviewer_samples(attempts, warmup)}

    def solver_samples(self, attempts: list[list[Attempt]]) -> list[Sample]:
        """Group-relative policy gradient over each task's N solutions (the mode's reward), plus the mode's
        likelihood targets (verbal distillation, FCP, the supervised control).

        `reward.refinements_in_group` (Critique-GRPO): a task's revisions under the reference critique join its
        group, under the solver's prompt, rewarded by the reference check, so a group of wrong solutions still
        teaches when a revision came out right. `reward.credit=critique`: a rejected solution's tokens before
        the line its critique names carry no negative advantage (`credit`)."""
        out: list[Sample] = []
        groups = [self.mode.solver_rewards([a.prompt for a in g], [a.completion.text for a in g],
                                          correct=[a.correct for a in g], critiques=[a.critique for a in g])
                  for g in attempts]
        revised = [[a for a in g if a.revision is not None] if self.rcfg.refinements_in_group else [] for g in attempts]
        advs = group_advantages([r + [float(a.revision_correct) for a in rev] for r, rev in zip(groups, revised)],
                                self.rcfg.advantage, self.rcfg.scale_by_std)
        neg = self.rcfg.negative_weight  # < 1 damps the push-down on below-average solutions (W-REINFORCE)
        advs = [[a if a >= 0 else neg * a for a in adv] for adv in advs]
        coef = {"distill": self.rcfg.distill_coef, "fcp": self.rcfg.fcp_coef, "sft": self.rcfg.sft_coef}
        self.located = 0
        for g, rewards, adv, rev in zip(attempts, groups, advs, revised):
            for a, r, ad in zip(g, rewards, adv):
                a.reward, a.advantage = r, (ad if self.mode.policy_gradient else 0.0)
                if self.mode.policy_gradient:
                    out.append(Sample("solver", a.completion.prompt_ids, a.completion.completion_ids, ad,
                                      group=("solve", a.task.id), sampler_logps=a.completion.sampler_logps,
                                      token_advantages=self.credit(a, ad)))
            for a, ad in zip(rev, adv[len(g):]):  # off-policy: the policy wrote them under the refiner's prompt
                text = revised_text(a.completion.text, a.revision.text)
                out.append(Sample("solver", a.completion.prompt_ids, self.gen.encode_completion(text), ad, kind="refined",
                                  group=("solve", a.task.id), shaping=self.rcfg.refinement_shaping))
            confirmed = [revised_text(a.completion.text, a.revision.text) for a in g
                         if a.revision is not None and a.revision_correct]
            task = g[0].task
            shown = [self.shown(a.critique, task) for a in g] if self.mode.reads_critiques else [a.critique for a in g]
            for t in self.mode.targets(task, [a.completion.text for a in g], shown, confirmed,
                                       self.domain.solution_text(task)):
                out.append(Sample("solver", self.gen.encode_prompt(t.prompt), self.gen.encode_completion(t.completion),
                                  0.0, coef[t.kind], t.kind, group=(t.kind, task.id)))
        return out

    def credit(self, a: Attempt, advantage: float) -> list[float] | None:
        """Per-token advantages where the critique points (`reward.credit=critique`), or None (every token the
        solution's advantage): when the critique rejects the solution and names the line it first goes wrong
        on, the tokens before that line carry no negative advantage and the line onward carry the solution's."""
        if self.rcfg.credit != "critique" or a.critique is None or a.critique.verdict is not False:
            return None
        at = self.domain.locate_error(a.task, a.completion.text, a.critique.text)
        if at is None:
            return None
        self.located += 1
        k = self.gen.token_at(a.completion.completion_ids, at)
        return [max(advantage, 0.0)] * k + [advantage] * (len(a.completion.completion_ids) - k)

    def refine_samples(self, attempts: list[list[Attempt]]) -> list[Sample]:
        """Critique-guided refinement is itself a policy (modes that train the refiner): revisions the reference
        confirms are reinforced, with one baseline across the step for revisions under the reference critique
        and one for those under the blind critique (where a wrong rejection must be answered by keeping a right
        solution right); a baseline per task would give a task's lone revision advantage 0."""
        if not self.mode.train_refiner:
            return []
        flat = [a for g in attempts for a in g]
        out: list[Sample] = []
        for kind in ([(a.revision, a.revision_correct, a.task) for a in flat if a.revision is not None],
                     [(a.blind_revision, a.blind_revision_correct, a.task) for a in flat if a.blind_revision is not None]):
            if kind:
                (radv,) = group_advantages([[float(ok) for _, ok, _ in kind]], "pooled", False)
                out += [Sample("solver", r.prompt_ids, r.completion_ids, ad, kind="refine", group=("refine", t.id),
                               sampler_logps=r.sampler_logps) for (r, _, t), ad in zip(kind, radv)]
        return out

    def reviewer_samples(self, attempts: list[list[Attempt]], warmup: bool) -> list[Sample]:
        """Likelihood on the oracle's critiques in warm-up steps; after it, agreement with the reference check
        plus the instructive bonus, class-weighted, with one baseline per kind of review (blind verdicts are
        harder, and would otherwise always lose). None with `trainer.reviews=false` (solver-only)."""
        if not self.tr.reviews:
            return []
        flat = [a for g in attempts for a in g]
        blind = [a for a in flat if a.blind_critique is not None]
        if warmup:
            pairs = ([(a.critique_completion, a.critique, ("review", a.task.id)) for a in flat]
                     + [(a.blind_completion, a.blind_critique, ("review_blind", a.task.id)) for a in blind])
            return [Sample("reviewer", w.prompt_ids, w.completion_ids, 0.0, 1.0, "oracle", group=k)
                    for w, c, k in pairs if c.verdict is not None]
        weight, fix_rate, bweight = self.agreement_weights(flat), self.fix_rate(flat), self.agreement_weights(blind)
        for a in flat:
            a.review_reward = self.reviewer_reward(a, weight[a.correct], fix_rate)
        for a in blind:
            a.blind_review_reward = self.reviewer_reward(a, bweight[a.correct], blind=True)
        (adv,) = group_advantages([[a.review_reward for a in flat]], "pooled", self.rcfg.scale_by_std)
        (badv,) = group_advantages([[a.blind_review_reward for a in blind]], "pooled", self.rcfg.scale_by_std)
        # the reviews of one task's solutions share the prompt up to the solution
        return ([Sample("reviewer", a.critique_completion.prompt_ids, a.critique_completion.completion_ids, ad,
                        group=("review", a.task.id), sampler_logps=a.critique_completion.sampler_logps)
                 for a, ad in zip(flat, adv)]
                + [Sample("reviewer", a.blind_completion.prompt_ids, a.blind_completion.completion_ids, ad,
                          group=("review_blind", a.task.id), sampler_logps=a.blind_completion.sampler_logps)
                   for a, ad in zip(blind, badv)])

    def constructor_samples(self, proposals: list[Proposal], attempts: list[list[Attempt]]) -> list[Sample]:
        """A learned constructor's proposals: validity times learnability of their tasks for the current
        solver, group-relative per document. Tasks cut by `max_tasks_per_step` were never tried: no sample."""
        if self.tr.constructor != "learned":
            return []
        solve_rate = {g[0].task.id: sum(a.correct for a in g) / len(g) for g in attempts}
        by_doc: dict[str, list[Proposal]] = {}
        for p in [p for p in proposals if not p.cut]:
            rate = solve_rate.get(p.task.id) if p.task else None
            p.reward = self.rcfg.constructor_invalid if not p.check.valid else (learnability(rate) if rate is not None else 0.0)
            by_doc.setdefault(p.doc.id, []).append(p)
        groups = list(by_doc.values())
        advs = group_advantages([[p.reward for p in g] for g in groups], self.rcfg.advantage, self.rcfg.scale_by_std)
        return [Sample("constructor", p.completion.prompt_ids, p.completion.completion_ids, ad, group=("construct", p.doc.id),
                       sampler_logps=p.completion.sampler_logps) for g, adv in zip(groups, advs) for p, ad in zip(g, adv)]

    def agreement_weights(self, flat: list[Attempt]) -> dict[bool, float]:
        """Weights that make agreement on right and on wrong solutions count equally (balanced accuracy).

        Without them a reviewer facing mostly wrong solutions earns most of its reward by rejecting
        everything, and that verdict sends every correct solution to be rewritten.
        """
        if not self.rcfg.reviewer_balance:
            return {True: 1.0, False: 1.0}
        n_right = sum(a.correct for a in flat)
        counts = {True: n_right, False: len(flat) - n_right}
        return {k: (len(flat) / (2 * v) if v else 1.0) for k, v in counts.items()}

    @staticmethod
    def fix_rate(flat: list[Attempt]) -> float:
        """Share of rejected wrong solutions whose revision came out right (0 when nothing was revised)."""
        revised = [a for a in flat if not a.correct and a.revision is not None]
        return sum(a.revision_correct for a in revised) / len(revised) if revised else 0.0

    def reviewer_reward(self, a: Attempt, weight: float = 1.0, fix_rate: float = 0.0, blind: bool = False) -> float:
        """Agreement with the reference check, plus the instructive bonus, both weighted by class.

        Instructive: the critique turned a wrong solution into a right one. Accepting a right solution
        earns the same bonus at the batch's fix rate, so the bonus rewards useful critiques without
        tilting the verdict: otherwise rejecting everything pays (rejecting a right solution that the
        refiner merely keeps right earns nothing). A blind review (`blind`) earns agreement only: no
        revision follows it during training.
        """
        critique = a.blind_critique if blind else a.critique
        if critique.verdict is None:
            return 0.0
        agree = critique.verdict == a.correct
        r = self.rcfg.reviewer_agreement * weight * float(agree)
        if blind:
            return r
        if not a.correct and a.revision is not None and a.revision_correct:
            r += self.rcfg.reviewer_instructive * weight
        elif a.correct and agree:
            r += self.rcfg.reviewer_instructive * weight * fix_rate
        return r
