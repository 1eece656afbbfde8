"""The residual stream's RMSNorm through the native kernels: per family, outputs and gradients equal
transformers' norm to float32 rounding, and the module tree (state_dict names) stays as it was."""

import copy

import pytest
import torch

from hybridlab.families.hf_mamba2_mixer import RMS_NORM_CLASS_NAMES
from hybridlab.model import native
from hybridlab.model.fast_rmsnorm import use_fused_rmsnorm
from hybridlab.model.native.functions import NativeRMSNorm
from tests.families.tiny import tiny_model

FAMILIES = ["nemotron_h", "mamba2", "bamba", "granite_moe_hybrid", "falcon_h1", "zamba2"]
needs_native = pytest.mark.skipif(native.kernels() is None, reason="no C++ compiler here")


def _norms(model):
    return [m for m in model.modules() if type(m).__name__ in RMS_NORM_CLASS_NAMES]


def _run(norm, x, upstream):
    norm.zero_grad()
    x = x.clone().requires_grad_()
    out = norm(x)
    (out * upstream).sum().backward()
    return out.detach(), x.grad, norm.weight.grad.clone()


@needs_native
@pytest.mark.parametrize("family", FAMILIES)
def test_each_familys_norm_equals_transformers(family, monkeypatch):
    model = tiny_model(family)
    names = list(model.state_dict())
    assert use_fused_rmsnorm(model) == len(_norms(model)) > 0
    assert list(model.state_dict()) == names
    calls = []
    original_apply = NativeRMSNorm.apply

    def counted(*args):
        calls.append(1)
        return original_apply(*args)

    generator = torch.Generator().manual_seed(0)
    for norm in _norms(model):
        with torch.no_grad():
            norm.weight.normal_(generator=generator)  # a trained norm's weight, not ones
        x = torch.randn(2, 7, norm.weight.shape[0], generator=generator) * 3
        upstream = torch.randn(2, 7, norm.weight.shape[0], generator=generator)
        use_fused_rmsnorm(model, False)
        want = _run(norm, x, upstream)
        use_fused_rmsnorm(model, True)
        monkeypatch.setattr(NativeRMSNorm, "apply", counted)
        got = _run(norm, x, upstream)
        monkeypatch.setattr(NativeRMSNorm, "apply", original_apply)
        for g, w in zip(got, want):
            assert ((g - w).abs().max() / w.abs().max()).item() < 1e-5
    assert len(calls) == len(_norms(model))


@needs_native
def test_what_the_kernels_do_not_cover_runs_transformers_forward():
    model = tiny_model("nemotron_h")
    use_fused_rmsnorm(model)
    norm = _norms(model)[0]
    twin = copy.deepcopy(norm)  # the switch travels with a copy
    x = torch.randn(3, norm.weight.shape[0])
    assert torch.allclose(twin(x), norm(x))
    bf16 = x.bfloat16()
    use_fused_rmsnorm(model, False)
    want = norm(bf16)
    use_fused_rmsnorm(model, True)
    assert torch.equal(norm(bf16), want)  # bfloat16: transformers' own forward, bit for bit
    strided = torch.randn(norm.weight.shape[0], 3).t()  # rows not contiguous: copied first
    assert torch.allclose(norm(strided), twin(strided.contiguous()))
