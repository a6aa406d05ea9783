"""The import graph the README's Architecture section promises (issue 34): no cycles, and no
adapter importing the registry, the configuration or the routers.

Read from the source with `ast` (every import, also those inside functions or under
TYPE_CHECKING: a cycle there is still two modules that cannot be understood apart).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
PACKAGES = ("picker", "extproc", "authz", "litellm_plugin", "llm_picker")
ADAPTERS = ("extproc", "authz", "litellm_plugin")
# What the adapter contract (picker.routing.contract) stands in front of.
BEHIND_THE_CONTRACT = ("picker.config", "picker.fleet.registry", "picker.routing.router",
                       "picker.routing.router_manager")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
             if "_pb" not in path.parts]
    modules = {_module_name(path): path for path in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1],
                                     *([base] if base else [])])
                # `from a.b import c` imports the module a.b.c when there is one, else a.b.
                targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules
                               else base for alias in node.names)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others() -> None:
    graph = _graph()
    assert len(graph) > 150  # the walk found the packages
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_adapter_reaches_behind_the_contract() -> None:
    reaching = {name: sorted(targets & set(BEHIND_THE_CONTRACT))
                for name, targets in _graph().items()
                if name.split(".")[0] in ADAPTERS and targets & set(BEHIND_THE_CONTRACT)}
    assert reaching == {}
