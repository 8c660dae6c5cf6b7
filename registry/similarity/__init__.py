"""Similarities between vectors of one base (layer L5): statistics, passes that compute them,
the spectra files the subspace alignment caches, queries, and the heatmap plot
(docs/similarity.md).
"""

from tvreg.util.lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "SimilarityMatrix": "compute",
    "clear": "compute",
    "similar": "compute",
    "similarity_matrix": "compute",
    "update": "compute",
    "heatmap": "plot",
}

__all__ = ["SimilarityMatrix", "clear", "heatmap", "similar", "similarity_matrix", "update"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
