"""Similarities: `tvreg similar` (ranking, matrix, heatmap) and `tvreg similarities` (upkeep)."""

from __future__ import annotations

import math

import click

from tvreg.errors import InvalidInput
from tvreg.util import progress

from .options import json_option
from .output import emit_json, message, table


def _number(v: float | None, digits: int) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _cosine(v: float | None, exact: bool, digits: int) -> str:
    """`-` when undefined; `~` before a value estimated from sketches."""
    text = _number(v, digits)
    return text if exact or text == "-" else "~" + text


def _footnote(estimated: bool, bound: bool = False) -> None:
    if estimated:
        message("~: estimated from sketches (no exact value stored for that pair)"
                + ("; ±: its error bound, exceeded with probability at most 5 %" if bound
                   else ""))


@click.command()
@click.argument("refs", nargs=-1, metavar="REF | --matrix [REF...]")
@click.option("--top", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many versions to list.")
@click.option("--matrix", is_flag=True, help="Cosines between REFs (default: the newest "
                                             "version of every name) as a matrix.")
@click.option("--plot", "plot_path", metavar="PNG", type=click.Path(dir_okay=False),
              help="With --matrix: also draw it as a heatmap (needs matplotlib).")
@click.option("--by", default="cosine", show_default=True, metavar="cosine|alignment",
              help="Rank (or, with --matrix, show) by cosine or by subspace alignment.")
@json_option
@click.pass_obj
def similar(reg, refs, k, matrix, plot_path, by, as_json):
    """Versions most similar to REF (cosine of the task vectors, sign-conflict rate, subspace
    alignment of their matrices).

    Values were computed when the vectors were stored (docs/similarity.md); `~` marks a cosine
    estimated from sketches (bases with very many vectors).
    """
    from tvreg.similarity.compute import check_by  # numpy: not at start-up

    check_by(by)  # before any work (a --plot path is checked next)
    if plot_path and not matrix:
        raise InvalidInput("--plot needs --matrix")
    if matrix:
        _matrix(reg, list(refs) or None, plot_path, by, as_json)
        return
    if len(refs) != 1:
        raise InvalidInput(f"give one REF (got {len(refs)}), or --matrix [REF...]")
    rows = reg.similar(refs[0], k, by)
    if as_json:
        emit_json(rows)
        return
    estimated = any(r["bound"] is not None for r in rows)
    table(["ref", "vector", "cosine", *(["±"] if estimated else []), "sign_conflicts",
           "alignment"],
          [(r["ref"], r["vector_id"][:12], _cosine(r["cosine"], r["exact"], 6),
            *([_number(r["bound"], 3)] if estimated else []),
            _number(r["sign_conflict_rate"], 3), _number(r["alignment"], 4)) for r in rows])
    _footnote(estimated, bound=True)


def _matrix(reg, refs, plot_path, by, as_json) -> None:
    if plot_path:
        _require_matplotlib()
        from tvreg.compose.apply import check_output_path

        # a missing folder (or one inside the registry) is bad input, found before any work
        check_output_path(plot_path, registry=getattr(reg, "root", None))
    m = reg.similarity_matrix(refs, by)
    for s in m.skipped:
        message(f"skipped {s['ref']}: {s['reason']}")
    if plot_path and not m.labels:
        raise InvalidInput("nothing to plot: no vectors to compare")
    if as_json:
        emit_json(m.to_json())
    elif not m.labels:
        message("no vectors to compare")
    else:
        _matrix_table(m)
    if plot_path:
        from tvreg.similarity.plot import heatmap

        heatmap(m, plot_path)
        message(f"wrote {plot_path}")


def _matrix_table(m) -> None:
    import numpy as np  # not at import time: every command would pay for it

    table(["", *m.labels], [(label, *(_cosine(v, e, 3) for v, e in zip(row, exact, strict=True)))
                            for label, row, exact in zip(m.labels, m.values, m.exact, strict=True)])
    _footnote(bool((~m.exact & np.isfinite(m.values)).any()))


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InvalidInput("--plot needs matplotlib: pip install 'tvreg[plot]'") from None


@click.command()
@click.argument("refs", nargs=-1, metavar="[REF...]")
@click.option("--rebuild", is_flag=True, help="Recompute everything, not only what is missing.")
@click.option("--engine", type=click.Choice(("local", "dask")), default="local",
              show_default=True, help="Where vectors are read: local = this process; dask = "
                                      "tasks of a Dask cluster (the dask extra).")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="dask: worker processes of a local cluster (default 2).")
@click.option("--scheduler", metavar="ADDRESS",
              help="dask: the scheduler of a running cluster (e.g. tcp://host:8786).")
@click.option("--memory", metavar="BYTES", type=click.IntRange(min=1),
              help="Bytes one task of the batch pass may hold (default 1 GiB); a base whose "
                   "vectors' largest tensors do not fit is read in blocks.")
@click.option("--status", "show_status", is_flag=True,
              help="Only show, per base, the vectors, exact and pending pairs.")
@click.option("--exact-limit", "limit", type=click.IntRange(min=0), metavar="N",
              help="Set the vectors per base up to which a new version's exact pairs are "
                   "computed when it is stored (default 256); past it they are pending.")
@json_option
@click.pass_obj
def similarities(reg, refs, rebuild, engine, workers, scheduler, memory, show_status, limit,
                 as_json):
    """Compute missing similarity statistics and pairs, pending ones included (for the bases
    of REFs, default all), in one pass that reads each vector once."""
    if (show_status or limit is not None) and (refs or rebuild or engine != "local"
                                               or workers or scheduler or memory):
        raise InvalidInput("--status and --exact-limit take no REF and no other option")
    if limit is not None:
        reg.set_similarity_exact_limit(limit)
        message(f"exact limit: {limit} vector(s) per base")
    if show_status or limit is not None:
        _status(reg, as_json)
        return
    if rebuild and refs:
        raise InvalidInput("--rebuild recomputes every base; give no REF")
    options = {"engine": engine, "workers": workers, "scheduler": scheduler, "memory": memory}
    with progress.bar(None, "similarities", unit="vector") as bar:
        tick = lambda _vid: bar.update(1)  # noqa: E731
        counts = (reg.rebuild_similarities(on_vector=tick, **options) if rebuild
                  else reg.update_similarities(list(refs) or None, on_vector=tick, **options))
    if as_json:
        emit_json(counts)
    message(f"computed statistics of {counts['vectors']} vector(s) and {counts['pairs']} pair(s)")


def _status(reg, as_json: bool) -> None:
    rows = reg.similarity_status()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        message("no vectors")
        return
    table(["base", "vectors", "without_stats", "pairs", "exact", "pending", "exact_limit"],
          [(", ".join(r["base_names"]) or r["base_hash"][:12], r["n_vectors"],
            r["n_without_stats"], r["n_pairs"], r["n_exact_pairs"], r["n_pending_pairs"],
            r["exact_limit"]) for r in rows])


COMMANDS = [similar, similarities]
