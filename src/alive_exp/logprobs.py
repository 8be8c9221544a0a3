"""Log-probs of completion tokens under the policy, the learner's one path (every role, the warm start, the
reference policy): the decoder over the batch, the vocabulary projection only at each row's completion
positions, in chunks recomputed for the backward pass; the prompt prefix a group of samples shares run once.
Equal to the full log-softmax up to rounding (tests/test_losses.py).
"""

from __future__ import annotations

import functools
import inspect
from typing import Protocol

import torch


class Scored(Protocol):
    """What the log-prob path reads of a sample (`losses.Sample` is one): its tokens and its prefix group."""

    prompt_ids: list[int]
    completion_ids: list[int]
    group: object


def pad_batch(samples: list[Scored], pad_id: int, device: torch.device):
    """Prompt + completion of each sample, right-padded: token ids, attention mask, completion-token mask."""
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


def _keeps_logits(model) -> bool:
    """Whether the (PEFT-wrapped) model's forward takes `logits_to_keep`."""
    return _takes_logits_to_keep(type(_base(model)))


@functools.cache
def _takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _cache_arg(module) -> str:
    """The forward's name for past keys and values: `cache` from transformers 5.2x (where `past_key_values`
    is deprecated), `past_key_values` before."""
    return _cache_name(type(module))


@functools.cache
def _cache_name(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _body_and_head(model):
    """The (PEFT-wrapped) causal LM as its decoder and its vocabulary projection, so the projection runs only
    at the positions that are scored; None for a model that cannot be split so (then its logits are sliced)."""
    base = _base(model)
    if not (hasattr(base, "get_decoder") and hasattr(base, "get_output_embeddings")):
        return None
    if getattr(getattr(base, "config", None), "final_logit_softcapping", None):
        return None  # logits are transformed after the projection: leave the model's own forward to do it
    body, head = base.get_decoder(), base.get_output_embeddings()
    if body is None or head is None or body is base:
        return None
    return body, head


ENTROPY_EVERY = 4  # rows of a micro-batch whose entropy is measured: 1 in 4
CHUNK_BYTES = 64 * 2 ** 20  # fp32 logits of one chunk of scored positions (a 152k vocabulary: 110 positions)


def _chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * max(vocab, 1)))


