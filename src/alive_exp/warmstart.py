"""Warm start: teach the tiny model every role by likelihood on oracle transcripts, once, and cache it.

A randomly initialised model earns no reward, so nothing can be learned from RL on a laptop. The warm
start fine-tunes all weights on transcripts the domain's oracle writes for every role:

- constructor: a document -> the rule masker's span
- solver:      a task -> a worked solution
- reviewer:    task, reference and a solution -> the oracle's critique, which compares the answer with the
  reference first, then names the first wrong column
- blind reviewer (no reference), refiner (solution + critique with the reference scrubbed -> the right
  solution, or the same solution where it was right) and FCP's solver (a solution under the critique it earned),
  so that self-correction and FCP have something to start from.

The solutions judged are the reference solution, a corrupted one (`domain.corrupt`: a realistic slip), or from
step `own_samples_from` on, for a share `own_samples`, one of the model's own samples: reviewers learn from the
errors they will judge in RL, not only from those the corrupter knows.

It runs `warmstart.steps` steps, or stops earlier at the first check (every `check_every` steps from
`check_from`) where greedy accuracy on the domain's validation suite reaches `stop_accuracy` (and each suite of
`stop_floors`, e.g. a generalization suite's validation twin, its floor) and, with `role_floors`, every role
its floor on the solver's own samples (`alive_exp.readiness`: a warm start that stops on the solver alone leaves
the other roles wherever they happened to be). The learning
curve is steep (one seed went 30% -> 59% held-out in 15 steps), so a fixed step count cannot leave every seed
neither hopeless nor perfect, but a stop read off the weights can. The weights are a function of the
config, the run seed and the torch thread count, never of the machine's speed
(`max_minutes` only stops a build that overruns it, with an error, and caches nothing). Held-out accuracy,
steps, seconds and threads are written to `metrics.json` beside the model. Parallel jobs that need the same
warm start wait on a file lock while the first builds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from alive_exp import domains, models, readiness
from alive_exp.config import POLICY_CONFIG
from alive_exp.losses import Sample, likelihood_loss
from alive_exp.roles import KEEP, RoleTemplates, as_read
from alive_exp.rollout import Generator

log = logging.getLogger(__name__)

KINDS = ("constructor", "solver", "reviewer", "reviewer_blind", "refiner", "fcp_solver")
JUDGED = ("reviewer", "reviewer_blind", "refiner", "fcp_solver")  # kinds whose transcript is about one solution
TRANSCRIPTS_VERSION = 11  # bump when the oracle's transcripts or the loss change: cached warm starts are rebuilt


def warmstart_options(cfg: DictConfig) -> dict:
    """The domain options the warm start uses: the benchmark's (`hide` included: it teaches the kinds of task
    RL will pose), updated by `warmstart.benchmark_options` (e.g. both operations, so that a suite of the
    operation RL never trains on starts above zero)."""
    options = OmegaConf.to_container(cfg.benchmark.options, resolve=True) or {}
    extra = OmegaConf.to_container(cfg.warmstart.benchmark_options, resolve=True) or {}
    return OmegaConf.to_container(OmegaConf.merge(options, extra), resolve=True)


def trained_options(cfg: DictConfig) -> dict:
    """The options of the domain RL trains on (what the warm start's held-out accuracy is measured on)."""
    options = OmegaConf.to_container(cfg.benchmark.options, resolve=True) or {}
    options.pop("hide", None)
    return options


def warmstart_seed(cfg: DictConfig) -> int:
    """One warm start per run seed, so that the seed spread of a study includes the warm start's."""
    return int(cfg.warmstart.seed) * 1_000_003 + int(cfg.seed)


def warmstart_threads(cfg: DictConfig) -> int:
    """Threads decide the order of floating-point sums, hence the weights: part of the key."""
    return int(cfg.hardware.torch_threads or torch.get_num_threads())


def warmstart_dir(cfg: DictConfig) -> Path:
    """Cache folder keyed by everything that changes the warm-started weights."""
    spec = {
        "warmstart": OmegaConf.to_container(cfg.warmstart, resolve=True),
        "tiny": OmegaConf.to_container(cfg.model.tiny, resolve=True),
        "domain": cfg.benchmark.domain,
        "options": warmstart_options(cfg),
        "roles": OmegaConf.to_container(cfg.roles, resolve=True),
        "eval_domains": sorted(cfg.benchmark.eval_domains),
        "transcripts": TRANSCRIPTS_VERSION,
        "seed": warmstart_seed(cfg),
        "threads": warmstart_threads(cfg),
    }
    for budget_only in ("enabled", "max_minutes"):  # a time budget never changes the weights, only stops a build
        spec["warmstart"].pop(budget_only, None)
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cfg.paths.data_dir) / "warmstart" / f"{cfg.benchmark.domain}-{key}"


