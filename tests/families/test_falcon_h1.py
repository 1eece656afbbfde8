"""Falcon-H1: Mamba2 and attention side by side on one normed input, then an MLP; muP multipliers,
including one per in_proj segment through the mup_vector buffer, which pruning must rebuild."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import AutoConfig

from hybridlab import PruneSpec, estimate_importance, estimate_sizes, prune
from hybridlab.cli import main
from hybridlab.compression.importance import MAMBA_CHANNEL, MAMBA_HEAD
from hybridlab.compression.kept import kept_units
from hybridlab.families import MambaLayout
from tests.families import exact
from tests.families.tiny import tiny_config, tiny_model
from tests.test_prune_exact import reference_mamba_mixer

FAMILY = "falcon_h1"
BIASES = dict(mamba_proj_bias=True, projectors_bias=True, attention_bias=True, mlp_bias=True)
NO_NORM = dict(mamba_rms_norm=False)
# tiiuae/Falcon-H1-0.5B-Base (the 0.5B of the model cards: 521M)
FALCON_H1_05B = dict(
    model_type="falcon_h1",
    vocab_size=32784,
    hidden_size=1024,
    intermediate_size=2048,
    num_hidden_layers=36,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=64,
    mamba_d_ssm=1536,
    mamba_n_heads=24,
    mamba_d_head=64,
    mamba_n_groups=1,
    mamba_d_state=128,
    mamba_d_conv=4,
    mamba_expand=2,
    mamba_rms_norm=False,
    mamba_norm_before_gate=False,
    tie_word_embeddings=False,
)

_MODEL = tiny_model(FAMILY)
_BATCHES = [torch.randint(3, 128, (3, 16), generator=torch.Generator().manual_seed(5))]
_SCORES = estimate_importance(_MODEL, _BATCHES, layer_metric="kl")
MIXED = PruneSpec(
    hidden_size=48, ffn_hidden_size=64, num_attention_heads=2, mamba_num_heads=4, mamba_head_dim=12, num_layers=2
)


@pytest.mark.parametrize(
    "overrides", [{}, BIASES, NO_NORM | {"tie_word_embeddings": True, "mamba_d_ssm": None, "mamba_n_heads": 8}]
)
def test_sizes_equal_what_transformers_builds(overrides):
    config = tiny_config(FAMILY, **overrides)
    assert estimate_sizes(config).params == exact.meta_params(config)


def test_published_size_from_a_folder_with_only_a_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(FALCON_H1_05B))
    argv = ["plan", "--model", str(tmp_path), "--mamba-num-heads", "16", "--mamba-head-dim", "48", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["original"]["params"] == 521_411_104 == exact.meta_params(AutoConfig.for_model(**FALCON_H1_05B))
    pruned = FALCON_H1_05B | {"mamba_n_heads": 16, "mamba_d_head": 48, "mamba_d_ssm": 768}  # free of hidden
    assert report["pruned"]["params"] == exact.meta_params(AutoConfig.for_model(**pruned))


@pytest.mark.parametrize(
    "overrides, spec, options",
    [
        (BIASES, MIXED, {}),
        (BIASES | NO_NORM, PruneSpec(mamba_num_heads=2, hidden_size=40), {"mamba_ranking": "global"}),
        (BIASES, PruneSpec(hidden_size=32, ffn_hidden_size=40, drop_layers=(1,)), {"ranking": "random", "seed": 3}),
    ],
)
def test_every_pruned_tensor_is_the_kept_slice_of_the_original(overrides, spec, options):
    model = tiny_model(FAMILY, **overrides)
    scores = estimate_importance(model, _BATCHES, layer_metric="cosine")
    exact.check_weights_are_kept_slices(model, spec, scores, layer_metric="cosine", **options)


def test_pruned_ffn_neurons_equal_zeroed_ones():
    exact.check_ffn_equals_zeroed(_MODEL, _SCORES, 40, _BATCHES[0])


def test_pruned_parallel_attention_heads_equal_zeroed_ones():
    exact.check_heads_equal_zeroed(_MODEL, _SCORES, 2, _BATCHES[0])


def test_a_dropped_layer_takes_mamba_attention_and_mlp_with_it():
    pruned = exact.check_dropped_layer_equals_skipping_it(_MODEL, 1, _BATCHES[0])
    assert pruned.config.num_hidden_layers == 2


@pytest.mark.parametrize("spec", [PruneSpec(mamba_num_heads=4, mamba_head_dim=12), PruneSpec(mamba_num_heads=2)])
def test_pruned_mamba_without_its_norm_equals_zeroed_heads_and_channels(spec):
    model = tiny_model(FAMILY, **NO_NORM)
    scores = estimate_importance(model, _BATCHES, layer_metric=None)
    exact.check_mamba_equals_zeroed(model, scores, spec, _BATCHES[0])


def folded(mixer) -> SimpleNamespace:
    """The mixer with its input multiplier and per-segment mup_vector folded into in_proj's rows, so
    the plain Mamba2 reference scan computes what Falcon-H1's mixer does."""
    scale = mixer.mup_vector.flatten()[:, None] * mixer.ssm_in_multiplier  # [2d + 2GN + H, 1]
    in_proj = nn.Linear(*reversed(mixer.in_proj.weight.shape), bias=mixer.in_proj.bias is not None)
    in_proj.weight.data = mixer.in_proj.weight * scale
    if mixer.in_proj.bias is not None:
        in_proj.bias.data = mixer.in_proj.bias * mixer.mup_vector.flatten()
    names = ("num_heads", "head_dim", "conv1d", "dt_bias", "A_log", "D", "norm", "out_proj")
    return SimpleNamespace(in_proj=in_proj, **{name: getattr(mixer, name) for name in names})


