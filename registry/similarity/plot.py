"""A heatmap of a similarity matrix, like the paper's figure of cosines between task vectors.

Needs matplotlib (``pip install 'tvreg[plot]'``); imported only when a plot is drawn.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.similarity.compute import SimilarityMatrix


def heatmap(m: SimilarityMatrix, path: str | os.PathLike) -> None:
    """Write ``m`` as a PNG: one square cell per pair, its value written in it (``~`` before an
    estimate from sketches), blank where undefined, a diverging colour scale centred on 0
    (−1 … 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(m.labels)
    size = max(3.0, 0.6 * n + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=100)
    try:
        values = np.ma.masked_invalid(m.values)
        alignment = getattr(m, "by", "cosine") == "alignment"  # in [0, 1], not [-1, 1]
        image = ax.imshow(values, cmap="viridis" if alignment else "RdBu_r",
                          vmin=0.0 if alignment else -1.0, vmax=1.0)
        ax.set_xticks(range(n), labels=m.labels, rotation=45, ha="right")
        ax.set_yticks(range(n), labels=m.labels)
        for i in range(n):
            for j in range(n):
                v = float(m.values[i, j])
                if math.isfinite(v):
                    mark = "" if m.exact[i, j] else "~"  # estimated from sketches
                    ax.text(j, i, f"{mark}{v:.2f}", ha="center", va="center", fontsize=8,
                            color=("black" if v > 0.6 else "white") if alignment
                            else ("white" if abs(v) > 0.6 else "black"))
        ax.set_title("subspace alignment of task vectors" if alignment
                     else "cosine similarity of task vectors")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        # tight_layout cannot make room for labels longer than the figure allows (the cells
        # stay square): then grow the saved image to everything drawn instead of cutting it
        fig.canvas.draw()
        # the Agg canvas has get_renderer; matplotlib types Figure.canvas as FigureCanvasBase
        drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # type: ignore[attr-defined]
        page = fig.bbox_inches
        fits = (drawn.x0 >= page.x0 and drawn.y0 >= page.y0 and drawn.x1 <= page.x1
                and drawn.y1 <= page.y1)
        fig.savefig(os.fspath(path), format="png", bbox_inches=None if fits else "tight")
    finally:
        plt.close(fig)
