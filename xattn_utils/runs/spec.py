"""A sweep file: parse and validate it, and expand it into runs (one :class:`RunSpec` per parameter set).

The sweep file (YAML)::

    name: smoke                      # names the sweep (default: the file's stem)
    out: runs/sweeps/smoke           # output root, relative to the current directory (default runs/sweeps/<name>)
    notebook_dir: notebooks          # optional, cwd-relative; where names are looked up (default: repo's notebooks/)
    notebooks:                       # run in this order, each with its own fixed parameters
      - 01_extract_cross_attention.ipynb: {n_utterances: 2, input_mode: trimmed}
      - 02_saliency_maps.ipynb: {n_utterances: 1, n_masks: 32}   # input mode: the store's (set by 01)
      - 03_alignment_analysis.ipynb: {n_boot: 50}
      - 04_faithfulness.ipynb            # a bare name: no fixed parameters
    common: {seed: 0}                # optional; fixed parameters passed to every notebook
    grid:                            # cartesian product; every key is passed to every notebook
      model: ["bundled:whisper-tiny.en"]
      n_masks: [32, 64]
    points:                          # optional: extra runs, one per mapping, after the grid's (settings that
      - {model: "bundled:whisper-base", language: it, task: translate}   # are not a product, e.g. a model's tasks)
      - model: "bundled:whisper-base"
        notebooks:                   # optional: this run executes only these notebooks (in the sweep's order)
          01_extract_cross_attention.ipynb: {n_utterances: 6}   # replaces that notebook's fixed parameters
          03_alignment_analysis.ipynb                           # (a list of names is accepted too)

A point's ``notebooks`` (a list of names from ``notebooks``, or a mapping name -> parameters that replace the
notebook's fixed ones for this run) runs that subset in the sweep's order; it is not a parameter itself.

Parameters of one notebook are merged as ``common < notebook's fixed < grid < {run_dir, store}``: a grid value
overrides a fixed one of the same name (that is what is being swept); ``run_dir`` (the run folder) and ``store``
(``<run>/store``) are set by the runner and may not appear in the file. Every key must name a variable of a
notebook's ``parameters`` cell. A relative ``manifest`` value is resolved against the directory the sweep was started
from.

A run's key hashes the sweep's notebook list (names, sha256 of their sources, fixed parameters), the common
parameters and its grid values; its folder is ``<slug>-<key[:8]>`` under the output root.
"""
from __future__ import annotations

import ast
import dataclasses
import itertools
import json
import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .._io import sha256_file
from ..errors import SweepError
from ..paths import resource
from ..provenance import stable_hash

NOTEBOOK_DIR = resource("notebooks")
TOP_LEVEL_KEYS = ("name", "out", "notebook_dir", "notebooks", "common", "grid", "points")
RESERVED = ("run_dir", "store")
POINT_NOTEBOOKS = "notebooks"  # a point's subset of the sweep's notebooks (not a parameter)
PATH_PARAMS = ("manifest",)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-]+")


@dataclass
class NotebookEntry:
    """One notebook of a sweep and its fixed parameters."""

    notebook: str
    params: dict = field(default_factory=dict)


@dataclass
class SweepSpec:
    """A parsed sweep file (see the module docstring)."""

    name: str
    notebooks: list[NotebookEntry]
    grid: dict[str, list] = field(default_factory=dict)
    common: dict = field(default_factory=dict)
    out: str | None = None
    notebook_dir: str | None = None
    source: str | None = None  # the YAML file it came from, if any
    points: list[dict] = field(default_factory=list)  # extra runs (parameter -> value), after the grid's

    @property
    def keys(self) -> list[str]:
        """Every parameter the runs vary: the grid's keys, then any other key of the points."""
        return list(dict.fromkeys([*self.grid, *(k for pt in self.points for k in pt if k != POINT_NOTEBOOKS)]))


@dataclass
class RunNotebook:
    """A notebook of one run: its source, checksum and fixed parameters (before the grid is merged in)."""

    name: str
    path: str
    sha256: str
    params: dict


@dataclass
class RunSpec:
    """One run of a sweep: a point of the grid, its folder and its key."""

    sweep: str
    name: str  # folder name: slug-hash8
    slug: str
    key: str
    run_dir: str
    grid: dict
    common: dict
    notebooks: list[RunNotebook]
    workdir: str  # directory the sweep was started from (relative manifests resolve against it)

    def params_for(self, nb: RunNotebook) -> dict:
        """The parameters papermill passes to ``nb``: common < fixed < grid < run_dir/store."""
        params = {**self.common, **nb.params, **self.grid}
        for p in PATH_PARAMS:
            value = params.get(p)
            if isinstance(value, str) and value and not Path(value).is_absolute() and "://" not in value:
                params[p] = str(Path(self.workdir) / value)
        return {**params, "run_dir": self.run_dir, "store": str(Path(self.run_dir) / "store")}


