"""One run of a sweep, as a Dask worker executes it: its status file, its notebooks through papermill, HTML exports.

A run folder holds ``parameters.yaml`` (its parameters, key, notebook checksums, versions), ``status`` (first line:
``done`` | ``running`` | ``failed: <notebook>: <error's last line>``, then its key and time), ``log.txt`` (per-notebook
timings and the notebooks' printed output) and each executed notebook with its HTML export. Status and parameters are
written atomically (temp file + rename). A failing notebook stops its run only; :func:`run_one` never raises.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .._io import atomic_write_text
from ..provenance import git_commit, to_jsonable, versions
from .spec import RunSpec, check_parameter_types

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# the notebook kernel's own log (not the cells' output) from ERROR up: no "[IPKernelApp] WARNING | Kernel is running
# over TCP without encryption" per notebook on the sweep's terminal
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


@dataclass
class RunResult:
    """What happened to one run."""

    name: str
    state: str  # done | failed | skipped
    error: str = ""
    seconds: float = 0.0
    run_dir: str = ""
    grid: dict = field(default_factory=dict)


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
    lines = [first, f"key: {run.key}", f"updated: {utc_now()}"]
    if seconds is not None:
        lines.append(f"seconds: {seconds:.1f}")
    atomic_write_text(Path(run.run_dir) / "status", "\n".join(lines) + "\n")


def is_done(run: RunSpec) -> bool:
    """Whether the run's folder holds a finished run with the same key."""
    st = read_status(run.run_dir)
    return st["state"] == "done" and st["key"] == run.key


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (status files, logs, reports)."""
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
        "started": utc_now(), "versions": versions(), "git_commit": git_commit(),
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

    t0 = time.time()
    folder = Path(run.run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "parameters.yaml", yaml.safe_dump(parameters_record(run), sort_keys=False))
    write_status(run, "running")
    error = ""
    with open(folder / "log.txt", "a") as log:
        log.write(f"\n=== {utc_now()} run {run.name} (key {run.key}) on {os.uname().nodename} pid {os.getpid()}\n")
        for nb in run.notebooks:
            t1 = time.time()
            dest = folder / nb.name
            log.write(f"--- {utc_now()} {nb.name}\n")
            log.flush()
            try:
                check_parameter_types(nb.path, run.params_for(nb), nb.name)  # before papermill writes them in
                pm.execute_notebook(nb.path, str(dest), parameters=run.params_for(nb), cwd=str(folder),
                                    progress_bar=False, kernel_name="python3", stdout_file=log, stderr_file=log,
                                    extra_arguments=KERNEL_ARGUMENTS)
            except Exception as err:  # noqa: BLE001 - papermill raises PapermillExecutionError with the traceback
                error = f"{nb.name}: {error_line(err)}"
                log.write(f"--- {utc_now()} {nb.name} failed after {time.time() - t1:.1f} s: {error}\n")
                if not isinstance(err, pm.PapermillExecutionError):
                    log.write(traceback.format_exc())
            else:
                log.write(f"--- {utc_now()} {nb.name} done in {time.time() - t1:.1f} s\n")
            if dest.exists() and export_html(dest) is None:
                log.write(f"--- html export of {nb.name} skipped (nbconvert failed)\n")
            log.flush()
            if error:
                break
        seconds = time.time() - t0
        log.write(f"=== {utc_now()} {'failed' if error else 'done'} in {seconds:.1f} s\n")
    write_status(run, "failed" if error else "done", error, seconds)
    return RunResult(run.name, "failed" if error else "done", error, seconds, run.run_dir, run.grid)
