"""The kept-units rule: which units a plan keeps, and that the pruned model is exactly the
original's rows and columns that rule selects (bit for bit, every tensor, every bias)."""

from __future__ import annotations

import pytest
import torch
from transformers import NemotronHForCausalLM

from hybridlab import PruneSpec, estimate_importance, prune
from hybridlab.compression.importance import ATTENTION_HEAD, FFN_NEURON, HIDDEN, MAMBA_CHANNEL, MAMBA_HEAD
from hybridlab.compression.kept import kept_units
from hybridlab.families import ATTENTION, MAMBA, describe
from tests.conftest import randomize, tiny_nemotron_config
from tests.families.exact import expected_weights  # every family's independent slicing of the original

SPEC = PruneSpec(hidden_size=24, ffn_hidden_size=20, num_attention_heads=2, mamba_num_heads=4, mamba_head_dim=3)


@pytest.fixture
def biased_nemotron():
    """Every optional bias switched on, so their slicing is checked too."""
    config = tiny_nemotron_config(mamba_proj_bias=True, use_bias=True, mlp_bias=True, attention_bias=True)
    return randomize(NemotronHForCausalLM(config), seed=1)


@pytest.mark.parametrize(
    "spec, ranking, mamba_ranking",
    [
        (SPEC, "importance", "group"),
        (SPEC, "importance", "global"),
        (PruneSpec(hidden_size=20, mamba_num_heads=6, num_layers=4), "random", "group"),
        (PruneSpec(ffn_hidden_size=8, num_attention_heads=2, drop_layers=(0, 4)), "importance", "group"),
    ],
)
def test_pruned_weights_are_exactly_the_units_kept_units_selects(biased_nemotron, spec, ranking, mamba_ranking):
    scores = estimate_importance(biased_nemotron, [torch.randint(3, 128, (2, 12))], layer_metric="cosine")
    options = dict(ranking=ranking, mamba_ranking=mamba_ranking, layer_metric="cosine", seed=7)
    kept = kept_units(scores, biased_nemotron, spec, **options)
    pruned = prune(biased_nemotron, spec, scores, **options)
    expected = expected_weights(biased_nemotron, pruned, kept)
    assert set(expected) == {name for name, _ in pruned.named_parameters()}  # every tensor is checked
    for name, weight in pruned.named_parameters():
        assert torch.equal(weight, expected[name]), name


def test_mamba2_weights_are_exactly_the_units_kept_units_selects(tiny_mamba2, token_batches):
    scores = estimate_importance(tiny_mamba2, token_batches, layer_metric="kl")
    spec = PruneSpec(hidden_size=16, mamba_num_heads=4, mamba_head_dim=4, num_layers=2)
    kept = kept_units(scores, tiny_mamba2, spec)
    pruned = prune(tiny_mamba2, spec, scores)
    expected = expected_weights(tiny_mamba2, pruned, kept)
    assert set(expected) == {name for name, _ in pruned.named_parameters()}
    for name, weight in pruned.named_parameters():
        assert torch.equal(weight, expected[name]), name


def test_every_axis_keeps_its_best_units_and_mamba_stays_group_aware(tiny_nemotron, token_batches):
    scores = estimate_importance(tiny_nemotron, token_batches, layer_metric="kl")
    kept = kept_units(scores, tiny_nemotron, SPEC)
    ranked = lambda s, k: sorted(torch.argsort(s, descending=True)[:k].tolist())  # a plain top-k, by hand
    assert kept.hidden.tolist() == ranked(scores.hidden, 24)
    assert kept.dropped_layers == () and kept.kept_layers == tuple(range(6))
    assert kept.by_layer[FFN_NEURON].keys() == {1, 4} and kept.by_layer[ATTENTION_HEAD].keys() == {2}
    for layer, neurons in kept.by_layer[FFN_NEURON].items():
        assert neurons.tolist() == ranked(scores.ffn[layer], 20)
    heads = kept.units(ATTENTION_HEAD, 2)  # the better query head of each of the 2 KV groups
    assert heads.tolist() == [g * 2 + int(scores.attention[2].view(2, 2)[g].argmax()) for g in range(2)]
    for layer in (0, 3, 5):
        channels, heads = kept.units(MAMBA_CHANNEL, layer), kept.units(MAMBA_HEAD, layer)
        assert channels.tolist() == ranked(scores.mamba[layer].norm(dim=0), 3)  # L2 over heads, shared by all heads
        head_scores = scores.mamba[layer][:, channels].norm(dim=1)  # over the kept channels only
        for group in range(2):  # 2 of the 4 heads of each group, the group's best
            own = heads[(heads >= 4 * group) & (heads < 4 * group + 4)]
            assert own.tolist() == [4 * group + i for i in ranked(head_scores[4 * group : 4 * group + 4], 2)]
    assert kept.units(HIDDEN) is kept.hidden and kept.units(MAMBA_HEAD, 1) is None  # layer 1 is an MLP


