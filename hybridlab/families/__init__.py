"""Model families hybridlab can prune. To add one (Bamba, GraniteMoeHybrid, FalconH1,
Zamba2...), write one adapter file that builds a `Family` and list it in registry.py."""

from __future__ import annotations

from hybridlab.families.base import (
    ATTENTION,
    LAYER_KINDS,
    MAMBA,
    MLP,
    MOE,
    Adapter,
    AttentionParts,
    Family,
    Layer,
    MambaParts,
    MLPParts,
    ModelParts,
    MoEParts,
    Sublayer,
    Widths,
    mixers_of,
    stages_of,
)
from hybridlab.families.description import ModelDescription, describe
from hybridlab.families.mamba_layout import MambaLayout
from hybridlab.families.registry import FAMILIES, family_for, supported_architectures

__all__ = [
    "ATTENTION",
    "Adapter",
    "LAYER_KINDS",
    "MAMBA",
    "MLP",
    "MOE",
    "AttentionParts",
    "FAMILIES",
    "Family",
    "Layer",
    "MambaLayout",
    "MambaParts",
    "MLPParts",
    "ModelDescription",
    "ModelParts",
    "MoEParts",
    "Sublayer",
    "Widths",
    "describe",
    "mixers_of",
    "stages_of",
    "family_for",
    "supported_architectures",
]
