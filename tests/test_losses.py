"""The loss every role trains with, checked against exact values on models small enough to enumerate.

- padding: right-padding a sequence into a batch leaves its log-probs unchanged;
- normalisation: micro-batches, each sample divided by its norm (`normalise`), give the gradient of one big
  batch; each loss type's norms by hand (against TRL itself: tests/test_trl_parity.py);
- KL: the k3 term's value is an unbiased estimate of KL(pi || pi_ref) under samples from pi, and its
  gradient (samples held fixed, no score-function term) is an unbiased estimate of grad KL(pi_ref || pi):
  checked exactly by weighting every token of a small vocabulary by pi;
- advantages: GRPO, RLOO, batch std and the pooled baseline against hand-computed values;
- the merged generation copy gives the PEFT model's logits for each role's adapter.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from omegaconf import OmegaConf

from alive_exp.logprobs import pad_batch, token_logprobs
from alive_exp.losses import Sample, group_advantages, role_loss

VOCAB, PAD = 7, 0


class Bigram(torch.nn.Module):
    """logits(next | previous) from a learnable table: exact distributions, no attention to get wrong."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(VOCAB, VOCAB, generator=g))

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table[input_ids]})()


@pytest.fixture(scope="module")
def lm():
    """A real causal LM (Qwen2 architecture, random weights) for padding and normalisation."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD)
    return Qwen2ForCausalLM(cfg).eval()


def _normed(samples: list[Sample], total: float) -> list[Sample]:
    """`samples` with every sample's summed loss divided by `total`: dapo's norm in a step of `total` tokens."""
    for s in samples:
        s.loss_norm = total
    return samples


def _samples(n: int, seed: int = 0) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        plen, clen = 2 + i % 3, 1 + (i * 5) % 6
        ids = torch.randint(1, 32, (plen + clen,), generator=g).tolist()
        out.append(Sample("solver", ids[:plen], ids[plen:], advantage=float(i % 3) - 1.0, nll_weight=0.5 * (i % 2)))
    return out


def test_padding_leaves_logprobs_unchanged(lm):
    samples = _samples(5)
    ids, attn, mask = pad_batch(samples, PAD, torch.device("cpu"))
    batched = token_logprobs(lm, ids, attn)
    for i, s in enumerate(samples):
        x = s.prompt_ids + s.completion_ids
        alone = token_logprobs(lm, torch.tensor([x]), torch.ones(1, len(x), dtype=torch.long))[0]
        sel = mask[i].bool()
        assert int(sel.sum()) == len(s.completion_ids)  # the mask covers exactly the completion
        torch.testing.assert_close(batched[i][sel], alone[len(s.prompt_ids):], atol=1e-5, rtol=1e-5)


def _grad(model, chunks: list[list[Sample]], total: int, **kw) -> tuple[torch.Tensor, float]:
    model.zero_grad(set_to_none=True)
    value = 0.0
    for chunk in chunks:
        loss, _ = role_loss(model, _normed(chunk, total), pad_id=PAD, clip_eps=0.2, kl_coef=0.0, **kw)
        loss.backward()
        value += float(loss.detach())
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return grads, value


def test_micro_batches_give_the_gradient_of_one_batch(lm):
    model = copy.deepcopy(lm).train()
    samples = _samples(7)
    total = sum(len(s.completion_ids) for s in samples)
    one, v_one = _grad(model, [samples], total)
    many, v_many = _grad(model, [samples[:2], samples[2:3], samples[3:]], total)
    assert one.abs().sum() > 0
    torch.testing.assert_close(many, one, atol=1e-6, rtol=1e-4)
    assert v_many == pytest.approx(v_one, rel=1e-5)


def test_loss_is_token_level_policy_gradient_plus_weighted_nll():
    """At ratio 1 the loss is sum(-A log p - w log p) / total tokens in value's gradient: checked term by term."""
    model = Bigram()
    s = [Sample("solver", [1, 2], [3, 4, 5], advantage=0.7), Sample("solver", [2], [6], advantage=-0.3, nll_weight=2.0)]
    total = 10  # the role's tokens in the whole step, more than in this micro-batch
    loss, info = role_loss(model, _normed(s, total), pad_id=PAD, clip_eps=0.2, kl_coef=0.0)
    loss.backward()
    got = model.table.grad.clone()
    model.zero_grad()
    logp = torch.log_softmax(model.table, -1)
    surrogate = -(0.7 * (logp[2, 3] + logp[3, 4] + logp[4, 5]) + (-0.3 + 2.0) * logp[2, 6]) / total
    surrogate.backward()
    torch.testing.assert_close(got, model.table.grad)
    assert info["tokens"] == 4.0
    nll = -float(logp[2, 3] + logp[3, 4] + logp[4, 5] + logp[2, 6]) / 4
    assert info["nll"] == pytest.approx(nll, rel=1e-5)


