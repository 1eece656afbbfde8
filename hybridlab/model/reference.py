"""Published architectures, buildable on the meta device, for planning at full scale."""

from __future__ import annotations

from hybridlab.model.spec import PruneSpec

NEMOTRON_H_8B_PATTERN = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"

REFERENCE_CONFIGS = {
    # NVIDIA Nemotron-H-8B-Base (PAPER.md): 52 layers, 24 Mamba2, 24 MLP, 4 attention.
    "nemotron-h-8b": dict(
        vocab_size=131072,
        hidden_size=4096,
        hybrid_override_pattern=NEMOTRON_H_8B_PATTERN,
        intermediate_size=21504,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        mamba_num_heads=128,
        mamba_head_dim=64,
        n_groups=8,
        ssm_state_size=128,
        conv_kernel=4,
        tie_word_embeddings=False,
    ),
}

# The paper's chosen compression of the 8B (Table 1, candidate 1): Nemotron-H-4B.
REFERENCE_SPECS = {
    "nemotron-h-4b": ("nemotron-h-8b", PruneSpec(hidden_size=3072, ffn_hidden_size=12288, mamba_num_heads=112)),
}


def reference_config(name: str):
    from transformers import NemotronHConfig

    if name not in REFERENCE_CONFIGS:
        raise ValueError(f"unknown reference config {name!r}; known: {sorted(REFERENCE_CONFIGS)}")
    return NemotronHConfig(**REFERENCE_CONFIGS[name])
