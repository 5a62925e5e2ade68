"""Parameter sweeps over the study notebooks, one run folder per parameter set, executed through Dask.

Usage::

    python -m xattn_utils.sweep sweeps/smoke.yaml [--out ROOT] [--scheduler tcp://HOST:8786] [--workers N]

or from Python / a notebook: ``run_sweep("sweeps/smoke.yaml", workers=2)`` (returns a :class:`SweepResult`).

The sweep file (YAML)::

    name: smoke                      # names the sweep (default: the file's stem)
    out: runs/sweeps/smoke           # output root, relative to the current directory (default runs/sweeps/<name>)
    notebook_dir: notebooks          # optional, cwd-relative; where names are looked up (default: repo's notebooks/)
    notebooks:                       # run in this order, each with its own fixed parameters
      - 01_extract_cross_attention.ipynb: {n_utterances: 2, input_mode: trimmed}
      - 02_saliency_maps.ipynb: {n_utterances: 1, input_mode: trimmed, n_masks: 32}
      - 03_alignment_analysis.ipynb: {n_boot: 50}
      - 04_faithfulness.ipynb            # a bare name: no fixed parameters
    common: {seed: 0}                # optional; fixed parameters passed to every notebook
    grid:                            # cartesian product; every key is passed to every notebook
      model: ["bundled:whisper-tiny.en"]
      n_masks: [32, 64]
    points:                          # optional: extra runs, one per mapping, after the grid's (settings that
      - {model: "bundled:whisper-base", language: it, task: translate}   # are not a product, e.g. a model's tasks)

Parameters of one notebook are merged as ``common < notebook's fixed < grid < {run_dir, store}``: a grid value
overrides a fixed one of the same name (that is what is being swept); ``run_dir`` (the run folder) and ``store``
(``<run>/store``) are set by the runner and may not appear in the file. A notebook that lacks a parameter only gets
a papermill warning. A relative ``manifest`` value is resolved against the directory the sweep was started from.

Layout of the output root::

    ROOT/sweep.yaml                      the sweep as expanded (name, notebooks, grid)
    ROOT/<slug>-<hash>/                  one run, e.g. model=bundled-whisper-tiny.en_n_masks=64-3fa2c1d0
        parameters.yaml                  the run's parameters, its key, notebook checksums, versions
        status                           first line: done | running | failed: <notebook>: <error's last line>
        log.txt                          per-notebook timings and the notebooks' printed output
        <notebook>.ipynb / .html         executed copies (a failing one keeps its traceback) and HTML exports
        store/ figures/ tables/          what the notebooks write
    ROOT/collected.parquet, .csv, .json  every row of each done run's tables/agreement.parquet, plus the columns
                                         ``run`` (folder name) and one per grid key (a table column of the same
                                         name is kept as ``<key>_table``)
    ROOT/report.md                       one page: runs and status, headline per run beside the paper, figures

Resuming: a run's key hashes the sweep's notebook list (names, sha256 of their sources, fixed parameters), the
common parameters and its grid values. A run whose folder says ``done`` with the same key is skipped; a ``failed``
or ``running`` one (a killed sweep) is run again in the same folder (its result store is reused where its own cache
keys match). A failing notebook stops its run only; the sweep goes on. Status, parameters and tables are written
atomically (temp file + rename). The command ends with exactly one line ``runs: <n> done, <n> skipped, <n> failed``
(skipped: already done before this invocation) and exits 1 when a run failed.

Execution: each run is one ``client.submit(run_one, run, pure=False)`` on a ``dask.distributed`` client, collected
with ``as_completed``. Without ``--scheduler`` an in-process ``LocalCluster(n_workers=N, threads_per_worker=1,
processes=True)`` is started (processes isolate papermill kernels and memory). Do not run two sweeps on the same
root at once: each would treat the other's ``running`` runs as killed.

On a cluster (SLURM/PBS) with ``dask-jobqueue`` (``pip install dask-jobqueue``; documentation only, not a
dependency), one GPU per worker and one run at a time per worker::

    from dask_jobqueue import SLURMCluster          # or PBSCluster
    cluster = SLURMCluster(cores=8, memory="32GB", processes=1, walltime="04:00:00",
                           job_extra_directives=["--gres=gpu:1"])
    cluster.scale(jobs=4)                           # four jobs, i.e. four workers, one GPU each
    print(cluster.scheduler_address)                # keep this Python process alive while the sweep runs

then, from a shell on the same shared filesystem (same checkout and environment, ``XATTN_HOME`` exported)::

    python -m xattn_utils.sweep sweeps/paper.yaml --scheduler tcp://10.0.0.5:8786

(or ``run_sweep("sweeps/paper.yaml", client=Client(cluster))`` in the Python process that holds the cluster).
The workers must be able to import ``xattn_utils`` and see the output root at the same path.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import itertools
import json
import os
import re
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .._io import atomic_write_text, sha256_file, write_table
from ..provenance import git_commit, stable_hash, to_jsonable, versions

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
TOP_LEVEL_KEYS = ("name", "out", "notebook_dir", "notebooks", "common", "grid", "points")
RESERVED = ("run_dir", "store")
PATH_PARAMS = ("manifest",)
KEY_FIGURES = ("03_layer_head_grid", "03_layer_curves", "03_utterance_distribution", "03_token_scatter",
               "04_faithfulness", "02_side_by_side", "02_smx_tokens", "01_attention_mean")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-]+")


class SweepError(ValueError):
    """A sweep file that cannot be expanded (the message says what to fix)."""


# ----------------------------------------------------------------------------------------------------------------
# specs


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
        return list(dict.fromkeys([*self.grid, *(k for pt in self.points for k in pt)]))


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


@dataclass
class RunResult:
    """What happened to one run."""

    name: str
    state: str  # done | failed | skipped
    error: str = ""
    seconds: float = 0.0
    run_dir: str = ""
    grid: dict = field(default_factory=dict)


@dataclass
class SweepResult:
    """The outcome of :func:`run_sweep`."""

    name: str
    root: Path
    done: list[RunResult] = field(default_factory=list)
    skipped: list[RunResult] = field(default_factory=list)
    failed: list[RunResult] = field(default_factory=list)
    collected: Path | None = None
    report: Path | None = None

    def summary(self) -> str:
        return f"runs: {len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed"


# ----------------------------------------------------------------------------------------------------------------
# loading and expanding


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file."""
    import yaml

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
    for where, params in ([("grid", grid), ("common", common)] + [(f"points[{i}]", pt) for i, pt in enumerate(points)]
                          + [(e.notebook, e.params) for e in notebooks]):
        bad = [k for k in params if not _is_parameter_name(k)]
        if bad:
            raise SweepError(f"{where}: parameter name(s) {bad!r} are not Python identifiers; a sweep key must "
                             "name a variable of the notebooks' parameters cell")
        clash = sorted(set(params) & set(RESERVED))
        if clash:
            raise SweepError(f"{where}: {clash} are set by the runner (each run's folder and its store); remove them")
    name = str(raw.get("name") or default_name)
    return SweepSpec(name=name, notebooks=notebooks, grid=grid, common=dict(common),
                     out=str(raw["out"]) if raw.get("out") else None,
                     notebook_dir=str(raw["notebook_dir"]) if raw.get("notebook_dir") else None, points=points)


