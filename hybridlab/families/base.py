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
    "moe"                    NemotronH mixture of experts: routed experts and their shared expert
    "mamba+moe"              GraniteMoeHybrid with experts: a mixer, then the experts beside the shared MLP

A layer holds at most one mixer of each kind, so per-layer scores and kept units are
keyed by (axis, layer index).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn

MAMBA, MLP, ATTENTION, MOE = "mamba", "mlp", "attention", "moe"
LAYER_KINDS = (MAMBA, MLP, ATTENTION, MOE)  # the mixer kinds a layer is built from
THEN, BESIDE = "+", "|"  # separators of a layer kind: sequential stages, parallel mixers
LAYER_SYMBOLS = {MAMBA: "M", MLP: "-", ATTENTION: "*", MOE: "E"}  # Nemotron-H pattern letters


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
    # which optional biases exist: names from {"mamba_in_proj", "mamba_out_proj", "mamba_conv", "mlp", "attention",
    # "moe_latent"} ("mlp" covers the shared experts too)
    biases: frozenset[str] = field(default_factory=frozenset)
    mlp_gated: bool = False  # act(gate(x)) * up(x): three matrices instead of up and down
    mamba_norm: bool = True  # the Mamba mixer has its gated RMSNorm (weight [H*P])
    # Shared blocks (Zamba2): the mixers of these kinds are not a layer's own; their uses, layer by layer,
    # cycle through `shared_blocks` blocks of weights (use u runs block u % shared_blocks). A block is
    # scored over all its uses and pruned once.
    shared_kinds: frozenset[str] = field(default_factory=frozenset)
    shared_blocks: int = 0
    # the attention reads this many hidden-wide inputs side by side (Zamba2: [stream | embeddings]);
    # its pre-norm and q/k/v columns are that many times the hidden size
    attention_input_copies: int = 1
    # per use of a shared block: low-rank adapters (rank r) added to these mixers' input projections, and
    # a [hidden, hidden] projection of the block's output into the stream
    adapter_rank: int = 0
    adapted_kinds: frozenset[str] = field(default_factory=frozenset)
    shared_output_proj: bool = False
    # PruneSpec keys the family derives from other widths (see Family.derive): not offered as controls
    derived_axes: tuple[str, ...] = ()
    # Mixture of experts (MOE mixers): a router sends each token to moe_top_k of num_moe_experts routed
    # experts (MLPs of moe_ffn_hidden_size neurons, `moe_gated` like mlp_gated), whose gated outputs add to
    # an always-on shared expert of moe_shared_expert_intermediate_size neurons (0: none; an MLP like the
    # dense ones: mlp_gated, the "mlp" bias). Grouped routing: the experts form moe_n_group equal groups
    # and each token chooses among the experts of its moe_topk_group best groups. moe_latent_size > 0:
    # the routed experts read and write a latent of that width, projected from and back to hidden.
    num_moe_experts: int = 0
    moe_top_k: int = 0
    moe_ffn_hidden_size: int = 0
    moe_shared_expert_intermediate_size: int = 0
    moe_n_group: int = 1
    moe_topk_group: int = 1
    moe_latent_size: int = 0
    moe_gated: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.layer_kinds)

    @property
    def pattern(self) -> str:
        return "".join(layer_symbol(k) for k in self.layer_kinds)

    def count(self, kind: str) -> int:
        """How many mixers of `kind` the model has, over all layers."""
        return sum(mixers_of(k).count(kind) for k in self.layer_kinds)

    def has(self, kind: str) -> bool:
        return self.count(kind) > 0

    def uses(self, kind: str) -> list[int]:
        """The layers holding a mixer of `kind`, in order."""
        return [i for i, k in enumerate(self.layer_kinds) if kind in mixers_of(k)]

    def blocks(self, kind: str) -> int:
        """How many distinct weight sets the mixers of `kind` have (one per use unless shared)."""
        uses = self.count(kind)
        return min(self.shared_blocks, uses) if kind in self.shared_kinds else uses

    def score_layer(self, layer: int, kind: str) -> int:
        """The layer whose scores (and kept units) the `kind` mixer of `layer` uses: its own, or for a
        shared block the block's first use."""
        if kind not in self.shared_kinds:
            return layer
        uses = self.uses(kind)
        return uses[uses.index(layer) % self.shared_blocks]

    @property
    def moe_expert_input(self) -> int:
        """The width routed experts read and write: their latent, or the hidden size."""
        return self.moe_latent_size or self.hidden_size

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
class Adapter:
    """A low-rank (LoRA-like) pair whose output is added to a projection's: up(down(x)). It reads what the
    projection reads and writes what it writes, so it is sliced like the projection's columns and rows."""

    down: nn.Linear  # weight [r, projection input]
    up: nn.Linear  # weight [projection output, r]


