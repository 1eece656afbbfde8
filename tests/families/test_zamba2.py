"""Zamba2: Mamba layers plus shared transformer blocks, reused at the hybrid layers on [stream | embeddings],
with per-use LoRA adapters and projections. A shared block is scored over all its uses and pruned once."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoConfig

from hybridlab import PruneSpec, estimate_importance, estimate_sizes, prune
from hybridlab.cli import main
from hybridlab.compression.importance import FFN_NEURON, MAMBA_CHANNEL, MAMBA_HEAD, sequence_mean_magnitude
from hybridlab.compression.kept import kept_units
from tests.families import exact
from tests.families.tiny import tiny_config, tiny_model
from tests.test_prune_exact import reference_mamba_mixer

FAMILY = "zamba2"
ONE_BLOCK = dict(num_mem_blocks=1)
# transformers' Zamba2Config defaults (2560 hidden, 54 layers, 9 hybrid) with the 2.7B's 80 Mamba heads of 64
# and its two shared blocks (ABAB); the count equals what transformers builds
ZAMBA2_27B_SHAPE = dict(model_type="zamba2", n_mamba_heads=80, num_mem_blocks=2)

_MODEL = tiny_model(FAMILY)
_BATCHES = [torch.randint(3, 128, (3, 16), generator=torch.Generator().manual_seed(5))]
_SCORES = estimate_importance(_MODEL, _BATCHES, layer_metric="kl")
MIXED = PruneSpec(hidden_size=48, ffn_hidden_size=64, mamba_num_heads=6, drop_layers=(0,))  # heads follow: 4 -> 3


@pytest.mark.parametrize(
    "overrides", [{}, ONE_BLOCK, {"use_shared_attention_adapter": False}, {"add_bias_linear": True}]
)
def test_sizes_equal_what_transformers_builds(overrides):
    config = tiny_config(FAMILY, **overrides)
    assert estimate_sizes(config).params == exact.meta_params(config)


def test_published_size_from_a_folder_with_only_a_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(ZAMBA2_27B_SHAPE))
    # head dim 2 * 2560 / 32 = 160 stays: hidden 2080 takes 26 heads; 65 Mamba heads of 64 = 2 x 2080
    argv = ["plan", "--model", str(tmp_path), "--hidden-size", "2080", "--mamba-num-heads", "65", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["original"]["params"] == 2_662_214_560 == exact.meta_params(AutoConfig.for_model(**ZAMBA2_27B_SHAPE))
    pruned = ZAMBA2_27B_SHAPE | {"hidden_size": 2080, "n_mamba_heads": 65, "num_attention_heads": 26}
    pruned["intermediate_size"] = 4 * 2560  # the FFN keeps its width (the config would default it to 4 * hidden)
    assert report["pruned"]["params"] == exact.meta_params(AutoConfig.for_model(**pruned))


def test_untied_configs_are_refused_clearly():
    with pytest.raises(ValueError, match="tie_word_embeddings=False"):
        estimate_sizes(tiny_config(FAMILY, tie_word_embeddings=False))


@pytest.mark.parametrize(
    "overrides, spec, options",
    [
        ({"add_bias_linear": True}, MIXED, {}),
        ({}, PruneSpec(hidden_size=32, mamba_head_dim=8), {"mamba_ranking": "global"}),
        (ONE_BLOCK, PruneSpec(hidden_size=32, ffn_hidden_size=40, drop_layers=(1, 2)), {"ranking": "random"}),
    ],
)
def test_every_pruned_tensor_is_the_kept_slice_of_the_original(overrides, spec, options):
    model = tiny_model(FAMILY, **overrides)
    scores = estimate_importance(model, _BATCHES, layer_metric="cosine")
    exact.check_weights_are_kept_slices(model, spec, scores, layer_metric="cosine", **options)


def test_a_shared_block_is_scored_over_all_its_uses_and_pruned_once():
    assert sorted(_SCORES.ffn) == sorted(_SCORES.attention) == [1, 3]  # blocks 0 and 1: first used at 1 and 3
    per_use = []
    hooks = [
        _MODEL.model.layers[i].shared_transformer.feed_forward.down_proj.register_forward_pre_hook(
            lambda m, a: per_use.append(sequence_mean_magnitude(a[0], None))
        )
        for i in (1, 5)  # block 0's two uses
    ]
    exact.logits(_MODEL, _BATCHES[0])
    for hook in hooks:
        hook.remove()
    assert torch.allclose(_SCORES.ffn[1], torch.cat(per_use).pow(2).sum(0).sqrt(), rtol=1e-5)
    kept = kept_units(_SCORES, _MODEL, PruneSpec(ffn_hidden_size=40), ranking="random")
    assert torch.equal(kept.units(FFN_NEURON, 1), kept.units(FFN_NEURON, 5))  # one choice per block
    pruned = prune(_MODEL, MIXED, _SCORES)
    first, third = pruned.model.layers[0].shared_transformer, pruned.model.layers[4].shared_transformer
    assert first.self_attn.q_proj.weight is third.self_attn.q_proj.weight  # still one block, tied
    assert pruned.config.num_attention_heads == 3 and pruned.config.attention_head_dim == 32


# In float64: this random net amplifies float32 rounding (a 4e-6 difference of one shared MLP's output,
# from summing fewer neurons) to 1e-3 in the logits over its uses, beyond exact.ATOL.
def test_pruned_shared_mlp_neurons_equal_zeroed_ones():
    model = tiny_model(FAMILY).double()
    exact.check_ffn_equals_zeroed(model, estimate_importance(model, _BATCHES, layer_metric=None), 40, _BATCHES[0])


@pytest.mark.parametrize("overrides, layer", [({}, 2), (ONE_BLOCK, 3)])
def test_a_dropped_layer_equals_skipping_it(overrides, layer):
    model = tiny_model(FAMILY, **overrides).double()
    pruned = exact.check_dropped_layer_equals_skipping_it(model, layer, _BATCHES[0])
    assert pruned.config.num_hidden_layers == 5


@pytest.mark.parametrize("spec", [PruneSpec(mamba_num_heads=4), PruneSpec(mamba_head_dim=8)])
def test_group_aware_mamba_heads_and_channels_match_an_independent_scan(spec):
    kept = kept_units(_SCORES, _MODEL, spec)
    pruned = prune(_MODEL, spec, _SCORES)
    heads, channels = kept.units(MAMBA_HEAD, 0), kept.units(MAMBA_CHANNEL, 0)
    assert len(heads) * len(channels) == 64 and pruned.config.mamba_expand == 1
    x = torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(3))
    mixer = _MODEL.model.layers[0].mamba
    with torch.no_grad():
        whole = reference_mamba_mixer(mixer, x, torch.arange(8), torch.arange(16), 2, 16)
        assert torch.allclose(whole, mixer(x), atol=1e-4)
        expected = reference_mamba_mixer(mixer, x, heads, channels, 2, 16)
        assert torch.allclose(pruned.model.layers[0].mamba(x), expected, atol=1e-4)


def test_mixed_plan_reloads_generates_and_matches_the_plan(tmp_path):
    pruned = prune(_MODEL, MIXED, _SCORES)
    assert pruned.config.hybrid_layer_ids == [0, 2, 4] and pruned.config.mamba_headdim == 16
    exact.check_params_equal_plan(_MODEL, pruned, MIXED, _SCORES)
    exact.check_reloads_identically(pruned, _BATCHES[0], tmp_path)
    exact.check_generates_same_tokens_with_and_without_cache(pruned, _BATCHES[0][:1, :6])


SPECS = exact.valid_specs(
    _MODEL.config,
    dict(
        hidden_size=[None, 48, 32],
        ffn_hidden_size=[None, 50],
        mamba_num_heads=[None, 6, 4],
        mamba_head_dim=[None, 8],
        num_layers=[None, 4],
    ),
)


def test_the_grid_has_plans_on_every_axis():
    keys = {key for spec in SPECS for key in spec.to_dict()}
    assert len(SPECS) > 15 and len(keys) == 5


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.sampled_from(SPECS), ranking=st.sampled_from(["importance", "random"]))
def test_random_valid_specs_prune_reload_and_match_the_plan(spec, ranking, tmp_path_factory):
    pruned = prune(_MODEL, spec, _SCORES, ranking=ranking)
    assert torch.isfinite(exact.logits(pruned, _BATCHES[0])).all()
    exact.check_params_equal_plan(_MODEL, pruned, spec, _SCORES, ranking=ranking)
    exact.check_reloads_identically(pruned, _BATCHES[0], tmp_path_factory.mktemp("pruned"))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"hidden_size": 40}, "needs num_attention_heads = 2.5.*hidden_size=32"),
        ({"num_attention_heads": 2}, "hidden_size=32 for 2 heads"),
        ({"drop_layers": [1]}, "drop Mamba layers instead"),
        ({"drop_layers": [1, 3, 5]}, "needs at least one"),
        ({"mamba_num_heads": 6}, "nearest plans it can build: mamba_num_heads=4"),
    ],
)
def test_plans_zamba2_cannot_express_are_refused_before_work(values, message):
    with pytest.raises(ValueError, match=message):
        prune(_MODEL, PruneSpec.from_dict(values), _SCORES)


def test_grouped_query_heads_that_follow_the_hidden_size_must_fill_every_kv_group():
    config = tiny_config(FAMILY, use_shared_attention_adapter=False, num_key_value_heads=2)
    assert estimate_sizes(config, PruneSpec(hidden_size=32)).params < estimate_sizes(config).params  # 2 heads
    with pytest.raises(ValueError, match="3 attention heads, not a multiple of the 2 key/value heads"):
        estimate_sizes(config, PruneSpec(hidden_size=48))
