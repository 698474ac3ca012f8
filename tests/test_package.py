"""The package's structure: no import circles between its modules, functions short enough to read."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "a2d"


def imports() -> dict[str, set[str]]:
    """Module -> the a2d modules it imports, at the top or inside functions."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("a2d"):
                names.add(node.module if node.module != "a2d" else f"a2d.{node.names[0].name}")
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names if alias.name.startswith("a2d.")}
        graph[f"a2d.{path.stem}"] = names - {f"a2d.{path.stem}"}
    return graph


def test_no_module_imports_one_that_imports_it_back():
    graph = imports()
    assert "a2d.config" in graph["a2d.plan"] and graph["a2d.__main__"] == {"a2d.cli"}  # the graph is read

    def circle(start, node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path and (found := circle(start, nxt, [*path, nxt])):
                return found
        return None

    circles = [found for module in graph if (found := circle(module, module, [module]))]
    assert not circles, f"import circles: {circles}"


def test_no_function_is_longer_than_a_screen():
    lengths = {f"{path.name}:{node.name}": node.end_lineno - node.lineno + 1
               for path in PACKAGE.glob("*.py") for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    assert max(lengths.values()) <= 60, sorted(lengths.items(), key=lambda item: -item[1])[:3]
