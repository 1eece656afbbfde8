"""Tiny random models of every supported family (CPU, about a second each), for the per-family tests
and the surfaces (CLI, jobs, dashboard). Each config omits what its published configs omit (e.g. Bamba's
head_dim), so the tests catch a pruner that relies on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tests.conftest import randomize, tiny_nemotron_config

TINY = {
    "mamba2": dict(
        model_type="mamba2",
        vocab_size=128,
        hidden_size=32,
        num_heads=8,
        head_dim=8,
        expand=2,
        n_groups=2,
        state_size=8,
        num_hidden_layers=3,
        chunk_size=8,
        tie_word_embeddings=True,
    ),
    "bamba": dict(
        model_type="bamba",
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        attn_layer_indices=[1],
        num_attention_heads=4,
        num_key_value_heads=2,
        mamba_n_heads=8,
        mamba_d_head=16,
        mamba_n_groups=2,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_chunk_size=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    ),
    "granite_moe_hybrid": dict(  # dense: shared_mlp only; muP-style multipliers that pruning must keep
        model_type="granitemoehybrid",
        vocab_size=128,
        hidden_size=64,
        intermediate_size=32,
        shared_intermediate_size=96,
        num_hidden_layers=4,
        layer_types=["mamba", "attention", "mamba", "mamba"],  # the legacy names real configs use
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=0,
        num_experts_per_tok=0,
        mamba_n_heads=8,
        mamba_d_head=16,
        mamba_n_groups=2,
        mamba_d_state=16,
        mamba_expand=2,
        mamba_chunk_size=16,
        position_embedding_type="rope",
        embedding_multiplier=12.0,
        residual_multiplier=0.22,
        attention_multiplier=0.015625,
        logits_scaling=8.0,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
    "falcon_h1": dict(  # distinct muP multipliers, so a multiplier applied to the wrong slice shows
        model_type="falcon_h1",
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        mamba_d_ssm=96,
        mamba_n_heads=6,
        mamba_d_head=16,
        mamba_n_groups=2,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_chunk_size=16,
        mamba_rms_norm=True,
        mamba_norm_before_gate=False,
        max_position_embeddings=512,
        embedding_multiplier=5.0,
        lm_head_multiplier=0.5,
        mlp_multipliers=[0.9, 0.4],
        key_multiplier=0.5,
        attention_in_multiplier=1.1,
        attention_out_multiplier=0.8,
        ssm_multipliers=[0.3, 0.25, 0.2, 0.6, 0.9],
        ssm_in_multiplier=1.2,
        ssm_out_multiplier=0.7,
    ),
    "zamba2": dict(  # two shared blocks over three hybrid layers, with attention adapters
        model_type="zamba2",
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=6,
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "mamba", "hybrid"],
        num_attention_heads=4,
        n_mamba_heads=8,
        mamba_ngroups=2,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=2,
        chunk_size=16,
        intermediate_size=96,
        num_mem_blocks=2,
        use_shared_attention_adapter=True,
        adapter_rank=8,
        time_step_min=1e-9,  # dt is clamped below at this; the independent Mamba scan does not clamp
        use_mem_rope=True,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
}


# Mixture-of-experts variants: (base family, overrides). Widths are multiples of 8, as transformers' grouped_mm
# experts need; NemotronH routes in two groups (a token picks one group, then its top 2 experts there).
TINY_MOE = {
    "nemotron_h_moe": (
        "nemotron_h",
        dict(
            hybrid_override_pattern="ME*EM-E",
            n_routed_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            moe_shared_expert_intermediate_size=24,
            n_group=2,
            topk_group=1,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
        ),
    ),
    "granite_moe_hybrid_moe": (
        "granite_moe_hybrid",
        dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=16),
    ),
}


def tiny_config(family: str, **overrides):
    if family in TINY_MOE:
        base, values = TINY_MOE[family]
        return tiny_config(base, **(values | overrides))
    if family == "nemotron_h":
        return tiny_nemotron_config(**overrides)
    return AutoConfig.for_model(**(TINY[family] | overrides))


def tiny_model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = randomize(AutoModelForCausalLM.from_config(tiny_config(family, **overrides)), seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a router's choice-only bias (NemotronH's correction), so slicing it shows
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.2)
    return model


def tiny_model_folder(family: str, root: Path) -> tuple[Path, Path]:
    """(model folder, calibration token file) for the CLI, jobs and the dashboard."""
    folder = root / f"tiny-{family}"
    tiny_model(family).save_pretrained(folder)
    calib = root / "calib.npy"
    np.save(calib, np.random.default_rng(0).integers(3, 128, 8192).astype(np.uint16))
    return folder, calib