@pytest.mark.parametrize("spec", [PruneSpec(mamba_num_heads=4, mamba_head_dim=12), PruneSpec(mamba_num_heads=2)])
def test_group_aware_mamba_with_its_norm_matches_an_independent_scan(spec):
    kept = kept_units(_SCORES, _MODEL, spec)
    pruned = prune(_MODEL, spec, _SCORES)
    heads, channels = kept.units(MAMBA_HEAD, 0), kept.units(MAMBA_CHANNEL, 0)
    assert [int(h) // 3 for h in heads].count(0) == len(heads) // 2  # as many heads from each group
    mixer, x = _MODEL.model.layers[0].mamba, torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = reference_mamba_mixer(folded(mixer), x, torch.arange(6), torch.arange(16), 2, 16)
        assert torch.allclose(whole, mixer(x), atol=1e-4)  # the reference is right on the whole layer
        expected = reference_mamba_mixer(folded(mixer), x, heads, channels, 2, 16)
        assert torch.allclose(pruned.model.layers[0].mamba(x), expected, atol=1e-4)  # with the rebuilt mup_vector


def test_mup_vector_is_rebuilt_for_the_pruned_widths():
    spec = PruneSpec(mamba_num_heads=4, mamba_head_dim=12)
    kept = kept_units(_SCORES, _MODEL, spec)
    pruned = prune(_MODEL, spec, _SCORES)
    # each kept in_proj row keeps its segment's multiplier: the new vector is the old one at the kept rows
    rows = MambaLayout.of(kept.old).in_proj_rows(kept.units(MAMBA_HEAD, 0), kept.units(MAMBA_CHANNEL, 0))
    for old_layer, new_layer in zip(_MODEL.model.layers, pruned.model.layers):
        assert torch.equal(new_layer.mamba.mup_vector.flatten(), old_layer.mamba.mup_vector.flatten()[rows])


def test_mixed_plan_keeps_the_multipliers_reloads_generates_and_matches_the_plan(tmp_path):
    pruned = prune(_MODEL, MIXED, _SCORES)
    config = pruned.config
    assert config.mamba_d_ssm == 48 and config.head_dim == 16
    assert list(config.ssm_multipliers) == [0.3, 0.25, 0.2, 0.6, 0.9] and config.lm_head_multiplier == 0.5
    exact.check_params_equal_plan(_MODEL, pruned, MIXED, _SCORES)
    exact.check_reloads_identically(pruned, _BATCHES[0], tmp_path)
    exact.check_generates_same_tokens_with_and_without_cache(pruned, _BATCHES[0][:1, :6])


SPECS = exact.valid_specs(
    _MODEL.config,
    dict(
        hidden_size=[None, 40],
        ffn_hidden_size=[None, 50],
        num_attention_heads=[None, 2],
        mamba_num_heads=[None, 4, 2],
        mamba_head_dim=[None, 10],
        num_layers=[None, 1],
    ),
)


def test_every_plan_of_the_grid_is_expressible():
    assert len(SPECS) == 3 * 2**5  # the Mamba width is free of the hidden size: nothing is refused


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.sampled_from(SPECS), ranking=st.sampled_from(["importance", "random"]))
def test_random_valid_specs_prune_reload_and_match_the_plan(spec, ranking, tmp_path_factory):
    pruned = prune(_MODEL, spec, _SCORES, ranking=ranking)
    assert torch.isfinite(exact.logits(pruned, _BATCHES[0])).all()
    exact.check_params_equal_plan(_MODEL, pruned, spec, _SCORES, ranking=ranking)
    exact.check_reloads_identically(pruned, _BATCHES[0], tmp_path_factory.mktemp("pruned"))


@pytest.mark.parametrize(
    "values, message",
    [({"mamba_num_heads": 3}, "multiple of n_groups"), ({"num_attention_heads": 3}, "key/value heads")],
)
def test_plans_falcon_cannot_express_are_refused_before_work(values, message):
    with pytest.raises(ValueError, match=message):
        prune(_MODEL, PruneSpec.from_dict(values), _SCORES)
