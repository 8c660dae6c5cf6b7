"""The package's layers and its import graph (docs/architecture.md), read from the source by
AST: module-level, function-level and ``TYPE_CHECKING`` imports all count.

Every module sits in a layer and imports only its own subpackage and lower layers (the facade
``tvreg.registry`` and ``tvreg/__init__`` are L6, ``testing/`` L7); no module is on an import
cycle. Operations take a ``Repo`` (L4), never the ``Registry`` facade."""

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
    "testing": 7, "web": 7,
}
#: the floor: every module may import it
FLOOR = {"errors"}

def _name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = ["tvreg", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    return {_name(p, root): p for p in sorted(root.rglob("*.py"))}


MODULES = _modules(ROOT)


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, modules: dict[str, pathlib.Path] = MODULES) -> set[str]:
    """The tvreg modules ``module`` imports (not its ancestor packages, which Python imports
    for any submodule: the rule is about what a module uses)."""
    path = modules[module]
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in modules:  # an attribute of a module
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
                add(full if full in modules else source)
    return found


def _graph(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    return {m: _imports(m, modules) for m in modules}


GRAPH = _graph(MODULES)


def _cyclic(graph: dict[str, set[str]] = GRAPH) -> set[str]:
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
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert sorted({_part(m) for m in MODULES} - LAYERS.keys()) == []


#: same-layer imports the rule allows: L0's modules use util/, the package re-exports the facade
ALLOWED = {("errors", "util"), ("digest", "util"), ("dtypes", "util"), ("names", "util"),
           ("__init__", "registry")}


def _breaks_rule(a: str, b: str) -> bool:
    return a != b and b not in FLOOR and LAYERS[b] >= LAYERS[a] and (a, b) not in ALLOWED


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_own_part_and_lower_layers(module):
    bad = sorted(t for t in GRAPH[module] if _breaks_rule(_part(module), _part(t)))
    assert bad == [], f"{module} (layer {LAYERS[_part(module)]}) imports {bad}"


def test_no_import_cycle():
    cyclic = _cyclic()
    assert sorted(cyclic) == [], {m: sorted(GRAPH[m] & cyclic) for m in sorted(cyclic)}


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


def summary(root: pathlib.Path = ROOT) -> dict[str, object]:
    """The import graph's size, its cycles and the largest modules: what the closing note of
    issue 15 quotes. ``python tests/test_layers.py [PACKAGE_DIR]`` prints it (for another
    checkout too, e.g. one before the refactor)."""
    modules = _modules(root)
    graph = _graph(modules)
    lines = {m: len(p.read_text().splitlines()) for m, p in modules.items()}
    largest = sorted(((n, m) for m, n in lines.items() if ".testing" not in m), reverse=True)
    return {"modules": len(modules), "imports": sum(len(t) for t in graph.values()),
            "modules on a cycle": len(_cyclic(graph)),
            "largest modules (outside testing/)": [f"{m} {n}" for n, m in largest[:3]],
            "facade tvreg.registry lines": lines.get("tvreg.registry")}


if __name__ == "__main__":
    import sys

    for key, value in summary(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT).items():
        print(f"{key}: {value}")
