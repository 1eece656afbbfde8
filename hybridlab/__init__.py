"""hybridlab: compress hybrid Mamba/attention language models (Minitron-SSM recipe)."""
from hybridlab.importance import ImportanceScores, estimate_importance
from hybridlab.loading import load_model, save_model
from hybridlab.prune import prune
from hybridlab.sizes import Sizes, estimate_sizes
from hybridlab.spec import PruneSpec


def load_demo():
    """The bundled demo teacher: an object with .model, .tokenizer, .calib and .val."""
    from hybridlab.demo import load_demo as _load_demo

    return _load_demo()


__all__ = [
    "ImportanceScores", "PruneSpec", "Sizes", "estimate_importance", "estimate_sizes",
    "load_demo", "load_model", "prune", "save_model",
]
__version__ = "0.1.0"