def _is_parameter_name(key) -> bool:
    """A plain identifier, not a keyword (papermill writes parameters as source: anything else would be code)."""
    import keyword

    return isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key)


def notebook_parameters(path: str | Path) -> set[str]:
    """Names assigned in a notebook's cell tagged ``parameters`` (empty when it has none)."""
    import ast

    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell.get("source", "")
            src = "".join(src) if isinstance(src, list) else src
            try:
                tree = ast.parse(src)
            except SyntaxError as err:
                raise SweepError(f"notebook {path}: its parameters cell is not valid Python ({err})") from None
            names = set()
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, ast.AnnAssign) else []
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
            return names
    return set()


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
            (f"points[{i}]", pt) for i, pt in enumerate(getattr(spec, "points", []) or [])]:
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
    spec = _as_spec(spec)
    root = sweep_root(spec, out)
    notebooks = resolve_notebooks(spec)
    check_parameters(spec, notebooks)
    keys = list(spec.grid)
    product = [dict(zip(keys, values)) for values in itertools.product(*(spec.grid[k] for k in keys))]
    if spec.points and product == [{}]:  # no grid: the points are the runs
        product = []
    runs, seen = [], set()
    for grid in [*product, *(dict(pt) for pt in spec.points)]:
        key = run_key(notebooks, spec.common, grid)
        if key in seen:
            continue
        seen.add(key)
        slug = slugify(grid)
        name = f"{slug}-{key[:8]}"
        runs.append(RunSpec(sweep=spec.name, name=name, slug=slug, key=key, run_dir=str(root / name), grid=grid,
                            common=dict(spec.common), notebooks=notebooks, workdir=str(Path.cwd())))
    return runs


