"""Similarities between vectors of one base (layer L5): statistics, passes that compute them,
the spectra files the subspace alignment caches, queries, and the heatmap plot
(docs/similarity.md).
"""

from tvreg.util.lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "SimilarityMatrix": "compute",
    "clear": "upkeep",
    "similar": "compute",
    "similarity_matrix": "compute",
    "exact_limit": "upkeep",
    "set_exact_limit": "upkeep",
    "status": "upkeep",
    "update": "upkeep",
    "heatmap": "plot",
}

__all__ = ["SimilarityMatrix", "clear", "exact_limit", "heatmap", "set_exact_limit", "similar",
           "similarity_matrix", "status", "update"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
