"""transformers' Mamba2 mixer tensors, shared by every family that reuses it (NemotronH,
Mamba2, Bamba, GraniteMoeHybrid, Falcon-H1, Zamba2 name them alike). Which rows and
channels of those tensors hold which part: mamba_layout.py."""

from __future__ import annotations

from torch import nn

from hybridlab.families.base import MambaParts

# transformers' class of this mixer in each family (hybridlab.model.fast_mamba swaps the scan they call)
MIXER_CLASS_NAMES = frozenset(
    {
        "NemotronHMamba2Mixer",
        "Mamba2Mixer",
        "BambaMixer",
        "GraniteMoeHybridMambaLayer",
        "FalconH1Mixer",
        "Zamba2MambaMixer",
    }
)

# transformers' gated norms of those mixers that compute weight * rmsnorm(y * silu(gate)) over groups of
# `group_size` channels, eps `variance_epsilon` (Falcon-H1's differs: n_groups, optional norm-before-gate)
GATED_NORM_CLASS_NAMES = frozenset(
    {
        "NemotronHRMSNormGated",
        "MambaRMSNormGated",
        "BambaRMSNormGated",
        "GraniteMoeHybridRMSNormGated",
        "Zamba2RMSNormGated",
    }
)

# transformers' residual-stream RMSNorm of these families: weight * x / sqrt(mean(x^2) + eps) over the
# last dimension, computed in float32, eps `variance_epsilon` (hybridlab.model.fast_rmsnorm fuses it)
RMS_NORM_CLASS_NAMES = frozenset(
    {
        "NemotronHRMSNorm",
        "Mamba2RMSNorm",
        "BambaRMSNorm",
        "GraniteMoeHybridRMSNorm",
        "FalconH1RMSNorm",
        "Zamba2RMSNorm",
    }
)


def mamba_parts(mixer: nn.Module) -> MambaParts:
    return MambaParts(
        in_proj=mixer.in_proj,
        conv1d=mixer.conv1d,
        dt_bias=mixer.dt_bias,
        A_log=mixer.A_log,
        D=mixer.D,
        norm_weight=getattr(mixer.norm, "weight", None),  # Falcon-H1 may have no norm (nn.Identity)
        out_proj=mixer.out_proj,
    )