# ----------------------------------------------------------------------------------------------------------------
# loading and expanding


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file."""
    path = Path(path)
    if not path.exists():
        raise SweepError(f"sweep file {path} does not exist; see sweeps/*.yaml for examples")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML ({err})") from None
    spec = parse_sweep(raw, default_name=path.stem)
    return dataclasses.replace(spec, source=str(path))


def parse_sweep(raw, default_name: str = "sweep") -> SweepSpec:
    """A :class:`SweepSpec` from the mapping a sweep file holds (validated, with messages that say what to fix)."""
    if not isinstance(raw, dict):
        raise SweepError(f"a sweep file holds a mapping with keys {', '.join(TOP_LEVEL_KEYS)}; "
                         f"got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise SweepError(f"unknown sweep key(s) {unknown}; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    entries = raw.get("notebooks")
    if not isinstance(entries, list) or not entries:
        raise SweepError("'notebooks' must be a non-empty list of notebook names, each optionally mapped to its "
                         "fixed parameters, e.g. '- 03_alignment_analysis.ipynb: {n_boot: 50}'")
    notebooks = [_parse_entry(e) for e in entries]
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError("'grid' must map parameter names to lists of values, e.g. 'model: [bundled:whisper-tiny.en]'")
    grid = {str(k): (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in grid.items()}
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise SweepError(f"grid key(s) {empty} have no values; give at least one or remove the key")
    common = raw.get("common") or {}
    if not isinstance(common, dict):
        raise SweepError("'common' must map parameter names to single values")
    points = raw.get("points") or []
    if not isinstance(points, list) or not all(isinstance(pt, dict) and pt for pt in points):
        raise SweepError("'points' must be a list of non-empty mappings, one per extra run, e.g. "
                         "'- {model: bundled:whisper-base, language: it, task: translate}'")
    points = [{str(k): v for k, v in pt.items()} for pt in points]
    names = [e.notebook for e in notebooks]
    for i, pt in enumerate(points):
        if POINT_NOTEBOOKS in pt:
            pt[POINT_NOTEBOOKS] = _point_notebooks(pt[POINT_NOTEBOOKS], names, f"points[{i}]")
    for where, params in ([("grid", grid), ("common", common)]
                          + [(f"points[{i}]", _point_params(pt)) for i, pt in enumerate(points)]
                          + [(e.notebook, e.params) for e in notebooks]):
        bad = [k for k in params if not _is_parameter_name(k)]
        if bad:
            raise SweepError(f"{where}: parameter name(s) {bad!r} are not Python identifiers; a sweep key must "
                             "name a variable of the notebooks' parameters cell")
        clash = sorted(set(params) & set(RESERVED))
        if clash:
            raise SweepError(f"{where}: {clash} are set by the runner (each run's folder and its store); remove them")
        for k, v in params.items():
            _check_json_value(where, k, v)
    name = str(raw.get("name") or default_name)
    return SweepSpec(name=name, notebooks=notebooks, grid=grid, common=dict(common),
                     out=str(raw["out"]) if raw.get("out") else None,
                     notebook_dir=str(raw["notebook_dir"]) if raw.get("notebook_dir") else None, points=points)


_JSON_SCALARS = (str, int, float, bool, type(None))


def _check_json_value(where: str, key: str, value, path: str = "") -> None:
    """Refuse a parameter value that is not plain JSON (YAML ``!!binary`` bytes, a date, a set, ...): papermill,
    ``parameters.yaml`` and the run key could not carry it."""
    if isinstance(value, _JSON_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json_value(where, key, v, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise SweepError(f"{where}: parameter {key}{path} has a key {k!r} of type {type(k).__name__}; "
                                 "keys must be strings: quote it")
            _check_json_value(where, key, v, f"{path}[{k!r}]")
        return
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise SweepError(f"{where}: parameter {key}{path} = {shown} is a YAML {type(value).__name__}, not a JSON value "
                     "(string, number, boolean, null, list or mapping); quote it (e.g. '2020-01-01') or give a "
                     "plain value")


def _point_notebooks(subset, names: list[str], where: str) -> dict[str, dict]:
    """A point's notebook subset as name -> parameters replacing the fixed ones (validated against ``names``)."""
    if isinstance(subset, list):
        subset = {n: {} for n in subset} if all(isinstance(n, str) for n in subset) else None
    if isinstance(subset, dict):
        subset = {str(k): ({} if v is None else v) for k, v in subset.items()}
    if (not isinstance(subset, dict) or not subset or any(n not in names for n in subset)
            or not all(isinstance(v, dict) for v in subset.values())):
        raise SweepError(f"{where}: 'notebooks' must be a non-empty list of names from the sweep's notebooks "
                         f"({', '.join(names)}), or a mapping of such names to parameters")
    return subset