def _as_spec(spec) -> SweepSpec:
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, dict):
        return parse_sweep(spec)
    return load_sweep(spec)


# ----------------------------------------------------------------------------------------------------------------
# status


def read_status(run_dir: str | Path) -> dict:
    """``{"state": done|running|failed|absent, "error": str, "key": str}`` from a run folder's ``status`` file."""
    f = Path(run_dir) / "status"
    if not f.exists():
        return {"state": "absent", "error": "", "key": ""}
    lines = f.read_text().splitlines() or [""]
    state, _, error = lines[0].partition(":")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return {"state": state.strip() or "absent", "error": error.strip(), **fields, "key": fields.get("key", "")}


def write_status(run: RunSpec, state: str, error: str = "", seconds: float | None = None) -> None:
    """Write a run's ``status`` atomically: the state (and error) on the first line, then key and time."""
    first = f"{state}: {error}" if error else state
    lines = [first, f"key: {run.key}", f"updated: {_now()}"]
    if seconds is not None:
        lines.append(f"seconds: {seconds:.1f}")
    atomic_write_text(Path(run.run_dir) / "status", "\n".join(lines) + "\n")


def is_done(run: RunSpec) -> bool:
    """Whether the run's folder holds a finished run with the same key."""
    st = read_status(run.run_dir)
    return st["state"] == "done" and st["key"] == run.key


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------------------------
# one run (executes on a Dask worker)


def error_line(err: BaseException) -> str:
    """The last line of an error, the way a user reads it (``InputError: manifest x does not exist``)."""
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename:  # papermill's PapermillExecutionError: the notebook's own exception
        text = f"{ename}: {evalue}"
    else:
        lines = str(err).strip().splitlines()
        text = f"{type(err).__name__}: {lines[-1] if lines else ''}"
    text = _ANSI.sub("", text).strip().splitlines()
    return (text[-1] if text else type(err).__name__)[:400]


def parameters_record(run: RunSpec) -> dict:
    """What ``parameters.yaml`` holds for a run."""
    return to_jsonable({
        "sweep": run.sweep, "run": run.name, "key": run.key, "grid": run.grid, "common": run.common,
        "notebooks": [{"notebook": nb.name, "sha256": nb.sha256, "params": run.params_for(nb)}
                      for nb in run.notebooks],
        "started": _now(), "versions": versions(), "git_commit": git_commit(),
    })


def export_html(notebook: Path) -> Path | None:
    """``<notebook>.html`` beside an executed notebook (None when the export fails: it is a convenience)."""
    try:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_filename(str(notebook))
        dest = notebook.with_suffix(".html")
        atomic_write_text(dest, body)
        return dest
    except Exception:  # noqa: BLE001 - an export problem never fails a run
        return None


