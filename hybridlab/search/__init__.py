"""Architecture search at a parameter budget: the candidate space (space.py), zero-shot ranking,
distilled finalists and a latency tie-break (run.py)."""

from hybridlab.search.run import RANK_BY, SearchResult, SearchSettings, search
from hybridlab.search.space import Candidate, SearchSpace

__all__ = ["RANK_BY", "Candidate", "SearchResult", "SearchSettings", "SearchSpace", "search"]