def _point_params(point: dict) -> dict:
    """A point's parameters (without its notebook subset)."""
    return {k: v for k, v in point.items() if k != POINT_NOTEBOOKS}


def _is_parameter_name(key) -> bool:
    """A plain identifier, not a keyword (papermill writes parameters as source: anything else would be code)."""
    return isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key)


def _parameter_assignments(path: str | Path) -> list[tuple[str, ast.expr | None]]:
    """``(name, value expression)`` of each assignment in a notebook's cell tagged ``parameters`` (none without
    one; an annotated name without a value has ``None``)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell.get("source", "")
            src = "".join(src) if isinstance(src, list) else src
            try:
                tree = ast.parse(src)
            except SyntaxError as err:
                raise SweepError(f"notebook {path}: its parameters cell is not valid Python ({err})") from None
            out = []
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, ast.AnnAssign) else []
                out += [(t.id, node.value) for t in targets if isinstance(t, ast.Name)]
            return out
    return []


def notebook_parameters(path: str | Path) -> set[str]:
    """Names assigned in a notebook's cell tagged ``parameters`` (empty when it has none)."""
    return {name for name, _ in _parameter_assignments(path)}


def notebook_defaults(path: str | Path) -> dict[str, object]:
    """The literal default of each variable assigned in a notebook's ``parameters`` cell (a variable whose value is
    not a literal, e.g. ``x = os.getcwd()``, is absent)."""
    out = {}
    for name, value in _parameter_assignments(path):
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError):
            out.pop(name, None)
    return out


