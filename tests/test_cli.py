"""The one command line: version, the sweep/study/corpus subcommands and their old module entry points, log levels."""
from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xattn_utils.cli import build_parser, configure_logging, main

REPO = Path(__file__).resolve().parent.parent


def xattn(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m xattn_utils ARGS`` in a fresh process that imports this checkout (PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], cwd=cwd or REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def restore_logging():
    """configure_logging changes the root logger and xattn_utils' level: put both back after the test."""
    root, pkg = logging.getLogger(), logging.getLogger("xattn_utils")
    handlers, levels = list(root.handlers), (root.level, pkg.level)
    yield
    root.handlers[:] = handlers
    root.setLevel(levels[0])
    pkg.setLevel(levels[1])


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"xattn {importlib.metadata.version('xattn_utils')}"


@pytest.mark.parametrize("command, options", [
    ("sweep", ["file", "--out", "--scheduler", "--workers"]),
    ("study", ["--out", "--train", "--workers"]),
    ("corpus", ["--default", "--write-manifest", "--config"]),
    ("evaluate", ["--model", "--manifest", "--setting", "--split", "--limit", "--out"]),
])
def test_subcommand_help_lists_its_options(command, options, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: xattn {command} ")
    assert all(opt in text for opt in [*options, "--log-level"])
    assert "--no-train" not in text  # kept for old scripts, not shown


def test_subcommands_parse_as_before():
    parse = build_parser().parse_args
    args = parse(["sweep", "sweeps/smoke.yaml", "--workers", "3"])
    assert (args.file, args.workers, args.out, args.scheduler) == ("sweeps/smoke.yaml", 3, None, None)
    args = parse(["study", "--out", "runs/s", "--workers", "4", "--train"])
    assert (args.out, args.workers, args.train) == ("runs/s", 4, True)
    assert parse(["study"]).out == "runs/study" and parse(["study"]).workers == 2 and not parse(["study"]).train
    assert parse(["study", "--no-train"]).train is False
    args = parse(["corpus", "--default"])
    assert args.default and not args.write_manifest and args.config is None
    args = parse(["timestamps", "a.wav", "--heads", "all"])  # the existing commands are all still there
    assert args.files == ["a.wav"] and args.heads == "all"
    for name in ("transcribe", "extract", "saliency", "mixing", "compare", "faithfulness"):
        assert name in build_parser().format_help()


def test_log_level_before_or_after_the_command():
    parse = build_parser().parse_args
    assert parse(["corpus"]).log_level == "INFO"
    assert parse(["--log-level", "warning", "corpus"]).log_level == "WARNING"
    assert parse(["corpus", "--log-level", "ERROR"]).log_level == "ERROR"
    assert parse(["--log-level", "DEBUG", "corpus"]).log_level == "DEBUG"  # not reset by the subcommand's default
    with pytest.raises(SystemExit):
        parse(["--log-level", "LOUD", "corpus"])


def test_log_level_filters_xattn_records(restore_logging, capsys):
    log = logging.getLogger("xattn_utils.runs.sweep")
    configure_logging("WARNING")
    log.info("progress line")
    log.warning("a warning")
    err = capsys.readouterr().err
    assert "progress line" not in err and "warning: a warning" in err
    configure_logging("INFO")
    log.info("progress line")
    assert capsys.readouterr().err.count("progress line") == 1  # one handler, however often it is configured
    assert sum(type(h).__name__ == "_StderrHandler" for h in logging.getLogger().handlers) == 1


def test_bad_sweep_file_is_one_line_and_exit_2(tmp_path, capsys, restore_logging):
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: sweep file {tmp_path / 'missing.yaml'} does not exist; see sweeps/*.yaml for examples"]
    assert main(["corpus"]) == 2
    assert "give --default" in capsys.readouterr().err


def _done_sweep(tmp_path: Path) -> Path:
    """A sweep file whose two runs are already done (status files written): the runner only reports."""
    from test_sweep import probe_spec, write_probe

    from xattn_utils.runs.sweep import expand, write_status

    probe_dir = write_probe(tmp_path / "nb").parent
    spec_file = tmp_path / "probe.yaml"
    spec_file.write_text(yaml.safe_dump({**probe_spec(probe_dir, {"a": [1, 2]}), "out": str(tmp_path / "out")}))
    for run in expand(yaml.safe_load(spec_file.read_text())):
        write_status(run, "done")
    return spec_file


@pytest.mark.slow  # three fresh processes, each importing torch
def test_sweep_progress_is_logged_and_quieted_by_warning(tmp_path):
    spec_file = _done_sweep(tmp_path)
    loud = xattn("-m", "xattn_utils", "sweep", str(spec_file), cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert loud.stdout.strip().splitlines() == ["runs: 0 done, 2 skipped, 0 failed"]  # results on stdout only
    assert "sweep probe: 2 runs, 2 already done" in loud.stderr and "report: " in loud.stderr
    quiet = xattn("-m", "xattn_utils", "--log-level", "WARNING", "sweep", str(spec_file), cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip().splitlines() == ["runs: 0 done, 2 skipped, 0 failed"]
    assert "sweep probe" not in quiet.stderr and "report: " not in quiet.stderr
    # the old module entry point: same parser, same result line, progress shown
    old = xattn("-m", "xattn_utils.runs.sweep", str(spec_file), cwd=tmp_path)
    assert old.returncode == 0, old.stderr
    assert old.stdout.strip().splitlines()[-1] == "runs: 0 done, 2 skipped, 0 failed"
    assert "sweep probe: 2 runs, 2 already done" in old.stderr


@pytest.mark.parametrize("module, command", [("xattn_utils.runs.study", "study"),
                                             ("xattn_utils.data.corpus", "corpus")])
def test_old_entry_points_take_the_same_options(module, command, capsys):
    old = xattn("-m", module, "--help")
    assert old.returncode == 0, old.stderr
    with pytest.raises(SystemExit):
        main([command, "--help"])
    new = capsys.readouterr().out
    options = {w.strip("[],") for w in new.split() if w.startswith(("--", "[--"))} - {"--log-level", "--help"}
    assert options and options == {w.strip("[],") for w in old.stdout.split()
                                   if w.startswith(("--", "[--"))} - {"--help"}, old.stdout


def test_top_level_api_is_what_the_readme_uses():
    import xattn_utils

    for name in ("load_model", "study_data", "extract_cross_attention", "compute_saliency", "compare_store",
                 "faithfulness_store", "open_store", "run_sweep", "load_manifest", "paper_comparison",
                 "SaliencyConfig"):
        assert name in xattn_utils.__all__ and callable(getattr(xattn_utils, name)), name
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Python\n\n```python\n", 1)[1].split("```", 1)[0]
    first = [line for line in block.splitlines() if line.startswith("from xattn_utils import")]
    assert first, "the README's Python example imports from xattn_utils"
    for line in first:
        names = line.split(" import ", 1)[1].replace("(", "").replace(")", "").split(",")
        assert all(hasattr(xattn_utils, n.strip()) for n in names if n.strip()), line
    assert xattn_utils.__version__ == importlib.metadata.version("xattn_utils")


def test_importing_the_package_does_not_start_papermill_or_dask():
    code = ("import sys, xattn_utils; "
            "print(sorted(m for m in ('papermill', 'dask', 'distributed', 'nbconvert') if m in sys.modules))")
    proc = xattn("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
