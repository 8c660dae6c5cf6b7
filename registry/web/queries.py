"""What the web view's pages show, read from a registry: catalog queries with the filters, sorting
and pages of the overview, a name's history, a version's tensors, norms and lineage, a pair's
per-tensor and per-layer statistics. Every value a user gives reaches DuckDB as a parameter;
the only text put into SQL is a sort column picked from a fixed list."""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tvreg.catalog.snapshot import CatalogSnapshot
from tvreg.errors import InvalidInput, NotFound
from tvreg.names import LAYER, validate_name

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.registry import Registry

#: the overview's sortable columns: parameter -> SQL expression
SORTS = {
    "name": "v.name", "version": "v.version", "task": "v.task", "dataset": "v.dataset",
    "lr": "v.lr", "steps": "v.steps", "params": "v.n_params", "stored": "v.stored_bytes",
    "ratio": "v.raw_bytes / nullif(v.stored_bytes, 0)", "created": "v.created_at",
}
PAGE_SIZES = (10, 25, 50, 100, 200)
_HASH_PREFIX = re.compile(r"[0-9a-f]{1,64}")


@dataclass
class Filters:
    """The overview's filters, sort and page, parsed and checked from a query string."""

    q: str = ""
    task: str = ""
    dataset: str = ""
    tag: str = ""
    base: str = ""
    lr_min: float | None = None
    lr_max: float | None = None
    all_versions: bool = False
    sort: str = "created"
    order: str = "desc"
    page: int = 1
    per: int = 50
    #: the parameters as given (for links that keep them)
    given: dict[str, str] = field(default_factory=dict)

    FIELDS = ("q", "task", "dataset", "tag", "base", "lr_min", "lr_max", "all", "sort", "order",
              "page", "per")

    @classmethod
    def parse(cls, params: dict[str, str]) -> Filters:
        """Check every parameter; :class:`InvalidInput` names the first bad one."""
        f = cls(given={k: v for k, v in params.items() if k in cls.FIELDS and v != ""})
        for key in ("q", "task", "dataset", "tag", "base"):
            value = params.get(key, "").strip()
            if len(value) > 200:
                raise InvalidInput(f"invalid {key}: longer than 200 characters")
            setattr(f, key, value)
        if f.base and not _HASH_PREFIX.fullmatch(f.base):
            validate_name(f.base)  # a base name, else a hash prefix
        f.lr_min = _number(params, "lr_min")
        f.lr_max = _number(params, "lr_max")
        f.all_versions = params.get("all", "") in ("1", "true", "on", "yes")
        f.sort = params.get("sort") or "created"
        if f.sort not in SORTS:
            raise InvalidInput(f"invalid sort {f.sort!r}: one of {', '.join(SORTS)}")
        f.order = params.get("order") or ("desc" if f.sort == "created" else "asc")
        if f.order not in ("asc", "desc"):
            raise InvalidInput(f"invalid order {f.order!r}: asc or desc")
        f.page = integer_param(params, "page", 1, 1, 10**9)
        f.per = integer_param(params, "per", 50, min(PAGE_SIZES), max(PAGE_SIZES))
        return f

    def link(self, **changes: Any) -> str:
        """The query string of these filters with ``changes`` (None removes a parameter)."""
        from urllib.parse import urlencode

        params = dict(self.given)
        for k, v in changes.items():
            if v is None or v == "":
                params.pop(k, None)
            else:
                params[k] = str(v)
        return "?" + urlencode(params) if params else "?"


def _param(params: Any, key: str, convert: Callable[[str], Any], kind: str) -> Any:
    """Parameter ``key`` of a query string (any mapping) through ``convert``; None if absent
    or empty; :class:`InvalidInput` naming it (as ``kind``) if ``convert`` refuses it."""
    text = params.get(key, "").strip()
    if not text:
        return None
    try:
        return convert(text)
    except ValueError:
        raise InvalidInput(f"invalid {key} {text[:40]!r}: {kind}") from None


def _number(params: dict[str, str], key: str) -> float | None:
    value = _param(params, key, float, "a number")
    if value is not None and not math.isfinite(value):
        raise InvalidInput(f"invalid {key} {params[key].strip()[:40]!r}: a finite number")
    return value


