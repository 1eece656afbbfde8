"""What every family adapter hands to the engine: a normalised view of the config
(`Widths`) and references to the tensors of each prunable part (`ModelParts`).

The engine reads and writes weights only through these references, so the
knowledge of tensor names stays in the adapter files.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from torch import nn

MAMBA, MLP, ATTENTION = "mamba", "mlp", "attention"
LAYER_KINDS = (MAMBA, MLP, ATTENTION)
LAYER_SYMBOLS = {MAMBA: "M", MLP: "-", ATTENTION: "*"}  # Nemotron-H pattern letters


@dataclass(frozen=True)
class Widths:
    """Every size the pruner can change, plus the fixed ones it must respect."""

    vocab_size: int
    hidden_size: int
    layer_kinds: tuple[str, ...]
    ffn_hidden_size: int = 0
    num_attention_heads: int = 0
    num_key_value_heads: int = 0
    attention_head_dim: int = 0
    mamba_num_heads: int = 0
    mamba_head_dim: int = 0
    mamba_n_groups: int = 1
    mamba_state_size: int = 0
    mamba_conv_kernel: int = 4
    tied_embeddings: bool = False
    # which optional biases exist: names from {"mamba_in_proj", "mamba_out_proj", "mamba_conv", "mlp", "attention"}
    biases: frozenset[str] = field(default_factory=frozenset)

    @property
    def num_layers(self) -> int:
        return len(self.layer_kinds)

    @property
    def pattern(self) -> str:
        return "".join(LAYER_SYMBOLS[k] for k in self.layer_kinds)

    def count(self, kind: str) -> int:
        return sum(k == kind for k in self.layer_kinds)

    def with_(self, **changes) -> "Widths":
        return replace(self, **changes)


@dataclass
class MambaParts:
    """A Mamba2 mixer (H heads of dim P, G groups, state N, conv kernel K)."""

    in_proj: nn.Linear  # weight [2*H*P + 2*G*N + H, hidden]; rows are [z | x | B | C | dt]
    conv1d: nn.Conv1d  # depthwise over [x | B | C]: weight [H*P + 2*G*N, 1, K]
    dt_bias: nn.Parameter  # [H]
    A_log: nn.Parameter  # [H]
    D: nn.Parameter  # [H]
    norm_weight: nn.Parameter  # [H*P], gated RMSNorm normalised in G groups of H*P/G
    out_proj: nn.Linear  # weight [hidden, H*P]


@dataclass
class MLPParts:
    up_proj: nn.Linear  # weight [F, hidden]
    down_proj: nn.Linear  # weight [hidden, F]; its input is the neuron activation


@dataclass
class AttentionParts:
    q_proj: nn.Linear  # weight [heads * head_dim, hidden]
    k_proj: nn.Linear  # weight [kv_heads * head_dim, hidden]
    v_proj: nn.Linear  # weight [kv_heads * head_dim, hidden]
    o_proj: nn.Linear  # weight [hidden, heads * head_dim]; its input is the per-head output


@dataclass
class Layer:
    index: int
    kind: str
    block: nn.Module  # called as block(hidden_states, ...) -> hidden_states
    norm: nn.Module  # pre-norm whose output feeds the mixer; has .weight [hidden]
    mixer: MambaParts | MLPParts | AttentionParts


@dataclass
class ModelParts:
    embeddings: nn.Embedding  # weight [vocab, hidden]
    layers: list[Layer]
    final_norm: nn.Module  # .weight [hidden]
    lm_head: nn.Linear  # weight [vocab, hidden]


@dataclass(frozen=True)
class Family:
    """One model family. Adding a family means writing one file that builds one of these."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values
    architectures: tuple[str, ...]  # class names, for error messages
    widths: Callable[[object], Widths]  # config -> Widths
    config_with: Callable[[object, Widths], object]  # (config, new widths) -> new config
    parts: Callable[[nn.Module], ModelParts]  # model -> tensor references
    check: Callable[[Widths], None] = lambda widths: None  # family-specific limits; raise ValueError