class Transcripts:
    """An endless, seeded stream of (prompt, completion) pairs from the domain's oracle, for every role.

    A reviewer, refiner or FCP transcript is about one solution: the reference solution, a corrupted one (a
    realistic slip, `domain.corrupt`), or, for a share `own_share` once `own` holds any, one of the model's own
    samples, so that reviewer and refiner learn from the kinds of error they will judge in RL, not only from
    the slips the corrupter knows.
    """

    def __init__(self, domain, templates: RoleTemplates, docs, mix: dict[str, float], seed: int,
                 own_share: float = 0.0) -> None:
        self.domain, self.t, self.docs = domain, templates, docs
        self.set_mix(mix)
        self.rng = random.Random(seed)
        self.own_share = own_share
        self.own: list[tuple] = []  # (task, the model's sample): refreshed by the warm start's loop

    def set_mix(self, mix: dict[str, float]) -> None:
        unknown = set(mix) - set(KINDS)
        if unknown:
            raise ValueError(f"warmstart.mix: unknown transcript kinds {sorted(unknown)}; known: {list(KINDS)}")
        self.kinds, self.weights = list(mix), [float(mix[k]) for k in mix]

    def task(self):
        doc = self.rng.choice(self.docs)
        spans = self.domain.candidate_spans(doc)
        s, e = self.rng.choice(spans)
        return doc, s, e, self.domain.make_task(doc, s, e)

    def judged(self, kind: str):
        """(task, solution, reference solution) a transcript of `kind` is about."""
        if self.own and self.rng.random() < self.own_share:
            task, solution = self.rng.choice(self.own)
            return task, solution, self.domain.solution_text(task)
        _, _, _, task = self.task()
        good = self.domain.solution_text(task)
        wrong = self.domain.corrupt(task, good, self.rng)
        # right and wrong solutions alike: a reviewer must not learn a prior, a refiner must learn to keep
        return task, (wrong if wrong and self.rng.random() < 0.5 else good), good

    def example(self) -> tuple[str, str]:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind not in JUDGED:
            doc, s, e, task = self.task()
            self.last_task = task  # what the example was made from (tests read it)
            if kind == "constructor":
                return self.t.render("constructor", document=doc.text), f"Span: {self.domain.span_text(doc, s, e)}"
            return self.t.render("solver", task=task.prompt), self.domain.solution_text(task)
        task, solution, good = self.judged(kind)
        self.last_task = task
        # the refiner learns from both critiques it meets: with the reference (training) and blind (self-critique)
        blind = kind == "reviewer_blind" or (kind == "refiner" and self.rng.random() < 0.5)
        critique = self.domain.critique(task, solution, blind=blind)
        if kind == "reviewer":
            return self.t.render("reviewer", task=task.prompt, reference=task.reference, solution=solution), critique.text
        if kind == "reviewer_blind":
            return self.t.render("reviewer_blind", task=task.prompt, solution=solution), critique.text
        shown = as_read(critique.text, task.reference)  # never the hidden answer
        if kind == "fcp_solver":  # FCP: a solution under the critique it earned (FCP's own training pairs)
            return self.t.render("fcp_solver", task=task.prompt, critique=shown), solution
        # a solution the oracle's blind check accepts (working and answer right) is kept: the refiner says so
        keep = self.domain.critique(task, solution, blind=True).verdict is True
        return self.t.render("refiner", task=task.prompt, solution=solution, critique=shown), KEEP if keep else good