def integer_param(params: Any, key: str, default: int, low: int, high: int) -> int:
    """Parameter ``key`` of a query string (any mapping) as an integer in ``low..high``,
    ``default`` if absent or empty; :class:`InvalidInput` naming it otherwise."""
    value = _param(params, key, int, "an integer")
    if value is None:
        return default
    if not low <= value <= high:
        raise InvalidInput(f"invalid {key} {value}: from {low} to {high}")
    return value


def _like(text: str) -> str:
    """A LIKE pattern that matches ``text`` anywhere, its own wildcards taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def overview_rows(reg: Registry, f: Filters) -> tuple[int, list[dict[str, Any]]]:
    """The versions that pass ``f`` (the newest of each name unless ``all_versions``): their
    count and the rows of page ``f.page``, with tags and base names."""
    where: list[str] = []
    params: list[Any] = []
    if f.q:
        where.append("(v.name ILIKE ? ESCAPE '\\' OR v.task ILIKE ? ESCAPE '\\' "
                     "OR v.dataset ILIKE ? ESCAPE '\\')")
        params += [_like(f.q)] * 3
    if f.task:
        where.append("v.task = ?")
        params.append(f.task)
    if f.dataset:
        where.append("v.dataset = ?")
        params.append(f.dataset)
    if f.tag:
        where.append("EXISTS (SELECT 1 FROM tags t WHERE t.name = v.name "
                     "AND t.version = v.version AND t.tag = ?)")
        params.append(f.tag)
    if f.base:
        where.append("(starts_with(v.base_hash, ?) OR v.base_hash IN "
                     "(SELECT base_hash FROM base_names WHERE name = ?))")
        params += [f.base, f.base]
    if f.lr_min is not None:
        where.append("v.lr >= ?")
        params.append(f.lr_min)
    if f.lr_max is not None:
        where.append("v.lr <= ?")
        params.append(f.lr_max)
    table = "versions" if f.all_versions else "latest"
    condition = ("WHERE " + " AND ".join(where)) if where else ""
    order = f"{SORTS[f.sort]} {f.order.upper()} NULLS LAST, v.name, v.version DESC"
    with reg.catalog.reader() as con:
        total = con.execute(f"SELECT count(*) FROM {table} v {condition}", params).fetchone()
        cur = con.execute(f"""
            SELECT v.name, v.version, v.vector_id, v.task, v.dataset, v.lr, v.steps, v.n_params,
                   v.raw_bytes, v.stored_bytes, v.codec, v.codec_spec, v.created_at, v.base_hash
            FROM {table} v {condition} ORDER BY {order} LIMIT ? OFFSET ?""",
                          [*params, f.per, (f.page - 1) * f.per])
        rows = _dicts(cur)
        _add_tags_and_base_names(con, rows)
    return (total[0] if total else 0), rows


def _dicts(cur) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _add_tags_and_base_names(con, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    names = sorted({r["name"] for r in rows})
    tags: dict[tuple[str, int], list[str]] = {}
    for name, version, tag in con.execute(
            "SELECT name, version, tag FROM tags WHERE name IN (SELECT unnest(?)) ORDER BY tag",
            [names]).fetchall():
        tags.setdefault((name, version), []).append(tag)
    bases = sorted({r["base_hash"] for r in rows})
    base_names: dict[str, list[str]] = {}
    for name, base in con.execute(
            "SELECT name, base_hash FROM base_names WHERE base_hash IN (SELECT unnest(?)) "
            "ORDER BY name", [bases]).fetchall():
        base_names.setdefault(base, []).append(name)
    for r in rows:
        r["tags"] = tags.get((r["name"], r["version"]), [])
        r["base_names"] = base_names.get(r["base_hash"], [])


#: results computed once per copy of a catalog: catalog -> {key: (generation, value)}
_PER_COPY: weakref.WeakKeyDictionary[Any, dict[str, tuple[int, Any]]] = \
    weakref.WeakKeyDictionary()


def per_copy(reg: Registry, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, computed once per copy of the catalog when it is read from memory
    (:class:`~tvreg.catalog.snapshot.CatalogSnapshot`: a new copy when the file changes, so a
    result is never older than the copy the request would read); every time otherwise. The
    value is shared between requests: callers must not change it."""
    catalog = reg.catalog
    if not isinstance(catalog, CatalogSnapshot):
        return compute()
    catalog.current()  # copied again first if the file changed
    generation = catalog.copies
    cache = _PER_COPY.setdefault(catalog, {})
    hit = cache.get(key)
    if hit is not None and hit[0] == generation:
        return hit[1]
    value = compute()  # reads this copy or a newer one: never older than `generation`
    cache[key] = (generation, value)
    return value


