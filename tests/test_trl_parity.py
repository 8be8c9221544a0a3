"""The scalar baseline is TRL's: TRL's own `GRPOTrainer` (its advantages, its `_compute_loss`, its gradient
accumulation) on a tiny random Qwen2 against `group_advantages` + `normalise` + `role_loss`, on the same
prompts, completions and rewards: groups with mixed, continuous and all-equal rewards, completions of
different lengths, one step of several local batches. Ratio 1, no KL, float32.

TRL generates nothing here: its `rollout_func` hook hands it our token ids, and a reward function our rewards;
everything after that (padding, masks, rewards to advantages, the token count, each loss type's division,
the split into local batches of `per_device_train_batch_size`) is TRL's code. TRL's training loop shuffles
the generation batch before it cuts it into local batches; here it is cut in order, so bnpo's local batches
hold the same consecutive samples as ours. trl is a dev dependency (pyproject's [dev]): no skip without it.
"""

from __future__ import annotations

import copy

import pytest
import torch

from alive_exp.losses import LOSS_TYPES, Sample, group_advantages, normalise, role_loss

pytestmark = [pytest.mark.filterwarnings("ignore:You are using 'rollout_func'"),
              pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated")]

VOCAB, PAD = 12, 0
G, LOCAL, ACCUMULATE, MAX_TOKENS = 4, 4, 3, 6  # samples per group; local batch; local batches per step; limit
# three groups of G: pass/fail, continuous, all equal (advantage 0: only the norms count them)
REWARDS = [[1.0, 0.0, 0.0, 1.0], [0.3, -1.2, 2.5, 0.7], [1.0, 1.0, 1.0, 1.0]]
LENGTHS = [[1, 6, 3, 2], [4, 1, 6, 5], [2, 3, 6, 1]]  # 6 = max_completion_length (truncated ones)
PROMPT = 3  # every prompt has 3 tokens: TRL left-pads prompts, and no padding keeps positions identical
# TRL's scale_rewards -> (reward.advantage, reward.scale_by_std)
SCALINGS = {"group": ("grpo", True), "batch": ("batch", True), "none": ("grpo", False)}
FLOAT32 = 1e-6  # float32 rounding, relative to the largest entry (a failure prints the gap)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<eos>": 1, **{f"t{i}": i for i in range(2, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def _model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16, pad_token_id=PAD,
                      eos_token_id=1, tie_word_embeddings=False)
    return Qwen2ForCausalLM(cfg).float()


def _tokens():
    """Each sample's prompt and completion ids, group by group (G consecutive samples share a prompt)."""
    g = torch.Generator().manual_seed(1)
    prompts, completions = [], []
    for lengths in LENGTHS:
        prompt = torch.randint(2, VOCAB, (PROMPT,), generator=g).tolist()
        for n in lengths:
            prompts.append(prompt)
            completions.append(torch.randint(2, VOCAB, (n,), generator=g).tolist())
    return prompts, completions


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    return build_trainer(tmp_path_factory.mktemp("trl"))


