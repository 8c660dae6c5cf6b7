"""The web view of a registry (``tvreg serve``): a read-only Starlette app of server-rendered
pages and a JSON API with the shapes of the CLI's ``--json``.

Pages: ``/`` (overview: counts, bases, newest versions, a filtered, sorted, paged table),
``/names/NAME``, ``/versions/NAME/N``, ``/bases``, ``/bases/BASE`` (similarity heatmap),
``/pair?a=REF&b=REF``, ``/sql?q=…``, ``/remotes``, ``/remotes/NAME``.
API: ``/api/versions`` (``tvreg ls --json``), ``/api/versions/NAME/N`` (``show``),
``/api/names/NAME`` (``log``), ``/api/similar/REF`` (``similar``), ``/api/matrix``
(``similar --matrix``), ``/api/sql`` (``sql``, also as CSV), ``/api/bases`` (``base ls``),
``/api/pair``, ``/api/remotes``, ``/api/remotes/NAME/versions`` (``ls --remote``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import pathlib
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import tvreg
from tvreg.errors import InvalidInput, NotFound, ReadOnlyRegistry, TvregError
from tvreg.util.jsonable import dumps, plain
from tvreg.util.sizes import human_bytes
from tvreg.web import charts, queries
from tvreg.web.security import Guard

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.registry import Registry

HERE = pathlib.Path(__file__).resolve().parent
STATIC = HERE / "static"
#: the SQL console's limits (``tvreg serve --sql-rows/--sql-timeout`` change them)
SQL_ROWS = 10_000
SQL_TIMEOUT = 10.0
#: rows of a query result shown on the console's page (the download has them all)
SQL_SHOWN = 500
MATRIX_DEFAULT, MATRIX_MAX = 40, 150
#: the most names /api/matrix compares in one request (500 x 500 cells: ~1 s, ~5 MB of JSON)
API_MATRIX_MAX = 500
#: versions asked for per vector shown in a version's "most similar" (several versions may hold
#: one vector: a sweep's copies)
SIMILAR_SPREAD = 4


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(bytes=human_bytes, num=_num, when=_when, ratio=_ratio, short=_short,
                       pretty=_pretty, cellvalue=_cell)
    env.globals.update(name_url=name_url, version_url=version_url, ref_url=ref_url,
                       version=tvreg.__version__)
    return env


def name_url(name: str) -> str:
    return "/names/" + quote(name, safe="/")


def version_url(name: str, version: int) -> str:
    return f"/versions/{quote(name, safe='/')}/{int(version)}"


def ref_url(ref: str) -> str:
    """The page of ``NAME@N`` (a version), else of a name."""
    name, _, version = ref.rpartition("@")
    if name and version.isdigit():
        return version_url(name, int(version))
    return name_url(ref)


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _when(v: Any) -> str:
    if isinstance(v, _dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return "" if v is None else str(v)


def _ratio(raw: Any, stored: Any) -> str:
    return f"{raw / stored:.2f}x" if raw and stored else ""


def _short(v: Any, n: int = 12) -> str:
    return "" if v is None else str(v)[:n]


def _pretty(v: Any) -> str:
    return dumps(v, indent=2)


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str, sort_keys=True)
    if isinstance(v, _dt.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def group_similar(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """``similar``'s rows with one row per vector (its first version), the other versions that
    hold the same vector in ``also``; at most ``limit`` vectors, best first."""
    out: list[dict[str, Any]] = []
    by_vector: dict[str, dict[str, Any]] = {}
    for r in rows:
        seen = by_vector.get(r["vector_id"])
        if seen is not None:
            seen["also"].append(r["ref"])
        elif len(out) < limit:
            by_vector[r["vector_id"]] = {**r, "also": []}
            out.append(by_vector[r["vector_id"]])
    return out


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(obj, indent=None) + "\n", status_code=status,
                    media_type="application/json", headers=headers)


def _status(e: Exception) -> int:
    if isinstance(e, NotFound):
        return 404
    if isinstance(e, ReadOnlyRegistry):
        return 405
    if isinstance(e, InvalidInput):
        return 400
    return 500


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, TvregError) else f"{type(e).__name__}: {text}"


class WebView:
    """The pages and API routes over one registry (its catalog read from memory)."""

    def __init__(self, reg: Registry, *, sql_rows: int = SQL_ROWS,
                 sql_timeout: float = SQL_TIMEOUT, label: str | None = None) -> None:
        self.reg = reg
        self.sql_rows = sql_rows
        self.sql_timeout = sql_timeout
        self.label = label or reg.repo.label
        self.env = _environment()

    # --- rendering -------------------------------------------------------------------------------

    def page(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(registry=self.label,
                                                      writable=self.reg.repo.writable, **context)
        return HTMLResponse(html, status_code=status_code)

    def error(self, request: Request, status: int, text: str) -> Response:
        if request.url.path.startswith("/api/"):
            return _json({"error": text}, status)
        return self.page("error.html", status, status=status, message=text,
                         title=f"{status}")

    # --- pages -----------------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        f = queries.Filters.parse(dict(request.query_params))
        total, rows = queries.overview_rows(self.reg, f)
        pages = max(1, math.ceil(total / f.per))
        return self.page("overview.html", title="overview", f=f, rows=rows, total=total,
                         pages=pages, summary=queries.summary(self.reg), sorts=queries.SORTS,
                         page_sizes=queries.PAGE_SIZES)

    def name(self, request: Request) -> Response:
        data = queries.name_page(self.reg, request.path_params["name"])
        return self.page("name.html", title=data["name"], **data)

    def version(self, request: Request) -> Response:
        name, number = request.path_params["name"], request.path_params["version"]
        info = self.reg.show(f"{name}@{number}", tensors=True)
        extras = queries.version_extras(self.reg, info["vector_id"])
        nodes, edges = queries.lineage(self.reg, info["vector_id"])
        graph = charts.lineage_graph(nodes, edges, info["vector_id"]) if edges else None
        similar, similar_error = [], None
        try:
            similar = group_similar(self.reg.similar(info["ref"], 10 * SIMILAR_SPREAD), 10)
        except TvregError as e:
            similar_error = _one_line(e)
        return self.page("version.html", title=info["ref"], info=info, extras=extras,
                         graph=graph, similar=similar, similar_error=similar_error,
                         recipe_text=(_pretty(info["recipe"]) if info.get("recipe") else None))

    def bases(self, request: Request) -> Response:
        summary = queries.summary(self.reg)
        stored = {b["base_hash"]: b for b in self.reg.bases()}
        return self.page("bases.html", title="bases", summary=summary, stored=stored)

    def base(self, request: Request) -> Response:
        base_hash = queries.find_base(self.reg, request.path_params["base"])
        by = request.query_params.get("by") or "cosine"
        n = queries.integer_param(request.query_params, "n", MATRIX_DEFAULT, 2, MATRIX_MAX)
        refs, total = queries.base_versions(self.reg, base_hash, n)
        matrix = self.reg.similarity_matrix(refs, by) if refs else None
        heat = (charts.heatmap(matrix.labels, matrix.values, matrix.exact, by, matrix.vector_ids)
                if matrix is not None and matrix.labels else None)
        names = [r["name"] for r in self.reg.catalog.rows(
            "SELECT name FROM base_names WHERE base_hash = ? ORDER BY name", [base_hash])]
        return self.page("base_model.html", title=f"base {base_hash[:12]}", base_hash=base_hash,
                         base_names=names, heat=heat, by=by, n=n, total=total,
                         shown=len(refs), matrix_max=MATRIX_MAX,
                         skipped=matrix.skipped if matrix is not None else [])

    def pair(self, request: Request) -> Response:
        a, b = _required(request, "a"), _required(request, "b")
        data = queries.pair(self.reg, a, b)
        return self.page("pair.html", title=f"{data['a']} · {data['b']}", data=data,
                         bars=charts.layer_bars(queries.chart_rows(data)),
                         by_layer=data["layers"] == queries.chart_rows(data))

    def sql(self, request: Request) -> Response:
        q = request.query_params.get("q", "").strip()
        columns: list[str] = []
        rows: list[tuple] = []
        error, cut = None, False
        if q:
            try:
                columns, rows = self.reg.sql_table(q, max_rows=self.sql_rows,
                                                   timeout=self.sql_timeout)
            except InvalidInput as e:  # SQLError and the like: one line on the page
                error = _one_line(e)
            cut = len(rows) > self.sql_rows
            rows = rows[:self.sql_rows]
        examples = [
            "SELECT name, version, task, lr, round(raw_bytes / stored_bytes, 2) AS ratio "
            "FROM versions ORDER BY created_at DESC LIMIT 20",
            "SELECT name, other_name, round(cosine, 4) AS cosine, "
            "round(sign_conflict_rate, 3) AS sign_conflicts FROM similar_versions "
            "ORDER BY cosine DESC LIMIT 20",
            "SELECT tensor, round(norm, 5) AS norm FROM tensor_stats ORDER BY norm DESC LIMIT 20",
        ]
        return self.page("sql.html", title="SQL", q=q, columns=columns,
                         rows=rows[:SQL_SHOWN], n_rows=len(rows), cut=cut, error=error,
                         shown=SQL_SHOWN, limit=self.sql_rows, timeout=self.sql_timeout,
                         examples=examples, q_url=quote(q, safe=""))

    def remotes(self, request: Request) -> Response:
        remotes = sorted(self.reg.remotes().values(), key=lambda r: r.name)
        return self.page("remotes.html", title="remotes", remotes=remotes)

    def remote(self, request: Request) -> Response:
        name = request.path_params["name"]
        remote = self.reg.remote(name)
        all_versions = request.query_params.get("all", "") in ("1", "true", "on")
        rows = self.reg.remote_ls(name, all_versions=all_versions)
        return self.page("remote.html", title=f"remote {name}", remote=remote, rows=rows,
                         all_versions=all_versions)

    # --- API -------------------------------------------------------------------------------------

    def api_versions(self, request: Request) -> Response:
        all_versions = request.query_params.get("all", "") in ("1", "true", "on")
        return _json(self.reg.ls(all_versions=all_versions))

    def api_version(self, request: Request) -> Response:
        name, number = request.path_params["name"], request.path_params["version"]
        tensors = request.query_params.get("tensors", "") in ("1", "true", "on")
        return _json(self.reg.show(f"{name}@{number}", tensors=tensors))

    def api_name(self, request: Request) -> Response:
        return _json(self.reg.log(request.path_params["name"]))

    def api_similar(self, request: Request) -> Response:
        k = queries.integer_param(request.query_params, "k", 10, 1, 10_000)
        by = request.query_params.get("by") or "cosine"
        return _json(self.reg.similar(request.path_params["ref"], k, by))

    def api_matrix(self, request: Request) -> Response:
        by = request.query_params.get("by") or "cosine"
        refs_text = request.query_params.get("refs", "").strip()
        base = request.query_params.get("base", "").strip()
        if refs_text and base:
            raise InvalidInput("give refs or base, not both")
        if refs_text:
            given = [r for r in refs_text.split(",") if r]
            if len(given) > API_MATRIX_MAX:
                raise InvalidInput(f"too many refs ({len(given)}): at most {API_MATRIX_MAX}")
            refs: list[str] | None = given
        elif base:
            n = queries.integer_param(request.query_params, "n", MATRIX_MAX, 2, API_MATRIX_MAX)
            refs, _ = queries.base_versions(self.reg, queries.find_base(self.reg, base), n)
        else:
            refs = None
        return _json(self.reg.similarity_matrix(refs, by).to_json())

    def api_sql(self, request: Request) -> Response:
        q = _required(request, "q")
        fmt = request.query_params.get("format") or "json"
        if fmt not in ("json", "csv"):
            raise InvalidInput(f"invalid format {fmt!r}: json or csv")
        columns, rows = self.reg.sql_table(q, max_rows=self.sql_rows, timeout=self.sql_timeout)
        headers = {"X-Tvreg-Row-Limit": str(self.sql_rows)}
        if len(rows) > self.sql_rows:
            rows = rows[:self.sql_rows]
            headers["X-Tvreg-Truncated"] = "true"
        if fmt == "json":
            if request.query_params.get("download"):
                headers["Content-Disposition"] = 'attachment; filename="query.json"'
            return _json([dict(zip(columns, row, strict=True)) for row in rows], headers=headers)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([json.dumps(v, default=str) if isinstance(v, (dict, list))
                             else plain(v) for v in row])
        headers["Content-Disposition"] = 'attachment; filename="query.csv"'
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)

    def api_bases(self, request: Request) -> Response:
        return _json(self.reg.bases())

    def api_pair(self, request: Request) -> Response:
        return _json(queries.pair(self.reg, _required(request, "a"), _required(request, "b")))

    def api_remotes(self, request: Request) -> Response:
        return _json([{"name": r.name, "url": r.url}
                      for r in sorted(self.reg.remotes().values(), key=lambda r: r.name)])

    def api_remote_versions(self, request: Request) -> Response:
        all_versions = request.query_params.get("all", "") in ("1", "true", "on")
        return _json(self.reg.remote_ls(request.path_params["name"], all_versions=all_versions))

    # --- the app ---------------------------------------------------------------------------------

    def routes(self) -> list[Any]:
        page = self._guarded
        return [
            Route("/", page(self.overview)),
            Route("/names/{name:path}", page(self.name)),
            Route("/versions/{name:path}/{version:int}", page(self.version)),
            Route("/bases", page(self.bases)),
            Route("/bases/{base}", page(self.base)),
            Route("/pair", page(self.pair)),
            Route("/sql", page(self.sql)),
            Route("/remotes", page(self.remotes)),
            Route("/remotes/{name}", page(self.remote)),
            Route("/api/versions", page(self.api_versions)),
            Route("/api/versions/{name:path}/{version:int}", page(self.api_version)),
            Route("/api/names/{name:path}", page(self.api_name)),
            Route("/api/similar/{ref:path}", page(self.api_similar)),
            Route("/api/matrix", page(self.api_matrix)),
            Route("/api/sql", page(self.api_sql)),
            Route("/api/bases", page(self.api_bases)),
            Route("/api/pair", page(self.api_pair)),
            Route("/api/remotes", page(self.api_remotes)),
            Route("/api/remotes/{name}/versions", page(self.api_remote_versions)),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]

    def _guarded(self, handler: Any) -> Any:
        """``handler`` with every error as a one-line page or JSON object (never a traceback);
        a sync function, so Starlette runs it on its thread pool (DuckDB and the store block)."""
        def endpoint(request: Request) -> Response:
            try:
                return handler(request)
            except (TvregError, OSError, ValueError) as e:
                return self.error(request, _status(e), _one_line(e))
        endpoint.__name__ = handler.__name__
        return endpoint


def _required(request: Request, key: str) -> str:
    value = request.query_params.get(key, "").strip()
    if not value:
        raise InvalidInput(f"missing parameter {key!r}")
    return value


def create_app(reg: Registry, *, token: str | None = None, sql_rows: int = SQL_ROWS,
               sql_timeout: float = SQL_TIMEOUT, label: str | None = None) -> Any:
    """The ASGI app of the web view of ``reg`` (read-only; with ``token``, every request must
    carry it). ``reg``'s catalog is read from memory from now on
    (:meth:`tvreg.repo.repo.Repo.read_catalog_from_memory`)."""
    reg.repo.require()
    reg.repo.read_catalog_from_memory().current()  # the first copy now, not on a request
    view = WebView(reg, sql_rows=sql_rows, sql_timeout=sql_timeout, label=label)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        text = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if status == 404:
            text = f"nothing at {request.url.path}"
        return view.error(request, status, str(text))

    async def server_error(request: Request, exc: Exception) -> Response:
        return view.error(request, 500, _one_line(exc))

    app = Starlette(routes=view.routes(),
                    middleware=[Middleware(GZipMiddleware, minimum_size=1024, compresslevel=5)],
                    exception_handlers={HTTPException: not_found, Exception: server_error})
    app.state.view = view
    return Guard(app, token=token)