@dataclass
class MLPParts:
    """An MLP of F neurons. Plain: down(act(up(x))). Gated: down(act(gate(x)) * up(x)), with gate and up as
    two matrices or fused into one gate_up_proj whose rows are [gate | up]."""

    down_proj: nn.Linear  # weight [hidden, F]; its input is the neuron activation
    up_proj: nn.Linear | None = None  # weight [F, hidden]
    gate_proj: nn.Linear | None = None  # weight [F, hidden]
    gate_up_proj: nn.Linear | None = None  # weight [2F, hidden]: rows [0:F] gate, [F:2F] up
    gate_up_adapter: Adapter | None = None  # this use's adapter on gate_up_proj (a shared block's)


@dataclass
class AttentionParts:
    q_proj: nn.Linear  # weight [heads * head_dim, hidden * input copies]
    k_proj: nn.Linear  # weight [kv_heads * head_dim, hidden * input copies]
    v_proj: nn.Linear  # weight [kv_heads * head_dim, hidden * input copies]
    o_proj: nn.Linear  # weight [hidden, heads * head_dim]; its input is the per-head output
    # this use's adapters on q, k and v (a shared block's), else None
    q_adapter: Adapter | None = None
    k_adapter: Adapter | None = None
    v_adapter: Adapter | None = None


@dataclass
class MoEParts:
    """A mixture of experts of E routed experts of F neurons each (and an optional shared expert).

    `module(x [B, T, hidden])` routes every token to its top-k experts: `experts(x [N, in], top_k_index [N, k],
    top_k_weights [N, k]) -> [N, in]` (N = B*T tokens in row-major order; in = hidden, or the latent width when
    latent projections exist) runs them and sums their outputs weighted by the gates. Routed expert e computes
    down[e] @ act(up[e] @ x), or gated: down[e] @ (act(gate[e] @ x) * up[e] @ x). Every per-expert tensor has
    the expert first, so keeping experts is indexing dimension 0 of each (and the router's rows)."""

    module: nn.Module  # the whole mixture, called on the normed hidden states [B, T, hidden]
    experts: nn.Module  # the routed experts, called as above (its pre-hook sees the routing decisions)
    router_weight: nn.Parameter  # [E, hidden]: one row of router logits per expert
    down_proj: nn.Parameter  # [E, in, F]; its input is the expert's neuron activation
    act_fn: Callable[[torch.Tensor], torch.Tensor]
    up_proj: nn.Parameter | None = None  # [E, F, in] (plain experts)
    gate_up_proj: nn.Parameter | None = None  # [E, 2F, in]: rows [0:F] gate (activated), [F:2F] up (gated experts)
    router_bias: torch.Tensor | None = None  # [E] per-expert bias of the choice only (NemotronH's correction)
    shared_expert: MLPParts | None = None  # always on, beside the routed experts, on the same input
    latent_in: nn.Linear | None = None  # weight [latent, hidden]: the experts' input
    latent_out: nn.Linear | None = None  # weight [hidden, latent]: the experts' summed output back to hidden


@dataclass
class Sublayer:
    """One mixer of a layer and the pre-norm whose output it reads (parallel mixers share one)."""

    kind: str  # MAMBA, MLP, ATTENTION or MOE
    norm: nn.Module  # .weight [hidden * input_copies]
    parts: MambaParts | MLPParts | AttentionParts | MoEParts
    input_copies: int = 1  # hidden-wide inputs read side by side (see Widths.attention_input_copies)


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
    # projections [hidden, hidden] of this layer outside its mixers (Zamba2's per-use `linear`)
    hidden_projections: list[nn.Linear] = field(default_factory=list)

    @classmethod
    def single(cls, index: int, kind: str, block: nn.Module, norm: nn.Module, mixer) -> "Layer":
        """A layer of one mixer behind one pre-norm (NemotronH, Mamba2)."""
        return cls(index, kind, block, [Sublayer(kind, norm, mixer)])

    def sublayer(self, kind: str) -> Sublayer | None:
        return next((s for s in self.sublayers if s.kind == kind), None)

    @property
    def norms(self) -> list[nn.Module]:
        """The layer's distinct pre-norms, in order."""
        return [norm for norm, _ in self.normed_inputs]

    @property
    def normed_inputs(self) -> list[tuple[nn.Module, int]]:
        """(pre-norm, how many hidden-wide inputs it norms side by side) for each distinct pre-norm."""
        seen: dict[int, tuple[nn.Module, int]] = {}
        for sub in self.sublayers:
            seen.setdefault(id(sub.norm), (sub.norm, sub.input_copies))
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
    # family-specific limits on a plan's widths `new`, given the model's `old`; raise ValueError naming the fix
    check: Callable[[Widths, Widths], None] = lambda new, old: None
    # the widths a family derives from others (Zamba2: attention heads from the hidden size), filled in
    # after a spec is resolved; the spec keys it fills are Widths.derived_axes, which planners do not offer
    derive: Callable[[Widths, Widths], Widths] = lambda old, new: new
    # fills the buffers of a freshly built (pruned) model that follow from its config, not from the
    # original's buffers (e.g. Falcon-H1's per-segment multipliers of in_proj); returns their names
    rebuild_buffers: Callable[[nn.Module], set[str]] = _no_buffers