def _scores_of(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _entropy_of(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    z = logits.detach().float()
    if temperature != 1.0:
        z = z / temperature
    return torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)


def _selected_scores(project, hidden: torch.Tensor, targets: torch.Tensor, measured: torch.Tensor,
                     temperature: float, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(project(h) / temperature) at each target, for the flat scored positions `hidden` (T, H), in
    chunks of CHUNK_BYTES of logits: a chunk's logits are never all kept for the backward pass (each chunk is
    recomputed there, as activation checkpointing does), so the learner's memory is one chunk's logits, not
    every position's (for a 152k vocabulary those, in fp32, are most of it). Also the entropy of the full
    distribution at the positions `measured` selects (a metric: no gradient)."""
    n = _chunk_rows(vocab)
    if hidden.size(0) <= n:  # one chunk: nothing to save by recomputing
        logits = project(hidden)
        with torch.no_grad():
            ent = _entropy_of(logits[measured], temperature)
        return _scores_of(logits, targets, temperature), ent
    from torch.utils.checkpoint import checkpoint

    lps, ents = [], []
    for h, t, m in zip(hidden.split(n), targets.split(n), measured.split(n)):
        if torch.is_grad_enabled() and h.requires_grad:
            lps.append(checkpoint(lambda h, t: _scores_of(project(h), t, temperature), h, t, use_reentrant=False))
        else:
            lps.append(_scores_of(project(h), t, temperature))
        with torch.no_grad():
            ents.append(_entropy_of(project(h[m]), temperature) if bool(m.any()) else h.new_zeros(0))
    return torch.cat(lps), torch.cat(ents)


def _scored_positions(attn: torch.Tensor, first) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) of every token scored: a real token (attention 1) at or after its row's `first` (an int
    for every row, or one per row: a right-padded batch's completions start where each row's prompt ends)."""
    width = attn.size(1)
    start = torch.as_tensor(first, device=attn.device).clamp(min=1).reshape(-1, 1)
    keep = (torch.arange(width, device=attn.device).unsqueeze(0) >= start) & (attn > 0)
    return keep.nonzero(as_tuple=True)


def _scatter(shape, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    out = values.new_zeros(shape)
    return out.index_put((rows, cols), values)


def _laid_out(ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, lp: torch.Tensor,
              ent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat scores back in the batch's layout: log-probs shaped as `ids`, entropies (of the positions of every
    ENTROPY_EVERY-th row) as `ids[::ENTROPY_EVERY]`, zero where nothing was scored."""
    m = rows % ENTROPY_EVERY == 0
    return (_scatter(ids.shape, rows, cols, lp),
            _scatter(ids[::ENTROPY_EVERY].shape, rows[m] // ENTROPY_EVERY, cols[m], ent))


def _unscored(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`_laid_out` of a batch with no completion token: nothing to score."""
    return torch.zeros(ids.shape, device=ids.device), torch.zeros(ids[::ENTROPY_EVERY].shape, device=ids.device)


def _named_cache(inputs: dict, module) -> dict:
    """`inputs` with its past keys and values (given as `past_key_values`) under the name `module` takes."""
    if "past_key_values" not in inputs or _cache_arg(module) == "past_key_values":
        return inputs
    out = dict(inputs)
    out[_cache_arg(module)] = out.pop("past_key_values")
    return out


def _position_scores(model, inputs: dict, rows: torch.Tensor, at: torch.Tensor, targets: torch.Tensor,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of `targets` predicted at (rows, at) of the model's output on `inputs`, and the entropies at
    the positions of every ENTROPY_EVERY-th row: the decoder runs on every position, the vocabulary projection
    only on the predicting ones (`_body_and_head`), else the model's logits from the first of them are sliced."""
    measured = rows % ENTROPY_EVERY == 0
    split = _body_and_head(model)
    if split is not None:
        body, head = split
        hidden = body(**_named_cache(inputs, body), use_cache=False).last_hidden_state
        vocab = head.weight.size(0) if hasattr(head, "weight") else int(_base(model).config.vocab_size)
        return _selected_scores(head, hidden[rows, at], targets, measured, temperature, vocab)
    lo = int(at.min())
    inputs = _named_cache(inputs, _base(model))
    width = inputs["input_ids"].size(1)
    if _keeps_logits(model):
        logits = model(**inputs, use_cache=False, logits_to_keep=width - lo).logits
    else:
        logits = model(**inputs).logits[:, lo:]
    picked = logits[rows, at - lo]
    return _selected_scores(lambda x: x, picked, targets, measured, temperature, picked.size(-1))


def token_logprobs(model, ids: torch.Tensor, attn: torch.Tensor, temperature: float = 1.0,
                   first=1) -> torch.Tensor:
    """log p(token_t | tokens_<t) for every real token at a position t >= `first` (an int, or one per row;
    other positions get 0), under softmax(logits / temperature): the distribution the sampler drew from, so the
    policy gradient scores what the policy sampled. The vocabulary projection runs only at the scored
    positions, each row's own (a right-padded batch's completions start at different columns), in chunks."""
    return token_scores(model, ids, attn, temperature, first)[0]


def token_scores(model, ids: torch.Tensor, attn: torch.Tensor, temperature: float = 1.0,
                 first=1) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs`, and the entropy at each scored position of every ENTROPY_EVERY-th row (no gradient),
    shaped as `ids[::ENTROPY_EVERY]`."""
    rows, cols = _scored_positions(attn, first)
    if rows.numel() == 0:
        return _unscored(ids)
    lp, ent = _position_scores(model, {"input_ids": ids, "attention_mask": attn}, rows, cols - 1, ids[rows, cols],
                               temperature)
    return _laid_out(ids, rows, cols, lp, ent)


MIN_SHARED_PREFIX = 8  # fewer prompt tokens saved are not worth a second forward call


def common_prefix(samples: list[Scored]) -> int:
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


def _group_key(s: Scored):
    return s.group if s.group is not None else tuple(s.prompt_ids)


def _length(s: Scored) -> int:
    return len(s.prompt_ids) + len(s.completion_ids)


def prefix_groups(samples: list[Scored], size: int) -> list[list[Scored]]:
    """Micro-batches of at most `size` samples made of whole prefix groups: the samples of one `Sample.group`
    (the step sets it: a task's N solutions, the reviews of one task's solutions) or of one identical prompt,
    a group larger than `size` split. Groups are packed together by the length of their longest suffix (what
    the suffix pass pads to: the rest after the group's common prefix), longest first, so one forward call
    serves several groups (a call's fixed cost dominates a tiny model's update) and pads little."""
    by_group: dict[object, list[Scored]] = {}
    for s in samples:
        by_group.setdefault(_group_key(s), []).append(s)
    pieces = []
    for group in by_group.values():
        shared = common_prefix(group) if len(group) > 1 else 0
        group.sort(key=_length, reverse=True)
        pieces += [(_length(group[i]) - shared, group[i:i + size]) for i in range(0, len(group), size)]
    chunks: list[list[Scored]] = []
    for _, piece in sorted(pieces, key=lambda p: p[0], reverse=True):
        if chunks and len(chunks[-1]) + len(piece) <= size:
            chunks[-1] += piece
        else:
            chunks.append(list(piece))
    return chunks


def shared_prefix_logprobs(model, samples: list[Scored], pad_id: int, temperature: float = 1.0) -> torch.Tensor:
    """`token_logprobs` of `pad_batch(samples)`, computing each prefix group's common prompt prefix once: one
    forward call runs every group's prefix (right-padded), its keys and values (with their gradient) are
    gathered for each sample of the group, and one more call runs every suffix (rest of the prompt,
    completion) against them at its own positions. Equal to the plain pass on every completion token up to
    rounding (tests/test_losses.py); on a task's N solutions it skips N - 1 of N prompt passes."""
    ids, attn, _ = pad_batch(samples, pad_id, next(model.parameters()).device)
    return shared_prefix_scores(model, samples, ids, attn, temperature)[0]


def shared_prefix_scores(model, samples: list[Scored], ids: torch.Tensor, attn: torch.Tensor,
                         temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`shared_prefix_logprobs` of a batch already padded (`pad_batch`), and the entropies `token_scores` gives."""
    members: dict[object, list[int]] = {}
    for i, s in enumerate(samples):
        members.setdefault(_group_key(s), []).append(i)
    groups = list(members.values())
    prefix = [common_prefix([samples[i] for i in m]) for m in groups]
    saved = sum((len(m) - 1) * p for m, p in zip(groups, prefix))  # prompt tokens not run again
    first = torch.tensor([len(s.prompt_ids) for s in samples], device=ids.device)
    if saved < MIN_SHARED_PREFIX or min(prefix) < 1:
        return token_scores(model, ids, attn, temperature, first=first)
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
    rows, cols = _scored_positions(attn, first)                     # completion tokens, in the batch's layout
    if rows.numel() == 0:
        return _unscored(ids)
    j = torch.arange(int(rest.max()), device=dev).unsqueeze(0)
    valid = j < rest.unsqueeze(1)
    positions = start.unsqueeze(1) + j
    suffix = torch.where(valid, ids.gather(1, positions.clamp(max=width - 1)), 0)
    split = _body_and_head(model)
    prefix_model = split[0] if split is not None else model
    pre = {"logits_to_keep": 1} if split is None and _keeps_logits(model) else {}
    out = prefix_model(input_ids=pre_ids, attention_mask=pre_attn, use_cache=True, **pre)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cache.batch_select_indices(row)
    # token t of row i is predicted at suffix index t - 1 - start_i (>= 0: a suffix holds a prompt token)
    lp, ent = _position_scores(model, {"input_ids": suffix, "past_key_values": cache, "position_ids": positions,
                                       "attention_mask": torch.cat([pre_attn[row], valid.long()], 1)},
                               rows, cols - 1 - start[rows], ids[rows, cols], temperature)
    return _laid_out(ids, rows, cols, lp, ent)
