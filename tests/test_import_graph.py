"""No import circles among the project's modules, counting every import: module-level, function-local and
`if TYPE_CHECKING:` ones alike (a circle hidden in a function is still a circle in the design).

Edges: `import a.b` and `from a.b import c` point at the module a.b.c when that is a module, else at a.b. A
package's own parents are not edges (importing a.b.c runs a/__init__ and a/b/__init__ first, and a package
__init__ that re-exports its submodules would otherwise count as a circle with each of them).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "server", "bench", "autotune", "logparse")


def module_files() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def imports_of(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:  # `import a.b.c` of a name inside a module: its module
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                out.add(t)
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1
                    stack.append(w); on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on_stack.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return comps


def project_graph() -> dict[str, set[str]]:
    mods = module_files()
    return {name: imports_of(name, path, mods) for name, path in mods.items()}


def test_finder_sees_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_graph_has_the_known_edges():
    """The parser resolves absolute, from-package and function-local imports (guards the circle test's reach)."""
    graph = project_graph()
    assert {"engine.forward_mode", "engine.scheduler.batch", "engine.scheduler.kv_manager"} <= \
        graph["engine.scheduler.scheduler"]
    assert "engine.forward_mode" in graph["engine.attention.base"]
    assert "engine.attention.cpu_backend" in graph["engine.attention.registry"]  # imported inside a function


def test_no_import_circles():
    assert find_cycles(project_graph()) == []


def test_attention_does_not_lean_on_the_scheduler():
    """The device layer shares the batch description (engine.forward_mode) with the scheduler; it never imports
    the pure scheduler package itself."""
    graph = project_graph()
    for name, deps in graph.items():
        if name.startswith(("engine.attention", "engine.kernels")):
            assert not any(d.startswith("engine.scheduler") for d in deps), (name, deps)