def test_global_ranking_may_take_every_head_from_one_group(tiny_nemotron, token_batches):
    scores = estimate_importance(tiny_nemotron, token_batches, layer_metric=None)
    scores.mamba[0][:4] *= 10  # group 0's heads dominate layer 0
    spec = PruneSpec(mamba_num_heads=4)
    assert kept_units(scores, tiny_nemotron, spec, mamba_ranking="global").units(MAMBA_HEAD, 0).tolist() == [0, 1, 2, 3]
    assert [h // 4 for h in kept_units(scores, tiny_nemotron, spec).units(MAMBA_HEAD, 0).tolist()] == [0, 0, 1, 1]


def test_dropped_layers_are_the_least_important_the_family_can_lose(tiny_nemotron, token_batches):
    scores = estimate_importance(tiny_nemotron, token_batches, layer_metric="kl")
    scores.layers["kl"] = torch.tensor([0.6, 0.1, 0.0, 0.5, 0.2, 0.4])  # attention (2) looks least important
    kept = kept_units(scores, tiny_nemotron, PruneSpec(num_layers=4))
    assert kept.dropped_layers == (1, 4) and kept.kept_layers == (0, 2, 3, 5)  # the only attention layer stays
    assert set(kept.by_layer[FFN_NEURON]) == set() and kept.units(MAMBA_HEAD, 3) is not None
    assert kept.new.layer_kinds == (MAMBA, ATTENTION, MAMBA, MAMBA)


def test_random_control_is_seeded_and_needs_no_scores(tiny_nemotron, token_batches):
    scores = estimate_importance(tiny_nemotron, token_batches, layer_metric=None)
    spec = PruneSpec(hidden_size=16, mamba_num_heads=4, num_layers=4)
    first = kept_units(scores, tiny_nemotron, spec, ranking="random", seed=3)
    unscored = kept_units(None, tiny_nemotron, spec, ranking="random", seed=3)  # the draws ignore the scores
    other_seed = kept_units(scores, tiny_nemotron, spec, ranking="random", seed=4)
    assert torch.equal(first.hidden, unscored.hidden) and first.dropped_layers == unscored.dropped_layers
    assert not torch.equal(first.hidden, other_seed.hidden)
    with pytest.raises(ValueError, match="needs ImportanceScores"):
        kept_units(None, tiny_nemotron, spec)


def test_a_config_or_a_description_gives_the_same_units(tiny_nemotron, token_batches):
    scores = estimate_importance(tiny_nemotron, token_batches, layer_metric=None)
    from_config = kept_units(scores, tiny_nemotron.config, SPEC)
    from_description = kept_units(scores, describe(tiny_nemotron), SPEC)
    assert torch.equal(from_config.hidden, from_description.hidden)
    for axis, by_layer in from_config.by_layer.items():
        assert all(torch.equal(t, from_description.by_layer[axis][layer]) for layer, t in by_layer.items())
    scores.layer_kinds = tuple(reversed(scores.layer_kinds))
    with pytest.raises(ValueError, match="different model"):
        kept_units(scores, tiny_nemotron.config, SPEC)
