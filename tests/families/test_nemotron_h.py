"""NemotronH as transformers 5.24 builds it: both Mamba projections take `use_bias` (`mamba_proj_bias`
and `attention_bias` are read by nothing), and the lm_head is never tied to the embeddings."""

from __future__ import annotations

import json

import pytest
import torch

from hybridlab import PruneSpec, estimate_importance, estimate_sizes, prune
from hybridlab.cli import main
from hybridlab.model.reference import REFERENCE_CONFIGS
from tests.families import exact
from tests.families.tiny import tiny_config, tiny_model


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"use_bias": True},
        {"mamba_proj_bias": True},
        {"attention_bias": True},
        {"mlp_bias": True},
        {"use_conv_bias": False},
        {"tie_word_embeddings": True},
    ],
)
def test_sizes_equal_what_transformers_builds_for_every_flag(flags):
    config = tiny_config("nemotron_h", **flags)
    assert estimate_sizes(config).params == exact.meta_params(config)


def test_a_model_with_use_bias_and_tie_flag_prunes_to_its_plan_and_reloads(tmp_path):
    model = tiny_model("nemotron_h", use_bias=True, tie_word_embeddings=True)
    batch = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    scores = estimate_importance(model, [batch], layer_metric="kl")
    spec = PruneSpec(hidden_size=24, mamba_num_heads=4, num_layers=5)
    pruned = prune(model, spec, scores)
    exact.check_params_equal_plan(model, pruned, spec, scores)
    exact.check_weights_are_kept_slices(model, spec, scores)
    exact.check_reloads_identically(pruned, batch, tmp_path)


def test_published_size_from_a_folder_with_only_a_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "nemotron_h", **REFERENCE_CONFIGS["nemotron-h-8b"]})
    )
    argv = ["plan", "--model", str(tmp_path), "--hidden-size", "3072", "--ffn-hidden-size", "12288"]
    assert main([*argv, "--mamba-num-heads", "112", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["original"]["params"], report["pruned"]["params"]) == (8_100_852_736, 4_489_223_040)