def run_one(run: RunSpec) -> RunResult:
    """Execute one run's notebooks in order into its folder; never raises (a failure is its status)."""
    import papermill as pm
    import yaml

    t0 = time.time()
    folder = Path(run.run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "parameters.yaml", yaml.safe_dump(parameters_record(run), sort_keys=False))
    write_status(run, "running")
    error = ""
    with open(folder / "log.txt", "a") as log:
        log.write(f"\n=== {_now()} run {run.name} (key {run.key}) on {os.uname().nodename} pid {os.getpid()}\n")
        for nb in run.notebooks:
            t1 = time.time()
            dest = folder / nb.name
            log.write(f"--- {_now()} {nb.name}\n")
            log.flush()
            try:
                pm.execute_notebook(nb.path, str(dest), parameters=run.params_for(nb), cwd=str(folder),
                                    progress_bar=False, kernel_name="python3", stdout_file=log, stderr_file=log)
            except Exception as err:  # noqa: BLE001 - papermill raises PapermillExecutionError with the traceback
                error = f"{nb.name}: {error_line(err)}"
                log.write(f"--- {_now()} {nb.name} failed after {time.time() - t1:.1f} s: {error}\n")
                if not isinstance(err, pm.PapermillExecutionError):
                    log.write(traceback.format_exc())
            else:
                log.write(f"--- {_now()} {nb.name} done in {time.time() - t1:.1f} s\n")
            if dest.exists() and export_html(dest) is None:
                log.write(f"--- html export of {nb.name} skipped (nbconvert failed)\n")
            log.flush()
            if error:
                break
        seconds = time.time() - t0
        log.write(f"=== {_now()} {'failed' if error else 'done'} in {seconds:.1f} s\n")
    write_status(run, "failed" if error else "done", error, seconds)
    return RunResult(run.name, "failed" if error else "done", error, seconds, run.run_dir, run.grid)


# ----------------------------------------------------------------------------------------------------------------
# the sweep (driver)


def run_sweep(spec_or_path: SweepSpec | str | Path | dict, out: str | Path | None = None, client=None,
              workers: int = 1, scheduler: str | None = None, verbose: bool = True) -> SweepResult:
    """Run every run of a sweep not already done, then write the collected table and the report.

    Args:
        spec_or_path: a sweep file, its parsed mapping, or a :class:`SweepSpec`.
        out: output root (overrides the file's ``out``).
        client: a ``dask.distributed.Client`` to submit to; else one on ``scheduler`` or on a new LocalCluster.
        workers: worker processes of the LocalCluster (one run at a time each).
        scheduler: address of a running Dask scheduler (e.g. ``tcp://10.0.0.5:8786``).
        verbose: print one line per finished run and the final ``runs: ...`` line.
    """
    spec = _as_spec(spec_or_path)
    root = sweep_root(spec, out)
    root.mkdir(parents=True, exist_ok=True)
    runs = expand(spec, root)
    atomic_write_text(root / "sweep.yaml", _sweep_yaml(spec, runs))
    result = SweepResult(spec.name, root)
    todo = []
    for run in runs:
        if is_done(run):
            result.skipped.append(RunResult(run.name, "skipped", "", 0.0, run.run_dir, run.grid))
        else:
            todo.append(run)
    say = print if verbose else (lambda *a, **k: None)
    say(f"sweep {spec.name}: {len(runs)} runs, {len(result.skipped)} already done -> {root}", flush=True)
    if todo:
        for res in _execute(todo, client, scheduler, workers):
            (result.done if res.state == "done" else result.failed).append(res)
            n = len(result.done) + len(result.failed)
            tail = f": {res.error}" if res.error else ""
            say(f"[{n}/{len(todo)}] {res.state} {res.name} ({res.seconds:.0f} s){tail}", flush=True)
    result.collected = write_collected(runs, root, spec.name)
    result.report = write_report(spec, runs, root, result)
    if result.collected:
        say(f"collected: {result.collected}")
    say(f"report: {result.report}")
    say(result.summary(), flush=True)
    return result


