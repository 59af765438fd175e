"""The import structure docs/architecture.md describes, read from the code with ``ast``.

* the library's layers point one way: a module imports gradfilt modules of its own package or of lower
  layers only, never of a higher one;
* no import cycle between modules, in the library or inside an application;
* no module imports another module's private name (a leading underscore), except its own package's
  private submodules (``_kernels``, ``_utils``);
* the library imports no application.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPS = ("classification", "segmentation", "latency")
# the library's layers, lowest first; a module may import its own package and the layers below it
LAYERS = [
    ["gradfilt.registry"],
    ["gradfilt.ops"],
    ["gradfilt.surgery", "gradfilt.models"],
    ["gradfilt.patchgrid"],
    ["gradfilt.cost"],
    ["gradfilt.methods"],
    ["gradfilt.search"],
    ["gradfilt.cli"],
    ["gradfilt.__main__", "gradfilt"],
]


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in ("gradfilt", *APPS):
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every import statement of module ``name``."""
    out = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                keep = len(parts) - node.level + (1 if _is_package(name) else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            out += [(base, a.name, node.lineno) for a in node.names]
    return out


def _known(module: str, what: str) -> list[str]:
    """The project modules an import statement loads: the module, and the name when it is a submodule."""
    found = [m for m in (module, f"{module}.{what}" if what else "") if m in MODULES]
    return found


def _graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for m in MODULES:
        for module, what, _ in _imports(m):
            for dep in _known(module, what):
                if dep != m and not m.startswith(dep + "."):  # a module's own package is loaded before it
                    graph[m].add(dep)
    return graph


def _layer(module: str) -> tuple[int, str]:
    """(layer index, the layer entry the module belongs to) by the longest matching prefix."""
    best = None
    for i, names in enumerate(LAYERS):
        for entry in names:
            if module == entry or module.startswith(entry + "."):
                if best is None or len(entry) > len(best[1]):
                    best = (i, entry)
    assert best is not None, f"{module} is in no layer of LAYERS: add it"
    return best


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), iteratively."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_library_module_has_a_layer():
    for m in MODULES:
        if m.split(".")[0] == "gradfilt":
            _layer(m)


def test_library_layers_point_down():
    graph, wrong = _graph(), []
    for m in MODULES:
        if m.split(".")[0] != "gradfilt":
            continue
        level, own = _layer(m)
        for dep in graph[m]:
            dep_level, dep_entry = _layer(dep)
            if dep_level > level or (dep_level == level and dep_entry != own):
                wrong.append(f"{m} (layer {level}) imports {dep} (layer {dep_level})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_names_cross_modules():
    wrong = []
    for m in MODULES:
        for module, what, line in _imports(m):
            if not module.startswith(("gradfilt", *APPS)):
                continue
            private = [p for p in [*module.split("."), what] if p.startswith("_") and p not in ("__init__", "__main__")]
            own_private_module = (what.startswith("_") and f"{module}.{what}" not in MODULES
                                  and module == m.rsplit(".", 1)[0] and what in ("_kernels", "_utils"))
            if private and not own_private_module:
                wrong.append(f"{MODULES[m].relative_to(ROOT)}:{line} imports {module} {what}".rstrip())
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("app", APPS)
def test_the_library_imports_no_application(app):
    for m in MODULES:
        if m.split(".")[0] == "gradfilt":
            assert not any(mod.split(".")[0] == app for mod, _, _ in _imports(m)), m
