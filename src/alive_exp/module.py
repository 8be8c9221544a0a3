"""The LightningModule around the ALIVE step: role-specific optimizers, manual optimization, checkpoints.

Two pitfalls handled deliberately:
- Lightning's `global_step` counts every `optimizer.step()`, so with three optimizers it runs three
  times faster than training; `alive_step` counts ALIVE steps and is what metrics are logged against.
- PEFT's `set_adapter` switches `requires_grad` off for the other adapters and Lightning's
  `toggle_optimizer` rewrites it too. We use only PEFT's mechanism (`use_adapter`) and never toggle.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from alive_exp import metrics as M
from alive_exp.alive import AliveStep
from alive_exp.distributed import global_counts, sync_gradients
from alive_exp.fused_lora import fused_lora
from alive_exp.logprobs import prefix_groups
from alive_exp.losses import Sample, contributing, local_counts, normalise, reference_logprobs, role_loss
from alive_exp.models import adapter_parameters, role_adapter
from alive_exp.roles import ROLES
from alive_exp.timing import PhaseTimer
from alive_exp.tracking import STEP_DRAIN_S

log = logging.getLogger(__name__)


def lr_factor(opt_cfg, step: int, max_steps: int) -> float:
    """Learning-rate multiplier at ALIVE step `step`: linear warm-up, then constant, cosine or linear decay."""
    if step < opt_cfg.warmup_steps:
        return (step + 1) / (opt_cfg.warmup_steps + 1)
    progress = min(1.0, (step - opt_cfg.warmup_steps) / max(1, max_steps - opt_cfg.warmup_steps))
    if opt_cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if opt_cfg.schedule == "linear":
        return 1.0 - progress
    if opt_cfg.schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {opt_cfg.schedule!r}: use constant, cosine or linear")


class AliveModule(pl.LightningModule):
    def __init__(self, cfg, model, tokenizer, domain, oracle, templates, reward_mode, generator, corpus,
                 evaluator=None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold trainable weights only
        self.cfg, self.model, self.tokenizer, self.domain, self.corpus = cfg, model, tokenizer, domain, corpus
        self.generator, self.evaluator = generator, evaluator
        self.timer = PhaseTimer()
        self.profile_root = Path(cfg.paths.output_dir) / "profile"  # train.run points it into the run's folder
        self.step_impl = AliveStep(cfg=cfg, domain=domain, generator=generator, templates=templates,
                                   reward_mode=reward_mode, oracle=oracle,
                                   use_adapter=self.use_adapter)
        self.alive_step = 0
        self.oracle_seen: dict[str, int] = {}  # the oracle's counters at the last step's metrics
        self.mlflow_run_id: str | None = None
        self.transcripts: list[dict[str, Any]] = []
        self.tracer = None  # a traces.Tracer (rank 0 with a logger): role chains as MLflow traces
        self.history: list[dict[str, float]] = []
        # optimizer groups: per_role -> one per role; shared or full fine-tune -> one for all roles
        self.groups: list[tuple[str | None, list[str]]] = []
        for role in ROLES:
            adapter = role_adapter(cfg.model, role)
            for a, roles in self.groups:
                if a == adapter:
                    roles.append(role)
                    break
            else:
                self.groups.append((adapter, [role]))

    # -- adapters and optimizers -------------------------------------------------------------------
    def use_adapter(self, role: str) -> None:
        adapter = role_adapter(self.cfg.model, role)
        if adapter is not None and self.model.active_adapter != adapter:
            self.model.set_adapter(adapter)  # also sets requires_grad: only this adapter trains

    def disable_adapters(self):
        return self.model.disable_adapter() if role_adapter(self.cfg.model, "solver") else contextlib.nullcontext()

    def group_optim(self, roles: list[str]):
        """A shared group trains with the solver's optimizer settings."""
        return self.cfg.trainer.optim[roles[0] if len(roles) == 1 else "solver"]

    def configure_optimizers(self):
        # the learning-rate schedule is applied per ALIVE step in `learn`, so it needs no scheduler state
        return [torch.optim.AdamW(adapter_parameters(self.model, adapter), lr=self.group_optim(roles).lr,
                                  weight_decay=self.group_optim(roles).weight_decay,
                                  betas=tuple(self.group_optim(roles).betas))
                for adapter, roles in self.groups]

    # -- the step ----------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        step, s = self.alive_step, self.step_impl
        t0 = time.perf_counter()
        docs = self.corpus.for_step(step)
        self.timer.step = step
        self.timer.profile_to = self.profile_dir(step)
        with self.timer("construct"):
            proposals, tasks = s.construct(docs, step)
        with self.timer("solve"):
            attempts = s.solve(tasks, step)
        with self.timer("probe"):
            probed = s.probe(docs, proposals, attempts, step)
        with self.timer("review"):
            warmup = s.review(attempts, step)
        with self.timer("refine"):
            s.refine(attempts, step)
        with self.timer("samples"):
            samples = s.samples(proposals, attempts, warmup)
        with self.timer("update"):
            losses = self.learn(samples)
        self.timer.profile_to = None
        metrics = self.step_metrics(proposals, attempts, samples, losses, warmup)
        metrics.update(M.constructor_choice(self.domain, proposals, attempts, probed))
        seconds = self.timer.pop()
        metrics["time/step"] = time.perf_counter() - t0
        metrics.update({f"time/{k}": v for k, v in seconds.items()})
        # where the step's time goes, as shares of the step (phases only: update/<role> is inside update)
        metrics.update({f"time/{k}_share": v / max(metrics["time/step"], 1e-9) for k, v in seconds.items()
                        if "/" not in k})
        self.alive_step += 1
        if self.evaluator is not None and self.cfg.trainer.eval_every and self.alive_step % self.cfg.trainer.eval_every == 0:
            metrics.update(self.evaluator(self))
        metrics.update(self.generator.pop_metrics())  # rollout=vllm: adapters saved and reloaded on the server
        self.record(metrics, proposals, attempts)
        self.check_on_policy(metrics)
        self.log("reward", metrics["train/reward_mean"], prog_bar=True, logger=False)
        self.log("acc", metrics["solver/accuracy"], prog_bar=True, logger=False)
        return None

    def check_on_policy(self, metrics: dict[str, float]) -> None:
        """Stop the run (after its metrics are logged) when the sampler's log-probs and the learner's differ by
        more than `rollout.max_logprob_gap` per token on average: the policy gradient would score samples from
        another distribution than the one it trains."""
        tol = self.cfg.rollout.max_logprob_gap
        gap = metrics.get("rollout/logprob_gap_mean", 0.0)
        if tol is not None and metrics.get("rollout/logprob_gap_tokens", 0.0) > 0 and gap > tol:
            raise RuntimeError(
                f"off-policy at step {int(metrics.get('train/step', self.alive_step))}: the mean |learner - sampler| log-prob per token is {gap:.3g} "
                f"(max {metrics['rollout/logprob_gap_max']:.3g}), above rollout.max_logprob_gap={tol} "
                f"(rollout={self.cfg.rollout.engine}). The engine samples from another distribution than the learner "
                "scores: check its dtype and sampling settings, or raise the tolerance knowingly.")

    def learn(self, samples: dict[str, list[Sample]]) -> dict[str, dict[str, float]]:
        """`reward.ppo_epochs` passes over the step's samples, each one optimizer step per group (in a shared
        group the role losses are summed with their weights). The first pass stores each sample's log-probs;
        later passes take their ratios against them, so `clip_eps` binds. Stats are the last pass's, but for
        the sampler/learner gap, which only the first pass (the policy that sampled) measures."""
        first = stats = self._learn_once(samples)
        for _ in range(max(int(self.cfg.reward.ppo_epochs), 1) - 1):
            stats = self._learn_once(samples)
        for role, st in stats.items():
            st.update({k: first[role][k] for k in ("gap_sum", "gap_tokens", "gap_max")})
        return stats

    def _learn_once(self, samples: dict[str, list[Sample]]) -> dict[str, dict[str, float]]:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        stats: dict[str, dict[str, float]] = {}
        mb = self.cfg.trainer.micro_batch_size
        # the learner scores tokens under the distribution rollouts sampled from: logits / sampling temperature
        temp = self.cfg.trainer.generation.temperature or 1.0
        for (adapter, roles), opt in zip(self.groups, opts):
            oc = self.group_optim(roles)
            for group in opt.param_groups:
                group["lr"] = oc.lr * lr_factor(oc, self.alive_step, self.cfg.trainer.max_steps)
            opt.zero_grad(set_to_none=True)
            stepped = False
            for role in roles:
                with self.timer(f"update/{role}"):
                    stats[role] = self._backward(role, samples.get(role, []), adapter, mb, temp)
                stepped = stepped or stats[role]["trained"] > 0
            stepped = sync_gradients(self.trainer.strategy, opt, stepped)  # DDP: mean over ranks, same decision
            lr = opt.param_groups[0]["lr"]
            for role in roles:
                stats[role]["lr"] = lr
            if stepped:
                # the optimizer step is timed with the group's (first) role
                with self.timer(f"update/{roles[0]}"):
                    with torch.no_grad():  # before clipping: what the clip acted on (a shared group: all its roles)
                        norms = [torch.linalg.vector_norm(p.grad) for g in opt.param_groups for p in g["params"]
                                 if p.grad is not None]
                        norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
                    for role in roles:
                        stats[role]["grad_norm"] = norm
                    if oc.grad_clip and oc.grad_clip > 0:
                        self.clip_gradients(opt, gradient_clip_val=oc.grad_clip, gradient_clip_algorithm="norm")
                    opt.step()
                if self.generator.merged is not None:
                    self.generator.merged.stale(adapter)
        return stats

    def _backward(self, role: str, batch: list[Sample], adapter: str | None, mb: int, temp: float) -> dict[str, float]:
        """Accumulate one role's gradient over its contributing samples, in micro-batches of similar lengths."""
        weight = self.cfg.trainer.optim[role].loss_weight
        # the loss's norms count every sample of the role's step on every rank (`reward.loss_type`)
        totals, processes = global_counts(self.trainer.strategy, local_counts(batch, mb))
        normalise(batch, self.cfg.reward.loss_type, batch_size=mb, totals=totals, processes=processes,
                  max_tokens=self.cfg.trainer.generation[f"{role}_tokens"])
        batch = contributing(batch, self.cfg.reward.kl_coef)
        st = {"loss": 0.0, "kl": 0.0, "nll": 0.0, "clip_frac": 0.0, "trained": float(len(batch)),
              "gap_sum": 0.0, "gap_tokens": 0.0, "gap_max": 0.0, "entropy_sum": 0.0, "entropy_tokens": 0.0}
        if not batch:
            return st
        self.use_adapter(role)
        share = self.cfg.trainer.share_prompt_prefix
        chunks = prefix_groups(batch, mb) if share else [batch[i:i + mb] for i in range(0, len(batch), mb)]
        trained_tokens = max(sum(len(x.completion_ids) for x in batch), 1)
        # the forward runs fused LoRA layers (the backward is the function's own); with adapters disabled, the
        # reference pass runs PEFT's own
        with fused_lora(self.model, self.cfg.trainer.fused_lora):
            for chunk in chunks:
                ref = None
                if self.cfg.reward.kl_coef > 0 and adapter is not None:
                    ref = reference_logprobs(self.model, chunk, self.tokenizer.pad_token_id, self.disable_adapters, temp)
                loss, info = role_loss(self.model, chunk, pad_id=self.tokenizer.pad_token_id,
                                       clip_eps=self.cfg.reward.clip_eps, kl_coef=self.cfg.reward.kl_coef,
                                       reference_logps=ref, temperature=temp,
                                       share_prefix=share, tis_cap=self.cfg.rollout.tis_cap)
                self.manual_backward(weight * loss)
                frac = len(chunk) / len(batch)
                st["loss"] += float(loss.detach())
                st["kl"] += info["kl"] * frac
                st["nll"] += info["nll"] * frac
                st["clip_frac"] += info["clipped"] / trained_tokens
                st["gap_sum"] += info["gap_sum"]
                st["gap_tokens"] += info["gap_tokens"]
                st["gap_max"] = max(st["gap_max"], info["gap_max"])
                st["entropy_sum"] += info["entropy_sum"]
                st["entropy_tokens"] += info["entropy_tokens"]
        return st

    def profile_dir(self, step: int) -> Path | None:
        """Where this step's profiler tables go (`trainer.profile`), or None: the first profiled steps skip
        step 0, whose first generate at each shape is slow for reasons that are not the step's."""
        k = int(self.cfg.trainer.profile_steps) if self.cfg.trainer.profile else 0
        if not 1 <= step <= k:
            return None
        return self.profile_root

    # -- metrics and transcripts -------------------------------------------------------------------
    def step_metrics(self, proposals, attempts, samples, losses, warmup) -> dict[str, float]:
        flat = [a for g in attempts for a in g]
        m: dict[str, float] = {"train/step": float(self.alive_step), "train/warmup": float(warmup)}
        rewards = [a.reward for a in flat]
        m["train/reward_mean"], m["train/reward_std"] = M.mean(rewards), M.std(rewards)
        m["train/loss"] = sum(s["loss"] for s in losses.values())
        m["train/kl"] = losses.get("solver", {}).get("kl", 0.0)
        m["train/tasks"] = float(len(attempts))
        for role in ROLES:
            m[f"{role}/loss"] = losses.get(role, {}).get("loss", 0.0)
            # samples trained on (forward and backward) of the role's samples: zero-advantage ones are skipped
            m[f"update/{role}/trained_samples"] = losses.get(role, {}).get("trained", 0.0)
            m[f"update/{role}/samples"] = float(len(samples.get(role, [])))
            # share of the role's trained completion tokens whose ratio the clip bound (last PPO epoch; 0 at ppo_epochs=1)
            m[f"{role}/clip_frac"] = losses.get(role, {}).get("clip_frac", 0.0)
            # gradient norm before clipping (0 when the role's group did not step) and the learning rate in use
            m[f"{role}/grad_norm"] = losses.get(role, {}).get("grad_norm", 0.0)
            m[f"{role}/lr"] = losses.get(role, {}).get("lr", 0.0)
            ent = losses.get(role, {})
            m[f"{role}/entropy"] = ent.get("entropy_sum", 0.0) / max(ent.get("entropy_tokens", 0.0), 1.0)
        for kind, lengths in self.step_impl.lengths.items():  # what each role wrote this step
            m[f"{kind}/response_length_mean"] = M.mean(lengths) if lengths else 0.0
            m[f"{kind}/response_length_max"] = float(max(lengths)) if lengths else 0.0
            truncated = self.step_impl.truncated[kind]
            m[f"{kind}/truncation_rate"] = M.mean([float(t) for t in truncated]) if truncated else 0.0
            lengths.clear()
            truncated.clear()
        # on-policy check: |learner - sampler| log-prob per sampled token the learner scored (first PPO pass)
        gap_tokens = sum(st.get("gap_tokens", 0.0) for st in losses.values())
        m["rollout/logprob_gap_mean"] = sum(st.get("gap_sum", 0.0) for st in losses.values()) / max(gap_tokens, 1.0)
        m["rollout/logprob_gap_max"] = max([st.get("gap_max", 0.0) for st in losses.values()] or [0.0])
        m["rollout/logprob_gap_tokens"] = gap_tokens
        m["solver/reward_mean"] = m["train/reward_mean"]
        m["solver/accuracy"] = M.mean([float(a.correct) for a in flat])
        m["solver/nll_targets"] = float(sum(1 for s in samples["solver"] if s.nll_weight > 0))
        # rejections whose critique named the first wrong line (reward.credit=critique credits from there)
        m["solver/located_critiques"] = float(self.step_impl.located)
        rejected = [a for a in flat if a.critique is not None and a.critique.verdict is False]
        m["solver/located_share"] = self.step_impl.located / len(rejected) if rejected else 0.0
        # groups with no right solution (no outcome signal at all), and those a right revision rescued
        all_wrong = [g for g in attempts if not any(a.correct for a in g)]
        m["solver/all_wrong_groups"] = len(all_wrong) / len(attempts) if attempts else 0.0
        m["solver/rescued_groups"] = float(sum(any(a.revision_correct for a in g) for g in all_wrong))
        m["solver/refined_in_group"] = float(sum(1 for s in samples["solver"] if s.kind == "refined"))
        reviewed = [a for a in flat if a.critique is not None]  # all of them, unless trainer.reviews=false
        # the rewards the reviewer was trained on (class-weighted, instructive bonus included); 0 in warm-up
        trained = [a.review_reward for a in reviewed if a.review_reward is not None]
        m["reviewer/reward_mean"] = M.mean(trained) if trained else 0.0
        blind_trained = [a.blind_review_reward for a in flat if a.blind_review_reward is not None]
        m["reviewer/blind_reward_mean"] = M.mean(blind_trained) if blind_trained else 0.0
        if reviewed:
            q = M.reviewer_quality([a.critique.verdict for a in reviewed], [a.correct for a in reviewed])
            m.update({f"reviewer/{k}": v for k, v in q.items()})
        blind_reviewed = [a for a in flat if a.blind_critique is not None]
        if blind_reviewed:
            q = M.reviewer_quality([a.blind_critique.verdict for a in blind_reviewed], [a.correct for a in blind_reviewed])
            m.update({f"reviewer/blind_{k}": v for k, v in q.items()})
        learned = [p for p in proposals if p.completion is not None]
        m["constructor/valid_rate"] = M.mean([float(p.check.valid) for p in learned]) if learned else 0.0
        m["constructor/reward_mean"] = M.mean([p.reward for p in learned]) if learned else 0.0
        rates = [M.mean([float(a.correct) for a in g]) for g in attempts]
        m.update({f"constructor/solve_rate_hist/{k}": v for k, v in M.solve_rate_histogram(rates).items()})
        refined = [a for a in flat if a.revision is not None]
        m["refine/count"] = float(len(refined))
        m["refine/success_rate"] = M.mean([float(a.revision_correct) for a in refined]) if refined else 0.0
        blind_refined = [a for a in flat if a.blind_revision is not None]
        m["refine/blind_count"] = float(len(blind_refined))
        m["refine/blind_success_rate"] = (M.mean([float(a.blind_revision_correct) for a in blind_refined])
                                          if blind_refined else 0.0)
        m["invalid/constructor"] = float(sum(not p.check.valid for p in learned))
        m["invalid/solver"] = float(sum(a.answer is None for a in flat))
        m["invalid/reviewer"] = float(sum(a.critique.verdict is None for a in reviewed))
        m["refine/reference_leaks"] = float(self.step_impl.reference_leaks)
        self.step_impl.reference_leaks = 0
        kinds = [g[0].task.meta.get("kind", "whole") for g in attempts]
        for kind in sorted(set(kinds) | {"whole"}):  # whole problems beside tasks that hide a column or carry
            m[f"tasks/{kind}_share"] = M.mean([float(k == kind) for k in kinds]) if kinds else 0.0
        generated = sum(self.step_impl.tokens.values())
        for k, v in self.step_impl.tokens.items():
            m[f"tokens/{k}"] = float(v)
            m[f"tokens/{k}_share"] = v / generated if generated else 0.0  # of all tokens generated this step
            self.step_impl.tokens[k] = 0
        # a remote critic's reliability this step: requests sent, extra attempts, critiques without usable text
        stats = getattr(self.step_impl.oracle, "stats", None) or {}
        for k, v in stats.items():
            m[f"oracle/{k}"] = float(v - self.oracle_seen.get(k, 0))
        self.oracle_seen = dict(stats)
        return m

    def record(self, metrics, proposals, attempts) -> None:
        if self.logger is not None and hasattr(self.logger, "errors"):
            metrics["tracking/errors"] = float(self.logger.errors)  # failed sends so far (each retried)
        self.history.append(metrics)
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.alive_step)
            if hasattr(self.logger, "drain"):  # send at the step boundary, not beside the next step's phases
                self.logger.drain(timeout=STEP_DRAIN_S)
        every = self.cfg.trainer.log_transcripts_every
        if not every or (self.alive_step - 1) % every:
            return
        k, step = self.cfg.trainer.transcripts_per_phase, self.alive_step - 1
        if self.tracer is not None:
            self.tracer.step(step, proposals, attempts)
        if not self.cfg.logger.log_transcripts:
            return
        for p in [p for p in proposals if p.completion is not None][:k]:
            self.transcripts.append(dict(step=step, phase="construct", role="constructor", prompt=p.completion.prompt,
                                         completion=p.completion.text, reward=p.reward,
                                         outcome="valid" if p.check.valid else "invalid", reason=p.check.reason))
        for a in [a for g in attempts for a in g][:k]:
            self.transcripts.append(dict(step=step, phase="solve", role="solver", prompt=a.prompt, completion=a.completion.text,
                                         reward=a.reward, outcome="correct" if a.correct else "incorrect",
                                         reason="" if a.answer is not None else "no parseable answer"))
            reviews = [("review", a.critique_prompt, a.critique, a.review_reward)] if a.critique is not None else []
            if a.blind_critique is not None:
                reviews.append(("review_blind", a.blind_prompt, a.blind_critique, a.blind_review_reward))
            for phase, prompt, c, reward in reviews:  # the reward it was trained on (0.0 in warm-up: likelihood)
                self.transcripts.append(dict(step=step, phase=phase, role="reviewer", prompt=prompt, completion=c.text,
                                             reward=0.0 if reward is None else reward,
                                             outcome={True: "correct", False: "incorrect", None: "no verdict"}[c.verdict],
                                             reason=c.error or ""))
            if a.revision is not None:
                self.transcripts.append(dict(step=step, phase="refine", role="solver", prompt=a.revision.prompt,
                                             completion=a.revision.text, reward=float(a.revision_correct),
                                             outcome="correct" if a.revision_correct else "incorrect", reason=""))

    # -- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad or ".lora_" in n}
        if role_adapter(self.cfg.model, "solver") is not None:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable or ".lora_" in k}
        checkpoint["alive"] = {
            "alive_step": self.alive_step,
            "mlflow_run_id": self.mlflow_run_id,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("alive", {})
        self.alive_step = int(state.get("alive_step", 0))
        self.mlflow_run_id = state.get("mlflow_run_id")
        rng = state.get("rng")
        if rng:
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
