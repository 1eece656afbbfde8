"""A model's description, resolved once: its family adapter and its widths.

Every step of a pipeline (importance, pruning, sizes, the search space) needs both;
`describe` resolves them once and the steps hand the result along instead of asking
the families again. Functions that take a config take a description too.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hybridlab.families.base import Family, ModelParts, Widths
from hybridlab.families.mamba_layout import MambaLayout
from hybridlab.families.registry import family_for


@dataclass(frozen=True, eq=False)
class ModelDescription:
    family: Family
    config: object  # the transformers config the widths were read from
    widths: Widths

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        return self.widths.layer_kinds

    @property
    def num_layers(self) -> int:
        return self.widths.num_layers

    @property
    def mamba_layout(self) -> MambaLayout:
        return MambaLayout.of(self.widths)

    def parts(self, model: nn.Module) -> ModelParts:
        """References to `model`'s tensors; `model` must be of this family."""
        return self.family.parts(model)

    def config_with(self, new: Widths):
        """This config with the widths of a pruned model."""
        return self.family.config_with(self.config, new)

    def checked_for(self, model: nn.Module) -> "ModelDescription":
        """This description, after making sure it was made from `model` (a caller's stale
        description would otherwise slice the weights by another model's widths)."""
        if getattr(model, "config", None) is not self.config:
            raise ValueError("this ModelDescription was made for another model; pass describe(model)")
        return self

    def check(self, new: Widths) -> None:
        """ValueError when the family cannot build a model with these widths from this one."""
        self.family.check(new, self.widths)

    def derive(self, new: Widths) -> Widths:
        """`new` with the widths the family derives from others filled in (see Family.derive)."""
        return self.family.derive(self.widths, new)


def describe(model_or_config) -> ModelDescription:
    """The description of a model or a config; a description is returned as it is."""
    if isinstance(model_or_config, ModelDescription):
        return model_or_config
    family = family_for(model_or_config)
    config = getattr(model_or_config, "config", model_or_config)
    return ModelDescription(family, config, family.widths(config))
