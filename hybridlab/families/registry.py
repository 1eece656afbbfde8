"""The families hybridlab can prune, and which one a model or config belongs to."""

from __future__ import annotations

from hybridlab.families.bamba import FAMILY as BAMBA
from hybridlab.families.base import Family
from hybridlab.families.falcon_h1 import FAMILY as FALCON_H1
from hybridlab.families.granite_moe_hybrid import FAMILY as GRANITE_MOE_HYBRID
from hybridlab.families.mamba2 import FAMILY as MAMBA2
from hybridlab.families.nemotron_h import FAMILY as NEMOTRON_H
from hybridlab.families.zamba2 import FAMILY as ZAMBA2

FAMILIES: tuple[Family, ...] = (NEMOTRON_H, MAMBA2, BAMBA, GRANITE_MOE_HYBRID, FALCON_H1, ZAMBA2)


def supported_architectures() -> list[str]:
    return [arch for family in FAMILIES for arch in family.architectures]


def family_for(model_or_config) -> Family:
    """The adapter for a model or config; a clear error for anything else."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    found = getattr(config, "architectures", None) or model_type or type(model_or_config).__name__
    raise ValueError(
        f"hybridlab cannot prune {found}: supported model families are {', '.join(supported_architectures())}."
    )
