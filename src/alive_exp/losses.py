"""Advantage estimators and the one loss every role trains with.

A role's batch is a list of `Sample`s: a policy-gradient sample carries an advantage, a likelihood
target (oracle critique, distilled revision, FCP) carries a weight. One token-level loss covers both:

    loss = sum_tokens [ -A * ratio_clipped  +  kl_coef * KL_k3  -  w * log p ] / tokens
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alive_exp.logprobs import ENTROPY_EVERY, _batch, _shared_prefix_logprobs, _token_scores, token_logprobs

ADVANTAGES: dict[str, Callable[[list[float]], list[float]]] = {}


def advantage(name: str):
    def deco(fn):
        ADVANTAGES[name] = fn
        return fn

    return deco


@advantage("grpo")
def grpo(rewards: list[float]) -> list[float]:
    """Group-relative: reward minus the group mean (std scaling is applied by `group_advantages`)."""
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


@advantage("rloo")
def rloo(rewards: list[float]) -> list[float]:
    """Leave-one-out baseline: each sample is compared with the mean of the others."""
    n = len(rewards)
    if n < 2:
        return [0.0] * n
    total = sum(rewards)
    return [r - (total - r) / (n - 1) for r in rewards]


@advantage("batch")
def batch_mean(rewards: list[float]) -> list[float]:
    return grpo(rewards)


def group_advantages(groups: list[list[float]], estimator: str, scale_by_std: bool) -> list[list[float]]:
    """Advantages per group; `batch` pools all groups into one (a per-role baseline, as in TRR++)."""
    if estimator not in ADVANTAGES:
        raise KeyError(f"unknown advantage estimator {estimator!r}; known: {', '.join(ADVANTAGES)}")
    fn = ADVANTAGES[estimator]
    if estimator == "batch":
        flat = [r for g in groups for r in g]
        adv = fn(flat) if flat else []
        out, i = [], 0
        for g in groups:
            out.append(adv[i:i + len(g)])
            i += len(g)
        return [_scaled(a, [r for g in groups for r in g], scale_by_std) for a in out]
    return [_scaled(fn(g), g, scale_by_std) for g in groups]


def _scaled(adv: list[float], rewards: list[float], scale_by_std: bool) -> list[float]:
    if not scale_by_std or len(rewards) < 2:
        return adv
    t = torch.tensor(rewards, dtype=torch.float64)
    std = float(t.std())
    return [a / (std + 1e-4) for a in adv]


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


def contributing(samples: list[Sample], kl_coef: float) -> list[Sample]:
    """The samples whose loss is not identically zero, longest first (micro-batches of similar lengths pad little).

    A policy-gradient sample with advantage 0 and no likelihood weight (a GRPO group all right or all wrong)
    adds nothing to the loss or its gradient unless a KL term is on; skipping its forward and backward leaves
    the gradient unchanged, because `role_loss` normalises by the role's total tokens, which still count it.
    """
    keep = [s for s in samples if s.advantage != 0.0 or s.nll_weight != 0.0 or kl_coef > 0]
    return sorted(keep, key=lambda s: len(s.prompt_ids) + len(s.completion_ids), reverse=True)


def role_loss(model, samples: list[Sample], *, pad_id: int, clip_eps: float, kl_coef: float,
              total_tokens: int, reference_logps: torch.Tensor | None = None,
              temperature: float = 1.0, share_prefix: bool = False,
              tis_cap: float | None = None) -> tuple[torch.Tensor, dict]:
    """Loss of one micro-batch, normalised by the role's total completion tokens in the step.

    With `tis_cap` (truncated importance sampling, for an engine whose sampling distribution drifts from the
    learner's, e.g. a bf16 server), each policy-gradient token is weighted by min(p_learner / p_engine, cap),
    the learner's probability being that of its first pass over the rollout (held fixed)."""
    device = next(model.parameters()).device
    ids, attn, mask = _batch(samples, pad_id, device)
    first = torch.tensor([len(s.prompt_ids) for s in samples], device=device)
    logp, ent = (_shared_prefix_logprobs(model, samples, ids, attn, temperature) if share_prefix
                 else _token_scores(model, ids, attn, temperature, first=first))
    # every completion token of the micro-batch, row by row, as one flat vector (the loss is a sum over them)
    rows, cols = mask.nonzero(as_tuple=True)
    lp = logp[rows, cols]
    lengths = [len(s.completion_ids) for s in samples]
    per_sample = torch.tensor([[s.advantage, s.nll_weight] for s in samples], device=device)
    adv, w = per_sample.repeat_interleave(torch.tensor(lengths, device=device), dim=0).unbind(1)
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
    loss = per_token.sum() / max(total_tokens, 1)
    nll = -lp.sum() / max(lp.numel(), 1)
    return loss, {"kl": float(kl.detach()), "nll": float(nll.detach()), "tokens": float(lp.numel()),
                  "clipped": float(clipped.sum()), "gap_sum": float(gap.sum()), "gap_tokens": float(gap.numel()),
                  "entropy_sum": float((ent * mask[::ENTROPY_EVERY]).sum()),
                  "entropy_tokens": float(mask[::ENTROPY_EVERY].sum()),
                  "gap_max": float(gap.max()) if gap.numel() else 0.0}


def likelihood_loss(model, samples: list[Sample], pad_id: int, total_tokens: int) -> torch.Tensor:
    """sum over the completion tokens of `samples` of -log p, divided by `total_tokens` (the tokens of every
    micro-batch of the step): the warm start's cross-entropy, by the learner's own log-prob path."""
    ids, attn, mask = _batch(samples, pad_id, next(model.parameters()).device)
    logp = token_logprobs(model, ids, attn, first=[len(s.prompt_ids) for s in samples])
    return -(logp * mask).sum() / max(total_tokens, 1)


def reference_logprobs(model, samples: list[Sample], pad_id: int, disable_adapters,
                       temperature: float = 1.0) -> torch.Tensor:
    """Log-probs under the reference policy: the base model with every adapter disabled, in inference mode
    (no autograd bookkeeping at all); the result is cloned out of inference mode to enter the loss."""
    device = next(model.parameters()).device
    ids, attn, _ = _batch(samples, pad_id, device)
    with torch.inference_mode(), disable_adapters():
        logp = token_logprobs(model, ids, attn, temperature, first=[len(s.prompt_ids) for s in samples])
    return logp.clone()
