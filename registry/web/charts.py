"""Geometry of the web view's pictures: the heatmap, the lineage graph and the bar charts.

Only numbers and the texts to show come out of here; the templates draw them as SVG, so every
text goes through Jinja's autoescaping like the rest of a page."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: the heatmap's colours: -1 blue, 0 white, +1 red (0..1 scales use the upper half)
_NEG, _MID, _POS = (59, 76, 192), (247, 247, 247), (180, 4, 38)


def colour(value: float | None, low: float = -1.0, high: float = 1.0) -> str:
    """A diverging colour for ``value`` in ``[low, high]`` (grey for no value)."""
    if value is None or not math.isfinite(value):
        return "#d9d9d9"
    mid = (low + high) / 2
    span = (high - low) / 2 or 1.0
    t = max(-1.0, min(1.0, (value - mid) / span))
    end = _POS if t >= 0 else _NEG
    t = abs(t)
    rgb = (round(m + (e - m) * t) for m, e in zip(_MID, end, strict=True))
    return "#{:02x}{:02x}{:02x}".format(*rgb)


class Item(dict):
    """A dict whose keys are also attributes: Jinja looks ``cell.x`` up as an attribute first,
    and a plain dict's key costs it a raised and caught AttributeError (a third of the time of
    a heatmap page of 1,600 cells)."""

    def __init__(self, **values: Any) -> None:
        super().__init__(values)
        self.__dict__.update(values)


@dataclass
class Heatmap:
    """Cells of a square matrix with their positions, colours, values and links."""

    size: int
    cell: int
    margin: int
    labels: list[dict[str, Any]] = field(default_factory=list)
    cells: list[dict[str, Any]] = field(default_factory=list)
    width: int = 0
    height: int = 0


def heatmap(labels: list[str], values: Any, exact: Any, by: str,
            vector_ids: list[str] | None = None) -> Heatmap:
    """The heatmap of a similarity matrix (``values[i][j]``, NaN where unknown; ``exact``:
    False where estimated from sketches). A cell links to its pair's page unless both refs hold
    one vector (``vector_ids``: there is no pair to show)."""
    n = len(labels)
    cell = 36 if n <= 12 else 24 if n <= 30 else 14 if n <= 80 else 8
    margin = min(220, 12 + 7 * max((len(x) for x in labels), default=4))
    low = -1.0 if by == "cosine" else 0.0
    h = Heatmap(n, cell, margin)
    for i, label in enumerate(labels):
        h.labels.append(Item(text=label, x=margin - 6, y=margin + i * cell + cell / 2 + 4,
                             col_x=margin + i * cell + cell / 2 + 4, col_y=margin - 6))
    for i in range(n):
        for j in range(n):
            v = float(values[i][j])
            known = math.isfinite(v)
            text = (f"{'' if exact[i][j] else '~'}{v:.4f}" if known else "no value")
            same = i != j and vector_ids is not None and vector_ids[i] == vector_ids[j]
            h.cells.append(Item(
                x=margin + j * cell, y=margin + i * cell, fill=colour(
                    v if known else None, low, 1.0),
                a=labels[i], b=labels[j], value=text, link=i != j and not same,
                note=" (the same vector)" if same else "",
                show=cell >= 36 and known,
                short=f"{v:.2f}" if known else "",
                dark=known and abs(v - (low + 1.0) / 2) > 0.6 * (1.0 - low) / 2,
            ))
    h.width = h.height = margin + n * cell + margin // 2
    return h


@dataclass
class Graph:
    """Nodes with boxes and edges with paths of a layered graph (the lineage)."""

    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]
    width: int
    height: int


def lineage_graph(nodes: list[Any], edges: list[tuple[str, str, str | None]],
                  focus: str) -> Graph:
    """A top-down layout: ancestors above, ``focus`` in the middle, descendants below; each
    generation a row of boxes, edges from a parent's bottom to a child's top."""
    box_w, box_h, gap_x, gap_y, pad = 170, 34, 24, 56, 16
    levels: dict[int, list[Any]] = {}
    for n in nodes:
        levels.setdefault(n.level, []).append(n)
    widest = max((len(v) for v in levels.values()), default=1)
    width = pad * 2 + widest * box_w + (widest - 1) * gap_x
    where: dict[str, tuple[float, float]] = {}
    placed = []
    for row, level in enumerate(sorted(levels)):
        items = levels[level]
        span = len(items) * box_w + (len(items) - 1) * gap_x
        x0 = (width - span) / 2
        y = pad + row * (box_h + gap_y)
        for k, n in enumerate(items):
            x = x0 + k * (box_w + gap_x)
            where[n.vector_id] = (x, y)
            label = n.ref or n.vector_id[:12]
            placed.append({"x": x, "y": y, "w": box_w, "h": box_h,
                           "label": label if len(label) <= 24 else label[:23] + "…",
                           "title": f"{n.ref or 'not in this registry'} ({n.vector_id})",
                           "name": n.name, "version": n.version,
                           "focus": n.vector_id == focus, "known": n.ref is not None})
    paths = []
    for a, b, label in edges:
        (xa, ya), (xb, yb) = where[a], where[b]
        x1, y1, x2, y2 = xa + box_w / 2, ya + box_h, xb + box_w / 2, yb
        mid = (y1 + y2) / 2
        paths.append({"d": f"M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} "
                           f"{x2:.1f},{y2 - 2:.1f}",
                      "label": label, "lx": (x1 + x2) / 2 + 4, "ly": mid})
    height = pad * 2 + len(levels) * box_h + (len(levels) - 1) * gap_y
    return Graph(placed, paths, int(width), int(height))


@dataclass
class Bars:
    """A horizontal bar chart of one or two series per row (per-layer cosine and sign
    conflicts)."""

    rows: list[dict[str, Any]]
    width: int
    height: int
    axes: list[dict[str, Any]]


def layer_bars(layers: list[dict[str, Any]]) -> Bars:
    """Two bars per layer: cosine on a -1..1 axis, sign-conflict rate on a 0..1 axis."""
    label_w = min(260, 16 + 7 * max((len(x["layer"]) for x in layers), default=8))
    plot_w, gap, row_h, top = 260, 40, 22, 28
    cos_x0 = label_w
    sign_x0 = label_w + plot_w + gap
    rows = []
    for i, layer in enumerate(layers):
        y = top + i * row_h
        c, s = layer["cosine"], layer["sign_conflict_rate"]
        zero = cos_x0 + plot_w / 2
        cos_w = (abs(c) * plot_w / 2) if c is not None else 0.0
        rows.append({
            "label": layer["layer"], "y": y, "h": row_h, "ty": y + row_h / 2 + 4,
            "cos_x": zero if (c or 0) >= 0 else zero - cos_w, "cos_w": cos_w,
            "cos_fill": colour(c), "cos_text": "-" if c is None else f"{c:.4f}",
            "sign_x": sign_x0, "sign_w": (s * plot_w) if s is not None else 0.0,
            "sign_text": "-" if s is None else f"{s:.3f}",
            "tip": (f"{layer['layer']}: cosine {'-' if c is None else f'{c:.4f}'}, "
                    f"sign conflicts {'-' if s is None else f'{s:.3f}'} "
                    f"({layer['n_sign_conflicts']} of {layer['n_both_material']}), "
                    f"{layer['tensors']} tensor(s)"),
        })
    height = top + len(layers) * row_h + 24
    axes = [
        {"x": cos_x0, "w": plot_w, "title": "cosine", "ticks": [
            (cos_x0, "-1"), (cos_x0 + plot_w / 2, "0"), (cos_x0 + plot_w, "1")]},
        {"x": sign_x0, "w": plot_w, "title": "sign-conflict rate", "ticks": [
            (sign_x0, "0"), (sign_x0 + plot_w / 2, "0.5"), (sign_x0 + plot_w, "1")]},
    ]
    return Bars(rows, sign_x0 + plot_w + 20, height, axes)