def build_trainer(out):
    """TRL's GRPOTrainer on the tiny model, handed our completions and rewards."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    prompts, completions = _tokens()
    flat = [r for g in REWARDS for r in g]

    def rollout(batch_prompts, trainer):  # TRL's hook for a custom generator: here, fixed token ids
        assert len(batch_prompts) == len(prompts)
        return {"prompt_ids": prompts, "completion_ids": completions, "logprobs": None}

    def reward(prompts, completions, **kwargs):
        return flat

    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=LOCAL,
                      gradient_accumulation_steps=ACCUMULATE, num_generations=G, max_completion_length=MAX_TOKENS,
                      beta=0.0, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no",
                      activation_checkpointing=False, bf16=False)
    data = Dataset.from_dict({"prompt": [f"q{i}" for i in range(len(REWARDS))]})
    t = GRPOTrainer(model=_model(), reward_funcs=reward, args=args, train_dataset=data,
                    processing_class=_tokenizer(), rollout_func=rollout)
    t.model.train()
    return t


def _trl(trainer, loss_type: str, scale: str):
    """TRL's advantages and gradient for one step: `_generate_and_score_completions` on the generation batch
    (each prompt G times, as its sampler repeats them), split into its local batches in order, each one's
    `_compute_loss` backpropagated as `Trainer.training_step` does (the loss is already scaled for them)."""
    from trl.trainer.utils import split_tensor_dict

    trainer.loss_type, trainer.scale_rewards = loss_type, scale
    trainer.current_gradient_accumulation_steps = ACCUMULATE
    inputs = [{"prompt": f"q{i}"} for i in range(len(REWARDS)) for _ in range(G)]
    out = trainer._generate_and_score_completions(inputs)
    model = trainer.model
    model.zero_grad(set_to_none=True)
    for local in split_tensor_dict(out, ACCUMULATE):
        trainer._compute_loss(model, local).backward()
    return out["advantages"].tolist(), _grads(model)


def _ours(model, loss_type: str, scale: str, micro_batches: list[slice]):
    """Ours on a copy of the same weights: the advantages, each sample's norm from the whole step, and the loss
    accumulated over micro-batches that cut across TRL's local batches (they must not matter)."""
    estimator, by_std = SCALINGS[scale]
    advantages = [a for g in group_advantages(REWARDS, estimator, by_std) for a in g]
    prompts, completions = _tokens()
    samples = [Sample("solver", p, c, advantage=a) for p, c, a in zip(prompts, completions, advantages)]
    normalise(samples, loss_type, batch_size=LOCAL, max_tokens=MAX_TOKENS)
    model.zero_grad(set_to_none=True)
    for part in micro_batches:
        loss, _ = role_loss(model, samples[part], pad_id=PAD, clip_eps=0.2, kl_coef=0.0)
        loss.backward()
    return advantages, _grads(model)


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).detach().clone()


@pytest.fixture(scope="module")
def theirs(trainer):
    """TRL's advantages for each scaling and its gradient for each loss type (scale_rewards="group")."""
    advantages = {scale: _trl(trainer, "dapo", scale)[0] for scale in SCALINGS}
    gradients = {loss_type: _trl(trainer, loss_type, "group")[1] for loss_type in LOSS_TYPES}
    return advantages, gradients


def test_our_advantages_are_trls_for_each_scaling(trainer, theirs):
    ours = copy.deepcopy(trainer.model)
    for scale, want in theirs[0].items():
        mine, _ = _ours(ours, "dapo", scale, [slice(0, 12)])
        gap = max(abs(a - b) for a, b in zip(mine, want))
        assert gap <= FLOAT32 * max(map(abs, want)), f"scale_rewards={scale}: ours differ from TRL's by {gap:.3g}"
        assert mine[8:] == [0.0] * 4  # all equal: no signal, whatever the scaling
    assert theirs[0]["batch"] != pytest.approx(theirs[0]["group"], abs=1e-2)  # the scalings differ here


@pytest.mark.parametrize("loss_type", list(LOSS_TYPES))
def test_our_gradient_is_trls_for_each_loss_type(trainer, theirs, loss_type):
    want = theirs[1][loss_type]
    scale = float(want.abs().max())
    assert scale > 1e-2
    ours = copy.deepcopy(trainer.model)
    for cut in ([slice(0, 12)], [slice(0, 5), slice(5, 7), slice(7, 12)]):
        _, mine = _ours(ours, loss_type, "group", cut)
        gap = float((mine - want).abs().max())
        assert gap <= FLOAT32 * scale, f"{loss_type}: ours differs from TRL's by {gap:.3g} (largest {scale:.3g})"
    for other, g in theirs[1].items():  # each loss type has its own gradient here: the check tells them apart
        if other != loss_type:
            assert float((g - want).abs().max()) > 1e3 * FLOAT32 * scale, other
