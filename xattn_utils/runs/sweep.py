"""Parameter sweeps over the study notebooks, one run folder per parameter set, executed through Dask: the driver.

Usage::

    xattn sweep sweeps/smoke.yaml [--out ROOT] [--scheduler tcp://HOST:8786] [--workers N]

(also ``python -m xattn_utils sweep ...``; the old ``python -m xattn_utils.runs.sweep ...`` still works) or from
Python / a notebook: ``run_sweep("sweeps/smoke.yaml", workers=2)`` (returns a :class:`SweepResult`; progress goes to
the ``xattn_utils.runs.sweep`` logger: ``logging.basicConfig(level="INFO")`` shows it).

The parts: :mod:`.spec` parses, validates and expands the sweep file into runs; :mod:`.worker` executes one run
(status file, papermill, HTML export); :mod:`.report` writes the collected table and ``report.md``; this module
schedules the runs on Dask and ties them together.

The sweep file's format and how parameters merge: :mod:`xattn_utils.runs.spec`.

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
on stdout (skipped: already done before this invocation; progress lines go to the log, on stderr) and exits 1
when a run failed.

Execution: each run is one ``client.submit(run_one, run, pure=False)`` on a ``dask.distributed`` client, collected
with ``as_completed``; runs start in the sweep's order (list long runs first), never more in flight than the
cluster has worker threads. Without ``--scheduler`` an in-process ``LocalCluster(n_workers=N, threads_per_worker=1,
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

    xattn sweep sweeps/paper.yaml --scheduler tcp://10.0.0.5:8786

(or ``run_sweep("sweeps/paper.yaml", client=Client(cluster))`` in the Python process that holds the cluster).
The workers must be able to import ``xattn_utils`` and see the output root at the same path.
"""
from __future__ import annotations

import argparse
import logging
import sys
import uuid
from pathlib import Path

import yaml

from .._entry import MAX_RUNS_UNASKED, module_main
from .._io import atomic_write_text
from ..attribution.cost import spes_seconds
from ..errors import SweepError
from ..provenance import to_jsonable
from .report import (
    SweepResult,
    collect,
    key_figures,
    run_headline,
    write_collected,
    write_report,
)
from .spec import (
    NotebookEntry,
    RunNotebook,
    RunSpec,
    SweepSpec,
    as_spec,
    check_parameters,
    expand,
    load_sweep,
    notebook_defaults,
    notebook_parameters,
    parse_sweep,
    planned_runs,
    resolve_notebooks,
    run_key,
    slugify,
    sweep_root,
)
from .worker import (
    RunResult,
    error_line,
    export_html,
    is_done,
    read_status,
    run_one,
    utc_now,
    write_status,
)

__all__ = [  # the driver, and the names of the parts that users and tests reach through it
    "NotebookEntry", "RunNotebook", "RunResult", "RunSpec", "SweepError", "SweepResult", "SweepSpec",
    "MAX_RUNS_UNASKED", "check_parameters", "collect", "command", "error_line", "expand", "export_html", "is_done",
    "key_figures", "load_sweep", "main", "notebook_parameters", "parse_sweep", "read_status", "resolve_notebooks",
    "run_headline", "run_key", "run_one", "run_sweep", "slugify", "sweep_root", "write_collected", "write_report",
    "write_status",
]

logger = logging.getLogger(__name__)


# Seconds per run when the output root holds no finished run to measure: the mean of the default study's 7 runs
# (6873 s in all, from their status files, on 2 CPU cores).
DEFAULT_RUN_SECONDS = 982.0


DEFAULT_MASKS = 256  # SMX and SMH masks per utterance of the default study's runs


def extra_spes_seconds(run: RunSpec) -> float:
    """SPES seconds ``run`` asks for beyond the default study's 256 + 256 masks per utterance: from the parameters
    of each of its notebooks that declares ``n_masks`` (``n_utterances``, or as many as ``utterances`` names,
    ``n_masks``, ``n_masks_h``, ``methods``, the model), at the measured rates of :mod:`xattn_utils.attribution.cost`;
    0 for a cheaper run."""
    extra = 0.0
    for nb in run.notebooks:
        defaults = notebook_defaults(nb.path)
        if "n_masks" not in defaults:
            continue
        p = {**defaults, **run.params_for(nb)}
        try:
            ids = p.get("utterances")  # the utterances by id: n_utterances is then unused
            n_utt = len(ids) if ids else int(p.get("n_utterances") or 1)
            how = {"methods": p.get("methods") or (), "input_mode": p.get("input_mode") or "trimmed",
                   "model": str(p.get("model"))}
            asked = spes_seconds(n_utt, int(p["n_masks"]), int(p.get("n_masks_h") or 0), **how)
            usual = spes_seconds(n_utt, DEFAULT_MASKS, DEFAULT_MASKS, **how)
        except (KeyError, TypeError, ValueError):
            continue  # a parameter the notebook's own check will name
        extra += max(0.0, asked - usual)
    return extra


