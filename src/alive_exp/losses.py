"""Advantage estimators and the one loss every role trains with.

A role's batch is a list of `Sample`s: a policy-gradient sample carries an advantage, a likelihood
target (oracle critique, distilled revision, FCP) carries a weight. One token-level loss covers both:

    loss = sum_tokens [ -A * ratio_clipped  +  kl_coef * KL_k3  -  w * log p ] / tokens
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

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


def _batch(samples: list[Sample], pad_id: int, device: torch.device):
    seqs = [s.prompt_ids + s.completion_ids for s in samples]
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.float32)
    for i, (s, seq) in enumerate(zip(samples, seqs)):
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        mask[i, len(s.prompt_ids): len(seq)] = 1.0
    return ids.to(device), attn.to(device), mask.to(device)


def _logits(model, keep: int, **inputs) -> torch.Tensor:
    """The model's logits at the last `keep` positions: computed only there when the model takes
    `logits_to_keep` (every transformers causal LM), sliced from the full logits otherwise."""
    if _keeps_logits(model):
        return model(**inputs, logits_to_keep=keep).logits
    return model(**inputs).logits[:, -keep:]


def _keeps_logits(model) -> bool:
    """Whether the (PEFT-wrapped) model's forward takes `logits_to_keep`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _takes_logits_to_keep(type(base))


@functools.cache
def _takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _cache_arg(model) -> str:
    """The forward's name for past keys and values: `cache` from transformers 5.2x (where `past_key_values`
    is deprecated), `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


ENTROPY_EVERY = 4  # rows of a micro-batch whose entropy is measured: 1 in 4


def _target_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(logits / temperature) at the targets, without materialising the full log-softmax (for a
    large vocabulary that tensor, in fp32 over every position, is most of the learner's memory); and the
    entropy of the full distribution at each position of every ENTROPY_EVERY-th row (a metric: no gradient,
    a sample of rows, so it costs ~1% of the update)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    with torch.no_grad():
        z = logits.detach()[::ENTROPY_EVERY]
        ent = torch.cat([torch.logsumexp(c, -1) - (torch.softmax(c, -1) * c).sum(-1) for c in z.split(8)]) \
            if z.size(0) else z.new_zeros(z.shape[:-1])
    return lp, ent


def token_logprobs(model, ids: torch.Tensor, attn: torch.Tensor, temperature: float = 1.0,
                   first: int = 1) -> torch.Tensor:
    """log p(token_t | tokens_<t) for every position t >= `first` (earlier positions get 0), under
    softmax(logits / temperature): the distribution the sampler drew from, so the policy gradient scores what
    the policy sampled. Logits are computed only where they are needed (`logits_to_keep`): with `first` the
    batch's first completion position, the prompts' positions cost no vocabulary projection."""
    return _token_scores(model, ids, attn, temperature, first)[0]


def _token_scores(model, ids: torch.Tensor, attn: torch.Tensor, temperature: float = 1.0,
                  first: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs`, and the entropy at each position of every ENTROPY_EVERY-th row (no gradient)."""
    first = max(int(first), 1)
    keep = ids.size(1) - first + 1  # logits at positions first-1 .. W-1 predict tokens first .. W (the last unused)
    logits = _logits(model, keep, input_ids=ids, attention_mask=attn)[:, :-1]
    logp, ent = _target_logprobs(logits, ids[:, first:], temperature)
    return torch.nn.functional.pad(logp, (first, 0)), torch.nn.functional.pad(ent, (first, 0))


MIN_SHARED_PREFIX = 8  # fewer prompt tokens saved are not worth a second forward call


