"""On-policy by construction, on a model shaped like a hub instruct model: a Qwen2.5-Instruct-style tokenizer
(`<|endoftext|>` < `<|im_start|>` < `<|im_end|>` as distinct ids, pad = `<|endoftext|>`, Qwen's chat template)
and a generation config that ships a repetition penalty and top_k, as hub models do."""

from __future__ import annotations

import pytest
import torch

from alive_exp.logprobs import token_logprobs
from alive_exp.rollout import Generator

QWEN_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def qwen_like():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["Question: 12 + 34\nAnswer: 46", "user assistant system"] * 8, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = QWEN_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert ids["<|endoftext|>"] < ids["<|im_start|>"] < ids["<|im_end|>"] and tok.pad_token_id == ids["<|endoftext|>"]
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                                         eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]])).eval()
    # what Qwen2.5-Instruct ships: a repetition penalty, top_k and top_p, two EOS ids (the smaller one the pad)
    model.generation_config = GenerationConfig(repetition_penalty=1.5, top_k=3, top_p=0.5, temperature=0.3,
                                               do_sample=True, eos_token_id=[ids["<|endoftext|>"], ids["<|im_end|>"]],
                                               pad_token_id=ids["<|endoftext|>"])
    return model, tok, ids


def test_targets_end_in_the_turn_end_the_sampler_stops_on(qwen_like):
    model, tok, ids = qwen_like
    gen = Generator(model, tok)
    assert gen.turn_end == ids["<|im_end|>"] and gen.eos_ids[0] == ids["<|im_end|>"]
    assert gen.encode_completion("Answer: 46")[-1] == ids["<|im_end|>"]
    assert ids["<|endoftext|>"] in gen.eos_ids  # the model's other EOS still stops the sampler


def test_the_learner_scores_what_the_sampler_drew_whatever_the_models_generation_config(qwen_like):
    model, tok, _ = qwen_like
    saved = model.generation_config.to_dict()
    gen = Generator(model, tok)
    groups = gen.generate(["Question: 12 + 34", "Question: 5 + 6"], n=3, max_new_tokens=24, temperature=0.7, seed=0)
    assert model.generation_config.to_dict() == saved  # restored after the call
    worst = 0.0
    for c in (c for g in groups for c in g):
        assert c.sampler_logps is not None and len(c.sampler_logps) == len(c.completion_ids) > 0
        ids = torch.tensor([c.prompt_ids + c.completion_ids])
        with torch.no_grad():
            learner = token_logprobs(model, ids, torch.ones_like(ids), temperature=0.7)[0, len(c.prompt_ids):]
        worst = max(worst, float((learner - torch.tensor(c.sampler_logps)).abs().max()))
    # under the model's own generation config (penalty, top_k 3, top_p 0.5) the gap is of order one
    assert worst < 1e-5, worst
    greedy = gen.generate(["Question: 12 + 34"], n=1, max_new_tokens=8, temperature=0.0)
    assert greedy[0][0].sampler_logps is None
    with pytest.raises(ValueError, match="top_p"):
        gen.generate(["Question: 1 + 2"], n=1, max_new_tokens=4, temperature=0.7, top_p=0.9)


@pytest.mark.parametrize("overrides,chat", [(["model=qwen2.5-1.5b"], True), (["model=llama-3.2-1b"], True),
                                            (["model=qwen2.5-0.5b", "roles=base", "model.chat=false"], False)])
def test_hub_model_configs_choose_prompts_that_state_every_output_format(overrides, chat, qwen_like, tmp_path):
    from conftest import compose_cfg

    from alive_exp.roles import RoleTemplates

    cfg = compose_cfg(overrides, tmp_path)
    roles = cfg.roles
    assert "Span:" in roles.constructor and "Verdict: correct" in roles.reviewer and "Verdict: incorrect" in roles.reviewer
    assert all("Answer:" in roles[k] for k in ("solver", "refiner", "fcp_solver"))
    RoleTemplates(**roles)  # every placeholder its role needs
    model, tok, ids = qwen_like
    gen = Generator(model, tok, chat=cfg.model.chat)
    text = gen.chat("Task: 1 + 2")
    assert ("<|im_start|>" in text) == chat
    if not chat:  # a base model: plain text, ending in the tokenizer's EOS
        assert text == "Task: 1 + 2" and gen.turn_end == tok.eos_token_id
    assert compose_cfg([], tmp_path).roles.solver == "Solve the task.\n{task}"  # the tiny model keeps its prompts
