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


def test_fused_relu2_equals_transformers_bit_for_bit(monkeypatch):
    from hybridlab.model import fast_relu2, native

    native_calls = []
    original_apply = fast_relu2._NativeReLUSquared.apply
    monkeypatch.setattr(fast_relu2._NativeReLUSquared, "apply", lambda *a: native_calls.append(1) or original_apply(*a))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=generator) * 3
    x[0, :8] = 0.0  # the kink: relu's gradient there is 0 in both
    x[1, :3] = torch.tensor([float("nan"), -0.0, float("inf")])
    upstream = torch.randn(64, 96, generator=generator)
    original = ACT2FN["relu2"]
    # float32 runs the native kernels where they build, bf16 the PyTorch ops
    for dtype in (torch.float32, torch.bfloat16):
        want = _value_and_grad(original, x.to(dtype), upstream.to(dtype))
        got = _value_and_grad(FusedReLUSquared(original), x.to(dtype), upstream.to(dtype))
        for one, other in zip(got, want):
            assert torch.equal(one.isnan(), other.isnan())
            assert torch.equal(one.nan_to_num(), other.nan_to_num())
    assert len(native_calls) == (native.kernels() is not None)


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
