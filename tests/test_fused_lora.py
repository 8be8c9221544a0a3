"""The fused LoRA linear layers compute PEFT's function and gradients (fused_lora.py), and fall back to
PEFT's own forward wherever they would not."""

from __future__ import annotations

import contextlib

import pytest
import torch
from omegaconf import OmegaConf

from alive_exp.fused_lora import fused_lora
from alive_exp.models import attach_adapters

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft(dropout: float = 0.0, dtype=torch.float32, bias: bool = False):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, attention_bias=bias)
    model = Qwen2ForCausalLM(cfg).to(dtype)
    lcfg = OmegaConf.create({"finetune": "lora", "adapters": "per_role",
                             "lora": {"r": 4, "alpha": 12, "dropout": dropout, "target_modules": MODULES}})
    peft = attach_adapters(model, lcfg)
    with torch.no_grad():  # LoRA B starts at zero: give the adapters weights, so their path carries a gradient
        for n, p in peft.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    peft.set_adapter("reviewer")
    return peft


def _loss_and_grads(model, fused: bool):
    ids = torch.tensor([[3, 5, 7, 9, 11, 2, 4, 6], [8, 1, 2, 3, 4, 5, 0, 0]])
    attn = (ids > 0).long()
    model.zero_grad(set_to_none=True)
    with fused_lora(model, fused) as n:
        logits = model(input_ids=ids, attention_mask=attn).logits
    loss = (logits.log_softmax(-1)[..., 3] * attn).sum()  # any scalar of the logits
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return n, logits.detach(), grads


@pytest.mark.parametrize("bias", [False, True])
def test_fused_layers_give_pefts_logits_and_gradients(bias):
    model = _peft(bias=bias)
    n_peft, want, grads_peft = _loss_and_grads(model, fused=False)
    n, got, grads = _loss_and_grads(model, fused=True)
    assert n_peft == 0 and n == 2 * len(MODULES)  # every adapted linear of both layers fused
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_peft.keys() and all(".reviewer." in k for k in grads)  # only the active adapter trains
    assert len(grads) == 2 * 2 * len(MODULES)  # A and B of every adapted layer
    for k in grads:
        torch.testing.assert_close(grads[k], grads_peft[k], atol=1e-5, rtol=1e-4, msg=k)
        assert float(grads_peft[k].abs().max()) > 1e-4, k  # the check binds: each gradient is not ~0


def test_after_the_context_the_layers_run_pefts_forward_again():
    from peft.tuners.lora.layer import Linear

    model = _peft()
    with fused_lora(model):
        assert all("forward" in m.__dict__ for m in model.modules() if isinstance(m, Linear))
    assert not any("forward" in m.__dict__ for m in model.modules() if isinstance(m, Linear))


@pytest.mark.parametrize("case", ["dropout", "bf16", "autocast", "disabled", "merged"])
def test_layers_fused_lora_would_change_keep_pefts_forward(case):
    """LoRA dropout (the fused function has none), bf16 weights or bf16 autocast (W + sBA would round a small
    update away), adapters disabled (the reference policy) and merged adapters run PEFT's own forward."""
    model = _peft(dropout=0.1 if case == "dropout" else 0.0, dtype=torch.bfloat16 if case == "bf16" else torch.float32)
    model.eval()  # dropout off, so the outputs can be compared; the layer still holds a Dropout, not Identity
    ids = torch.tensor([[3, 5, 7, 9, 11, 2]])
    ctx = (model.disable_adapter() if case == "disabled" else torch.autocast("cpu", dtype=torch.bfloat16)
           if case == "autocast" else contextlib.nullcontext())
    if case == "merged":
        model.merge_adapter()
    with torch.no_grad(), ctx:
        want = model(input_ids=ids).logits
        with fused_lora(model) as n:
            got = model(input_ids=ids).logits
    assert n == 0
    torch.testing.assert_close(got, want, atol=0, rtol=0)
