"""The bus's import graph: no cycle, and dependencies point one way.

Every import counts: module-level, under ``TYPE_CHECKING`` and inside
functions (a lazy import still ties two modules together). The graph is
read from the source with :mod:`ast`, so nothing is imported to build it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import cluster.bus

BUS = Path(cluster.bus.__file__).parent
PACKAGE = "cluster.bus"

#: the publish/receive pipeline (flat in cluster/bus/)
PIPELINE = {"transport", "codec", "message_schema", "batch", "outbox", "sender",
            "publisher", "receiver", "ordered_delivery", "catch_up"}
#: what composes the parts: nothing below may import these
COMPOSERS = {"manager", "redis_manager", "kombu_manager", "features", "startup"}


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name (``cluster.bus.x.y``) of each file under ``root``."""
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package, *parts])] = path
    return names


def import_graph(root: Path = BUS, package: str = PACKAGE) -> dict[str, set[str]]:
    """Each module of ``package`` and the modules of it that it imports, in
    any way."""
    modules = module_names(root, package)

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        base = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:
                    prefix = base
                    for _ in range(node.level - 1):
                        prefix = prefix.rpartition(".")[0]
                    source = f"{prefix}.{source}" if source else prefix
                # ``from pkg import module`` imports the module itself
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules
                           else source for alias in node.names]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    found = owner(target)
                    if found and found != name:
                        deps.add(found)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def short(name: str) -> str:
    return name.removeprefix(PACKAGE + ".")


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from pkg.sub import c\n"
        "if TYPE_CHECKING:\n    from pkg import b\n"
        "def f():\n    from .sub.d import thing\n")
    (root / "b.py").write_text("import pkg.sub.c\n")
    (root / "sub" / "c.py").write_text("def g():\n    from ..a import f\n")
    (root / "sub" / "d.py").write_text("thing = 1\n")
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.c", "pkg.b", "pkg.sub.d"}
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}  # a lazy, relative import
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    # and on the bus itself
    bus = import_graph()
    assert "cluster.bus.transport" in bus["cluster.bus.receiver"]
    assert "cluster.bus.backends.redis_transport" in bus["cluster.bus.redis_manager"]


def test_the_cycle_finder_finds_a_lazy_import_cycle() -> None:
    # the shape the bus had before: transport -> features -(lazy)-> manager -> transport
    graph = {"t": {"f"}, "f": {"m"}, "m": {"t", "x"}, "x": set()}
    assert cycles(graph) == [["f", "m", "t"]]


def test_no_import_cycle_in_the_bus() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles in cluster.bus: " + "; ".join(
        " <-> ".join(short(m) for m in cycle) for cycle in found)


def test_pipeline_and_backends_never_import_the_manager_or_services() -> None:
    wrong = []
    for name, deps in import_graph().items():
        part = short(name)
        if part in PIPELINE or part.startswith("backends"):
            for dep in deps:
                target = short(dep)
                if target in COMPOSERS or target.startswith("services"):
                    wrong.append(f"{part} -> {target}")
    assert wrong == []


def test_services_never_import_the_composers_or_backends() -> None:
    wrong = [f"{short(name)} -> {short(dep)}"
             for name, deps in import_graph().items() if short(name).startswith("services")
             for dep in deps
             if short(dep) in COMPOSERS or short(dep).startswith("backends")]
    assert wrong == []


def test_backends_import_no_other_backend_family() -> None:
    # the Redis backend and the kombu backend do not know each other
    wrong = [f"{short(name)} -> {short(dep)}"
             for name, deps in import_graph().items()
             if short(name).startswith("backends.") for dep in deps
             if short(dep).startswith("backends.")
             and short(dep).split(".")[1].split("_")[0] != short(name).split(".")[1].split("_")[0]]
    assert wrong == []
