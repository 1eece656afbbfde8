"""Checks every family's tests run on its tiny random model, written once here:

- every pruned tensor is exactly the original's rows/columns that kept_units selects (an independent
  slicing, from the parts' shapes, not the pruner's code);
- pruned FFN neurons / attention heads equal the original with those units zeroed;
- a dropped layer equals running the original with that layer skipped;
- save_pretrained -> from_pretrained: no missing or unexpected keys, identical logits;
- cached and uncached greedy generation give the same tokens;
- the parameter count equals the plan (hybridlab.estimate_sizes) and what transformers builds;
- all valid specs of a small grid, for hypothesis to draw from.
"""

from __future__ import annotations

import itertools

import torch
from transformers import AutoModelForCausalLM

from hybridlab import PruneSpec, estimate_sizes, prune
from hybridlab.compression.importance import (
    ATTENTION_HEAD,
    FFN_NEURON,
    MAMBA_CHANNEL,
    MAMBA_HEAD,
    MOE_EXPERT,
    MOE_NEURON,
    SHARED_EXPERT_NEURON,
)
from hybridlab.compression.kept import kept_units, plan_drop_layers
from hybridlab.compression.layer_importance import skipped
from hybridlab.families import ATTENTION, MAMBA, MLP, MOE, describe
from hybridlab.model.sizes import planned_widths

ATOL = 2e-5