def micro_batches(lengths: list[int], chunk: int, token_budget: int) -> list[list[int]]:
    """Indices of length-sorted micro-batches of at most `chunk` sequences and at most `token_budget` padded tokens
    (one sequence longer than the budget goes alone): a few long sequences (a constructor's page) get their own
    micro-batch instead of padding the longest short ones to their length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < chunk and (len(out[-1]) + 1) * lengths[i] <= token_budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def likelihood_step(model, gen: Generator, pairs: list[tuple[str, str]], pad: int, chunk: int = 16,
                    token_budget: int = 4096) -> float:
    """Backward pass of the mean completion-token NLL over `pairs`, in length-sorted micro-batches (`micro_batches`:
    little padding), through the learner's own log-prob path (`losses.likelihood_loss`); returns the loss."""
    samples = [Sample("warmstart", gen.encode_prompt(p), gen.encode_completion(c), nll_weight=1.0) for p, c in pairs]
    total = sum(len(s.completion_ids) for s in samples)
    loss_sum = 0.0
    for batch in micro_batches([len(s.prompt_ids) + len(s.completion_ids) for s in samples], chunk, token_budget):
        loss = likelihood_loss(model, [samples[i] for i in batch], pad, total)
        loss.backward()
        loss_sum += float(loss.detach())
    return loss_sum


def optimizer_and_schedule(model, w: DictConfig):
    """AdamW with a linear warm-up and a cosine decay over `cosine_steps` (default: `steps`)."""
    opt = torch.optim.AdamW(model.parameters(), lr=w.lr, weight_decay=w.weight_decay, betas=(0.9, 0.99))
    # a cosine horizon past the last step leaves the model in motion, not annealed into a minimum that the
    # first RL steps knock it out of (measured: docs/learning_investigation.md, round 3)
    horizon = max(int(w.cosine_steps or w.steps), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / w.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / horizon))))
    return opt, sched


def heldout_scores(cfg: DictConfig, gen: Generator, templates: RoleTemplates) -> dict[str, float]:
    """What metrics.json and the run's `warmstart/*` metrics say of the finished warm start, on held-out problems
    of the trained shape: greedy solver accuracy (`heldout_accuracy`), and every role on the solver's own
    samples at the experiment's temperature (`alive_exp.readiness`; `reviewer` is the reviewer's balanced
    agreement with the reference in view)."""
    w, g = cfg.warmstart, cfg.trainer.generation
    domain = domains.get(cfg.benchmark.domain, **trained_options(cfg))
    tasks = domain.heldout_tasks(int(w.eval_size), cfg.seed)
    _, correct = readiness.greedy_solutions(gen, domain, templates, tasks, g.solver_tokens)
    ready = readiness.measure(gen, domain, templates, tasks, samples_per_task=int(w.readiness_samples),
                              temperature=g.temperature, seed=warmstart_seed(cfg) + 1, solver_tokens=g.solver_tokens,
                              reviewer_tokens=g.reviewer_tokens)
    return {"heldout_accuracy": sum(correct) / max(len(tasks), 1), **ready.scores}


