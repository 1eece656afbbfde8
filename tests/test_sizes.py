"""Sizes without building: exact parameter counts, state memory and FLOPs."""

from __future__ import annotations

import torch
from transformers import NemotronHForCausalLM

from hybridlab import PruneSpec, estimate_sizes
from hybridlab.model.reference import REFERENCE_SPECS, reference_config


def meta_params(config) -> int:
    with torch.device("meta"):
        model = NemotronHForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def test_nemotron_h_8b_and_the_papers_4b_match_transformers():
    config = reference_config("nemotron-h-8b")
    assert estimate_sizes(config).params == 8_100_852_736 == meta_params(config)
    _, spec = REFERENCE_SPECS["nemotron-h-4b"]
    assert estimate_sizes(config, spec).params == 4_489_223_040
    values = config.to_dict() | {"hidden_size": 3072, "intermediate_size": 12288, "mamba_num_heads": 112}
    values.pop("num_hidden_layers", None)
    assert meta_params(type(config).from_dict(values)) == 4_489_223_040


def test_state_memory_counts_kv_cache_and_mamba_states():
    config = reference_config("nemotron-h-8b")
    s1 = estimate_sizes(config, seq_len=1024)
    s2 = estimate_sizes(config, seq_len=2048)
    # KV cache grows with the sequence, Mamba state does not
    assert s2.kv_cache_bytes == 2 * s1.kv_cache_bytes == 2 * 4 * 2 * 8 * 128 * 1024 * 2
    assert s1.mamba_state_bytes == s2.mamba_state_bytes == 24 * ((8192 + 2 * 8 * 128) * 4 * 2 + 8192 * 128 * 4)


def test_pruning_lowers_flops_and_depth_lowers_state():
    config = reference_config("nemotron-h-8b")
    full = estimate_sizes(config)
    narrow = estimate_sizes(config, PruneSpec(mamba_num_heads=64))
    shallow = estimate_sizes(config, PruneSpec(num_layers=26))
    assert narrow.flops_per_token < full.flops_per_token
    assert narrow.mamba_state_bytes == 24 * ((4096 + 2 * 8 * 128) * 4 * 2 + 4096 * 128 * 4)  # B and C stay whole
    assert shallow.params < full.params and shallow.state_bytes < full.state_bytes