def common_prefix(samples: list[Sample]) -> int:
    """Tokens every sample's prompt starts with, leaving at least one prompt token to each suffix (so every
    completion token is predicted from the suffix pass)."""
    first = samples[0].prompt_ids
    n = min(len(s.prompt_ids) for s in samples) - 1
    for s in samples[1:]:
        ids = s.prompt_ids
        k = 0
        while k < n and ids[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _group_key(s: Sample):
    return s.group if s.group is not None else tuple(s.prompt_ids)


def _length(s: Sample) -> int:
    return len(s.prompt_ids) + len(s.completion_ids)


def prefix_groups(samples: list[Sample], size: int) -> list[list[Sample]]:
    """Micro-batches of at most `size` samples made of whole prefix groups: the samples of one `Sample.group`
    (the step sets it: a task's N solutions, the reviews of one task's solutions) or of one identical prompt,
    a group larger than `size` split. Groups are packed together longest first, so one forward call serves
    several groups (a call's fixed cost dominates a tiny model's update) and lengths within a call are close."""
    by_group: dict[object, list[Sample]] = {}
    for s in samples:
        by_group.setdefault(_group_key(s), []).append(s)
    pieces = []
    for group in by_group.values():
        group.sort(key=_length, reverse=True)
        pieces += [group[i:i + size] for i in range(0, len(group), size)]
    chunks: list[list[Sample]] = []
    for piece in sorted(pieces, key=lambda g: _length(g[0]), reverse=True):
        if chunks and len(chunks[-1]) + len(piece) <= size:
            chunks[-1] += piece
        else:
            chunks.append(list(piece))
    return chunks


def shared_prefix_logprobs(model, samples: list[Sample], pad_id: int, temperature: float = 1.0) -> torch.Tensor:
    """`token_logprobs` of `_batch(samples)`, computing each prefix group's common prompt prefix once: one
    forward call runs every group's prefix (right-padded), its keys and values (with their gradient) are
    gathered for each sample of the group, and one more call runs every suffix (rest of the prompt,
    completion) against them at its own positions. Equal to the plain pass on every completion token up to
    rounding (tests/test_losses.py); on a task's N solutions it skips N - 1 of N prompt passes."""
    ids, attn, _ = _batch(samples, pad_id, next(model.parameters()).device)
    return _shared_prefix_logprobs(model, samples, ids, attn, temperature)[0]


def _shared_prefix_logprobs(model, samples: list[Sample], ids: torch.Tensor, attn: torch.Tensor,
                            temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    members: dict[object, list[int]] = {}
    for i, s in enumerate(samples):
        members.setdefault(_group_key(s), []).append(i)
    groups = list(members.values())
    prefix = [common_prefix([samples[i] for i in m]) for m in groups]
    saved = sum((len(m) - 1) * p for m, p in zip(groups, prefix))  # prompt tokens not run again
    if saved < MIN_SHARED_PREFIX or min(prefix) < 1:
        return _token_scores(model, ids, attn, temperature, first=min(len(s.prompt_ids) for s in samples))
    dev, width = ids.device, ids.size(1)
    pre_ids = ids.new_zeros((len(groups), max(prefix)))
    pre_attn = torch.zeros_like(pre_ids)
    row = torch.empty(len(samples), dtype=torch.long)
    for g, (m, p) in enumerate(zip(groups, prefix)):
        pre_ids[g, :p], pre_attn[g, :p] = ids[m[0], :p], 1
        row[m] = g
    row = row.to(dev)
    start = torch.tensor(prefix, device=dev)[row]                 # each sample's first suffix position
    rest = attn.sum(1) - start                                      # its suffix length (prompt rest + completion)
    if int(rest.max()) < 2:  # no completion token anywhere: nothing to score
        return torch.zeros(ids.shape, device=dev), torch.zeros(ids[::ENTROPY_EVERY].shape, device=dev)
    j = torch.arange(int(rest.max()), device=dev).unsqueeze(0)
    valid = j < rest.unsqueeze(1)
    positions = start.unsqueeze(1) + j
    suffix = torch.where(valid, ids.gather(1, positions.clamp(max=width - 1)), 0)
    # logits only from the first suffix index any sample's completion needs (its prompt's end, minus one)
    lead = int(min(len(s.prompt_ids) - prefix_of for s, prefix_of in zip(samples, start.tolist()))) - 1
    pre = {"logits_to_keep": 1} if _keeps_logits(model) else {}
    out = model(input_ids=pre_ids, attention_mask=pre_attn, use_cache=True, **pre)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cache.batch_select_indices(row)
    logits = _logits(model, suffix.size(1) - lead, input_ids=suffix,
                     attention_mask=torch.cat([pre_attn[row], valid.long()], 1), **{_cache_arg(model): cache},
                     position_ids=positions, use_cache=False)[:, :-1]
    lp, ent = _target_logprobs(logits, suffix[:, lead + 1:], temperature)  # column i: suffix index lead + 1 + i
    # back to the batch's layout: ids position t is suffix index t - start, i.e. lp column t - start - lead - 1
    k = torch.arange(width, device=dev).unsqueeze(0) - start.unsqueeze(1) - lead - 1
    known = (k >= 0) & (k < (rest - lead - 1).unsqueeze(1))
    at = k.clamp(0, lp.size(1) - 1)
    zero = torch.zeros((), device=dev)
    return (torch.where(known, lp.gather(1, at), zero),
            torch.where(known[::ENTROPY_EVERY], ent.gather(1, at[::ENTROPY_EVERY]), zero))


def role_loss(model, samples: list[Sample], *, pad_id: int, clip_eps: float, kl_coef: float,
              total_tokens: int, reference_logps: torch.Tensor | None = None,
              temperature: float = 1.0, share_prefix: bool = False) -> tuple[torch.Tensor, dict]:
    """Loss of one micro-batch, normalised by the role's total completion tokens in the step."""
    device = next(model.parameters()).device
    ids, attn, mask = _batch(samples, pad_id, device)
    logp, ent = (_shared_prefix_logprobs(model, samples, ids, attn, temperature) if share_prefix
                 else _token_scores(model, ids, attn, temperature, first=min(len(s.prompt_ids) for s in samples)))
    adv = torch.tensor([s.advantage for s in samples], device=device).unsqueeze(1)
    w = torch.tensor([s.nll_weight for s in samples], device=device).unsqueeze(1)
    # the first pass over a rollout stores its log-probs as the old ones (ratio 1 with a live gradient);
    # later PPO epochs score the same tokens against them, where the clip binds
    old = torch.zeros_like(logp)
    gaps: list[torch.Tensor] = []
    for i, s in enumerate(samples):
        start, end = len(s.prompt_ids), len(s.prompt_ids) + len(s.completion_ids)
        if s.old_logps is None:
            s.old_logps = logp[i, start:end].detach().clone()
            if s.sampler_logps is not None and len(s.sampler_logps) == end - start:
                gaps.append((s.old_logps.cpu() - torch.tensor(s.sampler_logps)).abs())
        old[i, start:end] = s.old_logps.to(device)
    old = torch.where(mask > 0, old, logp.detach())
    ratio = torch.exp(logp - old)
    clipped_term = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    pg = -torch.min(ratio * adv, clipped_term)
    clipped = ((clipped_term < ratio * adv) & (mask > 0)).float()  # the clip took the gradient away
    per_token = pg - w * logp
    kl = torch.zeros((), device=device)
    if kl_coef > 0 and reference_logps is not None:
        delta = reference_logps - logp
        # k3 estimator, non-negative: its value estimates KL(pi || pi_ref) under samples from pi; its gradient
        # (samples held fixed) estimates grad KL(pi_ref || pi) (tests/test_losses.py checks both exactly)
        kl_tok = torch.exp(delta) - delta - 1
        per_token = per_token + kl_coef * kl_tok
        kl = (kl_tok * mask).sum() / mask.sum().clamp(min=1)
    loss = (per_token * mask).sum() / max(total_tokens, 1)
    nll = -(logp * mask).sum() / mask.sum().clamp(min=1)
    gap = torch.cat(gaps) if gaps else torch.zeros(0)
    return loss, {"kl": float(kl.detach()), "nll": float(nll.detach()), "tokens": float(mask.sum()),
                  "clipped": float(clipped.sum()), "gap_sum": float(gap.sum()), "gap_tokens": float(gap.numel()),
                  "entropy_sum": float((ent * mask[::ENTROPY_EVERY]).sum()),
                  "entropy_tokens": float(mask[::ENTROPY_EVERY].sum()),
                  "gap_max": float(gap.max()) if gap.numel() else 0.0}


def reference_logprobs(model, samples: list[Sample], pad_id: int, disable_adapters,
                       temperature: float = 1.0) -> torch.Tensor:
    """Log-probs under the reference policy: the base model with every adapter disabled, in inference mode
    (no autograd bookkeeping at all); the result is cloned out of inference mode to enter the loss."""
    device = next(model.parameters()).device
    ids, attn, _ = _batch(samples, pad_id, device)
    with torch.inference_mode(), disable_adapters():
        logp = token_logprobs(model, ids, attn, temperature, first=min(len(s.prompt_ids) for s in samples))
    return logp.clone()
