"""The package's layers and its import graph (docs/architecture.md), read from the source by
AST: module-level, function-level and ``TYPE_CHECKING`` imports all count.

What holds today is enforced strictly: every module sits in a layer, and the lower layers
(L0–L3) import only their own subpackage and lower layers. What the ``Repo`` refactor still has
to remove (upper-layer modules that take the ``Registry``, and the import cycles through it) is
listed below as known debt; those lists may only shrink — a test fails when an entry is no
longer true, so that fixing something also removes it from here."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "registry"

#: top-level module or subpackage of tvreg -> its layer (docs/architecture.md)
LAYERS = {
    "errors": 0, "digest": 0, "dtypes": 0, "names": 0, "util": 0,
    "stores": 1, "codecs": 1,
    "format": 2,
    "storage": 3, "tensors": 3, "catalog": 3,
    "repo": 4,
    "maintenance": 5, "compose": 5, "similarity": 5, "remote": 5,
    "registry": 6, "__init__": 6,
    "testing": 7,
}
#: the floor: every module may import it
FLOOR = {"errors"}
LOWER = 3  # layers up to this one are held to the rule without exception

#: upper-layer imports that break the rule today (part, imported part): the Repo refactor
#: (issue 15, item 2) makes operations take a Repo instead of the Registry facade
KNOWN_UPWARD = {
    ("compose", "registry"), ("maintenance", "registry"), ("remote", "registry"),
    ("repo", "registry"), ("similarity", "registry"),
    ("maintenance", "remote"),  # repair reads a remote's config
    ("repo", "compose"),        # stored bases check outputs with compose.apply
}
#: modules on an import cycle today, all through the Registry facade (L4 and up)
KNOWN_CYCLIC = {
    "tvreg.registry", "tvreg.compose.apply", "tvreg.compose.composition",
    "tvreg.maintenance.bases", "tvreg.maintenance.gc", "tvreg.maintenance.repair",
    "tvreg.maintenance.verify", "tvreg.remote.bases", "tvreg.remote.config", "tvreg.remote.gc",
    "tvreg.remote.index", "tvreg.remote.pull", "tvreg.remote.push", "tvreg.remote.view",
    "tvreg.repo.bases", "tvreg.similarity.compute",
}


def _name(path: pathlib.Path) -> str:
    parts = ["tvreg", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str) -> set[str]:
    """The tvreg modules ``module`` imports (not its ancestor packages, which Python imports
    for any submodule: the rule is about what a module uses)."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in MODULES:  # an attribute of a module
            target = target.rpartition(".")[0]
        if target and target != module and not module.startswith(target + "."):
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tvreg":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "tvreg":
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                add(full if full in MODULES else source)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _cyclic() -> set[str]:
    """Modules on some import cycle (strongly connected components of more than one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: set[str] = set()

    def visit(v: str) -> None:  # Tarjan; the graph is small
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.update(component)

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert sorted({_part(m) for m in MODULES} - LAYERS.keys()) == []


def _breaks_rule(a: str, b: str) -> bool:
    return a != b and b not in FLOOR and LAYERS[b] >= LAYERS[a] and not (
        LAYERS[a] == 0 and LAYERS[b] == 0 and a != "util" and b == "util")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if LAYERS[_part(m)] <= LOWER))
def test_lower_layers_import_only_their_own_part_and_lower_layers(module):
    bad = sorted(t for t in GRAPH[module] if _breaks_rule(_part(module), _part(t)))
    assert bad == [], f"{module} (layer {LAYERS[_part(module)]}) imports {bad}"


def test_upper_layers_break_the_rule_only_where_known():
    upward = {(_part(m), _part(t)) for m in MODULES if LAYERS[_part(m)] > LOWER
              for t in GRAPH[m] if LAYERS[_part(m)] < 6 and _breaks_rule(_part(m), _part(t))}
    assert upward - KNOWN_UPWARD == set(), "new imports against the layer rule"
    assert KNOWN_UPWARD - upward == set(), "fixed: remove these from KNOWN_UPWARD"


def test_no_module_of_the_lower_layers_is_on_an_import_cycle():
    assert sorted(m for m in _cyclic() if LAYERS[_part(m)] <= LOWER) == []


def test_import_cycles_only_where_known():
    cyclic = _cyclic()
    assert cyclic - KNOWN_CYCLIC == set(), "new modules on an import cycle"
    assert KNOWN_CYCLIC - cyclic == set(), "no longer on a cycle: remove from KNOWN_CYCLIC"


def test_the_graph_is_read_right():
    """The reader sees every kind of import: module level, in a function, under TYPE_CHECKING,
    relative, and a module imported by name from its package."""
    assert "tvreg.errors" in GRAPH["tvreg.tensors.build"]
    assert "tvreg.tensors.encoding" in GRAPH["tvreg.tensors.stored_base"]  # in a function
    assert "tvreg.stores" in GRAPH["tvreg.storage.documents"]  # under TYPE_CHECKING
    assert "tvreg.util.faults" in GRAPH["tvreg.storage.gclock"]  # from tvreg.util import faults
    assert "tvreg.registry" in GRAPH["tvreg"]


def test_subpackages_list_their_public_names():
    import importlib

    for module, path in MODULES.items():
        if path.name != "__init__.py" or module == "tvreg":
            continue
        package = importlib.import_module(module)
        names = getattr(package, "__all__", None)
        assert isinstance(names, list), f"{module} has no __all__"
        for name in names:
            assert getattr(package, name) is not None, (module, name)