def _execute(todo: list[RunSpec], client, scheduler: str | None, workers: int):
    """Submit each run to Dask and yield its :class:`RunResult` as it finishes."""
    from dask.distributed import Client, LocalCluster, as_completed

    own_cluster = own_client = None
    if client is None:
        if scheduler:
            client = own_client = Client(scheduler)
        else:
            n = max(1, min(int(workers), len(todo)))
            own_cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
            client = own_client = Client(own_cluster)
    try:
        futures = {client.submit(run_one, run, pure=False, key=f"xattn-run-{run.name}-{uuid.uuid4().hex[:8]}"): run
                   for run in todo}
        for fut in as_completed(futures):
            run = futures[fut]
            try:
                yield fut.result()
            except Exception as err:  # noqa: BLE001 - a worker died (memory, node lost): the run failed, go on
                error = f"worker: {error_line(err)}"
                write_status(run, "failed", error)
                yield RunResult(run.name, "failed", error, 0.0, run.run_dir, run.grid)
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()


def _sweep_yaml(spec: SweepSpec, runs: list[RunSpec]) -> str:
    import yaml

    record = {"name": spec.name, "source": spec.source, "expanded": _now(),
              "notebooks": [{nb.name: nb.params} for nb in (runs[0].notebooks if runs else [])],
              "common": spec.common, "grid": spec.grid, **({"points": spec.points} if spec.points else {}),
              "runs": {r.name: r.key for r in runs}}
    return yaml.safe_dump(to_jsonable(record), sort_keys=False)


# ----------------------------------------------------------------------------------------------------------------
# collected table and report


def collect(runs: list[RunSpec]):
    """Every row of each done run's ``tables/agreement.parquet``, with ``run`` and the grid values as columns."""
    import pandas as pd

    frames = []
    for run in runs:
        table = Path(run.run_dir) / "tables" / "agreement.parquet"
        if not (is_done(run) and table.exists()):
            continue
        df = pd.read_parquet(table)
        df = df.rename(columns={k: f"{k}_table" for k in run.grid if k in df.columns})
        extra = {"run": run.name, **{k: _cell(v) for k, v in run.grid.items()}}
        for i, (k, v) in enumerate(extra.items()):
            df.insert(i, k, [v] * len(df))
        frames.append(df)
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    for k in dict.fromkeys(k for run in runs for k in run.grid):  # mixed types (1 and "x") cannot go to parquet
        if k in df.columns and len({type(v) for v in df[k] if v is not None}) > 1:
            df[k] = df[k].map(lambda v: None if v is None else str(v))
    return df


def _cell(value):
    return json.dumps(to_jsonable(value)) if isinstance(value, (list, tuple, dict)) else value


def write_collected(runs: list[RunSpec], root: Path, name: str) -> Path | None:
    """``collected.parquet`` / ``.csv`` / ``.json`` under the root (stale ones removed when nothing is done)."""
    from ..provenance import provenance

    df = collect(runs)
    if df is None:
        for suffix in (".parquet", ".csv", ".json"):
            (root / f"collected{suffix}").unlink(missing_ok=True)
        return None
    prov = provenance(params={"sweep": name, "runs": {r.name: r.key for r in runs if is_done(r)}})
    write_table(df, root, "collected", prov)
    return root / "collected.parquet"


