"""Streamed (one layer at a time, from the files) equals in memory for every family: importance scores on
every axis and layer metric, and the pruned checkpoint, tensor for tensor."""

from __future__ import annotations

import importlib

import pytest
import torch
from transformers import AutoModelForCausalLM

from hybridlab import estimate_importance, prune
from hybridlab.compression.prune import prune_checkpoint
from hybridlab.model.streamed import StreamedModel
from hybridlab.model.weight_files import read_weight_files
from tests.families.tiny import tiny_model

FAMILIES = ["bamba", "granite_moe_hybrid", "falcon_h1", "zamba2"]  # NemotronH and Mamba2: tests/test_streamed.py


@pytest.fixture(scope="module", params=FAMILIES)
def saved(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param) / "model"
    tiny_model(request.param).save_pretrained(folder)
    return request.param, folder


def _batches(vocab: int):
    ids = torch.randint(0, vocab, (4, 24), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    return [{"input_ids": ids[:2], "attention_mask": mask[:2]}, {"input_ids": ids[2:], "attention_mask": mask[2:]}]


def test_streamed_importance_and_prune_equal_in_memory(saved, tmp_path):
    family, folder = saved
    whole = AutoModelForCausalLM.from_pretrained(folder).eval()
    batches = _batches(whole.config.vocab_size)
    expected = estimate_importance(whole, batches, layer_metric="kl", layer_samples=2)
    got = estimate_importance(StreamedModel(folder), batches, layer_metric="kl", layer_samples=2)
    # Equal to fp32 rounding: a block used at several depths (Zamba2's shared blocks) sums its uses'
    # statistics in another order when streamed (layer by layer instead of batch by batch)
    same = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=0)  # noqa: E731
    for metric in expected.layers:
        same(got.layers[metric], expected.layers[metric])
    same(got.hidden, expected.hidden)
    for table in ("ffn", "attention", "mamba"):
        theirs, ours = getattr(expected, table), getattr(got, table)
        assert theirs.keys() == ours.keys(), table
        for layer in theirs:
            same(ours[layer], theirs[layer])

    spec = importlib.import_module(f"tests.families.test_{family}").MIXED
    prune(whole, spec, expected).save_pretrained(tmp_path / "memory")  # the same scores for both: weights bitwise
    prune_checkpoint(StreamedModel(folder), spec, tmp_path / "streamed", expected, max_shard_bytes=20_000)
    ours, theirs = read_weight_files(tmp_path / "streamed"), read_weight_files(tmp_path / "memory")
    assert set(ours.tensors) == set(theirs.tensors)
    for name in theirs.tensors:
        assert torch.equal(ours.load(name), theirs.load(name)), name
