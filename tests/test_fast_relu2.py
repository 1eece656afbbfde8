"""The fused ReLU² (hybridlab.model.fast_relu2) against transformers' ReLUSquaredActivation: the same
bits forward and backward, swapped in and out with the fast path without nesting or leftovers."""

from __future__ import annotations

import torch
from transformers.activations import ACT2FN

from hybridlab.model.fast_mamba import use_fast_mamba
from hybridlab.model.fast_relu2 import FusedReLUSquared
from tests.families.tiny import tiny_model


def _value_and_grad(activation, x, upstream):
    x = x.clone().requires_grad_()
    out = activation(x)
    (out * upstream).sum().backward()
    return out.detach(), x.grad


def test_fused_relu2_equals_transformers_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=generator) * 3
    x[0, :8] = 0.0  # the kink: relu's gradient there is 0 in both
    upstream = torch.randn(64, 96, generator=generator)
    original = ACT2FN["relu2"]
    for dtype in (torch.float32, torch.bfloat16):
        want = _value_and_grad(original, x.to(dtype), upstream.to(dtype))
        got = _value_and_grad(FusedReLUSquared(original), x.to(dtype), upstream.to(dtype))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _relu2_kinds(model) -> list[str]:
    return [type(m).__name__ for m in model.modules() if "ReLUSquared" in type(m).__name__]


def test_the_fast_path_swaps_relu2_in_and_out():
    model = tiny_model("nemotron_h")
    plain = _relu2_kinds(model)
    keys = set(model.state_dict())
    assert plain and set(plain) == {"ReLUSquaredActivation"}
    use_fast_mamba(model)
    use_fast_mamba(model)  # twice: no fused module inside another
    fused = _relu2_kinds(model)
    assert fused.count("FusedReLUSquared") == len(plain) and fused.count("ReLUSquaredActivation") == len(plain)
    assert set(model.state_dict()) == keys
    use_fast_mamba(model, False)
    assert _relu2_kinds(model) == plain
