"""The map of the package: every module imports, no import cycle anywhere in pipeline/, and nothing but
the Ray adapter imports Ray."""

from __future__ import annotations

import ast
import importlib
import importlib.util

from tests.fixtures.paths import ROOT

PACKAGE = ROOT / "pipeline"


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def imports_of(name: str, tree: ast.Module) -> set[str]:
    """Every module an import statement anywhere in the file names (top level and inside functions)."""
    found = set()
    package = name if name in PACKAGES else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pipeline.decode import gpu`
    return found


MODULES = modules()
PACKAGES = {n for n in MODULES if (ROOT / n.replace(".", "/") / "__init__.py").exists()}


def graph() -> dict[str, set[str]]:
    """module → the pipeline modules it imports (a package's __init__ counts as the package)."""
    return {name: {m for m in imports_of(name, tree) if m in MODULES and m != name} for name, tree in MODULES.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_every_module_imports():
    for name in MODULES:
        if name != "pipeline.__main__":  # runs the command
            importlib.import_module(name)


def test_no_import_cycle_in_pipeline():
    g = graph()
    assert g["pipeline.decode.gpu"] >= {"pipeline.decode.isolated", "pipeline.decode.geometry"}  # the graph sees imports
    assert cycles(g) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_ray_modules_import_ray_and_only_the_adapter_ray_data():
    def importers(prefix: str) -> list[str]:
        return sorted(n for n, tree in MODULES.items()
                      if any(m == prefix or m.startswith(prefix + ".") for m in imports_of(n, tree)))

    assert importers("ray") == ["pipeline.runner.ray_adapter", "pipeline.runner.ray_start"]
    assert importers("ray.data") == ["pipeline.runner.ray_adapter"]  # ray_start: Ray's core only (see its docstring)


def test_every_import_of_ours_resolves_in_pipeline_jobs_and_bench():
    """Imports inside functions run only when called (the benchmark's, a job's): each module of ours they
    name must exist, and each name they take from it must be there."""
    missing = []
    for folder in ("pipeline", "jobs", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module and not node.level \
                        and node.module.split(".")[0] in ("pipeline", "jobs", "bench", "tests"):
                    try:
                        module = importlib.import_module(node.module)
                    except ImportError:
                        missing.append(f"{path.relative_to(ROOT)}: {node.module}")
                        continue
                    missing += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                                if not hasattr(module, a.name) and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
    assert missing == []


def test_no_private_names_imported_across_modules():
    """A module uses another's public names only (`from x import _y` couples to an implementation)."""
    private = [(n, f"{node.module}.{a.name}") for n, tree in MODULES.items() for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline")
               for a in node.names if a.name.startswith("_")]
    assert private == []