def _type_name(value) -> str:
    return {bool: "a boolean", int: "a whole number", float: "a number", str: "a string", list: "a list",
            tuple: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _fits(value, default) -> bool:
    """Whether ``value`` may replace a parameters-cell ``default``: the same JSON type (a whole number for a
    number; anything for a ``None`` default)."""
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_parameter_types(notebook: str | Path, params: dict, name: str | None = None) -> None:
    """Refuse parameters whose type differs from the default in ``notebook``'s parameters cell, before papermill
    writes them into it (``n_masks: "1; import os"`` for ``n_masks = 64``): the message names the notebook, the
    parameter, the value and the type expected."""
    defaults = notebook_defaults(notebook)
    for key, value in params.items():
        if key in defaults and not _fits(value, defaults[key]):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise SweepError(f"{name or Path(notebook).name}: parameter {key} = {shown} is {_type_name(value)}, but "
                             f"its parameters cell has {key} = {defaults[key]!r} ({_type_name(defaults[key])}); "
                             f"give {_type_name(defaults[key])}")


def check_parameters(spec: SweepSpec, notebooks: list[RunNotebook]) -> None:
    """Every key names a variable of a parameters cell: fixed ones of their notebook, grid/common ones of any."""
    known = {nb.name: notebook_parameters(nb.path) for nb in notebooks}
    for nb in notebooks:
        unknown = sorted(set(nb.params) - known[nb.name])
        if unknown:
            raise SweepError(f"{nb.name}: parameter(s) {unknown} are not in its parameters cell; "
                             f"it takes {', '.join(sorted(known[nb.name])) or 'none'}")
    everywhere = set().union(*known.values()) if known else set()
    for where, params in [("grid", spec.grid), ("common", spec.common)] + [
            (f"points[{i}]", _point_params(pt)) for i, pt in enumerate(getattr(spec, "points", []) or [])]:
        unknown = sorted(set(params) - everywhere)
        if unknown:
            raise SweepError(f"{where}: parameter(s) {unknown} are in no notebook's parameters cell; "
                             f"the notebooks take {', '.join(sorted(everywhere)) or 'none'}")


def _parse_entry(entry) -> NotebookEntry:
    if isinstance(entry, str):
        return NotebookEntry(entry, {})
    if isinstance(entry, dict) and len(entry) == 1:
        (name, params), = entry.items()
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise SweepError(f"notebook {name}: its parameters must be a mapping, got {params!r}")
        return NotebookEntry(str(name), dict(params))
    raise SweepError(f"a notebooks entry is a name or a one-key mapping 'name: {{params}}'; got {entry!r}")


def slugify(grid: dict, max_len: int = 80) -> str:
    """A readable folder-name fragment from grid values, e.g. ``model=bundled-whisper-tiny.en_n_masks=64``."""
    parts = []
    for k, v in grid.items():
        text = "+".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
        parts.append(f"{_UNSAFE.sub('-', str(k))}={_UNSAFE.sub('-', text).strip('-')[:40]}")
    slug = "_".join(parts)[:max_len].rstrip("_-")
    return slug or "run"


def run_key(notebooks: list[RunNotebook], common: dict, grid: dict) -> str:
    """The hash that identifies a run: notebook names, source checksums and fixed parameters, common, grid values."""
    return stable_hash({"notebooks": [[nb.name, nb.sha256, nb.params] for nb in notebooks],
                        "common": common, "grid": grid}, length=16)


def resolve_notebooks(spec: SweepSpec) -> list[RunNotebook]:
    """The spec's notebooks as files with their checksums (raises when one is missing)."""
    base = Path(spec.notebook_dir).resolve() if spec.notebook_dir else NOTEBOOK_DIR
    out = []
    for entry in spec.notebooks:
        path = Path(entry.notebook)
        path = path if path.is_absolute() else base / path
        if not path.exists():
            raise SweepError(f"notebook {entry.notebook} not found at {path}; check the name or set 'notebook_dir'")
        out.append(RunNotebook(path.name, str(path), sha256_file(path), entry.params))
    return out


def sweep_root(spec: SweepSpec, out: str | Path | None = None) -> Path:
    """The output root: ``out`` if given, else the spec's ``out``, else ``runs/sweeps/<name>`` (cwd-relative)."""
    return Path(out or spec.out or Path("runs") / "sweeps" / spec.name).resolve()


def expand(spec: SweepSpec | str | Path | dict, out: str | Path | None = None) -> list[RunSpec]:
    """One :class:`RunSpec` per point of the grid's cartesian product, then one per extra point (duplicates dropped),
    in that order."""
    spec = as_spec(spec)
    root = sweep_root(spec, out)
    notebooks = resolve_notebooks(spec)
    check_parameters(spec, notebooks)
    keys = list(spec.grid)
    product = [dict(zip(keys, values)) for values in itertools.product(*(spec.grid[k] for k in keys))]
    if spec.points and product == [{}]:  # no grid: the points are the runs
        product = []
    runs, seen = [], set()
    for point in [*product, *(dict(pt) for pt in spec.points)]:
        grid = _point_params(point)
        subset = point.get(POINT_NOTEBOOKS)
        run_notebooks = [nb if subset is None else dataclasses.replace(nb, params={**nb.params, **subset[e.notebook]})
                         for e, nb in zip(spec.notebooks, notebooks) if subset is None or e.notebook in subset]
        if subset is not None:  # the point's own notebook parameters (the shared ones were checked above)
            check_parameters(SweepSpec(spec.name, [NotebookEntry(nb.name, nb.params) for nb in run_notebooks]),
                             run_notebooks)
        key = run_key(run_notebooks, spec.common, grid)
        if key in seen:
            continue
        for nb in run_notebooks:  # every value against the parameters cell's default, before anything runs
            check_parameter_types(nb.path, {**spec.common, **nb.params, **grid}, nb.name)
        seen.add(key)
        slug = slugify(grid)
        name = f"{slug}-{key[:8]}"
        runs.append(RunSpec(sweep=spec.name, name=name, slug=slug, key=key, run_dir=str(root / name), grid=grid,
                            common=dict(spec.common), notebooks=run_notebooks, workdir=str(Path.cwd())))
    return runs


def planned_runs(spec: SweepSpec) -> int:
    """How many runs the spec expands to at most (the grid's product, plus its points), without expanding it."""
    n = 1
    for values in spec.grid.values():
        n *= len(values)
    return (0 if spec.points and not spec.grid else n) + len(spec.points)


def as_spec(spec) -> SweepSpec:
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, dict):
        return parse_sweep(spec)
    return load_sweep(spec)
