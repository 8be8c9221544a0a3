"""The learner's LoRA linear layers as one autograd function each: the same function and gradients as PEFT's
`base(x) + lora_B(lora_A(x)) * scaling`, in one matrix product forward and one for the input's gradient.

PEFT's forward runs, per adapted layer, three matrix products and two elementwise passes over the layer's
output (the scaling and the sum), and autograd records five nodes whose backward adds three more elementwise
passes. On a small model those passes cost about as much as the products (docs/benchmarks.md). Here, with
W' = W + s B A formed in the call (out x in x r multiply-adds, small beside the tokens x out x in of the layer):

    forward   y = x W'^T (+ bias)
    backward  dx = dy W'     dA = s (dy B)^T x     dB = s dy^T (x A^T)

W' is formed again in the backward rather than kept, so the memory held for the backward is what PEFT holds.
Only float32 weights outside autocast are fused: in bf16 or fp16 (bf16-mixed autocasts the products),
W + s B A would round a small update away (PEFT keeps the low-rank path separate for that reason), so those
layers keep PEFT's forward, as do sharded (DTensor) weights. In float32 the gradients are PEFT's up to
rounding (tests/test_fused_lora.py).

`fused_lora(model)` swaps the forward of every PEFT LoRA `Linear` whose active adapter is a plain LoRA (no
dropout, DoRA or other variant, no LoRA bias, not merged, a frozen float32 `nn.Linear` base) for the fused
one, for the duration of the context; any other layer keeps PEFT's forward. Only the forward needs the
context: the backward is the function's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, a, b, scaling: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        merged = torch.addmm(weight, b, a, alpha=scaling)  # W + s B A
        y = torch.addmm(bias, x2, merged.t()) if bias is not None else x2 @ merged.t()
        ctx.save_for_backward(x2, weight, a, b)
        ctx.scaling, ctx.shape = scaling, shape
        return y.view(*shape[:-1], weight.size(0))

    @staticmethod
    def backward(ctx, dy):
        x2, weight, a, b = ctx.saved_tensors
        s = ctx.scaling
        dy2 = dy.reshape(-1, dy.size(-1))
        dx = (dy2 @ torch.addmm(weight, b, a, alpha=s)).view(ctx.shape) if ctx.needs_input_grad[0] else None
        da = ((dy2 @ b).t() @ x2).mul_(s) if ctx.needs_input_grad[3] else None
        db = (dy2.t() @ (x2 @ a.t())).mul_(s) if ctx.needs_input_grad[4] else None
        return dx, None, None, da, db, None


def _plain_adapter(layer) -> str | None:
    """The one active adapter of a PEFT LoRA layer if the fused function computes exactly what PEFT would,
    else None (PEFT's own forward runs)."""
    if getattr(layer, "merged", True) or getattr(layer, "disable_adapters", True):
        return None
    if getattr(layer, "fan_in_fan_out", False) or not isinstance(getattr(layer, "base_layer", None), nn.Linear):
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(name, False):
        return None
    if not isinstance(layer.lora_dropout[name], nn.Identity) or getattr(layer, "lora_bias", {}).get(name, False):
        return None
    if layer.base_layer.weight.requires_grad or (layer.base_layer.bias is not None and layer.base_layer.bias.requires_grad):
        return None
    weight = layer.base_layer.weight
    if weight.dtype != torch.float32 or layer.lora_A[name].weight.dtype != torch.float32:
        return None
    if torch.is_autocast_enabled(weight.device.type):  # bf16-mixed: the products would run, and round, in bf16
        return None
    if not isinstance(weight, nn.Parameter) or type(weight.data) is not torch.Tensor:  # e.g. a sharded DTensor
        return None
    return name


def _fused_forward(layer, peft_forward):
    def forward(x, *args, **kwargs):
        name = _plain_adapter(layer)
        if name is None or args or kwargs or x.dtype != torch.float32:
            return peft_forward(x, *args, **kwargs)
        base = layer.base_layer
        return _LoraLinear.apply(x, base.weight, base.bias, layer.lora_A[name].weight, layer.lora_B[name].weight,
                                 float(layer.scaling[name]))
    return forward


def _lora_linears(model) -> list[nn.Module]:
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:  # no PEFT: nothing to fuse
        return []
    return [m for m in model.modules() if isinstance(m, Linear)]


@contextlib.contextmanager
def fused_lora(model, enabled: bool = True) -> Iterator[int]:
    """Within the context, the model's plain LoRA linear layers run the fused function; yields how many of
    its LoRA layers fuse with the adapters active at entry (0 for a model without LoRA, with `enabled=False`,
    or whose layers are not plain float32 LoRA: those run PEFT's forward)."""
    layers = _lora_linears(model) if enabled else []
    saved = [layer.__dict__.get("forward") for layer in layers]  # an instance forward someone else set
    for layer in layers:
        layer.forward = _fused_forward(layer, layer.forward)
    try:
        yield sum(_plain_adapter(layer) is not None for layer in layers)
    finally:
        for layer, before in zip(layers, saved):
            if before is None:
                del layer.forward  # back to the class's (PEFT's) forward
            else:
                layer.forward = before