def logits(model, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(batch, use_cache=False).logits


def meta_params(config) -> int:
    """Parameters transformers builds for `config` (tied tensors counted once)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


# -- every tensor is a slice of the original ------------------------------------------------------


def expected_weights(model, pruned, kept) -> dict[str, torch.Tensor]:
    """Every parameter of `pruned` as it must be: the original tensors indexed by `kept`."""
    old, hidden = kept.old, kept.hidden
    old_parts, new_parts = describe(model).parts(model), describe(pruned).parts(pruned)
    pairs = [
        (new_parts.embeddings.weight, old_parts.embeddings.weight[:, hidden]),
        (new_parts.lm_head.weight, old_parts.lm_head.weight[:, hidden]),
        (new_parts.final_norm.weight, old_parts.final_norm.weight[hidden]),
    ]
    for new_layer, index in zip(new_parts.layers, kept.kept_layers):
        old_layer = old_parts.layers[index]
        for (new, copies), (was, _) in zip(new_layer.normed_inputs, old_layer.normed_inputs):
            pairs.append((new.weight, _side_by_side(was.weight, copies, hidden)))
        for dst, src in zip(new_layer.sublayers, old_layer.sublayers):
            if src.kind == MLP:
                pairs += _mlp_pairs(src.parts, dst.parts, kept.units(FFN_NEURON, index), hidden)
            elif src.kind == ATTENTION:
                heads = kept.units(ATTENTION_HEAD, index)
                pairs += _attention_pairs(src.parts, dst.parts, old, heads, hidden, src.input_copies)
            elif src.kind == MOE:
                pairs += _moe_pairs(src.parts, dst.parts, kept, index)
            else:
                heads, channels = kept.units(MAMBA_HEAD, index), kept.units(MAMBA_CHANNEL, index)
                pairs += _mamba_pairs(src.parts, dst.parts, old, heads, channels, hidden)
        for new, was in zip(new_layer.hidden_projections, old_layer.hidden_projections):
            pairs.append((new.weight, was.weight[hidden][:, hidden]))
    names = {id(p): name for name, p in [*pruned.named_parameters(), *pruned.named_buffers()]}
    return {names[id(new)]: want for new, want in pairs if id(new) in names}


def _side_by_side(t: torch.Tensor, copies: int, hidden: torch.Tensor) -> torch.Tensor:
    """[..., copies * h] -> [..., copies * h']: the kept channels of each hidden-wide input, input by input."""
    return torch.cat([part[..., hidden] for part in t.chunk(copies, dim=-1)], dim=-1)


def _adapter_pairs(src, dst, rows, cols: torch.Tensor, copies: int = 1) -> list:
    """An adapter's down reads the projection's (kept) columns; its up writes the projection's (kept) rows."""
    if src is None:
        return []
    up = src.up.weight if rows is None else src.up.weight[rows]
    return [(dst.down.weight, _side_by_side(src.down.weight, copies, cols)), (dst.up.weight, up)]


def _linear_pairs(src, dst, rows, cols) -> list:
    weight = src.weight if rows is None else src.weight[rows]
    pairs = [(dst.weight, weight if cols is None else weight[:, cols])]
    if src.bias is not None:
        pairs.append((dst.bias, src.bias if rows is None else src.bias[rows]))
    return pairs


def _mlp_pairs(src, dst, neurons, hidden) -> list:
    pairs = _linear_pairs(src.down_proj, dst.down_proj, hidden, neurons)
    for name in ("up_proj", "gate_proj"):
        if getattr(src, name) is not None:
            pairs += _linear_pairs(getattr(src, name), getattr(dst, name), neurons, hidden)
    if src.gate_up_proj is not None:  # [gate | up] halves, F rows each
        gate, up = src.gate_up_proj.weight.chunk(2)
        pairs.append((dst.gate_up_proj.weight, torch.cat([gate[neurons], up[neurons]])[:, hidden]))
        if src.gate_up_proj.bias is not None:
            gate, up = src.gate_up_proj.bias.chunk(2)
            pairs.append((dst.gate_up_proj.bias, torch.cat([gate[neurons], up[neurons]])))
        rows = torch.cat([neurons, len(gate) + neurons])
        pairs += _adapter_pairs(src.gate_up_adapter, dst.gate_up_adapter, rows, hidden)
    return pairs


def _moe_pairs(src, dst, kept, index) -> list:
    """Expert by expert and neuron by neuron (loops, not the pruner's batched indexing)."""
    hidden, experts, neurons = kept.hidden, kept.units(MOE_EXPERT, index), kept.units(MOE_NEURON, index)
    channels = hidden if src.latent_in is None else torch.arange(src.down_proj.shape[1])
    pairs = [(dst.router_weight, src.router_weight[experts][:, hidden])]
    if src.router_bias is not None:
        pairs.append((dst.router_bias, src.router_bias[experts]))
    ups, gate_ups, downs = [], [], []
    for e, mine in zip(experts.tolist(), neurons):
        downs.append(torch.stack([src.down_proj[e][:, n][channels] for n in mine.tolist()], dim=1))
        if src.up_proj is not None:
            ups.append(torch.stack([src.up_proj[e][n][channels] for n in mine.tolist()]))
        if src.gate_up_proj is not None:
            gate, up = src.gate_up_proj[e].chunk(2)
            gate_ups.append(torch.cat([gate[mine][:, channels], up[mine][:, channels]]))
    pairs.append((dst.down_proj, torch.stack(downs)))
    if ups:
        pairs.append((dst.up_proj, torch.stack(ups)))
    if gate_ups:
        pairs.append((dst.gate_up_proj, torch.stack(gate_ups)))
    if src.latent_in is not None:
        pairs += _linear_pairs(src.latent_in, dst.latent_in, None, hidden)
        pairs += _linear_pairs(src.latent_out, dst.latent_out, hidden, None)
    if src.shared_expert is not None:
        pairs += _mlp_pairs(src.shared_expert, dst.shared_expert, kept.units(SHARED_EXPERT_NEURON, index), hidden)
    return pairs


def _rows_of_heads(t: torch.Tensor, heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[n*d, ...] -> [n'*d, ...]: the rows of the kept heads."""
    return t.reshape(-1, head_dim, *t.shape[1:])[heads].reshape(-1, *t.shape[1:])


def _attention_pairs(src, dst, old, heads, hidden, copies: int = 1) -> list:
    d = old.attention_head_dim
    rows = lambda t: _rows_of_heads(t, heads, d)
    head_rows = (heads[:, None] * d + torch.arange(d)).flatten()
    pairs = [(dst.q_proj.weight, _side_by_side(rows(src.q_proj.weight), copies, hidden))]
    pairs += _adapter_pairs(src.q_adapter, dst.q_adapter, head_rows, hidden, copies)
    for name in ("k", "v"):  # GQA: K and V whole; MHA: each kept head's own
        weight = getattr(src, f"{name}_proj").weight
        kv = rows(weight) if old.is_multi_head else weight
        pairs.append((getattr(dst, f"{name}_proj").weight, _side_by_side(kv, copies, hidden)))
        kv_rows = head_rows if old.is_multi_head else None
        pairs += _adapter_pairs(
            getattr(src, f"{name}_adapter"), getattr(dst, f"{name}_adapter"), kv_rows, hidden, copies
        )
    pairs.append((dst.o_proj.weight, rows(src.o_proj.weight.T).T[hidden]))
    if src.q_proj.bias is not None:
        pairs.append((dst.q_proj.bias, rows(src.q_proj.bias)))
        for name in ("k_proj", "v_proj"):
            bias = getattr(src, name).bias
            pairs.append((getattr(dst, name).bias, rows(bias) if old.is_multi_head else bias))
    if src.o_proj.bias is not None:
        pairs.append((dst.o_proj.bias, src.o_proj.bias[hidden]))
    return pairs


def _mamba_pairs(src, dst, old, heads, channels, hidden) -> list:
    H, P, G, N = old.mamba_num_heads, old.mamba_head_dim, old.mamba_n_groups, old.mamba_state_size

    def inner(t):  # [H*P, ...] -> [H'*P', ...]: the kept (head, channel) pairs
        return t.reshape(H, P, *t.shape[1:])[heads][:, channels].reshape(-1, *t.shape[1:])

    pairs = []
    for tensor, new in ((src.in_proj.weight, dst.in_proj.weight), (src.in_proj.bias, dst.in_proj.bias)):
        if tensor is not None:
            z, x, B, C, dt = tensor.split([H * P, H * P, G * N, G * N, H])
            rows = torch.cat([inner(z), inner(x), B, C, dt[heads]])
            pairs.append((new, rows[:, hidden] if tensor.dim() == 2 else rows))
    for tensor, new in ((src.conv1d.weight, dst.conv1d.weight), (src.conv1d.bias, dst.conv1d.bias)):
        if tensor is not None:
            x, B, C = tensor.split([H * P, G * N, G * N])
            pairs.append((new, torch.cat([inner(x), B, C])))
    pairs += [(dst.dt_bias, src.dt_bias[heads]), (dst.A_log, src.A_log[heads]), (dst.D, src.D[heads])]
    if src.norm_weight is not None:
        pairs.append((dst.norm_weight, inner(src.norm_weight)))
    pairs.append((dst.out_proj.weight, inner(src.out_proj.weight.T).T[hidden]))
    if src.out_proj.bias is not None:
        pairs.append((dst.out_proj.bias, src.out_proj.bias[hidden]))
    return pairs


def check_weights_are_kept_slices(model, spec: PruneSpec, scores, **options) -> None:
    kept = kept_units(scores, model, spec, **options)
    pruned = prune(model, spec, scores, **options)
    expected = expected_weights(model, pruned, kept)
    parameters = {name for name, _ in pruned.named_parameters()}
    assert parameters <= set(expected)  # every parameter is checked (and the sliced buffers)
    for name, weight in [*pruned.named_parameters(), *pruned.named_buffers()]:
        if name in expected:
            assert torch.equal(weight, expected[name]), name


# -- pruned == original with the units zeroed -----------------------------------------------------


def _masked_inputs(modules_and_masks: list) -> list:
    """Pre-hooks multiplying each module's input by its 0/1 mask (the pruned units zeroed)."""
    return [
        m.register_forward_pre_hook(lambda mod, a, keep=keep: (a[0] * keep, *a[1:])) for m, keep in modules_and_masks
    ]


def check_ffn_equals_zeroed(model, scores, neurons: int, batch: torch.Tensor) -> None:
    spec = PruneSpec(ffn_hidden_size=neurons)
    kept, parts = kept_units(scores, model, spec), describe(model).parts(model)
    masks = []
    for layer in parts.layers:
        if (sub := layer.sublayer(MLP)) is not None:
            keep = torch.zeros(kept.old.ffn_hidden_size)
            keep[kept.units(FFN_NEURON, layer.index)] = 1
            masks.append((sub.parts.down_proj, keep))
    _check_equals_masked(model, prune(model, spec, scores), masks, batch)


def check_heads_equal_zeroed(model, scores, heads: int, batch: torch.Tensor) -> None:
    spec = PruneSpec(num_attention_heads=heads)
    kept, parts = kept_units(scores, model, spec), describe(model).parts(model)
    d, masks = kept.old.attention_head_dim, []
    for layer in parts.layers:
        if (sub := layer.sublayer(ATTENTION)) is not None:
            keep = torch.zeros(kept.old.num_attention_heads, d)
            keep[kept.units(ATTENTION_HEAD, layer.index)] = 1
            masks.append((sub.parts.o_proj, keep.flatten()))
    pruned = prune(model, spec, scores)
    assert pruned.config.num_attention_heads == heads
    _check_equals_masked(model, pruned, masks, batch)


def check_mamba_equals_zeroed(model, scores, spec: PruneSpec, batch: torch.Tensor) -> None:
    """For a Mamba mixer without its gated norm (nothing mixes its channels before out_proj): pruned heads
    and head channels equal the original with those (head, channel) pairs zeroed at out_proj's input."""
    kept, parts = kept_units(scores, model, spec), describe(model).parts(model)
    H, P, masks = kept.old.mamba_num_heads, kept.old.mamba_head_dim, []
    for layer in parts.layers:
        if (sub := layer.sublayer(MAMBA)) is not None:
            assert sub.parts.norm_weight is None, "zeroing equals pruning only without the gated norm"
            keep = torch.zeros(H, P)
            keep[kept.units(MAMBA_HEAD, layer.index)[:, None], kept.units(MAMBA_CHANNEL, layer.index)] = 1
            masks.append((sub.parts.out_proj, keep.flatten()))
    _check_equals_masked(model, prune(model, spec, scores), masks, batch)


def _check_equals_masked(model, pruned, masks: list, batch: torch.Tensor) -> None:
    handles = _masked_inputs(masks)
    try:
        reference = logits(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    assert masks, "the model has no units on this axis"
    assert torch.allclose(logits(pruned, batch), reference, atol=ATOL)
    assert not torch.allclose(logits(model, batch), reference, atol=1e-3)  # zeroing mattered


def check_dropped_layer_equals_skipping_it(model, layer: int, batch: torch.Tensor):
    pruned = prune(model, PruneSpec(drop_layers=[layer]))
    target = describe(model).parts(model).layers[layer]
    with skipped(target.block, target.skip_output):
        reference = logits(model, batch)
    assert torch.allclose(logits(pruned, batch), reference, atol=ATOL)
    assert not torch.allclose(logits(model, batch), reference, atol=1e-3)
    return pruned


# -- the pruned model as transformers sees it -------------------------------------------------------


def check_reloads_identically(pruned, batch: torch.Tensor, folder) -> None:
    pruned.save_pretrained(folder)
    reloaded, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert torch.equal(logits(reloaded.eval(), batch), logits(pruned, batch))


def check_generates_same_tokens_with_and_without_cache(pruned, prompt: torch.Tensor) -> None:
    with torch.no_grad():
        options = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        cached = pruned.generate(prompt, use_cache=True, **options)
        uncached = pruned.generate(prompt, use_cache=False, **options)
    assert cached.shape[1] == prompt.shape[1] + 6
    assert torch.equal(cached, uncached)


def check_params_equal_plan(model, pruned, spec: PruneSpec, scores, **options) -> None:
    """The pruned model's parameters == estimate_sizes of its config == the plan made from the parent's
    config with the layers prune chose == what transformers builds from the pruned config."""
    actual = sum(p.numel() for p in pruned.parameters())
    assert actual == estimate_sizes(pruned.config).params == meta_params(pruned.config)
    dropped = plan_drop_layers(model.config, spec, scores, **options)
    exact = PruneSpec.from_dict(spec.to_dict() | {"num_layers": None, "drop_layers": list(dropped) or None})
    assert estimate_sizes(model.config, exact).params == actual


# -- specs ---------------------------------------------------------------------------------------------


def valid_specs(config, grid: dict[str, list]) -> list[PruneSpec]:
    """Every combination of the grid's values (None = keep) that the family can build."""
    description = describe(config)
    found = []
    for values in itertools.product(*grid.values()):
        spec = PruneSpec.from_dict({k: v for k, v in zip(grid, values) if v is not None})
        try:
            planned_widths(description, spec)
        except ValueError:
            continue
        found.append(spec)
    return found
