"""Warm start: teach the tiny model every role by likelihood on oracle transcripts, once, and cache it.

A randomly initialised model earns no reward, so nothing can be learned from RL on a laptop. The warm
start fine-tunes all weights on transcripts the domain's oracle writes for every role:

- constructor: a document -> the rule masker's span
- solver:      a task -> a worked solution
- reviewer:    task, reference and a correct or deliberately wrong solution -> the oracle's critique
- blind reviewer (no reference) and refiner (wrong solution + critique -> correct solution), so that
  self-correction has something to start from.

It runs `warmstart.steps` steps, or stops earlier at the first check (every `check_every` steps from
`check_from`) where greedy accuracy on the domain's validation suite reaches `stop_accuracy` (and each suite of
`stop_floors`, e.g. a generalization suite's validation twin, its floor): the learning
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
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from alive_exp import domains, models
from alive_exp.losses import Sample, likelihood_loss
from alive_exp.roles import RoleTemplates, critique_body, parse_critique, scrub_reference
from alive_exp.rollout import Generator

log = logging.getLogger(__name__)

KINDS = ("constructor", "solver", "reviewer", "reviewer_blind", "refiner")
TRANSCRIPTS_VERSION = 5  # bump when the oracle's transcripts or the loss change: cached warm starts are rebuilt


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
    """An endless, seeded stream of (prompt, completion) pairs from the domain's oracle, for every role."""

    def __init__(self, domain, templates: RoleTemplates, docs, mix: dict[str, float], seed: int) -> None:
        self.domain, self.t, self.docs = domain, templates, docs
        self.kinds, self.weights = list(mix), [mix[k] for k in mix]
        self.rng = random.Random(seed)

    def task(self):
        doc = self.rng.choice(self.docs)
        spans = self.domain.candidate_spans(doc)
        s, e = self.rng.choice(spans)
        return doc, s, e, self.domain.make_task(doc, s, e)

    def example(self) -> tuple[str, str]:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        doc, s, e, task = self.task()
        self.last_task = task  # what the example was made from (tests read it)
        good = self.domain.solution_text(task)
        if kind == "constructor":
            return self.t.render("constructor", document=doc.text), f"Span: {doc.text[s:e]}"
        if kind == "solver":
            return self.t.render("solver", task=task.prompt), good
        wrong = self.domain.corrupt(task, good, self.rng)
        # refiner examples are mostly wrong solutions, but some correct ones teach it to keep what is right
        solution = wrong if wrong and self.rng.random() < (0.7 if kind == "refiner" else 0.5) else good
        # the refiner learns from both critiques it meets: with the reference (training) and blind (self-critique)
        blind = kind == "reviewer_blind" or (kind == "refiner" and self.rng.random() < 0.5)
        critique = self.domain.critique(task, solution, blind=blind).text
        if kind == "reviewer":
            return self.t.render("reviewer", task=task.prompt, reference=task.reference, solution=solution), critique
        if kind == "reviewer_blind":
            return self.t.render("reviewer_blind", task=task.prompt, solution=solution), critique
        shown, _ = scrub_reference(critique_body(critique), task.reference)  # never the hidden answer
        return self.t.render("refiner", task=task.prompt, solution=solution, critique=shown), good


def likelihood_step(model, gen: Generator, pairs: list[tuple[str, str]], pad: int, chunk: int = 16) -> float:
    """Backward pass of the mean completion-token NLL over `pairs`, in length-sorted micro-batches of `chunk`
    (little padding), through the learner's own log-prob path (`losses.likelihood_loss`); returns the loss."""
    samples = [Sample("warmstart", gen.encode_prompt(p), gen.encode_completion(c), nll_weight=1.0) for p, c in pairs]
    samples.sort(key=lambda s: len(s.prompt_ids) + len(s.completion_ids))
    total = sum(len(s.completion_ids) for s in samples)
    loss_sum = 0.0
    for i in range(0, len(samples), chunk):
        loss = likelihood_loss(model, samples[i:i + chunk], pad, total)
        loss.backward()
        loss_sum += float(loss.detach())
    return loss_sum


def greedy_solutions(gen: Generator, domain, templates: RoleTemplates, tasks, solver_tokens: int):
    """The solver's greedy solution of each task, and whether the reference confirms it."""
    outs = [g[0].text for g in gen.generate([templates.render("solver", task=t.prompt) for t in tasks], n=1,
                                            max_new_tokens=solver_tokens, temperature=0.0)]
    return outs, [ok for ok, _ in domain.score_many(outs, tasks)]


def optimizer_and_schedule(model, w: DictConfig):
    """AdamW with a linear warm-up and a cosine decay over `cosine_steps` (default: `steps`)."""
    opt = torch.optim.AdamW(model.parameters(), lr=w.lr, weight_decay=w.weight_decay, betas=(0.9, 0.99))
    # a cosine horizon past the last step leaves the model in motion, not annealed into a minimum that the
    # first RL steps knock it out of (measured: docs/learning_investigation.md, round 3)
    horizon = max(int(w.cosine_steps or w.steps), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / w.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / horizon))))
    return opt, sched


