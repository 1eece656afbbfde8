"""hybridlab: compress hybrid Mamba/attention language models (Minitron-SSM recipe)."""

from hybridlab.compression.importance import ImportanceScores, estimate_importance
from hybridlab.compression.prune import prune, prune_checkpoint
from hybridlab.model.fast_mamba import use_fast_mamba
from hybridlab.model.loading import load_model, save_model
from hybridlab.model.sizes import Sizes, estimate_sizes
from hybridlab.model.spec import PruneSpec
from hybridlab.model.streamed import StreamedModel


def load_demo():
    """The bundled demo teacher: an object with .model, .tokenizer, .calib and .val."""
    from hybridlab.demo.load import load_demo as _load_demo

    return _load_demo()


__all__ = [
    "ImportanceScores",
    "PruneSpec",
    "Sizes",
    "StreamedModel",
    "estimate_importance",
    "estimate_sizes",
    "load_demo",
    "load_model",
    "prune",
    "prune_checkpoint",
    "save_model",
    "use_fast_mamba",
]
__version__ = "0.1.0"
