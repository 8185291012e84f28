"""The package's layering: no import cycle between its parts (each top-level module or subpackage), counting the
imports inside functions too, which Python resolves late and a reader does not see at the top of the file."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "agentic_compression"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at ``root``."""
    out = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (``from . import x`` names module x)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        here = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                elif node.module and node.module.split(".")[0] == ROOT.name:
                    base = node.module
                else:
                    continue
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs or [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[m] |= {t for t in targets if t in mods and t != m}
    return edges


def part(module: str) -> str:
    """The package part a module belongs to: agentic_compression.targets.llamacpp -> targets."""
    return module.split(".")[1] if "." in module else module


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def parts_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for a, bs in imports(mods).items():
        graph.setdefault(part(a), set()).update(part(b) for b in bs if part(b) != part(a))
    return graph


def test_no_import_cycle_between_the_packages_parts():
    found = cycles(parts_graph(modules()))
    assert found == [], f"an import cycle between {found} (lazy imports count): move the shared code down"


def test_the_check_finds_a_cycle_closed_by_a_lazy_import(tmp_path):
    pkg = tmp_path / "agentic_compression"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("def f():\n    from ..high import g\n")  # a lazy upward import
    (pkg / "high.py").write_text("from .low import f\n")
    assert cycles(parts_graph(modules(pkg))) == [{"low", "high"}]
    (pkg / "low" / "__init__.py").write_text("def f():\n    return 1\n")
    assert cycles(parts_graph(modules(pkg))) == []


def test_the_registry_is_the_bottom_layer_and_submodules_import_their_base_not_their_package():
    """registry.py imports nothing of acf's (so anything may register, and config.py checks names without importing
    what they stand for); a format's, target's or method's module imports its package's base module, never the
    package's __init__, whose own imports would then run first."""
    mods = modules()
    edges = imports(mods)
    assert edges["agentic_compression.registry"] == set()
    for package in ("formats", "targets", "methods"):
        name = f"agentic_compression.{package}"
        inside = [m for m in mods if m.startswith(name + ".")]
        assert f"{name}.base" in inside
        assert [m for m in inside if name in edges[m]] == [], f"a {package} module imports the package's __init__"