def test_kl_term_value_and_gradient_against_exact_kl():
    """Exact expectation over a 7-token vocabulary of the one-token completions after prompt [1]."""
    policy, reference = Bigram(seed=1), Bigram(seed=2)
    prev = 1
    ref_logp = torch.log_softmax(reference.table[prev].detach(), -1)
    pi = torch.softmax(policy.table[prev], -1).detach()
    value = torch.zeros(())
    policy.zero_grad()
    for x in range(VOCAB):
        s = [Sample("solver", [prev], [x])]
        ref = torch.zeros(1, 2)
        ref[0, 1] = ref_logp[x]
        loss, info = role_loss(policy, _normed(s, 1), pad_id=PAD, clip_eps=0.2, kl_coef=1.0, reference_logps=ref)
        (pi[x] * loss).backward()  # E_{x ~ pi}[k3(x)] with the sampling weights held fixed
        value = value + pi[x] * info["kl"]
    got_grad = policy.table.grad[prev].clone()

    logits = policy.table[prev].detach().clone().requires_grad_(True)
    logp = torch.log_softmax(logits, -1)
    kl_pi_ref = (logp.exp() * (logp - ref_logp)).sum()            # KL(pi || pi_ref): what the value estimates
    kl_ref_pi = (ref_logp.exp() * (ref_logp - logp)).sum()        # KL(pi_ref || pi): what the gradient descends
    assert float(value) == pytest.approx(float(kl_pi_ref), rel=1e-5)
    (grad_ref_pi,) = torch.autograd.grad(kl_ref_pi, logits)
    torch.testing.assert_close(got_grad, grad_ref_pi, atol=1e-6, rtol=1e-5)
    logp = torch.log_softmax(logits, -1)
    (grad_pi_ref,) = torch.autograd.grad((logp.exp() * (logp - ref_logp)).sum(), logits)
    assert not torch.allclose(got_grad, grad_pi_ref, atol=1e-3)  # the two directions really differ here


def test_kl_is_zero_at_the_reference():
    policy = Bigram(seed=3)
    s = [Sample("solver", [1, 2], [3, 4])]
    with torch.no_grad():
        ref = token_logprobs(policy, torch.tensor([[1, 2, 3, 4]]), torch.ones(1, 4, dtype=torch.long))
    loss, info = role_loss(policy, _normed(s, 2), pad_id=PAD, clip_eps=0.2, kl_coef=1.0, reference_logps=ref)
    assert info["kl"] == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert policy.table.grad.abs().max() < 1e-6


def test_grpo_advantages():
    (adv,) = group_advantages([[1.0, 0.0, 0.0, 1.0]], "grpo", scale_by_std=False)
    assert adv == [0.5, -0.5, -0.5, 0.5]
    (adv,) = group_advantages([[1.0, 0.0, 0.0, 1.0]], "grpo", scale_by_std=True)
    std = math.sqrt(1 / 3)  # sample standard deviation of 1,0,0,1
    a = 0.5 / (std + 1e-4)
    assert adv == pytest.approx([a, -a, -a, a])
    assert group_advantages([[1.0, 1.0, 1.0]], "grpo", True) == [[0.0, 0.0, 0.0]]  # all right: no signal


