"""Exactness: each pruned axis equals the original model with those units removed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hybridlab import PruneSpec, estimate_importance, prune
from hybridlab.compression.importance import MAMBA_CHANNEL, MAMBA_HEAD
from hybridlab.compression.kept import kept_units
from hybridlab.compression.layer_importance import skipped
from hybridlab.families import MambaLayout, family_for

ATOL = 2e-5


def logits(model, batch):
    with torch.no_grad():
        return model(batch, use_cache=False).logits


def test_pruned_ffn_equals_original_with_neurons_zeroed(tiny_nemotron, token_batches):
    scores = estimate_importance(tiny_nemotron, token_batches, layer_metric=None)
    pruned = prune(tiny_nemotron, PruneSpec(ffn_hidden_size=20), scores)
    parts = family_for(tiny_nemotron).parts(tiny_nemotron)
    handles = []
    for layer in parts.layers:
        if layer.kind == "mlp":
            keep = torch.zeros(48)
            keep[torch.topk(scores.ffn[layer.index], 20).indices] = 1
            handles.append(layer.mixer.down_proj.register_forward_pre_hook(lambda m, a, keep=keep: (a[0] * keep,)))
    reference = logits(tiny_nemotron, token_batches[0])
    for h in handles:
        h.remove()
    assert torch.allclose(logits(pruned, token_batches[0]), reference, atol=ATOL)
    assert not torch.allclose(logits(tiny_nemotron, token_batches[0]), reference, atol=1e-3)  # zeroing mattered


def test_dropped_layer_equals_skipping_it(tiny_nemotron, token_batches):
    pruned = prune(tiny_nemotron, PruneSpec(drop_layers=[3]))
    assert pruned.config.layers_block_type == ["linear_attention", "mlp", "full_attention", "mlp", "linear_attention"]
    parts = family_for(tiny_nemotron).parts(tiny_nemotron)
    with skipped(parts.layers[3].block):
        reference = logits(tiny_nemotron, token_batches[0])
    assert torch.allclose(logits(pruned, token_batches[0]), reference, atol=ATOL)


def test_pruned_attention_heads_equal_zeroed_o_proj_input(tiny_nemotron, token_batches):
    scores = estimate_importance(tiny_nemotron, token_batches, layer_metric=None)
    pruned = prune(tiny_nemotron, PruneSpec(num_attention_heads=2), scores)
    attention = family_for(tiny_nemotron).parts(tiny_nemotron).layers[2]
    head_scores = scores.attention[2].view(2, 2)  # 2 KV groups x 2 query heads
    keep = torch.zeros(4, 8)
    for group in range(2):
        keep[group * 2 + int(head_scores[group].argmax())] = 1  # the better head of each KV group
    handle = attention.mixer.o_proj.register_forward_pre_hook(lambda m, a: (a[0] * keep.flatten(),))
    reference = logits(tiny_nemotron, token_batches[0])
    handle.remove()
    assert pruned.config.num_attention_heads == 2 and pruned.config.num_key_value_heads == 2
    assert torch.allclose(logits(pruned, token_batches[0]), reference, atol=ATOL)


def reference_mamba_mixer(mixer, x, heads, channels, n_groups, state_size):
    """A sequential-scan Mamba2 mixer computed from the ORIGINAL weights, restricted to
    the kept heads and head channels; every kept head reads its own group's B and C."""
    layout = MambaLayout(mixer.num_heads, mixer.head_dim, n_groups, state_size)
    H, P = layout.num_heads, layout.head_dim
    proj = F.linear(x, mixer.in_proj.weight, mixer.in_proj.bias)  # [B, T, 2HP + 2GN + H]
    z, xbc, dt = proj[..., layout.z], proj[..., layout.xBC], proj[..., layout.dt]  # [B, T, HP | HP + 2GN | H]
    T = x.shape[1]
    xbc = F.conv1d(
        xbc.transpose(1, 2),
        mixer.conv1d.weight,
        mixer.conv1d.bias,
        padding=mixer.conv1d.kernel_size[0] - 1,
        groups=xbc.shape[-1],
    )
    xbc = F.silu(xbc[..., :T].transpose(1, 2))
    xs = xbc[..., layout.conv_x].view(*x.shape[:2], H, P)[:, :, heads][:, :, :, channels]  # [B, T, H', P']
    Bm = xbc[..., layout.conv_B].view(*x.shape[:2], n_groups, state_size)  # [B, T, G, N]
    Cm = xbc[..., layout.conv_C].view(*x.shape[:2], n_groups, state_size)
    group_of = layout.group_of(heads)  # each kept head's own group
    dt = F.softplus(dt[..., heads] + mixer.dt_bias[heads])  # [B, T, H']
    A = -torch.exp(mixer.A_log[heads].float())
    state = torch.zeros(x.shape[0], len(heads), len(channels), state_size)
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = state * decay + (dt[:, t, :, None, None] * xs[:, t, :, :, None] * Bm[:, t, group_of][:, :, None, :])
        ys.append((state * Cm[:, t, group_of][:, :, None, :]).sum(-1) + mixer.D[heads][:, None] * xs[:, t])
    y = torch.stack(ys, 1)  # [B, T, H', P']
    kept = layout.inner_channels(heads, channels)  # [H'*P']
    y = y.reshape(*x.shape[:2], -1) * F.silu(z[..., kept])
    grouped = y.view(*x.shape[:2], n_groups, -1)
    grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + mixer.norm.variance_epsilon)
    y = grouped.view(*x.shape[:2], -1) * mixer.norm.weight[kept]
    return F.linear(y, mixer.out_proj.weight[:, kept], mixer.out_proj.bias)


