"""fastadv's static import graph, function-level imports included: ``python -m
tools.import_graph`` prints its cycles, its imports of private names across packages and its
imports against the layering (none is the rule; a test checks it)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The layers, lowest first (docs/ARCHITECTURE.md draws them): a module imports from its own
# layer and the ones below, never from above; train and eval stand side by side, apart.
LAYERS = (
    ("fastadv._version", "fastadv.errors", "fastadv._io", "fastadv._outdir", "fastadv.devices",
     "fastadv.cli_common", "fastadv._layout", "fastadv._checks", "fastadv._kernel_checks",
     "fastadv.reference",
     "fastadv._cuda_toolkit", "fastadv.backends", "fastadv.nn", "fastadv.kernels"),
    ("fastadv.ops", "fastadv.model_specs", "fastadv.models", "fastadv.checkpoint",
     "fastadv.data"),
    ("fastadv.attacks", "fastadv.accuracy"),
    ("fastadv.train", "fastadv.eval"),
    ("fastadv.experiments", "fastadv.info", "fastadv.demo", "fastadv"),
)
APART = (("fastadv.train", "fastadv.eval"),)


# Package folders outside fastadv/ (pyproject.toml's package-dir).
PACKAGE_DIRS = {"fastadv": "fastadv", "fastadv.kernels": "kernels"}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        if not (ROOT / folder).is_dir():
            continue
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = (*package.split("."), *path.relative_to(ROOT / folder).with_suffix("").parts)
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(mods: dict[str, Path]):
    """(importer, imported module, names taken from it) for every import statement."""
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods:
                        yield name, alias.name, ()
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in mods:  # a submodule imported by name
                        yield name, sub, ()
                    elif base in mods:
                        yield name, base, (alias.name,)


def graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Edges between modules. A submodule taking a name from its own package (``from ..
    import __version__``) is an edge too: the package's __init__ is half run at that point."""
    edges = {m: set() for m in mods}
    for src, dst, _ in imports(mods):
        if dst != src:
            edges[src].add(dst)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                found.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in edges:
        if v not in index:
            visit(v)
    return found


def private_imports(mods: dict[str, Path]) -> list[str]:
    """``from a.b import _name`` by a module outside package ``a``: private names stay in
    the package that defines them (subpackages included: ``a.c.d`` is outside ``a``)."""
    bad = []
    for src, dst, names in imports(mods):
        owner = dst.rpartition(".")[0] or dst
        package = src if mods[src].name == "__init__.py" else src.rpartition(".")[0]
        for n in names:
            if n.startswith("_") and not n.startswith("__") and package != owner:
                bad.append(f"{src} imports {dst}.{n}")
    return bad


def _unit(module: str) -> str:
    """The LAYERS entry ``module`` belongs to (the longest that names it or a package of it)."""
    names = [n for layer in LAYERS for n in layer if module == n or module.startswith(n + ".")]
    if not names:
        raise KeyError(f"{module} is in no layer of tools/import_graph.py: add it")
    return max(names, key=len)


def layer_violations(mods: dict[str, Path]) -> list[str]:
    """Imports from a higher layer, and between units kept APART."""
    level = {n: i for i, layer in enumerate(LAYERS) for n in layer}
    bad = []
    for src, dst in sorted({(s, d) for s, d, _ in imports(mods) if s != d}):
        a, b = _unit(src), _unit(dst)
        if level[b] > level[a]:
            bad.append(f"{src} imports {dst}, a layer above it")
        elif {a, b} in [set(pair) for pair in APART]:
            bad.append(f"{src} imports {dst}: {a} and {b} stay apart")
    return bad


def main() -> int:
    mods = modules()
    found = cycles(graph(mods))
    for component in found:
        print("cycle:", " <-> ".join(component))
    bad = private_imports(mods)
    for line in bad:
        print("private import:", line)
    upward = layer_violations(mods)
    for line in upward:
        print("layering:", line)
    return 1 if found or bad or upward else 0


if __name__ == "__main__":
    raise SystemExit(main())