def heldout_scores(gen: Generator, domain, templates: RoleTemplates, size: int, seed: int, solver_tokens: int,
                   reviewer_tokens: int) -> dict[str, float]:
    """Greedy solver accuracy on held-out tasks, and how often the reviewer (with the reference) judges
    those solutions right, as balanced accuracy over right and wrong ones."""
    tasks = domain.heldout_tasks(size, seed)
    outs, correct = greedy_solutions(gen, domain, templates, tasks, solver_tokens)
    prompts = [templates.render("reviewer", task=t.prompt, reference=t.reference, solution=o) for t, o in zip(tasks, outs)]
    verdicts = [parse_critique(g[0].text).verdict
                for g in gen.generate(prompts, n=1, max_new_tokens=reviewer_tokens, temperature=0.0)]
    per_class = [[v == c for v, c in zip(verdicts, correct) if c is cls] for cls in (True, False)]
    balanced = [sum(x) / len(x) for x in per_class if x]
    return {"heldout_accuracy": sum(correct) / max(len(tasks), 1),
            "heldout_reviewer_balanced_agreement": sum(balanced) / len(balanced) if balanced else 0.0}


def _stopping_check(cfg: DictConfig, gen: Generator, templates: RoleTemplates):
    """With `warmstart.stop_accuracy` set: a function returning (stop?, greedy accuracy per suite) read off the
    domain's validation suites (never a held-out one), so the warm start can stop where its steep learning
    curve reaches a chosen accuracy for every seed: `<domain>_validation` at `stop_accuracy`, and every suite
    of `stop_floors` at its floor (e.g. a generalization suite's validation twin, so the warm start can start
    on it). The floors are only scored once the first condition holds. The stop is a function of the weights,
    never of the clock."""
    w = cfg.warmstart
    if w.stop_accuracy is None:
        if w.stop_floors:
            raise ValueError("warmstart.stop_floors needs warmstart.stop_accuracy set")
        return None
    domain = domains.get(cfg.benchmark.domain, **trained_options(cfg))
    name = f"{cfg.benchmark.domain}_validation"
    suites = domain.benchmarks()
    if name not in suites:
        raise ValueError(f"warmstart.stop_accuracy needs a validation suite; domain {cfg.benchmark.domain!r} with these "
                         f"options has none (suites: {sorted(suites)}). Set warmstart.stop_accuracy=null.")
    wanted = {name: float(w.stop_accuracy), **{str(k): float(v) for k, v in w.stop_floors.items()}}
    unknown = [k for k in wanted if k not in suites or not k.endswith("_validation")]
    if unknown:
        raise ValueError(f"warmstart.stop_floors: {unknown} are not validation suites of domain "
                         f"{cfg.benchmark.domain!r} (validation suites: "
                         f"{sorted(k for k in suites if k.endswith('_validation'))})")
    tasks = {k: suites[k](int(w.check_size), 0) for k in wanted}

    def check() -> tuple[bool, dict[str, float]]:
        scores: dict[str, float] = {}
        for k, floor in wanted.items():
            _, correct = greedy_solutions(gen, domain, templates, tasks[k], cfg.trainer.generation.solver_tokens)
            scores[k] = sum(correct) / max(len(tasks[k]), 1)
            if scores[k] < floor:
                return False, scores
        return True, scores

    return check


def build_warmstart(cfg: DictConfig, progress: bool = True) -> Path:
    """Train (or find cached) the warm-started tiny model for cfg's domain and seed; returns its folder."""
    from filelock import FileLock

    out = warmstart_dir(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # a parallel job needing the same warm start waits, then reads it
        if not (out / "metrics.json").exists():
            _train_warmstart(cfg, out, progress)
    return out


def _train_warmstart(cfg: DictConfig, out: Path, progress: bool) -> None:
    w = cfg.warmstart
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
    stream = Transcripts(domain, templates, domain.documents("train", w.train_docs, seed), dict(w.mix), seed)
    opt, sched = optimizer_and_schedule(model, w)
    model.train()
    start, losses = time.perf_counter(), []
    check = _stopping_check(cfg, gen, templates)
    checks: list[tuple[int, float]] = []
    bar = _progress(progress, w.steps)
    try:
        for step in range(w.steps):
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
            if check is not None and step + 1 >= w.check_from and (step + 1) % w.check_every == 0:
                stop, scores = check()  # generate restores the training mode
                checks.append({"step": step + 1, **scores})
                if stop:
                    break
        else:
            if check is not None:
                log.warning("warm start: validation accuracy never reached warmstart.stop_accuracy=%s (floors %s) in "
                            "%d steps (last check %s); it ran all of warmstart.steps", w.stop_accuracy,
                            dict(w.stop_floors), w.steps, checks[-1] if checks else "none")
        train_s = time.perf_counter() - start
        model.eval()
        g = cfg.trainer.generation
        scores = heldout_scores(gen, domains.get(cfg.benchmark.domain, **trained_options(cfg)), templates,
                                w.eval_size, cfg.seed, g.solver_tokens, g.reviewer_tokens)
    finally:
        bar.close()
        torch.set_num_threads(previous)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    metrics = {**scores, "steps": len(losses), "final_loss": losses[-1], "train_seconds": round(train_s, 1),
               "threads": threads, "seed": seed, "eval_size": int(w.eval_size),
               "validation_checks": checks}
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    tmp.rename(out)
    log.info("warm start cached at %s: held-out accuracy %.1f%%, reviewer balanced agreement %.1f%%, after %d steps "
             "(%.0f s, %d threads)", out, 100 * scores["heldout_accuracy"],
             100 * scores["heldout_reviewer_balanced_agreement"], len(losses), train_s, threads)


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
