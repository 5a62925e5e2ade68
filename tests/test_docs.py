"""The docs name what exists: every dotted ``xattn_utils.`` name in the package's docstrings, README.md and
ARCHITECTURE.md resolves (its module imports, then each further part is an attribute or a dataclass field)."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "xattn_utils"
NAME = re.compile(r"\bxattn_utils(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def resolves(name: str) -> bool:
    """Import the longest importable module prefix of ``name``, then follow the rest as attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            if hasattr(obj, part):
                obj = getattr(obj, part)
            elif dataclasses.is_dataclass(obj) and part in {f.name for f in dataclasses.fields(obj)}:
                return part == parts[-1]  # a field without a class-level default: nothing further to follow
            else:
                return False
        return True
    return False


def _docstrings(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield getattr(node, "lineno", 1), doc


def _names(text: str):
    return {m.group(0).rstrip(".") for m in NAME.finditer(text)}


def _code_names() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        for line, doc in _docstrings(path):
            for name in _names(doc):
                out.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{line}")
    return out


def test_the_resolver_knows_a_stale_name():
    assert resolves("xattn_utils.maps.REGISTRY") and resolves("xattn_utils.analysis.composed.mixing_answer")
    assert resolves("xattn_utils.maps.Method.compute")  # a dataclass field
    assert not resolves("xattn_utils.spes") and not resolves("xattn_utils.models.load_model")


def test_every_name_in_docstrings_resolves():
    bad = {n: where for n, where in _code_names().items() if not resolves(n)}
    assert not bad, "\n".join(f"{n}  ({', '.join(w)})" for n, w in sorted(bad.items()))


@pytest.mark.parametrize("doc", ["ARCHITECTURE.md", "README.md"])
def test_every_name_in_the_docs_resolves(doc):
    bad = sorted(n for n in _names((ROOT / doc).read_text()) if not resolves(n))
    assert not bad, f"{doc} names what does not exist: {bad}"


ARCH = (ROOT / "ARCHITECTURE.md").read_text()
STEPS = ("data", "models", "extraction", "attribution", "analysis", "runs")
FOUNDATION = ("errors", "paths", "provenance", "store", "_io", "_entry", "maps")


def test_architecture_names_resolve_without_the_package_prefix():
    """``models.loader.load_model``-style names in ARCHITECTURE.md are ``xattn_utils.`` names."""
    names = {m.group(1) for m in re.finditer(r"`([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+)`", ARCH)}
    ours = sorted(n for n in names if n.split(".")[0] in STEPS + FOUNDATION and not n.endswith((".py", ".md", ".csv")))
    assert len(ours) > 10
    bad = [n for n in ours if not resolves(f"xattn_utils.{n}")]
    assert not bad, f"ARCHITECTURE.md names what does not exist: {bad}"


def test_architecture_names_every_module():
    """Each step's modules are in its row of the diagram; each foundation module in the table."""
    missing = []
    for step in STEPS:
        row = ARCH[ARCH.index(f"  {step}/"):]
        row = row[:min(row.find(end) % len(row) for end in ("│", "```"))]  # this step's rows, to the next arrow
        missing += [f"{step}/{p.stem}" for p in sorted((PKG / step).glob("*.py"))
                    if p.stem != "__init__" and not re.search(rf"\b{p.stem}\b", row)]
    missing += [f"{m}.py" for m in FOUNDATION if f"`{m}.py`" not in ARCH]
    assert not missing, f"ARCHITECTURE.md does not name: {missing}"
