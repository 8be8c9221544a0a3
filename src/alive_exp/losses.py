"""Advantage estimators and the one loss every role trains with.

A role's batch is a list of `Sample`s: a policy-gradient sample carries an advantage, a likelihood
target (oracle critique, distilled revision, FCP) carries a weight. One token-level loss covers both:

    loss = sum_samples sum_tokens [ -A * ratio_clipped  +  kl_coef * KL_k3  -  w * log p ] / norm_sample

A may differ by token (`Sample.token_advantages`: credit where the critique points), and a sample the policy
did not sample (a revision in its task's group) replaces the ratio by the shaped p / (p + gamma)
(`Sample.shaping`, Critique-GRPO).

where `norm_sample` is set by `normalise` for `reward.loss_type`, with TRL's names and meanings (`LOSS_TYPES`):
the counts in it are the role's whole step on every process, so micro-batches and processes leave the
gradient as one process computes it on the whole batch (tests/test_trl_parity.py, tests/test_ddp.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alive_exp.logprobs import ENTROPY_EVERY, pad_batch, shared_prefix_scores, token_logprobs, token_scores

ADVANTAGES: dict[str, Callable[[list[list[float]], bool], list[list[float]]]] = {}


def advantage(name: str):
    """Register an estimator: (the role's groups of rewards, scale_by_std) -> advantages, shaped as the groups."""

    def deco(fn):
        ADVANTAGES[name] = fn
        return fn

    return deco


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _std(xs: list[float]) -> float | None:
    """Bessel-corrected standard deviation, None for fewer than two rewards (nothing to scale by)."""
    if len(xs) < 2:
        return None
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _scaled(adv: list[float], std: float | None) -> list[float]:
    return adv if std is None else [a / (std + 1e-4) for a in adv]


def _centred(g: list[float]) -> list[float]:
    m = _mean(g) if g else 0.0
    return [r - m for r in g]


@advantage("grpo")
def grpo(groups: list[list[float]], scale_by_std: bool) -> list[list[float]]:
    """Reward minus its group's mean, over the group's std: TRL's scale_rewards="group" ("none" unscaled)."""
    return [_scaled(_centred(g), _std(g) if scale_by_std else None) for g in groups]


@advantage("rloo")
def rloo(groups: list[list[float]], scale_by_std: bool) -> list[list[float]]:
    """Leave-one-out baseline: each sample is compared with the mean of the others of its group."""
    out = []
    for g in groups:
        n, total = len(g), sum(g)
        adv = [r - (total - r) / (n - 1) for r in g] if n > 1 else [0.0] * n
        out.append(_scaled(adv, _std(g) if scale_by_std else None))
    return out


@advantage("batch")
def batch(groups: list[list[float]], scale_by_std: bool) -> list[list[float]]:
    """Reward minus its group's mean, over the std of every reward of the role's batch: TRL's
    scale_rewards="batch" (PPO Lite); unscaled it is `grpo`'s."""
    std = _std([r for g in groups for r in g]) if scale_by_std else None
    return [_scaled(_centred(g), std) for g in groups]


@advantage("pooled")
def pooled(groups: list[list[float]], scale_by_std: bool) -> list[list[float]]:
    """One baseline per role: reward minus the mean of every reward of the batch, over their std (TRR++); a
    group all right or all wrong still gets a signal when others differ."""
    flat = [r for g in groups for r in g]
    if not flat:
        return [[] for _ in groups]
    m, std = _mean(flat), _std(flat) if scale_by_std else None
    return [_scaled([r - m for r in g], std) for g in groups]


def group_advantages(groups: list[list[float]], estimator: str, scale_by_std: bool) -> list[list[float]]:
    """Advantages of a role's groups of rewards by the registered `estimator` (`reward.advantage`)."""
    if estimator not in ADVANTAGES:
        raise KeyError(f"unknown advantage estimator {estimator!r}; known: {', '.join(ADVANTAGES)}")
    return ADVANTAGES[estimator](groups, scale_by_std)


# what divides a sample's summed token loss (T: the role's completion tokens in the step, N: its samples, both
# over every process; TRL's `loss_type` of the same name gives the same gradient, tests/test_trl_parity.py)
LOSS_TYPES = {
    "dapo": "T: every token weighs the same (TRL's default; DAPO)",
    "grpo": "the sample's own tokens, then N: every sequence weighs the same (the GRPO paper)",
    "dr_grpo": "N x the role's generation limit (trainer.generation.<role>_tokens), a constant (Dr. GRPO)",
    "bnpo": "the tokens of the sample's local batch (trainer.micro_batch_size consecutive samples on its "
            "process), then the number of local batches (TRL's bnpo: depends on the local batch size)",
}


@dataclass
class Sample:
    """One sequence a role learns from: a policy-gradient sample or a likelihood target."""

    role: str
    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float = 0.0
    nll_weight: float = 0.0
    kind: str = "pg"  # pg | oracle | distill | fcp (for logging)
    group: object = None  # samples of one group share a prompt prefix, computed once (`shared_prefix_logprobs`)
    # log-probs of the completion tokens under the policy that sampled it, set by the first PPO epoch's pass
    # (`role_loss`), so later epochs' ratios move away from 1 and `clip_eps` binds (`reward.ppo_epochs`)
    old_logps: torch.Tensor | None = field(default=None, repr=False, compare=False)
    # the sampler's log-probs of the completion tokens (rollout.Completion.sampler_logps), None for targets
    # the sampler did not write; the learner's first pass compares its own with them (`rollout/logprob_gap`)
    sampler_logps: list[float] | None = field(default=None, repr=False, compare=False)
    # what this sample's summed token loss is divided by (`normalise`, for `reward.loss_type`)
    loss_norm: float = field(default=0.0, repr=False, compare=False)
    # one advantage per completion token, in place of `advantage` on every token (`reward.credit=critique`)
    token_advantages: list[float] | None = field(default=None, repr=False, compare=False)
    # gamma > 0: a sample the policy did not write (a revision in its task's group, Critique-GRPO) is scored by
    # the shaped probability p / (p + gamma) in place of the ratio, with no clip
    shaping: float = 0.0

    def token_advantage_list(self) -> list[float]:
        n = len(self.completion_ids)
        if self.token_advantages is None:
            return [self.advantage] * n
        if len(self.token_advantages) != n:
            raise ValueError(f"a sample has {len(self.token_advantages)} token advantages for {n} completion tokens")
        return list(self.token_advantages)


def local_counts(samples: list[Sample], batch_size: int) -> list[float]:
    """This process's share of the counts a loss type divides by: completion tokens, samples, local batches."""
    return [float(sum(len(s.completion_ids) for s in samples)), float(len(samples)),
            float(math.ceil(len(samples) / max(batch_size, 1)))]


def normalise(samples: list[Sample], loss_type: str, *, batch_size: int, max_tokens: int,
              totals: list[float] | None = None, processes: int = 1) -> None:
    """Set each sample's `loss_norm` for `loss_type` (`LOSS_TYPES`), from the role's whole step batch on this
    process, before any sample is skipped (`contributing`) or micro-batched.

    `totals` are `local_counts` summed over every process (default: this one's); the gradient reducer averages
    over `processes`, so each norm is divided by their number and the mean over processes is the sum over all
    samples divided by the global count, as one process on every sample would compute it."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"reward.loss_type={loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    tokens, sequences, batches = totals if totals is not None else local_counts(samples, batch_size)
    size = max(batch_size, 1)
    for i, s in enumerate(samples):
        if loss_type == "dapo":
            norm = tokens
        elif loss_type == "grpo":
            norm = len(s.completion_ids) * sequences
        elif loss_type == "dr_grpo":
            norm = max_tokens * sequences
        else:  # bnpo
            local = samples[i - i % size: i - i % size + size]
            norm = sum(len(x.completion_ids) for x in local) * batches
        s.loss_norm = max(norm, 1.0) / processes


def contributing(samples: list[Sample], kl_coef: float) -> list[Sample]:
    """The samples whose loss is not identically zero, longest first (micro-batches of similar lengths pad little).

    A policy-gradient sample with advantage 0 and no likelihood weight (a GRPO group all right or all wrong)
    adds nothing to the loss or its gradient unless a KL term is on; skipping its forward and backward leaves
    the gradient unchanged, because `normalise` set every sample's norm from the whole batch, which counts it.
    """
    keep = [s for s in samples if s.advantage != 0.0 or s.nll_weight != 0.0 or kl_coef > 0
            or any(s.token_advantages or ())]
    return sorted(keep, key=lambda s: len(s.prompt_ids) + len(s.completion_ids), reverse=True)


def role_loss(model, samples: list[Sample], *, pad_id: int, clip_eps: float, kl_coef: float,
              reference_logps: torch.Tensor | None = None,
              temperature: float = 1.0, share_prefix: bool = False,
              tis_cap: float | None = None) -> tuple[torch.Tensor, dict]:
    """Loss of one micro-batch: each sample's summed token loss over its `loss_norm` (`normalise`), so the
    micro-batches' losses add up to the step's.

    With `tis_cap` (truncated importance sampling, for an engine whose sampling distribution drifts from the
    learner's, e.g. a bf16 server), each policy-gradient token is weighted by min(p_learner / p_engine, cap),
    the learner's probability being that of its first pass over the rollout (held fixed)."""
    if any(s.loss_norm <= 0 for s in samples):
        raise ValueError("a sample reached role_loss without its loss_norm: call losses.normalise on the role's "
                         "whole step batch first")
    device = next(model.parameters()).device
    ids, attn, mask = pad_batch(samples, pad_id, device)
    first = torch.tensor([len(s.prompt_ids) for s in samples], device=device)
    logp, ent = (shared_prefix_scores(model, samples, ids, attn, temperature) if share_prefix
                 else token_scores(model, ids, attn, temperature, first=first))
    # every completion token of the micro-batch, row by row, as one flat vector (the loss is a sum over them)
    rows, cols = mask.nonzero(as_tuple=True)
    lp = logp[rows, cols]
    lengths = [len(s.completion_ids) for s in samples]
    per_sample = torch.tensor([[s.advantage, s.nll_weight, 1.0 / s.loss_norm] for s in samples], device=device)
    adv, w, inv_norm = per_sample.repeat_interleave(torch.tensor(lengths, device=device), dim=0).unbind(1)
    if any(s.token_advantages is not None for s in samples):  # credit by token (`reward.credit=critique`)
        adv = torch.tensor([x for s in samples for x in s.token_advantage_list()], device=device, dtype=adv.dtype)
    # the first pass over a rollout stores its log-probs as the old ones (ratio 1 with a live gradient);
    # later PPO epochs score the same tokens against them, where the clip binds
    if any(s.old_logps is None for s in samples):
        for s, piece in zip(samples, lp.detach().clone().split(lengths)):
            if s.old_logps is None:
                s.old_logps = piece
    old = torch.cat([s.old_logps.to(device) for s in samples])
    # the sampler's log-probs of the same tokens (NaN where the sampler did not write the completion)
    engine = [s.sampler_logps is not None and len(s.sampler_logps) == n for s, n in zip(samples, lengths)]
    sampled = torch.tensor([x for s, n, e in zip(samples, lengths, engine) for x in (s.sampler_logps if e else [float("nan")] * n)],
                           device=device, dtype=lp.dtype)
    known = ~torch.isnan(sampled)
    gap = (old - sampled)[known].abs().cpu() if bool(known.any()) else torch.zeros(0)
    ratio = torch.exp(lp - old)
    clipped_term = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    pg = -torch.min(ratio * adv, clipped_term)
    if tis_cap is not None:
        pg = pg * torch.where(known, torch.exp(old - sampled).clamp(max=tis_cap), torch.ones_like(old))
    if any(s.shaping > 0 for s in samples):  # Critique-GRPO's off-policy revisions: -A p/(p+gamma), unclipped
        gamma = torch.tensor([s.shaping for s in samples], device=device, dtype=lp.dtype).repeat_interleave(
            torch.tensor(lengths, device=device))
        p = torch.exp(lp)
        pg = torch.where(gamma > 0, -adv * p / (p + gamma), pg)
    clipped = clipped_term < ratio * adv  # the clip took the gradient away
    per_token = pg - w * lp
    kl = torch.zeros((), device=device)
    if kl_coef > 0 and reference_logps is not None:
        delta = reference_logps[rows, cols] - lp
        # k3 estimator, non-negative: its value estimates KL(pi || pi_ref) under samples from pi; its gradient
        # (samples held fixed) estimates grad KL(pi_ref || pi) (tests/test_losses.py checks both exactly)
        kl_tok = torch.exp(delta) - delta - 1
        per_token = per_token + kl_coef * kl_tok
        kl = kl_tok.sum() / max(lp.numel(), 1)
    loss = (per_token * inv_norm).sum()
    nll = -lp.sum() / max(lp.numel(), 1)
    return loss, {"kl": float(kl.detach()), "nll": float(nll.detach()), "tokens": float(lp.numel()),
                  "clipped": float(clipped.sum()), "gap_sum": float(gap.sum()), "gap_tokens": float(gap.numel()),
                  "entropy_sum": float((ent * mask[::ENTROPY_EVERY]).sum()),
                  "entropy_tokens": float(mask[::ENTROPY_EVERY].sum()),
                  "gap_max": float(gap.max()) if gap.numel() else 0.0}


def likelihood_loss(model, samples: list[Sample], pad_id: int, total_tokens: int) -> torch.Tensor:
    """sum over the completion tokens of `samples` of -log p, divided by `total_tokens` (the tokens of every
    micro-batch of the step): the warm start's cross-entropy, by the learner's own log-prob path."""
    ids, attn, mask = pad_batch(samples, pad_id, next(model.parameters()).device)
    logp = token_logprobs(model, ids, attn, first=[len(s.prompt_ids) for s in samples])
    return -(logp * mask).sum() / max(total_tokens, 1)


def reference_logprobs(model, samples: list[Sample], pad_id: int, disable_adapters,
                       temperature: float = 1.0) -> torch.Tensor:
    """Log-probs under the reference policy: the base model with every adapter disabled, in inference mode
    (no autograd bookkeeping at all); the result is cloned out of inference mode to enter the loss."""
    device = next(model.parameters()).device
    ids, attn, _ = pad_batch(samples, pad_id, device)
    with torch.inference_mode(), disable_adapters():
        logp = token_logprobs(model, ids, attn, temperature, first=[len(s.prompt_ids) for s in samples])
    return logp.clone()
