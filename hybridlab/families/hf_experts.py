"""What transformers' mixture-of-experts layers share (NemotronH, GraniteMoeHybrid): routed experts stored
as 3-D tensors, expert first, and run by default with torch's grouped_mm, which needs every row of its
operands to start on a 16-byte boundary. A pruned expert width or hidden size that breaks this builds a
model whose forward fails, so such plans are refused with the nearest widths that run."""

from __future__ import annotations

from hybridlab.families.base import MOE, Widths

ALIGNMENT = 8  # values per 16 bytes in bfloat16 (float32 needs 4, so 8 serves both)


def check_expert_alignment(new: Widths, old: Widths, architecture: str) -> None:
    """ValueError naming the fix when a pruned width that grouped_mm reads is not a multiple of ALIGNMENT."""
    if not old.has(MOE):
        return
    widths = {"moe_ffn_hidden_size": (new.moe_ffn_hidden_size, old.moe_ffn_hidden_size)}
    if not old.moe_latent_size:  # the experts read and write the hidden states themselves
        widths["hidden_size"] = (new.hidden_size, old.hidden_size)
    for name, (value, original) in widths.items():
        if value != original and value % ALIGNMENT:
            lower = value - value % ALIGNMENT
            fix = f"{lower} or {lower + ALIGNMENT}" if lower else f"{ALIGNMENT}"
            raise ValueError(
                f"{name}={value} is not a multiple of {ALIGNMENT}: {architecture}'s experts run with grouped_mm, "
                f"which needs 16-byte rows, so the pruned model could not run; try {name}={fix}"
            )