def summary(reg: Registry) -> dict[str, Any]:
    """Counts for the overview's header, the bases with their counts, the newest versions
    (once per copy of the catalog: the same for every page until the catalog changes)."""
    return per_copy(reg, "summary", lambda: _summary(reg))


def _summary(reg: Registry) -> dict[str, Any]:
    with reg.catalog.reader() as con:
        counts = _dicts(con.execute("""
            SELECT (SELECT count(DISTINCT name) FROM versions) AS names,
                   (SELECT count(*) FROM versions) AS versions,
                   (SELECT count(*) FROM vectors) AS vectors,
                   (SELECT count(DISTINCT base_hash) FROM versions) AS bases,
                   (SELECT coalesce(sum(stored_bytes), 0) FROM vectors) AS stored_bytes,
                   (SELECT coalesce(sum(raw_bytes), 0) FROM vectors) AS raw_bytes,
                   (SELECT count(*) FROM similarities) AS pairs"""))[0]
        bases = _dicts(con.execute("""
            SELECT v.base_hash, count(DISTINCT v.name) AS names, count(*) AS versions,
                   max(v.created_at) AS newest,
                   coalesce((SELECT list(n.name ORDER BY n.name) FROM base_names n
                             WHERE n.base_hash = v.base_hash), []) AS base_names,
                   (SELECT count(*) FROM bases b WHERE b.base_hash = v.base_hash) > 0 AS stored
            FROM versions v GROUP BY v.base_hash ORDER BY newest DESC"""))
        newest = _dicts(con.execute("""
            SELECT name, version, task, created_at FROM versions
            ORDER BY created_at DESC, name LIMIT 8"""))
        choices = {key: [r[0] for r in con.execute(
            f"SELECT DISTINCT {key} FROM versions WHERE {key} IS NOT NULL ORDER BY 1 LIMIT 500"
        ).fetchall()] for key in ("task", "dataset")}
        choices["tag"] = [r[0] for r in con.execute(
            "SELECT DISTINCT tag FROM tags ORDER BY 1 LIMIT 500").fetchall()]
    return {"counts": counts, "bases": bases, "newest": newest, "choices": choices}


def name_page(reg: Registry, name: str) -> dict[str, Any]:
    """A name's versions (newest first, as ``tvreg log``) and its tags."""
    versions = reg.log(name)
    tags = reg.catalog.rows("SELECT tag, version, vector_id, updated_at FROM tags WHERE name = ? "
                            "ORDER BY tag", [name])
    return {"name": name, "versions": versions, "tags": tags}


def version_extras(reg: Registry, vector_id: str) -> dict[str, Any]:
    """What the catalog knows of a vector beyond ``show``: its norm, each tensor's norm and
    stored size, and the recipe it was composed with."""
    with reg.catalog.reader() as con:
        norm = con.execute("SELECT norm FROM vector_stats WHERE vector_id = ?",
                           [vector_id]).fetchone()
        norms = dict(con.execute("SELECT tensor, norm FROM tensor_stats WHERE vector_id = ?",
                                 [vector_id]).fetchall())
        raw = dict(con.execute("SELECT name, raw_bytes FROM tensors WHERE vector_id = ?",
                               [vector_id]).fetchall())
    return {"norm": norm[0] if norm else None, "tensor_norms": norms, "tensor_raw_bytes": raw}


@dataclass
class Node:
    """A vector in a lineage graph: a version of it, if the registry has one."""

    vector_id: str
    ref: str | None
    level: int
    name: str | None = None
    version: int | None = None


