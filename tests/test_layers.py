"""The package's layer rules (docs/architecture.md), checked from the source with ``ast``.

- every import inside ``rtseg`` points to the same layer or one below (module level and inside functions);
- the module-level import graph has no circle;
- ``engine`` and ``deploy`` (siblings) do not import each other;
- the root of ``rtseg/`` holds at most 10 modules, and no function is longer than 100 lines.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "rtseg"

#: bottom to top; a module may import its own layer or any lower one
LAYERS: list[tuple[str, ...]] = [
    ("rtseg._version", "rtseg.errors", "rtseg.utils"),
    ("rtseg.data",),
    ("rtseg.models",),
    ("rtseg.nn",),
    ("rtseg.hub",),
    ("rtseg.checkpoint",),
    ("rtseg.eval",),
    ("rtseg.engine", "rtseg.deploy", "rtseg.deploy.segmenter", "rtseg.deploy.exporter", "rtseg.deploy.predictor", "rtseg.deploy.bench"),
    ("rtseg.reporting", "rtseg.packaging", "rtseg.serve"),
    ("rtseg.demo", "rtseg.cli"),
    ("rtseg", "rtseg.__main__"),
]
#: packages of one layer that must not import each other (the training engine and the deploy stack)
SIBLINGS = {"rtseg.engine": {"rtseg.deploy", "rtseg.deploy.segmenter", "rtseg.deploy.exporter", "rtseg.deploy.predictor", "rtseg.deploy.bench"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer_of(module: str) -> tuple[int, str]:
    """(rank, prefix) of the longest layer prefix matching ``module``."""
    best: tuple[int, str] | None = None
    for rank, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (rank, p)
    if best is None:
        raise AssertionError(f"{module}: in no layer of tests/test_layers.py (add it to LAYERS)")
    return best


def _imports(tree: ast.AST, module: str, is_pkg: bool) -> list[tuple[str, int, bool]]:
    """(imported rtseg module, line, at module level) for every import statement."""
    top = {id(n) for n in getattr(tree, "body", [])}
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod]
            # `from rtseg.x import y` where y is a submodule counts as importing rtseg.x.y
            names += [f"{mod}.{a.name}" for a in node.names if (PKG.parent / f"{mod}.{a.name}".replace(".", "/")).exists()
                      or (PKG.parent / (f"{mod}.{a.name}".replace(".", "/") + ".py")).exists()]
        for n in names:
            if n == "rtseg" or n.startswith("rtseg."):
                out.append((n, node.lineno, id(node) in top))
    return out


def _sources() -> dict[str, tuple[Path, ast.AST]]:
    mods = {}
    for p in sorted(PKG.rglob("*.py")):
        mods[_module_name(p)] = (p, ast.parse(p.read_text(), filename=str(p)))
    return mods


SOURCES = _sources()


def test_every_import_points_down_or_sideways_within_its_layer() -> None:
    bad = []
    for mod, (path, tree) in SOURCES.items():
        rank, prefix = _layer_of(mod)
        for target, line, _ in _imports(tree, mod, path.name == "__init__.py"):
            trank, tprefix = _layer_of(target)
            rel = path.relative_to(PKG.parent)
            if trank > rank:
                bad.append(f"{rel}:{line} imports {target} (layer {trank} above {rank})")
            elif trank == rank and tprefix != prefix and tprefix in SIBLINGS.get(prefix, set()) | {
                    k for k, v in SIBLINGS.items() if prefix in v}:
                bad.append(f"{rel}:{line} imports sibling {target}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_module_level_imports_have_no_circle() -> None:
    graph: dict[str, set[str]] = {}
    for mod, (path, tree) in SOURCES.items():
        deps = set()
        for target, _, top in _imports(tree, mod, path.name == "__init__.py"):
            # importing a.b.c runs a and a.b first: depend on the deepest module that exists
            while target not in SOURCES and "." in target:
                target = target.rsplit(".", 1)[0]
            if top and target != mod and target in SOURCES:
                deps.add(target)
        graph[mod] = deps
    # a package's __init__ runs before its submodules: the package -> submodule edges are the normal case;
    # a circle is a submodule that (transitively) needs a sibling that needs it back
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cyc = stack[stack.index(m):] + [m]
                # package -> own submodule -> package is how every `from rtseg.x.y import` starts; not a circle
                if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in itertools.pairwise(cyc)):
                    cycles.append(cyc)
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_package_root_holds_at_most_ten_modules() -> None:
    root = sorted(p.name for p in PKG.glob("*.py"))
    assert len(root) <= 10, root


@pytest.mark.parametrize("limit", [100])
def test_no_function_is_longer_than_the_limit(limit: int) -> None:
    long = []
    for path, tree in SOURCES.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    long.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "\n".join(long)


def test_no_module_is_shadowed_by_a_name_of_its_package() -> None:
    """``rtseg.train`` is a function and its module is ``rtseg.engine.trainer``: a package never exports a name
    that hides one of its own submodules (``import rtseg.x.y as m`` would hand back the function)."""
    import importlib
    import pkgutil
    import types

    import rtseg

    bad = []
    for info in [*pkgutil.walk_packages(rtseg.__path__, "rtseg."), None]:
        pkg = rtseg if info is None else importlib.import_module(info.name) if info.ispkg else None
        if pkg is None:
            continue
        for sub in pkgutil.iter_modules(pkg.__path__):
            v = getattr(pkg, sub.name, None)
            if v is not None and not isinstance(v, types.ModuleType):
                bad.append(f"{pkg.__name__}.{sub.name} is shadowed by a {type(v).__name__}")
    assert not bad, bad
