"""Model families hybridlab can prune. To add one (Bamba, GraniteMoeHybrid, FalconH1,
Zamba2...), write one adapter file that builds a `Family` and list it here."""

from __future__ import annotations

from hybridlab.families import mamba2, nemotron_h
from hybridlab.families.base import (
    ATTENTION,
    LAYER_KINDS,
    MAMBA,
    MLP,
    AttentionParts,
    Family,
    Layer,
    MambaParts,
    MLPParts,
    ModelParts,
    Widths,
)

FAMILIES: tuple[Family, ...] = (nemotron_h.FAMILY, mamba2.FAMILY)


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


__all__ = [
    "ATTENTION",
    "LAYER_KINDS",
    "MAMBA",
    "MLP",
    "AttentionParts",
    "FAMILIES",
    "Family",
    "Layer",
    "MambaParts",
    "MLPParts",
    "ModelParts",
    "Widths",
    "family_for",
    "supported_architectures",
]
