"""The import graph of the project's own modules: no cycles, and layers import downward only."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

# Lower rank = lower layer. A module may import its own package or any package of a lower rank.
LAYERS = {"core": 0, "models": 1, "data": 1, "infer": 2, "eval": 3, "engine": 4, "cli": 5}
CLI_FILES = {"train", "val", "detect", "export", "hubconf"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "models":
        return "models"
    if parts[0] == "utils":
        return parts[1] if len(parts) > 2 and parts[1] in ("data", "engine", "eval", "infer") else "core"
    return "cli"


def project_modules() -> dict[str, Path]:
    """Module name -> file, for utils/ and models/ (library) and the top-level CLIs."""
    found = {}
    for package in ("utils", "models"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for name in CLI_FILES:
        if (REPO_ROOT / f"{name}.py").is_file():
            found[name] = REPO_ROOT / f"{name}.py"
    return found


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """Every project module imported anywhere in the file (function bodies and TYPE_CHECKING blocks included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, name, set(modules)) for name, path in modules.items()}


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "utils.infer.backend" in graph["utils.infer.predictor"]
    assert len(graph) > 50


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_layers_import_downward_only():
    graph = import_graph()
    wrong = []
    for source, targets in graph.items():
        for target in targets:
            source_layer, target_layer = layer_of(source), layer_of(target)
            if source_layer != target_layer and LAYERS[target_layer] >= LAYERS[source_layer]:
                wrong.append(f"{source} ({source_layer}) imports {target} ({target_layer})")
    assert not wrong, "\n".join(sorted(wrong))


def test_core_stays_small_and_subpackages_say_what_they_hold():
    core = [p for p in (REPO_ROOT / "utils").glob("*.py") if p.name != "__init__.py"]
    assert len(core) <= 15, sorted(p.name for p in core)
    for package in ("data", "engine", "eval", "infer"):
        doc = ast.get_docstring(ast.parse((REPO_ROOT / "utils" / package / "__init__.py").read_text()))
        assert doc and "\n" not in doc.strip()