def test_rloo_advantages():
    (adv,) = group_advantages([[1.0, 0.0, 0.0, 0.0]], "rloo", scale_by_std=False)
    assert adv == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])
    assert group_advantages([[1.0]], "rloo", False) == [[0.0]]


def test_pooled_advantages_pool_every_group_and_batch_keeps_each_groups_mean():
    adv = group_advantages([[1.0, 1.0], [0.0, 0.0]], "pooled", scale_by_std=False)
    assert adv == [[0.5, 0.5], [-0.5, -0.5]]  # per group (grpo) both groups would be all zero
    assert group_advantages([[1.0, 1.0], [0.0, 0.0]], "grpo", False) == [[0.0, 0.0], [0.0, 0.0]]
    # batch: each group's own mean, the whole batch's std (TRL's scale_rewards="batch")
    groups = [[1.0, 0.0], [3.0, 3.0, 0.0]]
    flat = [1.0, 0.0, 3.0, 3.0, 0.0]
    m = sum(flat) / 5
    std = math.sqrt(sum((r - m) ** 2 for r in flat) / 4)
    want = [[0.5 / (std + 1e-4), -0.5 / (std + 1e-4)], [1.0 / (std + 1e-4), 1.0 / (std + 1e-4), -2.0 / (std + 1e-4)]]
    got = group_advantages(groups, "batch", True)
    assert [x for g in got for x in g] == pytest.approx([x for g in want for x in g])
    assert group_advantages(groups, "batch", False) == group_advantages(groups, "grpo", False)
    # one group: batch and pooled agree (the reviewer's single per-role group)
    assert group_advantages([flat], "batch", True)[0] == pytest.approx(group_advantages([flat], "pooled", True)[0])
    with pytest.raises(KeyError, match="unknown advantage estimator"):
        group_advantages([[1.0]], "ppo", False)


def test_each_loss_type_divides_by_its_count():
    """The norms of `normalise`, by hand: T = 9 tokens, N = 4 samples, 2 local batches of 2 (bnpo)."""
    from alive_exp.losses import LOSS_TYPES, local_counts, normalise

    samples = [Sample("solver", [1], [2] * n) for n in (1, 2, 4, 2)]
    want = {"dapo": [9, 9, 9, 9], "grpo": [4, 8, 16, 8], "dr_grpo": [20, 20, 20, 20], "bnpo": [6, 6, 12, 12]}
    assert set(want) == set(LOSS_TYPES)
    for loss_type, norms in want.items():
        normalise(samples, loss_type, batch_size=2, max_tokens=5)
        assert [s.loss_norm for s in samples] == norms, loss_type
    # across 2 processes: the global counts, each norm over the number of processes the reducer averages
    assert local_counts(samples, 2) == [9.0, 4.0, 2.0]
    normalise(samples, "dapo", batch_size=2, max_tokens=5, totals=[20.0, 9.0, 5.0], processes=2)
    assert [s.loss_norm for s in samples] == [10.0] * 4
    with pytest.raises(ValueError, match="reward.loss_type='sum'"):
        normalise(samples, "sum", batch_size=2, max_tokens=5)
    with pytest.raises(ValueError, match="losses.normalise"):
        role_loss(Bigram(), [Sample("solver", [1], [2])], pad_id=PAD, clip_eps=0.2, kl_coef=0.0)


