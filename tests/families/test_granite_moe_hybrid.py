"""GraniteMoeHybrid (Granite-4.0-H), dense: every layer is a mixer and then a shared gated MLP whose
gate and up projections are fused into one input_linear (two halves, sliced alike). With routed experts:
tests/test_moe.py."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoConfig

from hybridlab import PruneSpec, estimate_importance, estimate_sizes, prune
from hybridlab.cli import main
from hybridlab.compression.importance import MAMBA_CHANNEL, MAMBA_HEAD
from hybridlab.compression.kept import kept_units
from hybridlab.families import describe
from tests.families import exact
from tests.families.tiny import tiny_config, tiny_model
from tests.test_prune_exact import reference_mamba_mixer

FAMILY = "granite_moe_hybrid"
BIASES = dict(mamba_proj_bias=True, attention_bias=True, tie_word_embeddings=False)
LAYER_TYPES = ["mamba"] * 5 + ["attention"] + (["mamba"] * 9 + ["attention"]) * 3 + ["mamba"] * 4
# ibm-granite/granite-4.0-h-1b (dense; IBM's 1.5B class)
GRANITE_H_1B = dict(
    model_type="granitemoehybrid",
    vocab_size=100352,
    hidden_size=1536,
    num_hidden_layers=40,
    layer_types=LAYER_TYPES,
    num_attention_heads=12,
    num_key_value_heads=4,
    intermediate_size=4096,
    shared_intermediate_size=4096,
    num_local_experts=0,
    num_experts_per_tok=0,
    mamba_n_heads=48,
    mamba_d_head=64,
    mamba_n_groups=1,
    mamba_d_state=128,
    mamba_expand=2,
    position_embedding_type="nope",
    tie_word_embeddings=True,
)

_MODEL = tiny_model(FAMILY)
_BATCHES = [torch.randint(3, 128, (3, 16), generator=torch.Generator().manual_seed(5))]
_SCORES = estimate_importance(_MODEL, _BATCHES, layer_metric="kl")
MIXED = PruneSpec(hidden_size=48, ffn_hidden_size=64, num_attention_heads=2, mamba_num_heads=6, num_layers=3)


@pytest.mark.parametrize("overrides", [{}, BIASES, {"mamba_conv_bias": False, "position_embedding_type": "nope"}])
def test_sizes_equal_what_transformers_builds(overrides):
    config = tiny_config(FAMILY, **overrides)
    assert estimate_sizes(config).params == exact.meta_params(config)


def test_published_size_from_a_folder_with_only_a_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(GRANITE_H_1B))
    assert main(["plan", "--model", str(tmp_path), "--ffn-hidden-size", "2048", "--num-layers", "30", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["original"]["params"] == 1_461_538_368 == exact.meta_params(AutoConfig.for_model(**GRANITE_H_1B))
    assert report["pruned"]["params"] < report["original"]["params"]


def test_with_experts_the_shared_mlp_is_the_mixtures_shared_expert():  # pruning them: tests/test_moe.py
    widths = describe(tiny_config(FAMILY, num_local_experts=4, num_experts_per_tok=2, intermediate_size=16)).widths
    assert widths.layer_kinds == ("mamba+moe", "attention+moe", "mamba+moe", "mamba+moe")
    assert (widths.ffn_hidden_size, widths.moe_shared_expert_intermediate_size, widths.num_moe_experts) == (0, 96, 4)


@pytest.mark.parametrize(
    "spec, options",
    [
        (MIXED, {}),
        (PruneSpec(mamba_num_heads=4, mamba_head_dim=8, hidden_size=32), {"mamba_ranking": "global"}),
        (PruneSpec(hidden_size=32, ffn_hidden_size=40, drop_layers=(0, 3)), {"ranking": "random", "seed": 3}),
    ],
)
def test_every_pruned_tensor_is_the_kept_slice_of_the_original(spec, options):
    model = tiny_model(FAMILY, **BIASES)
    scores = estimate_importance(model, _BATCHES, layer_metric="cosine")
    exact.check_weights_are_kept_slices(model, spec, scores, layer_metric="cosine", **options)


def test_pruned_shared_mlp_neurons_equal_zeroed_ones():
    exact.check_ffn_equals_zeroed(_MODEL, _SCORES, 40, _BATCHES[0])


def test_pruned_attention_heads_equal_zeroed_ones():
    exact.check_heads_equal_zeroed(_MODEL, _SCORES, 2, _BATCHES[0])


def test_a_dropped_layer_takes_its_mlp_with_it_and_equals_skipping_both():
    pruned = exact.check_dropped_layer_equals_skipping_it(_MODEL, 0, _BATCHES[0])
    assert pruned.config.layer_types == ["full_attention", "linear_attention", "linear_attention"]
    assert pruned.config.num_hidden_layers == 3 and pruned.config.residual_multiplier == 0.22


@pytest.mark.parametrize("spec", [PruneSpec(mamba_num_heads=4), PruneSpec(mamba_head_dim=8)])
def test_group_aware_mamba_heads_and_channels_match_an_independent_scan(spec):
    kept = kept_units(_SCORES, _MODEL, spec)
    pruned = prune(_MODEL, spec, _SCORES)
    heads, channels = kept.units(MAMBA_HEAD, 0), kept.units(MAMBA_CHANNEL, 0)
    assert len(heads) * len(channels) == 64 and pruned.config.mamba_expand == 1
    x = torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(3))
    mixer = _MODEL.model.layers[0].mamba
    with torch.no_grad():
        assert torch.allclose(
            reference_mamba_mixer(mixer, x, torch.arange(8), torch.arange(16), 2, 16), mixer(x), atol=1e-4
        )
        expected = reference_mamba_mixer(mixer, x, heads, channels, 2, 16)
        assert torch.allclose(pruned.model.layers[0].mamba(x), expected, atol=1e-4)


def test_mixed_plan_keeps_the_multipliers_reloads_generates_and_matches_the_plan(tmp_path):
    pruned = prune(_MODEL, MIXED, _SCORES)
    config = pruned.config
    assert (config.embedding_multiplier, config.logits_scaling, config.attention_multiplier) == (12.0, 8.0, 0.015625)
    assert config.head_dim == 16 and config.shared_intermediate_size == 64 and config.num_local_experts == 0
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight  # still tied
    exact.check_params_equal_plan(_MODEL, pruned, MIXED, _SCORES)
    exact.check_reloads_identically(pruned, _BATCHES[0], tmp_path)
    exact.check_generates_same_tokens_with_and_without_cache(pruned, _BATCHES[0][:1, :6])


SPECS = exact.valid_specs(
    _MODEL.config,
    dict(
        hidden_size=[None, 48, 32],
        ffn_hidden_size=[None, 50],
        num_attention_heads=[None, 2],
        mamba_num_heads=[None, 6, 4],
        mamba_head_dim=[None, 8],
        num_layers=[None, 2],
    ),
)


def test_the_grid_has_plans_on_every_axis():
    keys = {key for spec in SPECS for key in spec.to_dict()}
    assert len(SPECS) > 20 and len(keys) == 6


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
        ({"hidden_size": 56}, "nearest plans it can build: mamba_head_dim=14 or hidden_size=32"),
        ({"drop_layers": [1]}, "needs at least one"),
        ({"num_attention_heads": 3}, "key/value heads"),
    ],
)
def test_plans_granite_cannot_express_are_refused_before_work(values, message):
    with pytest.raises(ValueError, match=message):
        prune(_MODEL, PruneSpec.from_dict(values), _SCORES)