def estimated_seconds(root: Path, runs: int | list[RunSpec], workers: int = 1) -> tuple[float, str]:
    """(seconds, how it was estimated) for ``runs`` (the runs, or their number): per run the mean of the finished
    runs under ``root`` when there are any, else :data:`DEFAULT_RUN_SECONDS`, plus the SPES work a run asks for
    beyond the default study's masks (:func:`extra_spes_seconds`); divided among ``workers``."""
    n_runs = runs if isinstance(runs, int) else len(runs)
    extra = 0.0 if isinstance(runs, int) else sum(extra_spes_seconds(r) for r in runs)
    seen = []
    if root.is_dir():
        for status in root.glob("*/status"):
            try:
                fields = dict(line.split(": ", 1) for line in status.read_text().splitlines()[1:] if ": " in line)
                if status.read_text().startswith("done"):
                    seen.append(float(fields["seconds"]))
            except (OSError, KeyError, ValueError):
                continue
    per_run, how = ((sum(seen) / len(seen), f"the mean of {len(seen)} finished run(s) here") if seen
                    else (DEFAULT_RUN_SECONDS, "the default study's mean run on 2 CPU cores"))
    how = f"{per_run / 60:.0f} min per run: {how}"
    if extra:
        how += f"; plus {_duration(extra)} of SPES masks beyond the default's {DEFAULT_MASKS} per map and utterance"
    return (n_runs * per_run + extra) / max(1, int(workers)), how


def _duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours / 24:,.0f} days" if hours >= 48 else f"{hours:.1f} h" if hours >= 1 else f"{seconds / 60:.0f} min"


def check_size(spec: SweepSpec, root: Path, workers: int = 1, yes: bool = False,
               limit: int = MAX_RUNS_UNASKED) -> None:
    """Refuse a sweep of more than ``limit`` runs unless ``yes``, before it is expanded (a grid of 10⁶ points is
    refused at once): the message gives the count and the estimated time."""
    n = planned_runs(spec)
    if n > limit and not yes:
        seconds, how = estimated_seconds(root, n, workers)
        raise SweepError(f"sweep {spec.name}: {n:,} runs (over {limit} asks for confirmation), an estimated "
                         f"{_duration(seconds)} with {workers} worker(s) ({how}); pass --yes to run it, or shrink "
                         "the grid")


def run_sweep(spec_or_path: SweepSpec | str | Path | dict, out: str | Path | None = None, client=None,
              workers: int = 1, scheduler: str | None = None, verbose: bool = True, yes: bool = False) -> SweepResult:
    """Run every run of a sweep not already done, then write the collected table and the report.

    Args:
        spec_or_path: a sweep file, its parsed mapping, or a :class:`SweepSpec`.
        out: output root (overrides the file's ``out``).
        client: a ``dask.distributed.Client`` to submit to; else one on ``scheduler`` or on a new LocalCluster.
        workers: worker processes of the LocalCluster (one run at a time each).
        scheduler: address of a running Dask scheduler (e.g. ``tcp://10.0.0.5:8786``).
        verbose: log one line per finished run, the collected table and the report at INFO (else at DEBUG).
        yes: run a sweep of more than :data:`MAX_RUNS_UNASKED` runs (else it is refused with its count and time).
    """
    say = logger.info if verbose else logger.debug
    spec = as_spec(spec_or_path)
    root = sweep_root(spec, out)
    check_size(spec, root, workers, yes)
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
    say("sweep %s: %d runs, %d already done -> %s", spec.name, len(runs), len(result.skipped), root)
    if todo:
        seconds, how = estimated_seconds(root, todo, workers)
        say("estimated time for the %d run(s) to do: %s with %d worker(s) (%s)", len(todo), _duration(seconds),
            max(1, int(workers)), how)
    if todo:
        for res in _execute(todo, client, scheduler, workers):
            (result.done if res.state == "done" else result.failed).append(res)
            n = len(result.done) + len(result.failed)
            tail = f": {res.error}" if res.error else ""
            say("[%d/%d] %s %s (%.0f s)%s", n, len(todo), res.state, res.name, res.seconds, tail)
    result.collected = write_collected(runs, root, spec.name)
    result.report = write_report(spec, runs, root, result)
    if result.collected:
        say("collected: %s", result.collected)
    say("report: %s", result.report)
    return result


def _execute(todo: list[RunSpec], client, scheduler: str | None, workers: int):
    """Submit each run to Dask and yield its :class:`RunResult` as it finishes."""
    # dask is slow to import: only when a sweep runs
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
        # runs start in the sweep's order: no more in flight than the cluster has threads, the next one submitted
        # when one ends (Dask would otherwise assign every run to a worker up front, in an order of its own)
        waiting = list(reversed(todo))
        futures, done = {}, as_completed()

        def submit_while_free():
            while waiting and len(futures) < max(1, sum(client.nthreads().values())):
                run = waiting.pop()
                fut = client.submit(run_one, run, pure=False, key=f"xattn-run-{run.name}-{uuid.uuid4().hex[:8]}")
                futures[fut] = run
                done.add(fut)

        submit_while_free()
        for fut in done:
            run = futures.pop(fut)
            submit_while_free()
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
    record = {"name": spec.name, "source": spec.source, "expanded": utc_now(),
              "notebooks": [{e.notebook: e.params} for e in spec.notebooks],  # a point may run a subset (see runs)
              "common": spec.common, "grid": spec.grid, **({"points": spec.points} if spec.points else {}),
              "runs": {r.name: r.key for r in runs}}
    return yaml.safe_dump(to_jsonable(record), sort_keys=False)


# ----------------------------------------------------------------------------------------------------------------
# command line: `xattn sweep` (xattn_utils.cli) and the old `python -m xattn_utils.runs.sweep` share these


def command(args: argparse.Namespace) -> int:
    """``xattn sweep``: run the sweep; print the ``runs: ...`` line; 2 for a bad sweep file, 1 when a run failed."""
    try:
        result = run_sweep(args.file, out=args.out, scheduler=args.scheduler, workers=args.workers,
                           yes=getattr(args, "yes", False))
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.summary(), flush=True)
    return 1 if result.failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m xattn_utils.runs.sweep``: the same options and output as ``xattn sweep`` (kept for old scripts)."""
    return module_main("sweep", command, argv)


if __name__ == "__main__":
    sys.exit(main())
