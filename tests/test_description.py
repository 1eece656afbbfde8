"""A model's description (family + widths) is resolved once per operation and handed along;
the Mamba2 projection layout names the slices the mixer itself uses."""

from __future__ import annotations

import sys

import pytest
import torch

from hybridlab import PruneSpec, estimate_importance, estimate_sizes, prune
from hybridlab.families import MambaLayout, describe, registry
from hybridlab.search.run import SearchSettings, search
from hybridlab.search.space import SearchSpace, enumerate_candidates, parse_target
from tests.test_distill import corpus


@pytest.fixture
def family_lookups(monkeypatch) -> list:
    """Every family_for call from here on, wherever the function was imported to."""
    original, calls = registry.family_for, []

    def counting(model_or_config):
        calls.append(model_or_config)
        return original(model_or_config)

    for name, module in list(sys.modules.items()):
        if name.startswith(("hybridlab", "app")) and getattr(module, "family_for", None) is original:
            monkeypatch.setattr(module, "family_for", counting)
    return calls


def test_one_prune_resolves_the_family_once(tiny_nemotron, token_batches, family_lookups):
    scores = estimate_importance(tiny_nemotron, token_batches, layer_metric="kl")
    assert len(family_lookups) == 1
    family_lookups.clear()
    prune(tiny_nemotron, PruneSpec(hidden_size=24, mamba_num_heads=4, num_layers=4), scores)
    assert len(family_lookups) == 1
    family_lookups.clear()
    prune(tiny_nemotron, PruneSpec(hidden_size=24), scores, description=describe(tiny_nemotron))
    assert len(family_lookups) == 1  # the caller's describe() only


def test_one_search_space_enumeration_resolves_the_family_once(tiny_nemotron, token_batches, family_lookups):
    scores = estimate_importance(tiny_nemotron, token_batches, layer_metric="kl")
    target = parse_target("60%", estimate_sizes(tiny_nemotron.config).params)
    family_lookups.clear()
    found = enumerate_candidates(tiny_nemotron.config, scores, target, 0.05, SearchSpace(hidden_divisor=4))
    assert len(found) > 10 and len(family_lookups) == 1


def test_one_search_resolves_the_family_once(tiny_nemotron, token_batches, family_lookups):
    settings = SearchSettings(
        target_params="60%",
        tolerance=0.05,
        max_candidates=2,
        top_k=0,
        distill_tokens=0,
        seq_len=16,
        eval_tokens=64,
        measure_latency=False,
        space=SearchSpace(hidden_divisor=4, ffn_divisor=8),
    )
    result = search(tiny_nemotron, None, corpus(), corpus(500, seed=1), settings, calib_batches=token_batches)
    assert len(result.candidates) == 3 and len(family_lookups) == 1  # teacher + 2 candidates


def test_a_description_of_another_model_is_refused(tiny_nemotron, tiny_mamba2):
    with pytest.raises(ValueError, match="another model"):
        prune(tiny_nemotron, PruneSpec(hidden_size=24), ranking="random", description=describe(tiny_mamba2))


def test_mamba_layout_matches_the_transformers_mixer(tiny_nemotron):
    mixer = tiny_nemotron.model.layers[0].mixer
    layout = describe(tiny_nemotron).mamba_layout
    assert layout == MambaLayout(num_heads=8, head_dim=4, n_groups=2, state_size=8)
    assert layout.in_proj_size == mixer.in_proj.out_features and layout.conv_channels == mixer.conv1d.out_channels
    assert (layout.inner, layout.conv_channels) == (mixer.intermediate_size, mixer.conv_dim)
    in_proj = [layout.z, layout.x, layout.B, layout.C, layout.dt]  # consecutive, covering every row
    assert [s.start for s in in_proj[1:]] == [s.stop for s in in_proj[:-1]] and in_proj[-1].stop == layout.in_proj_size
    assert [s.stop - s.start for s in in_proj] == [32, 32, 16, 16, 8]
    assert (layout.xBC.start, layout.xBC.stop) == (layout.x.start, layout.C.stop)
    conv = [layout.conv_x, layout.conv_B, layout.conv_C]
    assert [s.stop - s.start for s in conv] == [32, 16, 16] and conv[-1].stop == layout.conv_channels


def test_mamba_layout_index_helpers():
    layout = MambaLayout(num_heads=4, head_dim=3, n_groups=2, state_size=2)  # HP 12, GN 4
    every_head, every_channel = torch.arange(4), torch.arange(3)
    assert torch.equal(layout.in_proj_rows(every_head, every_channel), torch.arange(layout.in_proj_size))
    assert torch.equal(layout.conv_rows(every_head, every_channel), torch.arange(layout.conv_channels))
    heads, channels = torch.tensor([1, 3]), torch.tensor([0, 2])
    assert layout.inner_channels(heads, channels).tolist() == [3, 5, 9, 11]
    assert layout.group_of(heads).tolist() == [0, 1]
    rows = layout.in_proj_rows(heads, channels).tolist()
    assert rows == [3, 5, 9, 11] + [15, 17, 21, 23] + [24, 25, 26, 27] + [28, 29, 30, 31] + [33, 35]
    assert layout.conv_rows(heads, channels).tolist() == [3, 5, 9, 11] + [12, 13, 14, 15] + [16, 17, 18, 19]
