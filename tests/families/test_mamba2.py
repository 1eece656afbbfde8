"""Mamba2 with tied embeddings: building the pruned model on the meta device and materialising it
unties lm_head from the embeddings; prune ties them again, so the count and the weights stay one."""

from __future__ import annotations

import json

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM

from hybridlab import PruneSpec, estimate_importance, prune
from hybridlab.cli import main
from tests.conftest import randomize
from tests.families import exact


def test_tied_embeddings_stay_tied_after_pruning(tmp_path):
    config = Mamba2Config(
        vocab_size=128, hidden_size=32, num_heads=8, head_dim=8, expand=2, n_groups=2, state_size=8,
        num_hidden_layers=3, chunk_size=8, tie_word_embeddings=True,
    )  # fmt: skip
    model = randomize(Mamba2ForCausalLM(config))
    model.tie_weights()
    batch = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    scores = estimate_importance(model, [batch], layer_metric="kl")
    spec = PruneSpec(hidden_size=16, mamba_num_heads=4, num_layers=2)
    pruned = prune(model, spec, scores)
    assert pruned.lm_head.weight is pruned.backbone.embeddings.weight
    exact.check_params_equal_plan(model, pruned, spec, scores)
    exact.check_reloads_identically(pruned, batch, tmp_path)


def test_published_size_from_a_folder_with_only_a_config(tmp_path, capsys):
    """Mamba-Codestral-7B (transformers' Mamba2Config defaults are its config): 7,285,403,648."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba2"}))
    assert main(["plan", "--model", str(tmp_path), "--mamba-num-heads", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["original"]["params"] == 7_285_403_648 == exact.meta_params(Mamba2Config())
    assert report["pruned"]["params"] == exact.meta_params(Mamba2Config(num_heads=64, expand=1))