def test_group_aware_mamba_layer_matches_reference(tiny_nemotron, token_batches):
    scores = estimate_importance(tiny_nemotron, token_batches, layer_metric=None)
    spec = PruneSpec(mamba_num_heads=4, mamba_head_dim=3)
    pruned = prune(tiny_nemotron, spec, scores)
    kept = kept_units(scores, tiny_nemotron, spec)
    heads, channels = kept.units(MAMBA_HEAD, 0), kept.units(MAMBA_CHANNEL, 0)
    assert [int(h) // 4 for h in heads] == [0, 0, 1, 1]  # two heads from each group
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference_mamba_mixer(tiny_nemotron.model.layers[0].mixer, x, heads, channels, 2, 8)
        got = pruned.model.layers[0].mixer(x)
        full = tiny_nemotron.model.layers[0].mixer(x)
        all_units = reference_mamba_mixer(
            tiny_nemotron.model.layers[0].mixer, x, torch.arange(8), torch.arange(4), 2, 8
        )
    assert torch.allclose(all_units, full, atol=1e-4)  # the reference is right on the unpruned layer
    assert torch.allclose(got, expected, atol=1e-4)


def test_global_ranking_mispairs_heads_with_groups(tiny_nemotron, token_batches):
    """The strawman: heads chosen over the whole layer may cross groups, so some read
    another group's B and C and the layer no longer matches the group-aware reference."""
    scores = estimate_importance(tiny_nemotron, token_batches, layer_metric=None)
    scores.mamba[0][:4] *= 10  # group 0's heads dominate layer 0
    heads = kept_units(scores, tiny_nemotron, PruneSpec(mamba_num_heads=4), mamba_ranking="global").units(MAMBA_HEAD, 0)
    assert heads.tolist() == [0, 1, 2, 3]
    pruned = prune(tiny_nemotron, PruneSpec(mamba_num_heads=4), scores, mamba_ranking="global")
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        own_groups = reference_mamba_mixer(tiny_nemotron.model.layers[0].mixer, x, heads, torch.arange(4), 2, 8)
        got = pruned.model.layers[0].mixer(x)
    assert not torch.allclose(got, own_groups, atol=1e-3)


def test_prune_never_modifies_input(tiny_nemotron, token_batches):
    before = {k: v.clone() for k, v in tiny_nemotron.state_dict().items()}
    prune(tiny_nemotron, PruneSpec(hidden_size=24, mamba_num_heads=6, num_layers=4), ranking="random")
    after = tiny_nemotron.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