def test_merged_copy_matches_the_peft_forward(lm):
    """MergedView's plain copy with a role's adapter merged in computes what the PEFT model computes."""
    from alive_exp.models import MergedView, attach_adapters

    cfg = OmegaConf.create({"finetune": "lora", "adapters": "per_role",
                            "lora": {"r": 4, "alpha": 8, "dropout": 0.0,
                                     "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                        "down_proj"]}})
    base = copy.deepcopy(lm)
    plain = copy.deepcopy(lm)
    peft = attach_adapters(base, cfg)
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero: give every adapter its own non-zero weights
        for n, p in peft.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    view = MergedView(peft, plain)
    ids = torch.tensor([[3, 5, 7, 9, 11, 2]])
    previous = None
    for role in ("solver", "reviewer", "constructor"):
        peft.set_adapter(role)
        with torch.no_grad():
            want = peft(input_ids=ids).logits
            got = view.model()(input_ids=ids).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        if previous is not None:
            assert not torch.allclose(want, previous, atol=1e-3)  # the adapters differ, so the check binds
        previous = want
    # after an optimizer step the copy is re-merged only when told the adapter changed
    peft.set_adapter("solver")
    view.model()
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if ".solver." in n and "lora_B" in n:
                p.add_(0.3)
        want = peft(input_ids=ids).logits
    assert not torch.allclose(view.model()(input_ids=ids).logits, want, atol=1e-3)  # stale until marked
    view.stale("solver")
    torch.testing.assert_close(view.model()(input_ids=ids).logits, want, atol=1e-5, rtol=1e-4)


def test_skipping_zero_advantage_samples_leaves_the_gradient_unchanged(lm):
    from alive_exp.losses import contributing

    model = copy.deepcopy(lm).train()
    samples = _samples(9)
    for s in samples[::3]:
        s.advantage, s.nll_weight = 0.0, 0.0  # a group all right or all wrong: no signal
    total = sum(len(s.completion_ids) for s in samples)
    full, _ = _grad(model, [samples[:4], samples[4:]], total)
    kept = contributing(samples, kl_coef=0.0)
    signal = [s for s in samples if s.advantage or s.nll_weight]
    assert len(kept) == len(signal) < len(samples) and [len(s.prompt_ids) + len(s.completion_ids) for s in kept] == sorted(
        (len(s.prompt_ids) + len(s.completion_ids) for s in kept), reverse=True)
    fast, _ = _grad(model, [kept[:3], kept[3:]], total)
    torch.testing.assert_close(fast, full, atol=1e-6, rtol=1e-4)
    assert len(contributing(samples, kl_coef=0.1)) == 9  # a KL term gives every sample a gradient


def test_the_learner_scores_at_the_sampling_temperature():
    """role_loss at temperature T is the loss of the policy softmax(logits / T), the one the sampler drew from."""
    model = Bigram(seed=4)
    s = [Sample("solver", [1, 2], [3, 4, 5], advantage=0.7, nll_weight=0.3)]
    loss, info = role_loss(model, _normed(s, 3), pad_id=PAD, clip_eps=0.2, kl_coef=0.0, temperature=0.5)
    logp = torch.log_softmax(model.table / 0.5, -1)
    want = -float(logp[2, 3] + logp[3, 4] + logp[4, 5]) / 3
    assert info["nll"] == pytest.approx(want, rel=1e-5)
    plain, _ = role_loss(model, _normed(s, 3), pad_id=PAD, clip_eps=0.2, kl_coef=0.0)
    assert float(plain) != pytest.approx(float(loss))


def _grouped(n: int, plen: int, seed: int = 0) -> list[Sample]:
    """n samples of one long prompt (a task's N solutions), completions of different lengths."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, 32, (plen,), generator=g).tolist()
    return [Sample("solver", prompt + ([5, 6][: i % 3]), torch.randint(1, 32, (1 + (3 * i) % 7,), generator=g).tolist(),
                   advantage=float(i % 3) - 1.0, nll_weight=0.25 * (i % 2)) for i in range(n)]


def _role_grads(lm, samples, share: bool):
    lm.zero_grad()
    loss, _ = role_loss(lm, _normed(samples, 40), pad_id=PAD, clip_eps=0.2, kl_coef=0.0, share_prefix=share)
    loss.backward()
    return [p.grad.clone() for p in lm.parameters()]


def test_shared_prefix_pass_gives_the_plain_logprobs_and_gradient(lm):
    from alive_exp.logprobs import prefix_groups, shared_prefix_logprobs

    samples = _grouped(6, 12)
    ids, attn, mask = pad_batch(samples, PAD, torch.device("cpu"))
    plain = token_logprobs(lm, ids, attn) * mask
    shared = shared_prefix_logprobs(lm, samples, PAD) * mask
    assert shared.shape == plain.shape and torch.allclose(shared, plain, atol=1e-5)

    for a, b in zip(*(_role_grads(lm, samples, share) for share in (False, True))):
        assert torch.allclose(a, b, atol=1e-5)
    # micro-batches are made of whole groups (the step's, else identical prompts; split at `size`), packed
    for s in samples:
        s.group = "task 0"
    other = _grouped(3, 12, seed=1)
    for s in other:
        s.group = "task 1"
    lone = _samples(4)
    chunks = prefix_groups(samples + other + lone, size=4)
    assert all(len(c) <= 4 for c in chunks) and sum(len(c) for c in chunks) == 13 and len(chunks) == 4
    assert sum(any(s.group == "task 0" for s in c) for c in chunks) == 2  # 6 samples: split once
    assert sum(any(s.group == "task 1" for s in c) for c in chunks) == 1  # 3 samples: never split
    # one call over several groups, each with its own prefix and positions, equals the plain pass
    mixed = samples[:3] + other + lone[:2]
    ids, attn, mask = pad_batch(mixed, PAD, torch.device("cpu"))
    plain = token_logprobs(lm, ids, attn) * mask
    packed = shared_prefix_logprobs(lm, mixed, PAD) * mask
    assert torch.allclose(packed, plain, atol=1e-5), (packed - plain).abs().max()
    for a, b in zip(*(_role_grads(lm, mixed, share) for share in (False, True))):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_second_ppo_epoch_scores_against_the_stored_log_probs_and_the_clip_binds(lm):
    samples = _samples(6)
    kw = dict(pad_id=PAD, clip_eps=1e-3, kl_coef=0.0)
    _normed(samples, 40)
    _, first = role_loss(lm, samples, **kw)
    assert first["clipped"] == 0.0 and all(s.old_logps is not None for s in samples)  # ratio 1 everywhere
    stored = [s.old_logps.clone() for s in samples]
    with torch.no_grad():  # an optimizer step's worth of change to the policy
        for p in lm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loss, second = role_loss(lm, samples, **kw)
    assert all(torch.equal(a, s.old_logps) for a, s in zip(stored, samples))  # old log-probs are kept, not refreshed
    pg_tokens = sum(len(s.completion_ids) for s in samples if s.advantage != 0)
    assert 0 < second["clipped"] <= pg_tokens
    # at clip_eps 0 the clip takes exactly the tokens whose ratio moved in the advantage's direction
    _, third = role_loss(lm, samples, **{**kw, "clip_eps": 0.0})
    ids, attn, _ = pad_batch(samples, PAD, torch.device("cpu"))
    with torch.no_grad():
        logp = token_logprobs(lm, ids, attn)
    moved = sum(int(((logp[i, len(s.prompt_ids):len(s.prompt_ids) + len(s.completion_ids)] - s.old_logps)
                     * s.advantage > 0).sum()) for i, s in enumerate(samples))
    assert third["clipped"] == moved > 0


def test_the_entropy_metric_is_the_full_distributions_on_the_sampled_rows(lm):
    from alive_exp.logprobs import ENTROPY_EVERY

    samples = _samples(9)
    ids, attn, mask = pad_batch(samples, PAD, torch.device("cpu"))
    _, info = role_loss(lm, _normed(samples, 40), pad_id=PAD, clip_eps=0.2, kl_coef=0.0, temperature=0.7)
    with torch.no_grad():
        p = torch.softmax(lm(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / 0.7, -1)
    exact = -(p * p.log()).sum(-1)  # at position t - 1: the distribution of token t
    rows = mask[::ENTROPY_EVERY, 1:]
    assert info["entropy_tokens"] == float(rows.sum()) > 0
    assert abs(info["entropy_sum"] - float((exact[::ENTROPY_EVERY] * rows).sum())) < 1e-4


def _full_logprobs(model, ids, attn, temperature=1.0):
    """The memory-hungry reference: logits at every position, a full fp32 log-softmax, gather."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / temperature
    return torch.nn.functional.pad(torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1), (1, 0))


def test_chunked_per_row_logprobs_equal_the_full_computation(lm, monkeypatch):
    """The vocabulary projection runs at each row's own completion positions only, in chunks recomputed in
    the backward pass; log-probs, gradient and entropies equal the full log-softmax over every position."""
    from peft import LoraConfig, get_peft_model

    import alive_exp.logprobs as L

    torch.manual_seed(3)
    peft = get_peft_model(copy.deepcopy(lm), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                        init_lora_weights=False))
    samples = _samples(9, seed=2)
    ids, attn, mask = pad_batch(samples, PAD, torch.device("cpu"))
    want = _full_logprobs(peft, ids, attn, 0.7) * mask
    projected = []
    head = peft.get_base_model().get_output_embeddings()
    hook = head.register_forward_hook(lambda m, a, out: projected.append(a[0].shape[:-1].numel()))

    def grads(share: bool):
        peft.zero_grad()
        for s in samples:
            s.old_logps = None
        loss, info = role_loss(peft, _normed(samples, 40), pad_id=PAD, clip_eps=0.2, kl_coef=0.0,
                               temperature=0.7, share_prefix=share)
        loss.backward()
        return [p.grad.clone() for p in peft.parameters() if p.grad is not None], info

    # one chunk
    got = token_logprobs(peft, ids, attn, 0.7, first=[len(s.prompt_ids) for s in samples]) * mask
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert projected[-1] == int(mask.sum())  # no prompt or padding position is projected
    one, info_one = grads(False)
    # three positions per chunk: many chunks, each recomputed for its backward
    monkeypatch.setattr(L, "CHUNK_BYTES", 3 * 4 * 32)
    projected.clear()
    got = token_logprobs(peft, ids, attn, 0.7, first=[len(s.prompt_ids) for s in samples]) * mask
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert max(projected) <= 3 and sum(projected) >= int(mask.sum())
    many, info_many = grads(False)
    assert len(one) == len(many) > 0
    for a, b in zip(one, many):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert info_many["entropy_sum"] == pytest.approx(info_one["entropy_sum"], rel=1e-5)
    # the model's own forward (logits sliced) gives the same gradient
    monkeypatch.setattr(L, "_body_and_head", lambda model: None)
    sliced, _ = grads(False)
    for a, b in zip(one, sliced):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    hook.remove()


def test_the_warm_starts_likelihood_is_the_cross_entropy_of_the_completions(lm):
    from alive_exp.losses import likelihood_loss

    samples = _samples(6, seed=4)
    ids, attn, mask = pad_batch(samples, PAD, torch.device("cpu"))
    labels = torch.where(mask > 0, ids, -100)[:, 1:]
    logits = lm(input_ids=ids, attention_mask=attn).logits[:, :-1]
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), reduction="sum")
    total = int(mask.sum()) + 5  # the step's tokens: more than this micro-batch's
    got = likelihood_loss(lm, samples[:4], PAD, total) + likelihood_loss(lm, samples[4:], PAD, total)
    assert float(got) == pytest.approx(float(want) / total, rel=1e-5)


