"""Bamba: every layer is a mixer (Mamba2 or attention) and then its own gated MLP."""

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
from tests.families import exact
from tests.families.tiny import tiny_config, tiny_model
from tests.test_prune_exact import reference_mamba_mixer

BIASES = dict(mamba_proj_bias=True, attention_bias=True, mlp_bias=True)
# Bamba-9B (ibm-ai-platform/Bamba-9B config.json; the model card's 9.78B)
BAMBA_9B = dict(
    model_type="bamba",
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    attn_layer_indices=[9, 18, 27],
    num_attention_heads=32,
    num_key_value_heads=8,
    mamba_n_heads=128,
    mamba_d_head=64,
    mamba_n_groups=1,
    mamba_d_state=128,
    mamba_expand=2,
    tie_word_embeddings=False,
)


def tiny(**overrides):
    return tiny_model("bamba", **overrides)


_MODEL = tiny()
_BATCHES = [torch.randint(3, 128, (3, 16), generator=torch.Generator().manual_seed(5))]
_SCORES = estimate_importance(_MODEL, _BATCHES, layer_metric="kl")
MIXED = PruneSpec(hidden_size=48, ffn_hidden_size=64, num_attention_heads=2, mamba_num_heads=6, num_layers=3)


@pytest.mark.parametrize(
    "overrides",
    [{}, BIASES, {"tie_word_embeddings": True, "mamba_conv_bias": False}, {"num_key_value_heads": 4}],
)
def test_sizes_equal_what_transformers_builds(overrides):
    config = tiny_config("bamba", **overrides)
    assert estimate_sizes(config).params == exact.meta_params(config)


def test_published_size_from_a_folder_with_only_a_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(BAMBA_9B))
    assert main(["plan", "--model", str(tmp_path), "--hidden-size", "3072", "--mamba-num-heads", "96", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    config = AutoConfig.for_model(**BAMBA_9B)
    assert report["original"]["params"] == 9_780_235_392 == exact.meta_params(config)
    values = BAMBA_9B | {"hidden_size": 3072, "mamba_n_heads": 96, "head_dim": 128}  # expand stays 2
    assert report["pruned"]["params"] == exact.meta_params(AutoConfig.for_model(**values))


@pytest.mark.parametrize(
    "spec, options",
    [
        (MIXED, {}),
        (PruneSpec(mamba_num_heads=4, mamba_head_dim=8, hidden_size=32), {"mamba_ranking": "global"}),
        (PruneSpec(hidden_size=32, ffn_hidden_size=40, drop_layers=(0, 3)), {"ranking": "random", "seed": 3}),
    ],
)
def test_every_pruned_tensor_is_the_kept_slice_of_the_original(spec, options):
    model = tiny(**BIASES)
    scores = estimate_importance(model, _BATCHES, layer_metric="cosine")
    exact.check_weights_are_kept_slices(model, spec, scores, layer_metric="cosine", **options)


def test_pruned_ffn_neurons_equal_zeroed_ones():
    exact.check_ffn_equals_zeroed(_MODEL, _SCORES, 40, _BATCHES[0])


def test_pruned_attention_heads_equal_zeroed_ones():
    exact.check_heads_equal_zeroed(_MODEL, _SCORES, 2, _BATCHES[0])


def test_a_dropped_layer_takes_its_mlp_with_it_and_equals_skipping_both():
    pruned = exact.check_dropped_layer_equals_skipping_it(_MODEL, 2, _BATCHES[0])
    assert pruned.config.num_hidden_layers == 3 and pruned.config.attn_layer_indices == [1]
    assert len(pruned.model.layers[2].feed_forward.down_proj.weight) == 64  # each layer kept its own MLP
    pruned = exact.check_dropped_layer_equals_skipping_it(_MODEL, 0, _BATCHES[0])
    assert pruned.config.attn_layer_indices == [0]  # renumbered


@pytest.mark.parametrize("spec", [PruneSpec(mamba_num_heads=4), PruneSpec(mamba_head_dim=8)])
def test_group_aware_mamba_heads_and_channels_match_an_independent_scan(spec):
    kept = kept_units(_SCORES, _MODEL, spec)
    pruned = prune(_MODEL, spec, _SCORES)
    heads, channels = kept.units(MAMBA_HEAD, 0), kept.units(MAMBA_CHANNEL, 0)
    assert len(heads) * len(channels) == 64 and pruned.config.mamba_expand == 1  # H'P' = 1 x hidden
    assert [int(h) // 4 for h in heads].count(0) == len(heads) // 2  # as many heads from each group
    x = torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(3))
    mixer = _MODEL.model.layers[0].mamba
    with torch.no_grad():
        whole = reference_mamba_mixer(mixer, x, torch.arange(8), torch.arange(16), 2, 16)
        assert torch.allclose(whole, mixer(x), atol=1e-4)  # the reference is right on the whole layer
        expected = reference_mamba_mixer(mixer, x, heads, channels, 2, 16)
        assert torch.allclose(pruned.model.layers[0].mamba(x), expected, atol=1e-4)


def test_mixed_plan_reloads_generates_and_matches_the_plan(tmp_path):
    pruned = prune(_MODEL, MIXED, _SCORES)
    assert pruned.config.head_dim == 16 and pruned.config.mamba_expand == 2  # written, not re-derived
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
    assert len(SPECS) > 20 and keys == {
        "hidden_size",
        "ffn_hidden_size",
        "num_attention_heads",
        "mamba_num_heads",
        "mamba_head_dim",
        "num_layers",
    }


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
        ({"mamba_num_heads": 6}, "nearest plans it can build: mamba_num_heads=4 or hidden_size=48"),
        ({"drop_layers": [1]}, "needs at least one"),
        ({"num_attention_heads": 3}, "key/value heads"),
    ],
)
def test_plans_bamba_cannot_express_are_refused_before_work(values, message):
    with pytest.raises(ValueError, match=message):
        estimate_sizes(_MODEL.config, PruneSpec.from_dict(values))
    with pytest.raises(ValueError, match=message):
        prune(_MODEL, PruneSpec.from_dict(values), _SCORES)


def test_a_model_without_attention_layers_may_still_be_pruned():
    config = tiny_config("bamba", attn_layer_indices=None)  # like BambaConfig(): no cache to keep buildable
    assert estimate_sizes(config, PruneSpec(num_layers=2)).params < estimate_sizes(config).params
