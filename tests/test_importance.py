"""Importance: masking, aggregation, one forward per batch, persistence, tidy frame."""

from __future__ import annotations

import json

import torch

from hybridlab import ImportanceScores, estimate_importance
from hybridlab.compression.importance import sequence_mean_magnitude


def test_aggregation_is_mean_over_sequence_then_l2_over_samples():
    act = torch.tensor([[[1.0, -2.0], [3.0, 4.0]], [[0.0, 2.0], [9.0, 9.0]]])  # [B=2, T=2, C=2]
    mask = torch.tensor([[1, 1], [1, 0]])
    per_sample = sequence_mean_magnitude(act, mask)
    assert torch.allclose(per_sample, torch.tensor([[2.0, 3.0], [0.0, 2.0]]))  # padded 9s ignored
    assert torch.allclose(per_sample.pow(2).sum(0).sqrt(), torch.tensor([2.0, 13.0**0.5]))


def test_padded_positions_contribute_nothing(tiny_nemotron):
    ids = torch.randint(3, 128, (3, 16), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # right padding
    other = ids.clone()
    other[1, 10:] = 5  # different tokens where padded
    a = estimate_importance(tiny_nemotron, [{"input_ids": ids, "attention_mask": mask}], layer_metric="kl")
    b = estimate_importance(tiny_nemotron, [{"input_ids": other, "attention_mask": mask}], layer_metric="kl")
    for key in ("hidden",):
        assert torch.allclose(getattr(a, key), getattr(b, key), atol=1e-5)
    for table in ("ffn", "attention", "mamba"):
        for layer in getattr(a, table):
            assert torch.allclose(getattr(a, table)[layer], getattr(b, table)[layer], atol=1e-5)
    for metric in ("kl", "loss", "cosine"):
        assert torch.allclose(a.layers[metric], b.layers[metric], atol=1e-5)
    c = estimate_importance(
        tiny_nemotron, [{"input_ids": other, "attention_mask": torch.ones_like(ids)}], layer_metric=None
    )
    assert not torch.allclose(a.hidden, c.hidden, atol=1e-4)  # unmasked, the padding would count


def test_one_forward_per_batch_for_all_width_axes(tiny_nemotron, token_batches):
    calls = []
    handle = tiny_nemotron.register_forward_pre_hook(lambda m, a: calls.append(1))
    estimate_importance(tiny_nemotron, token_batches, layer_metric="cosine")
    assert len(calls) == len(token_batches)
    calls.clear()
    estimate_importance(tiny_nemotron, token_batches, layer_metric="kl")
    handle.remove()
    assert len(calls) == len(token_batches) * (1 + 1 + 6)  # widths, full model, one per dropped layer


def test_shapes_and_kl_is_nonnegative(tiny_nemotron, token_batches):
    s = estimate_importance(tiny_nemotron, token_batches)
    assert s.hidden.shape == (32,)
    assert set(s.ffn) == {1, 4} and s.ffn[1].shape == (48,)
    assert set(s.attention) == {2} and s.attention[2].shape == (4,)
    assert set(s.mamba) == {0, 3, 5} and s.mamba[0].shape == (8, 4)
    assert (s.layers["kl"] >= 0).all() and (s.layers["kl"] > 0).any()
    assert s.mamba_head_scores(0, torch.tensor([0, 1])).shape == (8,)


def test_scores_roundtrip_without_pickle(tiny_nemotron, token_batches, tmp_path):
    s = estimate_importance(tiny_nemotron, token_batches)
    out = s.save(tmp_path / "scores")
    assert sorted(p.name for p in out.iterdir()) == ["scores.json", "scores.safetensors"]
    json.loads((out / "scores.json").read_text())
    loaded = ImportanceScores.load(out)
    assert torch.equal(loaded.hidden, s.hidden)
    assert all(torch.equal(loaded.mamba[i], s.mamba[i]) for i in s.mamba)
    assert all(torch.equal(loaded.layers[m], s.layers[m]) for m in s.layers)
    assert loaded.layer_kinds == s.layer_kinds and loaded.n_groups == 2


def test_tidy_frame(tiny_nemotron, token_batches):
    frame = estimate_importance(tiny_nemotron, token_batches).to_frame()
    assert list(frame.columns) == ["layer", "layer_kind", "axis", "index", "group", "score"]
    heads = frame[(frame.axis == "mamba_head") & (frame.layer == 0)]
    assert heads["group"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    kl = frame[frame.axis == "layer_kl"]
    assert kl["layer"].tolist() == list(range(6)) and kl["layer_kind"].tolist()[2] == "attention"


def test_layer_samples_limits_the_drop_one_layer_passes(tiny_nemotron, token_batches):
    calls = []
    handle = tiny_nemotron.register_forward_pre_hook(lambda m, a: calls.append(1))
    limited = estimate_importance(tiny_nemotron, token_batches, layer_metric="kl", layer_samples=4)
    handle.remove()
    assert len(calls) == len(token_batches) + 1 * (1 + 6)  # the first batch (4 samples) alone for layers
    first_only = estimate_importance(tiny_nemotron, token_batches[:1], layer_metric="kl")
    assert torch.allclose(limited.layers["kl"], first_only.layers["kl"])
    assert limited.meta["layer_samples"] == 4