def test_truncated_importance_sampling_weights_each_token_by_the_capped_ratio():
    """With `tis_cap`, a policy-gradient token the engine sampled with log-prob q (the learner's first pass:
    p) weighs min(exp(p - q), cap): here exp(log 2) = 2 -> 2, exp(-log 2) = 0.5, exp(log 10) = 10 -> cap 3."""
    model = Bigram(seed=5)
    logp = torch.log_softmax(model.table.detach(), -1)
    s = Sample("solver", [1, 2], [3, 4, 5], advantage=0.7)
    p = [float(logp[2, 3]), float(logp[3, 4]), float(logp[4, 5])]
    s.sampler_logps = [p[0] - math.log(2), p[1] + math.log(2), p[2] - math.log(10)]
    loss, _ = role_loss(model, _normed([s], 3), pad_id=PAD, clip_eps=0.2, kl_coef=0.0, tis_cap=3.0)
    loss.backward()
    got = model.table.grad.clone()
    model.zero_grad()
    lp = torch.log_softmax(model.table, -1)
    (-(0.7 * (2.0 * lp[2, 3] + 0.5 * lp[3, 4] + 3.0 * lp[4, 5])) / 3).backward()
    torch.testing.assert_close(got, model.table.grad)
    model.zero_grad()
    s.old_logps = None  # without the cap the same sample trains with weight 1 everywhere
    plain, _ = role_loss(model, _normed([s], 3), pad_id=PAD, clip_eps=0.2, kl_coef=0.0)
    plain.backward()
    assert not torch.allclose(model.table.grad, got)


