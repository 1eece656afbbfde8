"""A model's own loss (`model(ids, labels=ids).loss`) through the native cross-entropy once the fast
path is on: the same loss and gradients as transformers' ForCausalLMLoss, and only where that was the
model's loss."""

import pytest
import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from hybridlab.model import native
from hybridlab.model.fast_loss import causal_lm_loss, use_fast_loss
from hybridlab.model.fast_mamba import use_fast_mamba
from hybridlab.model.native.functions import NativeCrossEntropy
from tests.families.tiny import tiny_model

needs_native = pytest.mark.skipif(
    native.kernels() is None or native.variant()[0] != "avx2", reason="the native AVX2 kernels do not build here"
)


def _loss_and_grads(model, ids, labels, **kwargs):
    model.zero_grad()
    loss = model(ids, labels=labels, use_cache=False, **kwargs).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@needs_native
@pytest.mark.parametrize("family", ["nemotron_h", "mamba2", "bamba", "granite_moe_hybrid", "falcon_h1", "zamba2"])
def test_a_models_loss_equals_transformers_and_runs_the_native_kernel(family, monkeypatch):
    model = tiny_model(family).train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 13), generator=generator)
    labels = ids.clone()
    labels[1, :4] = -100  # padding the loss skips
    use_fast_mamba(model, True)
    calls = []
    original_apply = NativeCrossEntropy.apply

    def counted(*args):
        calls.append(1)
        return original_apply(*args)

    for extra in ({}, {"num_items_in_batch": torch.tensor(17)}):
        use_fast_loss(model, False)  # the fast mixers in both runs: only the loss differs
        assert model.loss_function is ForCausalLMLoss
        want, want_grads = _loss_and_grads(model, ids, labels, **extra)
        assert use_fast_loss(model, True)
        calls.clear()
        monkeypatch.setattr(NativeCrossEntropy, "apply", counted)
        got, got_grads = _loss_and_grads(model, ids, labels, **extra)
        monkeypatch.setattr(NativeCrossEntropy, "apply", original_apply)
        assert calls, "the native cross-entropy did not run"
        assert torch.allclose(got, want, rtol=1e-6, atol=0), (got, want)
        assert got_grads.keys() == want_grads.keys()
        for name, grad in want_grads.items():
            # float32 rounding in d(logits) grows on its way down the layers: 1.2e-5 at Zamba2's first
            # mixer; the head, next to the loss, gets it as the kernel gives it
            tolerance = 1e-5 if name.startswith("lm_head") else 1e-4
            assert (got_grads[name] - grad).abs().max() <= tolerance * grad.abs().max(), name


@needs_native
def test_shifted_labels_and_an_all_ignored_batch_behave_as_transformers():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 11, generator=generator)
    labels = torch.randint(0, 11, (2, 5), generator=generator)
    shifted = torch.randint(0, 11, (2, 5), generator=generator)
    want = ForCausalLMLoss(logits, labels, 11, shift_labels=shifted)
    assert torch.allclose(causal_lm_loss(logits, labels, 11, shift_labels=shifted), want, rtol=1e-6)
    ignored = torch.full((2, 5), -100)
    assert causal_lm_loss(logits, ignored, 11).isnan() and ForCausalLMLoss(logits, ignored, 11).isnan()
    with pytest.raises(RuntimeError, match="outside the 11-token vocabulary"):
        causal_lm_loss(logits, torch.full((2, 5), 11), 11)


def test_a_loss_someone_set_stays_and_switching_off_gives_transformers_back():
    model = tiny_model("nemotron_h")
    use_fast_mamba(model, True)
    assert model.loss_function is causal_lm_loss
    use_fast_mamba(model, False)
    assert model.loss_function is ForCausalLMLoss and "_loss_function" not in model.__dict__

    def custom(logits, labels, vocab_size, **kwargs):
        return logits.sum() * 0

    model.loss_function = custom
    assert not use_fast_loss(model, True) and model.loss_function is custom
    use_fast_mamba(model, False)
    assert model.loss_function is custom


def test_bf16_and_non_cpu_style_inputs_fall_back_to_transformers():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 9, generator=generator).bfloat16()
    labels = torch.randint(0, 9, (2, 6), generator=generator)
    # upcast to float32 as transformers does, then the same value either way
    assert torch.allclose(causal_lm_loss(logits, labels, 9), ForCausalLMLoss(logits, labels, 9), rtol=1e-6)


def test_logits_go_into_a_buffer_nobody_holds_and_never_into_one_someone_keeps():
    """The switched-on model writes its logits (and the loss kernel its gradient) into buffers earlier
    calls finished with; logits a caller kept, or a gradient a hook kept, stay as they were."""
    model = tiny_model("nemotron_h").train()
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    use_fast_mamba(model, False)
    want = model(ids, use_cache=False).logits.detach()
    use_fast_mamba(model, True)
    head = model.get_output_embeddings()

    def close_to_plain(logits):  # the fast mixers round differently: float32 rounding through the layers
        return (logits - want).abs().max() <= 1e-5 * want.abs().max()

    kept = model(ids, use_cache=False).logits
    assert "forward" not in vars(head)  # the recycling forward is the model call's only
    assert close_to_plain(kept)
    kept_copy, kept_at = kept.detach().clone(), kept.data_ptr()
    second = model(ids, use_cache=False).logits
    assert second.data_ptr() != kept_at and torch.equal(kept, kept_copy)
    second_at = second.data_ptr()
    del second  # nobody holds it now: the next call writes there
    third = model(ids, use_cache=False).logits
    assert third.data_ptr() == second_at and torch.equal(third, kept)

    grads = []
    for _ in range(2):
        logits = model(ids, labels=ids, use_cache=False)
        logits.logits.register_hook(lambda grad: grads.append(grad))
        logits.loss.backward()
        del logits
    if native.kernels() is not None and native.variant()[0] == "avx2":
        assert grads[0].data_ptr() != grads[1].data_ptr()  # the first is still held: not reused
    assert torch.allclose(grads[0], grads[1])

    use_fast_mamba(model, False)
    assert not any(hook.__module__ == "hybridlab.model.fast_loss" for hook in model._forward_pre_hooks.values())
    assert torch.equal(model(ids, use_cache=False).logits, want)


def test_the_recycled_linear_equals_f_linear_forward_and_backward():
    from hybridlab.model.native.functions import RecycledLinear

    generator = torch.Generator().manual_seed(4)
    for bias in (None, torch.randn(7, generator=generator)):
        x = torch.randn(3, 5, 6, generator=generator)
        weight = torch.randn(7, 6, generator=generator)
        upstream = torch.randn(3, 5, 7, generator=generator)
        grads = []
        for fn in (torch.nn.functional.linear, lambda *a: RecycledLinear.apply(*a, "test_linear")):
            leaves = [t.clone().requires_grad_() for t in (x, weight) + (() if bias is None else (bias,))]
            out = fn(leaves[0], leaves[1], leaves[2] if bias is not None else None)
            (out * upstream).sum().backward()
            grads.append([out.detach()] + [leaf.grad for leaf in leaves])
        for got, want in zip(grads[1], grads[0]):
            assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)