def lineage(reg: Registry, vector_id: str, *, up: int = 3, down: int = 2,
            width: int = 12) -> tuple[list[Node], list[tuple[str, str, str | None]]]:
    """The vectors ``vector_id`` was composed from (``up`` generations) and those composed from
    it (``down``), at most ``width`` per generation: nodes (level < 0: ancestors) and edges
    ``(parent, child, label)`` (label: the parent's coefficient in the child's recipe)."""
    with reg.catalog.reader() as con:
        return _lineage(_LineageRows(con), vector_id, up, down, width)


#: a vector's row in a lineage: its first version (the oldest; by name on a tie)
_FIRST_VERSION = "QUALIFY row_number() OVER (PARTITION BY vector_id ORDER BY created_at, name) = 1"


class _LineageRows:
    """The rows a lineage needs, read as the walk reaches them (a few small queries instead of
    every version's parents parsed in Python): ``by_id`` (a vector's first version) and
    ``children_of``."""

    def __init__(self, con) -> None:
        self.con = con
        self.by_id: dict[str, dict[str, Any]] = {}
        self._fetched: set[str] = set()

    def _add(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            r["parents"] = _json_list(r["parents"])
            self.by_id[r["vector_id"]] = r
            self._fetched.add(r["vector_id"])

    def fetch(self, ids: list[str]) -> None:
        """Read the rows of ``ids`` not read yet."""
        missing = sorted(set(ids) - self._fetched)
        if missing:
            self._add(_dicts(self.con.execute(f"""
                SELECT name, version, vector_id, parents, recipe FROM versions
                WHERE vector_id IN (SELECT unnest(?)) {_FIRST_VERSION}""", [missing])))
            self._fetched.update(missing)

    def children_of(self, ids: list[str]) -> dict[str, list[str]]:
        """The vectors whose first version names one of ``ids`` as a parent, per parent."""
        out: dict[str, list[str]] = {}
        if not ids:
            return out
        rows = _dicts(self.con.execute(f"""
            SELECT name, version, vector_id, parents, recipe FROM versions
            WHERE vector_id IN (SELECT vector_id FROM versions WHERE parents <> '[]'
                                AND list_has_any(json_extract_string(parents, '$[*]'), ?))
            {_FIRST_VERSION}""", [ids]))
        self._add([r for r in rows if r["vector_id"] not in self._fetched])
        wanted = set(ids)
        for r in rows:
            for p in self.by_id[r["vector_id"]]["parents"]:
                if p in wanted:
                    out.setdefault(p, []).append(r["vector_id"])
        return out


def _lineage(rows: _LineageRows, vector_id: str, up: int, down: int, width: int
             ) -> tuple[list[Node], list[tuple[str, str, str | None]]]:
    by_id = rows.by_id
    nodes = {vector_id: 0}
    edges: set[tuple[str, str]] = set()
    frontier = [vector_id]
    for level in range(1, up + 1):
        nxt = []
        rows.fetch(frontier)
        for vid in frontier:
            for p in (by_id.get(vid, {}).get("parents") or [])[:width]:
                edges.add((p, vid))
                if p not in nodes:
                    nodes[p] = -level
                    nxt.append(p)
        frontier = nxt[:width]
    frontier = [vector_id]
    for level in range(1, down + 1):
        nxt = []
        children = rows.children_of(frontier)
        for vid in frontier:
            for c in sorted(children.get(vid, []))[:width]:
                edges.add((vid, c))
                if c not in nodes:
                    nodes[c] = level
                    nxt.append(c)
        frontier = nxt[:width]
    # a vector reached at two depths sits above (ancestors) or below (descendants) all of its
    # edges' other ends, so that every edge points down
    for _ in range(len(nodes)):
        moved = False
        for p, c in edges:
            if nodes[p] >= nodes[c]:
                if nodes[c] <= 0:
                    nodes[p] = nodes[c] - 1
                else:
                    nodes[c] = nodes[p] + 1
                moved = True
        if not moved:
            break
    rows.fetch(list(nodes))
    named = _recipe_refs([by_id[v] for v in nodes if v in by_id and v != vector_id]
                         + ([by_id[vector_id]] if vector_id in by_id else []))
    out = []
    for vid, level in nodes.items():
        known = by_id.get(vid)
        name, version = named.get(vid, (None, None))
        if name is None and known:
            name, version = known["name"], known["version"]
        out.append(Node(vid, f"{name}@{version}" if name else None, level, name, version))
    out.sort(key=lambda n: (n.level, n.ref or "~" + n.vector_id))
    labelled = [(a, b, _coefficient(by_id.get(b, {}).get("recipe"), a)) for a, b in sorted(edges)
                if a in nodes and b in nodes]
    return out, labelled


def _recipe_refs(rows: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    """vector id -> the version a recipe composed it as (``NAME@N``), from the recipes of
    ``rows`` (a later row's recipe wins: the focus comes last), so that a parent is named as
    its child's recipe names it rather than by the first version holding its vector."""
    import json

    out: dict[str, tuple[str, int]] = {}
    for row in rows:
        recipe = row.get("recipe")
        if isinstance(recipe, str):
            try:
                recipe = json.loads(recipe)
            except ValueError:
                continue
        if not isinstance(recipe, dict):
            continue
        for op in recipe.get("operands") or []:
            if not isinstance(op, dict) or not isinstance(op.get("vector_id"), str):
                continue
            name, _, version = str(op.get("ref", "")).rpartition("@")
            if name and version.isdigit():
                out[op["vector_id"]] = (name, int(version))
    return out


def _json_list(value: Any) -> list[str]:
    import json

    if isinstance(value, str):
        value = json.loads(value)
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _coefficient(recipe: Any, parent: str) -> str | None:
    """The coefficient of ``parent`` in a composed vector's recipe (as text), if it says."""
    import json

    if isinstance(recipe, str):
        try:
            recipe = json.loads(recipe)
        except ValueError:
            return None
    if not isinstance(recipe, dict):
        return None
    for op in recipe.get("operands") or []:
        if isinstance(op, dict) and op.get("vector_id") == parent:
            c = op.get("coef")
            if isinstance(c, (int, float)) and not isinstance(c, bool):
                return f"{c:g}"
    return None


def base_versions(reg: Registry, base_hash: str, limit: int) -> tuple[list[str], int]:
    """The newest version of every name of a base (most recently created first, at most
    ``limit``) as refs, and how many names the base has."""
    rows = reg.catalog.rows("""
        SELECT name, version FROM latest WHERE base_hash = ?
        ORDER BY created_at DESC, name""", [base_hash])
    refs = sorted(f"{r['name']}@{r['version']}" for r in rows[:limit])
    return refs, len(rows)


def find_base(reg: Registry, text: str) -> str:
    """The full hash of the base that ``text`` names: a base name, or a unique hash prefix of a
    base some version was made from."""
    if not text or len(text) > 200:
        raise InvalidInput("invalid base: give its hash (or a prefix) or a base name")
    if _HASH_PREFIX.fullmatch(text):
        found = [r["base_hash"] for r in reg.catalog.rows(
            "SELECT DISTINCT base_hash FROM versions WHERE starts_with(base_hash, ?) "
            "UNION SELECT base_hash FROM bases WHERE starts_with(base_hash, ?)", [text, text])]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise InvalidInput(f"base prefix {text!r} is ambiguous: {len(found)} bases")
    row = reg.catalog.rows("SELECT base_hash FROM base_names WHERE name = ?", [text])
    if row:
        return row[0]["base_hash"]
    raise NotFound(f"no base {text!r} in this registry")


def pair(reg: Registry, ref_a: str, ref_b: str) -> dict[str, Any]:
    """Two versions' similarity, whole and per tensor and per layer (from the catalog's stored
    pair; :class:`NotFound` if it has none)."""
    rec_a, a = reg.resolve_ref(ref_a)
    rec_b, b = reg.resolve_ref(ref_b)
    label_a = rec_a.ref if rec_a else a[:12]
    label_b = rec_b.ref if rec_b else b[:12]
    if a == b:
        raise InvalidInput(f"{label_a} and {label_b} hold the same vector")
    lo, hi = sorted((a, b))
    with reg.catalog.reader() as con:
        whole = _dicts(con.execute(
            "SELECT cosine, sign_conflict_rate, alignment, dot, norm_a, norm_b, n_both_material, "
            "n_sign_conflicts, n_matrices FROM similarities WHERE vector_a = ? AND vector_b = ?",
            [lo, hi]))
        if not whole:
            raise NotFound(f"no stored similarity between {label_a} and {label_b} (another "
                           "base, or not computed yet: `tvreg similarities`)")
        tensors = _dicts(con.execute("""
            SELECT s.tensor, s.dot, s.cosine, s.sign_conflict_rate, s.alignment,
                   s.n_both_material, s.n_sign_conflicts, na.norm AS norm_lo, nb.norm AS norm_hi
            FROM tensor_similarities s
            LEFT JOIN tensor_stats na ON na.vector_id = s.vector_a AND na.tensor = s.tensor
            LEFT JOIN tensor_stats nb ON nb.vector_id = s.vector_b AND nb.tensor = s.tensor
            WHERE s.vector_a = ? AND s.vector_b = ?""", [lo, hi]))
        order = {name: i for i, (name,) in enumerate(con.execute(
            "SELECT name FROM tensors WHERE vector_id = ? ORDER BY rowid", [a]).fetchall())}
    tensors.sort(key=lambda t: (order.get(t["tensor"], len(order)), t["tensor"]))
    swap = a != lo  # the stored norms are the sorted pair's: give them a's and b's names
    for t in tensors:
        t["norm_a"], t["norm_b"] = ((t.pop("norm_hi"), t.pop("norm_lo")) if swap
                                    else (t.pop("norm_lo"), t.pop("norm_hi")))
    info = whole[0]
    if swap:
        info["norm_a"], info["norm_b"] = info["norm_b"], info["norm_a"]
    return {"a": label_a, "b": label_b, "vector_a": a, "vector_b": b, **info,
            "layers": layers_of(tensors), "tensors": tensors}


def chart_rows(pair_data: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a pair's chart: its layers, or its tensors for a model without numbered
    layers."""
    layers = pair_data["layers"]
    if sum(1 for g in layers if g["layer"].startswith("layer ")) >= 2:
        return layers
    return [{"layer": t["tensor"], "tensors": 1, "cosine": t["cosine"],
             "sign_conflict_rate": t["sign_conflict_rate"],
             "n_both_material": t["n_both_material"] or 0,
             "n_sign_conflicts": t["n_sign_conflicts"] or 0} for t in pair_data["tensors"]]


def layers_of(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-tensor statistics summed into layers (``layers.N``, ``h.N``, ``block.N``, …; the
    tensors outside the layers as ``embeddings`` before and ``head`` after): cosine from the
    summed dots and squared norms, sign conflicts from the summed counts."""
    groups: dict[Any, dict[str, Any]] = {}
    seen_layer = False
    for t in tensors:
        m = LAYER.search(t["tensor"])
        if m:
            seen_layer = True
            key: Any = (1, int(m.group(1)))
            label = f"layer {int(m.group(1))}"
        else:
            key = (2, 0) if seen_layer else (0, 0)
            label = "head" if seen_layer else "embeddings"
        g = groups.setdefault(key, {"layer": label, "tensors": 0, "dot": 0.0, "sq_a": 0.0,
                                    "sq_b": 0.0, "n_both_material": 0, "n_sign_conflicts": 0,
                                    "norms": True})
        g["tensors"] += 1
        g["dot"] += t["dot"] or 0.0
        if t.get("norm_a") is None or t.get("norm_b") is None:
            g["norms"] = False
        else:
            g["sq_a"] += t["norm_a"] ** 2
            g["sq_b"] += t["norm_b"] ** 2
        g["n_both_material"] += t["n_both_material"] or 0
        g["n_sign_conflicts"] += t["n_sign_conflicts"] or 0
    out = []
    for _, g in sorted(groups.items()):
        denom = math.sqrt(g["sq_a"] * g["sq_b"])
        out.append({"layer": g["layer"], "tensors": g["tensors"],
                    "cosine": g["dot"] / denom if g["norms"] and denom > 0 else None,
                    "sign_conflict_rate": (g["n_sign_conflicts"] / g["n_both_material"]
                                           if g["n_both_material"] else None),
                    "n_both_material": g["n_both_material"],
                    "n_sign_conflicts": g["n_sign_conflicts"]})
    return out