def _md_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_none_\n"
    columns = columns or list(rows[0])

    def cell(v):
        return str("" if v is None else v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def key_figures(run_dir: Path, limit: int = 8) -> list[Path]:
    """The run's most telling figures (PNG), the study's key ones first."""
    pngs = sorted((run_dir / "figures").glob("*.png"))
    ranked = sorted(pngs, key=lambda p: next((i for i, k in enumerate(KEY_FIGURES) if p.stem.startswith(k)),
                                             len(KEY_FIGURES)))
    return ranked[:limit]


def run_headline(run_dir: Path) -> list[dict]:
    """``compare.paper_comparison`` of a run's agreement table as records (empty when there is none)."""
    import pandas as pd

    from ..analysis.compare import paper_comparison

    table = run_dir / "tables" / "agreement.parquet"
    if not table.exists():
        return []
    try:
        return paper_comparison(pd.read_parquet(table)).to_dict("records")
    except Exception:  # noqa: BLE001 - a table without the expected columns has no headline
        return []


def write_report(spec: SweepSpec, runs: list[RunSpec], root: Path, result: SweepResult) -> Path:
    """``report.md``: the runs and their status, the headline per run beside the paper, figures and notebooks."""
    from ..analysis.compare import PAPER

    this_time = {r.name: r for r in result.done + result.failed}
    lo, hi = PAPER["pearson_ca_smh_range"]
    out = [f"# Sweep `{spec.name}`\n",
           f"{len(runs)} runs under `{root}` ({_now()}); {result.summary()}.\n",
           (f"Notebooks: {', '.join(nb.notebook for nb in spec.notebooks)}. "
            f"Grid: {', '.join(f'{k} ∈ {v}' for k, v in spec.grid.items()) or 'none'}"
            + (f"; plus {len(spec.points)} listed point(s)" if spec.points else "") + ".\n"),
           "## Runs\n"]
    rows = []
    for run in runs:
        st = read_status(run.run_dir)
        rows.append({"run": run.name, "status": st["state"] + (" (this time)" if run.name in this_time else ""),
                     "seconds": st.get("seconds", ""), "error": st["error"],
                     **{k: _cell(v) for k, v in run.grid.items()}})
    out.append(_md_table(rows, ["run", "status", *spec.keys, "seconds", "error"]))
    out.append("## Headline per run, beside the paper\n")
    out.append(f"Papi et al. (2025): best Pearson(CA, SMX) ≈ {PAPER['pearson_ca_smx_best']:.2f}; "
               f"Pearson(CA, SMH) {lo:.2f}–{hi:.2f}. Ours (`compare.paper_comparison`): dataset-level Pearson with "
               "its 95% interval for fixed aggregates and for the best aggregate chosen on a calibration half of the "
               "utterances (reported on the other half); the SPES map's split-half reliability; the noise-corrected "
               "Pearson (raw / sqrt(reliability)).\n")
    heads = []
    for run in runs:
        if not is_done(run):
            continue
        for rec in run_headline(Path(run.run_dir)):
            heads.append({"run": run.name, **rec})
    out.append(_md_table(heads, ["run", "comparison", "aggregate", "selection", "n", "ours", "95% CI", "reliability",
                                "corrected", "paper"]) if heads
               else "_no done run has tables/agreement.parquet_\n")
    out.append("## Figures and executed notebooks\n")
    for run in runs:
        folder = Path(run.run_dir)
        figs = key_figures(folder)
        pages = sorted(folder.glob("*.html")) or sorted(folder.glob("*.ipynb"))
        if not figs and not pages:
            continue
        out.append(f"**{run.name}** — " + " · ".join(f"[{p.name}]({run.name}/{p.name})" for p in pages) + "\n"
                   + "".join(f"- [{p.stem}]({run.name}/figures/{p.name})\n" for p in figs))
    out.append("Collected table: `collected.parquet` / `collected.csv` (one row per run × agreement row).\n")
    path = root / "report.md"
    atomic_write_text(path, "\n".join(s.strip("\n") + "\n" for s in out))
    return path


# ----------------------------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a parameter sweep of the study notebooks (see sweeps/*.yaml).")
    ap.add_argument("file", help="sweep file (YAML)")
    ap.add_argument("--out", default=None, help="output root (default: the file's 'out')")
    ap.add_argument("--scheduler", default=None, help="address of a running Dask scheduler, e.g. tcp://host:8786")
    ap.add_argument("--workers", type=int, default=1, help="worker processes of the local Dask cluster (default 1)")
    args = ap.parse_args(argv)
    try:
        result = run_sweep(args.file, out=args.out, scheduler=args.scheduler, workers=args.workers)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