def test_token_advantages_weigh_each_token_by_its_own_advantage():
    """`reward.credit=critique`: tokens before the named line carry max(A, 0), the line onward A. The gradient is
    that of sum_t -A_t log p_t / total, term by term; one advantage per token or the sample is refused."""
    model = Bigram(seed=3)
    s = Sample("solver", [1, 2], [3, 4, 5], advantage=-0.6, token_advantages=[0.0, -0.6, -0.6])
    loss, _ = role_loss(model, _normed([s], 3), pad_id=PAD, clip_eps=0.2, kl_coef=0.0)
    loss.backward()
    got = model.table.grad.clone()
    model.zero_grad()
    lp = torch.log_softmax(model.table, -1)
    (-(-0.6 * (lp[3, 4] + lp[4, 5])) / 3).backward()
    torch.testing.assert_close(got, model.table.grad)
    assert got[2].abs().sum() == 0  # the first token (after 2) carries nothing
    with pytest.raises(ValueError, match="2 token advantages for 3"):
        role_loss(model, _normed([Sample("solver", [1], [3, 4, 5], -1.0, token_advantages=[0.0, -1.0])], 3),
                  pad_id=PAD, clip_eps=0.2, kl_coef=0.0)


def test_a_shaped_sample_is_scored_by_p_over_p_plus_gamma_without_a_clip():
    """Critique-GRPO's off-policy revision: -A p/(p+gamma) per token, its gradient -A gamma p/(p+gamma)^2 dlog p
    (largest where p is near gamma), not the ratio's -A dlog p; an unshaped sample beside it keeps the ratio."""
    model = Bigram(seed=4)
    gamma = 0.1
    shaped = Sample("solver", [1, 2], [3, 4], advantage=0.8, shaping=gamma)
    plain = Sample("solver", [2], [6], advantage=-0.5)
    loss, _ = role_loss(model, _normed([shaped, plain], 3), pad_id=PAD, clip_eps=0.2, kl_coef=0.0)
    loss.backward()
    got = model.table.grad.clone()
    model.zero_grad()
    lp = torch.log_softmax(model.table, -1)
    p = torch.exp(torch.stack([lp[2, 3], lp[3, 4]]))
    (-(0.8 * (p / (p + gamma)).sum() + -0.5 * lp[2, 6]) / 3).backward()
    torch.testing.assert_close(got, model.table.grad)
    model.zero_grad()
    shaped.old_logps, shaped.shaping = None, 0.0
    unshaped, _ = role_loss(model, _normed([shaped], 3), pad_id=PAD, clip_eps=0.2, kl_coef=0.0)
    unshaped.backward()
    assert not torch.allclose(model.table.grad[2], got[2])
