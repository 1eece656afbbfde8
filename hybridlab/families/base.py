"""What every family adapter hands to the engine: a normalised view of the config
(`Widths`) and references to the tensors of each prunable part (`ModelParts`).

The engine reads and writes weights only through these references, so the
knowledge of tensor names stays in the adapter files.

A layer is a block of one or more mixers (sublayers), each behind a pre-norm, written
as a kind string: stages joined by "+" run one after the other, each behind its own
pre-norm; mixers joined by "|" run side by side on the output of one shared pre-norm.

    "mamba"                  NemotronH / Mamba2: one mixer per layer
    "mamba+mlp"              Bamba, GraniteMoeHybrid: a mixer, then a gated MLP
    "mamba|attention+mlp"    Falcon-H1: Mamba and attention in parallel, then an MLP

A layer holds at most one mixer of each kind, so per-layer scores and kept units are
keyed by (axis, layer index).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from torch import nn

MAMBA, MLP, ATTENTION = "mamba", "mlp", "attention"
LAYER_KINDS = (MAMBA, MLP, ATTENTION)  # the mixer kinds a layer is built from
THEN, BESIDE = "+", "|"  # separators of a layer kind: sequential stages, parallel mixers
LAYER_SYMBOLS = {MAMBA: "M", MLP: "-", ATTENTION: "*"}  # Nemotron-H pattern letters


def stages_of(layer_kind: str) -> tuple[tuple[str, ...], ...]:
    """ "mamba|attention+mlp" -> (("mamba", "attention"), ("mlp",)): one tuple per pre-norm."""
    return tuple(tuple(stage.split(BESIDE)) for stage in layer_kind.split(THEN))


def mixers_of(layer_kind: str) -> tuple[str, ...]:
    """Every mixer kind of a layer, in order: "mamba|attention+mlp" -> ("mamba", "attention", "mlp")."""
    return tuple(kind for stage in stages_of(layer_kind) for kind in stage)


def layer_symbol(layer_kind: str) -> str:
    """One letter for a one-mixer layer (the Nemotron-H pattern), else the letters in brackets."""
    letters = THEN.join(BESIDE.join(LAYER_SYMBOLS[k] for k in stage) for stage in stages_of(layer_kind))
    return letters if len(mixers_of(layer_kind)) == 1 else f"[{letters}]"


@dataclass(frozen=True)
class Widths:
    """Every size the pruner can change, plus the fixed ones it must respect."""

    vocab_size: int
    hidden_size: int
    layer_kinds: tuple[str, ...]  # one kind string per layer (see the module docstring)
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
    mlp_gated: bool = False  # act(gate(x)) * up(x): three matrices instead of up and down
    mamba_norm: bool = True  # the Mamba mixer has its gated RMSNorm (weight [H*P])

    @property
    def num_layers(self) -> int:
        return len(self.layer_kinds)

    @property
    def pattern(self) -> str:
        return "".join(layer_symbol(k) for k in self.layer_kinds)

    @property
    def num_norms(self) -> int:
        """Pre-norms over all layers (the final norm not included)."""
        return sum(len(stages_of(k)) for k in self.layer_kinds)

    def count(self, kind: str) -> int:
        """How many mixers of `kind` the model has, over all layers."""
        return sum(mixers_of(k).count(kind) for k in self.layer_kinds)

    def has(self, kind: str) -> bool:
        return self.count(kind) > 0

    @property
    def is_multi_head(self) -> bool:
        """Every query head has its own key/value head (MHA): pruning a head removes its K and V too."""
        return self.num_key_value_heads == self.num_attention_heads

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
    norm_weight: nn.Parameter | None  # [H*P], gated RMSNorm normalised in G groups of H*P/G; None: no norm
    out_proj: nn.Linear  # weight [hidden, H*P]


@dataclass
class MLPParts:
    """An MLP of F neurons. Plain: down(act(up(x))). Gated: down(act(gate(x)) * up(x)), with gate and up as
    two matrices or fused into one gate_up_proj whose rows are [gate | up]."""

    down_proj: nn.Linear  # weight [hidden, F]; its input is the neuron activation
    up_proj: nn.Linear | None = None  # weight [F, hidden]
    gate_proj: nn.Linear | None = None  # weight [F, hidden]
    gate_up_proj: nn.Linear | None = None  # weight [2F, hidden]: rows [0:F] gate, [F:2F] up


@dataclass
class AttentionParts:
    q_proj: nn.Linear  # weight [heads * head_dim, hidden]
    k_proj: nn.Linear  # weight [kv_heads * head_dim, hidden]
    v_proj: nn.Linear  # weight [kv_heads * head_dim, hidden]
    o_proj: nn.Linear  # weight [hidden, heads * head_dim]; its input is the per-head output


@dataclass
class Sublayer:
    """One mixer of a layer and the pre-norm whose output it reads (parallel mixers share one)."""

    kind: str  # MAMBA, MLP or ATTENTION
    norm: nn.Module  # .weight [hidden]
    parts: MambaParts | MLPParts | AttentionParts


def _itself(hidden_states):
    return hidden_states


@dataclass
class Layer:
    index: int
    kind: str  # the layer's kind string, e.g. "mamba" or "mamba|attention+mlp"
    block: nn.Module  # the decoder layer: called as block(hidden_states, ...)
    sublayers: list[Sublayer]
    # what the model's layer loop expects back from a block that leaves its input unchanged
    # (a tensor for most families, a tuple for some): used to run the model without the layer
    skip_output: Callable = _itself

    @classmethod
    def single(cls, index: int, kind: str, block: nn.Module, norm: nn.Module, mixer) -> "Layer":
        """A layer of one mixer behind one pre-norm (NemotronH, Mamba2)."""
        return cls(index, kind, block, [Sublayer(kind, norm, mixer)])

    def sublayer(self, kind: str) -> Sublayer | None:
        return next((s for s in self.sublayers if s.kind == kind), None)

    @property
    def norms(self) -> list[nn.Module]:
        """The layer's distinct pre-norms, in order."""
        seen: dict[int, nn.Module] = {}
        for sub in self.sublayers:
            seen.setdefault(id(sub.norm), sub.norm)
        return list(seen.values())

    @property
    def norm(self) -> nn.Module:
        """The pre-norm of a one-mixer layer."""
        return self._only().norm

    @property
    def mixer(self) -> MambaParts | MLPParts | AttentionParts:
        """The parts of a one-mixer layer."""
        return self._only().parts

    def _only(self) -> Sublayer:
        if len(self.sublayers) != 1:
            raise AttributeError(f"layer {self.index} ({self.kind}) has several mixers; use .sublayers")
        return self.sublayers[0]


@dataclass
class ModelParts:
    embeddings: nn.Embedding  # weight [vocab, hidden]
    layers: list[Layer]
    final_norm: nn.Module  # .weight [hidden]
    lm_head: nn.Linear  # weight [vocab, hidden]


def _no_buffers(model: nn.Module) -> set[str]:
    return set()


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
    # fills the buffers of a freshly built (pruned) model that follow from its config, not from the
    # original's buffers (e.g. Falcon-H1's per-segment multipliers of in_proj); returns their names
    rebuild_buffers: Callable[[nn.Module], set[str]] = _no_buffers
