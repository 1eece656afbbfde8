"""Property tests over random valid specs, and every class of invalid spec."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, NemotronHForCausalLM

from hybridlab import PruneSpec, estimate_importance, estimate_sizes, prune
from hybridlab.compression.kept import plan_drop_layers
from tests.conftest import randomize, tiny_nemotron_config

_MODEL = randomize(NemotronHForCausalLM(tiny_nemotron_config()))
_BATCHES = [torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(5))]
_SCORES = estimate_importance(_MODEL, _BATCHES, layer_metric="kl")


@st.composite
def valid_specs(draw):
    values = {}
    if draw(st.booleans()):
        values["hidden_size"] = draw(st.integers(1, 32))
    if draw(st.booleans()):
        values["ffn_hidden_size"] = draw(st.integers(1, 48))
    if draw(st.booleans()):
        values["num_attention_heads"] = draw(st.sampled_from([2, 4]))
    if draw(st.booleans()):
        values["mamba_num_heads"] = draw(st.sampled_from([2, 4, 6, 8]))
    if draw(st.booleans()):
        values["mamba_head_dim"] = draw(st.integers(1, 4))
    layers = draw(st.sampled_from(["keep", "count", "explicit"]))
    if layers == "count":
        values["num_layers"] = draw(st.integers(1, 6))
    elif layers == "explicit":
        values["drop_layers"] = draw(
            st.lists(st.sampled_from([0, 1, 3, 4, 5]), unique=True, max_size=4)
        )  # 2: the attention layer
    return PruneSpec(**values)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=valid_specs(), ranking=st.sampled_from(["importance", "random"]))
def test_random_valid_specs_run_roundtrip_and_match_estimate(spec, ranking, tmp_path_factory):
    pruned = prune(_MODEL, spec, _SCORES, ranking=ranking)
    with torch.no_grad():
        out = pruned(_BATCHES[0], use_cache=False).logits
    assert out.shape == (4, 16, 128) and torch.isfinite(out).all()
    assert sum(p.numel() for p in pruned.parameters()) == estimate_sizes(pruned.config).params
    dropped = plan_drop_layers(_MODEL.config, spec, _SCORES, ranking=ranking)
    exact = PruneSpec.from_dict(spec.to_dict() | {"num_layers": None, "drop_layers": list(dropped)})
    assert estimate_sizes(_MODEL.config, exact).params == estimate_sizes(pruned.config).params
    folder = tmp_path_factory.mktemp("pruned")
    pruned.save_pretrained(folder)
    reloaded, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(_BATCHES[0], use_cache=False).logits, out)


def test_generate_same_tokens_with_and_without_cache():
    pruned = prune(
        _MODEL,
        PruneSpec(hidden_size=24, ffn_hidden_size=32, mamba_num_heads=4, num_attention_heads=2, num_layers=5),
        _SCORES,
    )
    prompt = _BATCHES[0][:1, :8]
    with torch.no_grad():
        cached = pruned.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = pruned.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"mamba_num_heads": 5}, "multiple of n_groups"),
        ({"num_attention_heads": 3}, "key/value heads"),
        ({"ffn_hidden_size": 100}, "larger than"),
        ({"hidden_size": 0}, "at least 1"),
        ({"mamba_head_dim": -2}, "at least 1"),
        ({"num_layers": 0}, "at least 1"),
        ({"drop_layers": [0, 1, 2, 3, 4, 5]}, "drops every layer"),
        ({"drop_layers": [9]}, "out of range"),
        ({"num_layers": 4, "drop_layers": [1]}, "contradicts"),
        ({"mamba_heads": 4}, "unknown prune spec keys"),
        ({"drop_layers": [2]}, "removes every attention layer"),
        ({"hidden_size": 2.5}, "whole number"),
    ],
)
def test_invalid_specs_are_rejected_before_work(values, message):
    with pytest.raises(ValueError, match=message):
        prune(_MODEL, PruneSpec.from_dict(values), _SCORES)


def test_importance_ranking_without_scores_is_a_clear_error():
    with pytest.raises(ValueError, match="needs ImportanceScores"):
        prune(_MODEL, PruneSpec(ffn_hidden_size=8))


def test_num_layers_drops_the_least_important_by_metric_but_keeps_an_attention_layer():
    scores = estimate_importance(_MODEL, _BATCHES, layer_metric="kl")
    scores.layers["kl"][2] = -1.0  # the only attention layer now looks least important
    pruned = prune(_MODEL, PruneSpec(num_layers=4), scores, layer_metric="kl")
    assert "full_attention" in pruned.config.layers_block_type
    order = [i for i in torch.argsort(scores.layers["kl"]).tolist() if i != 2]
    least = set(order[:2])
    kinds = tiny_nemotron_config().layers_block_type
    expected = [k for i, k in enumerate(kinds) if i not in least]
    assert pruned.config.layers_block_type == expected
    prompt = _BATCHES[0][:1, :6]
    assert pruned.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 9)


def test_mamba2_family_prunes_and_reloads(tiny_mamba2, token_batches, tmp_path):
    scores = estimate_importance(tiny_mamba2, token_batches, layer_metric="kl")
    pruned = prune(tiny_mamba2, PruneSpec(mamba_num_heads=4, num_layers=2), scores)
    assert pruned.config.num_heads == 4 and pruned.config.expand == 1 and pruned.config.num_hidden_layers == 2
    assert sum(p.numel() for p in pruned.parameters()) == estimate_sizes(pruned.config).params
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(token_batches[0]).logits, pruned(token_batches[0]).logits)
    with pytest.raises(ValueError, match="whole multiple of hidden_size"):
        prune(tiny_mamba2, PruneSpec(mamba_num_heads=6), scores)
    with pytest.raises(ValueError, match="no layers with that axis"):
        prune(tiny_mamba2, PruneSpec(ffn_hidden_size=8), scores)


def test_unsupported_family_names_the_supported_ones():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(ValueError, match="NemotronHForCausalLM, Mamba2ForCausalLM"):
        prune(model, PruneSpec(hidden_size=8), ranking="random")
