"""The package's structure, read from its source: no import circle between modules (at
module level or inside functions), no ``_private`` name taken from another module, no module
over 400 lines, and the stages import only stages to their left (docs/design.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "luring"
MAX_LINES = 400

#: The stages in the order data flows (docs/design.md). A module may import its own stage,
#: the stages to its left and the shared modules (errors, utils, precision, distributed).
STAGES = ["data", "models", "defense", "attacks", "metrics", "experiments", "report",
          "benchmarks", "cli"]
SHARED = {"errors", "utils", "precision", "distributed"}


def _modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Module → luring modules it imports (anywhere in its body); and (module, name) for each
    private name it takes from another module (``from m import _x`` or ``m._x`` on an
    imported module)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private: list[tuple[str, str]] = []
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        aliases: dict[str, str] = {}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "luring":
                        edges[mod].add(a.name)
                        aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "luring":
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in mods:
                        edges[mod].add(sub)
                        aliases[a.asname or a.name] = sub
                    else:
                        edges[mod].add(target)
                        if a.name.startswith("_") and not a.name.startswith("__"):
                            private.append((mod, f"{target}.{a.name}"))
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in aliases and node.attr.startswith("_")
                  and not node.attr.startswith("__")):
                private.append((mod, f"{aliases[node.value.id]}.{node.attr}"))
    return {m: {t for t in ts if t in mods and t != m} for m, ts in edges.items()}, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _stage(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_checks_catch_what_they_look_for(tmp_path):
    pkg = tmp_path / "luring"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from luring.a.y import _g\n")
    (pkg / "a" / "y.py").write_text("import luring.a.x as xx\n\ndef _g():\n    return xx._h\n")
    edges, private = _imports(_modules(pkg))
    assert _cycles(edges) == [["luring.a.x", "luring.a.y"]]
    assert sorted(private) == [("luring.a.x", "luring.a.y._g"), ("luring.a.y", "luring.a.x._h")]


def test_no_import_circle():
    edges, _ = _imports(_modules())
    assert _cycles(edges) == []


def test_no_private_name_crosses_modules():
    _, private = _imports(_modules())
    assert private == []


def test_no_module_over_400_lines():
    long = {m: n for m, p in _modules().items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_only_stages_to_its_left(stage):
    edges, _ = _imports(_modules())
    allowed = set(STAGES[: STAGES.index(stage) + 1]) | SHARED | {""}
    wrong = sorted((m, t) for m, ts in edges.items() if _stage(m) == stage
                   for t in ts if _stage(t) not in allowed)
    assert wrong == []


def test_shared_modules_import_only_shared_modules():
    edges, _ = _imports(_modules())
    wrong = sorted((m, t) for m, ts in edges.items() if _stage(m) in SHARED
                   for t in ts if _stage(t) not in SHARED | {""})
    assert wrong == []