def build_warmstart(cfg: DictConfig, progress: bool = True) -> Path:
    """Train (or find cached) the warm-started tiny model for cfg's domain and seed; returns its folder."""
    from filelock import FileLock

    out = warmstart_dir(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # a parallel job needing the same warm start waits, then reads it
        if not (out / "metrics.json").exists():
            _train_warmstart(cfg, out, progress)
    return out


def refresh_own_samples(stream: Transcripts, gen: Generator, templates: RoleTemplates, size: int, temperature: float,
                        solver_tokens: int, seed: int) -> None:
    """The model's own solutions of `size` training tasks at the experiment's temperature (seeded): what reviewer,
    refiner and FCP transcripts are about for a share `warmstart.own_samples` from now on."""
    tasks = [stream.task()[3] for _ in range(size)]
    outs = gen.generate([templates.render("solver", task=t.prompt) for t in tasks], n=1, max_new_tokens=solver_tokens,
                        temperature=temperature, seed=seed)
    stream.own = [(t, g[0].text) for t, g in zip(tasks, outs)]


def _train_warmstart(cfg: DictConfig, out: Path, progress: bool, curve: Callable[[dict], None] | None = None) -> None:
    """The warm start's loop. `curve`: a learning curve instead of a stopping rule (scripts/warmstart_curve.py):
    every suite and role is scored at every check, handed to `curve`, and the build runs all its steps."""
    w, g = cfg.warmstart, cfg.trainer.generation
    seed, threads = warmstart_seed(cfg), warmstart_threads(cfg)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    domain = domains.get(cfg.benchmark.domain, **warmstart_options(cfg))
    corpus_domains = sorted({cfg.benchmark.domain, *cfg.benchmark.eval_domains})
    base_cfg = OmegaConf.merge(cfg.model, {"init_from": None, "source": "tiny"})
    model, tok, _ = models.load_base(base_cfg, cfg.paths.data_dir, corpus_domains)
    torch.manual_seed(seed)
    templates = RoleTemplates(**OmegaConf.to_container(cfg.roles, resolve=True))
    gen = Generator(model, tok, batch_size=128)
    stream = Transcripts(domain, templates, domain.documents("train", w.train_docs, seed), dict(w.mix), seed,
                         own_share=float(w.own_samples))
    opt, sched = optimizer_and_schedule(model, w)
    model.train()
    start, losses = time.perf_counter(), []
    rule = readiness.StoppingRule(cfg, gen, templates, domains.get(cfg.benchmark.domain, **trained_options(cfg)))
    checks: list[dict] = []
    bar = _progress(progress, w.steps)
    try:
        for step in range(w.steps):
            if w.own_samples and step >= w.own_samples_from and (step - w.own_samples_from) % w.own_samples_every == 0:
                refresh_own_samples(stream, gen, templates, int(w.own_samples_pool), g.temperature, g.solver_tokens,
                                    seed + step)
            opt.zero_grad(set_to_none=True)
            loss = likelihood_step(model, gen, [stream.example() for _ in range(w.batch_size)], tok.pad_token_id)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss)
            bar.update(step, loss=sum(losses[-20:]) / len(losses[-20:]))
            if w.max_minutes and time.perf_counter() - start > 60 * w.max_minutes:
                raise RuntimeError(
                    f"warm start overran warmstart.max_minutes={w.max_minutes} after {step + 1} of {w.steps} steps "
                    f"({threads} torch threads); nothing was cached. Raise warmstart.max_minutes (0 = no limit) or "
                    "lower warmstart.steps: the step count, not the clock, decides the weights.")
            if rule.enabled and step + 1 >= w.check_from and (step + 1) % w.check_every == 0:
                stop, scores = rule(step + 1, score_all=curve is not None)  # generate restores the training mode
                # the transcripts the next steps train on: every role's (`mix`), or while the solver holds its
                # floors the other roles' (`role_mix`); without its own transcripts the solver drifts, so once it
                # falls out of its band it gets them back until it holds again
                phase = "roles" if w.role_mix is not None and rule.solver_holds else "all"
                checks.append({"step": step + 1, "seconds": round(time.perf_counter() - start, 1), **scores,
                               "mix": phase})
                log.info("warm start check at step %d: %s", step + 1,
                         ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in scores.items()
                                   if k not in ("role/samples", "role/right_samples")))
                if curve is not None:
                    curve(checks[-1])
                elif stop:
                    break
                stream.set_mix(dict(w.role_mix if phase == "roles" else w.mix))
        else:
            if rule.enabled and curve is None:
                log.warning("warm start: not every floor held in %d steps (last check %s); it ran all of "
                            "warmstart.steps", w.steps, checks[-1] if checks else "none")
        train_s = time.perf_counter() - start
        model.eval()
        scores = heldout_scores(cfg, gen, templates)
    finally:
        bar.close()
        torch.set_num_threads(previous)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    # the config that built it, as a policy folder holds its run's: `alive-exp sample` reads a warm start directly
    (tmp / POLICY_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    ready_at = checks[-1]["step"] if checks and "unmet" not in checks[-1] else None
    metrics = {**scores, "steps": len(losses), "final_loss": losses[-1], "train_seconds": round(train_s, 1),
               "threads": threads, "seed": seed, "eval_size": int(w.eval_size), "floors_met_at": ready_at,
               "validation_checks": checks}
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    tmp.rename(out)
    log.info("warm start cached at %s after %d steps (%.0f s, %d threads): %s", out, len(losses), train_s, threads,
             readiness.describe(scores))


class _progress:
    """A rich progress bar when asked for, silent otherwise."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.p = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.p = Progress(TextColumn("warm start"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                              TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn())
            self.task = self.p.add_task("warm", total=total, loss=float("nan"))
            self.p.start()

    def update(self, step: int, loss: float) -> None:
        if self.p:
            self.p.update(self.task, completed=step + 1, loss=loss)

    def close(self) -> None:
        if self.p:
            self.p.stop()
