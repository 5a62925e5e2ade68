"""The one command line: version, the sweep/study/corpus subcommands and their old module entry points, log levels."""
from __future__ import annotations

import argparse
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


# ------------------------------------------------------------------------------------ first contact (issue 23)

HEAVY = ("torch", "transformers", "captum", "matplotlib", "jiwer", "sacrebleu", "pandas", "numpy", "dask", "papermill")


def _imported_after(code: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``code`` in a fresh interpreter; the top-level packages it imported that are not the standard library."""
    probe = ("import sys; before = set(sys.modules)\n" + code + "\n"
             "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
             "print(' '.join(sorted(m for m in new if m not in sys.stdlib_module_names and not m.startswith('_'))))")
    proc = xattn("-c", probe)
    return proc, set(proc.stdout.split("\n")[-2].split()) if proc.stdout.strip() else set()


def test_import_xattn_utils_loads_only_itself():
    proc, new = _imported_after("import xattn_utils")
    assert proc.returncode == 0, proc.stderr
    assert new == {"xattn_utils"}, new  # no torch, captum, matplotlib, jiwer, sacrebleu, transformers, pandas


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["sweep", "--help"], ["study", "--help"],
                                  ["corpus", "--help"], ["evaluate", "--help"]])
def test_version_and_help_load_no_torch(argv):
    code = ("from xattn_utils.cli import main\ntry:\n    main(%r)\nexcept SystemExit as done:\n"
            "    assert done.code == 0, done.code" % (argv,))
    proc, new = _imported_after(code)
    assert proc.returncode == 0, proc.stderr
    assert not new & set(HEAVY), new & set(HEAVY)
    assert proc.stdout.startswith("xattn " if argv == ["--version"] else "usage: xattn")
    if argv[0] in ("sweep", "study"):  # a heavy subcommand's own options, from xattn_utils._entry
        assert "--workers" in proc.stdout, proc.stdout


def test_top_level_api_exports_configs_and_one_call_functions():
    import xattn_utils

    readme_calls = ("train_grid", "extract_cross_attention", "compute_saliency", "compare_store", "faithfulness_store",
                    "timestamp_study", "compute_mixing", "GridConfig", "CompareConfig")
    configs = ("SPESConfig", "SMHConfig", "SaliencyConfig", "MixingConfig", "DecodeConfig", "ExtractConfig",
               "FaithfulnessConfig", "GradientConfig")
    for name in readme_calls + configs:
        assert name in xattn_utils.__all__ and name in dir(xattn_utils), name
    from xattn_utils.attribution.spes import SMHConfig, SPESConfig
    from xattn_utils.runs.grid import train_grid

    assert xattn_utils.SPESConfig is SPESConfig and xattn_utils.SMHConfig is SMHConfig
    assert xattn_utils.train_grid is train_grid
    assert all(getattr(xattn_utils, n) is not None for n in xattn_utils.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        xattn_utils.nope  # noqa: B018


def _all_parsers():
    """Every (name, parser) of the command line, the subcommands whose options live in their modules loaded."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [("xattn", parser)] + [(name, p.load()) for name, p in sub.choices.items()]


def test_every_option_has_help_and_shows_its_default():
    for name, parser in _all_parsers():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"xattn {name} {'/'.join(action.option_strings) or action.dest}: no help"
            text = parser.format_help()
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                    and not isinstance(action.default, (list, tuple)):
                assert "default" in (action.help or "").lower() or f"(default: {action.default})" in " ".join(
                    text.split()), f"xattn {name} {action.option_strings[0]}: default {action.default} not shown"


def _notebook_defaults(path: Path) -> dict:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values: dict = {}
    exec(cell.source, {}, values)  # the parameters cell: plain assignments
    return values


def test_saliency_defaults_are_the_notebooks_and_the_studys():
    args = build_parser().parse_args(["saliency", "a.wav", "--out", "s"])
    nb02 = _notebook_defaults(REPO / "notebooks" / "02_saliency_maps.ipynb")
    assert (args.n_masks, args.n_masks_h) == (nb02["n_masks"], nb02["n_masks_h"])
    study = yaml.safe_load((REPO / "sweeps" / "default.yaml").read_text())
    steps = {k: v for entry in study["notebooks"] for k, v in entry.items()}
    assert args.input_mode == steps["01_extract_cross_attention.ipynb"]["input_mode"] == "trimmed"
    assert (args.n_masks, args.n_masks_h) == (steps["02_saliency_maps.ipynb"]["n_masks"],
                                              steps["02_saliency_maps.ipynb"]["n_masks_h"])
    args = build_parser().parse_args(["saliency", "a.wav", "--out", "s", "--n-masks", "64", "--n-masks-h", "32"])
    assert (args.n_masks, args.n_masks_h) == (64, 32)


@pytest.mark.parametrize("argv, message", [
    (["transcribe", "--model", "tiny.en", "a.wav"], "did you mean bundled:whisper-tiny.en?"),
    (["transcribe", "--model", "bundled:whisper-tiny", "a.wav"], "did you mean bundled:whisper-tiny.en"),
    (["transcribe", "--language", "it", "a.wav"], "--language it: model bundled:whisper-tiny.en speaks only en"),
    (["extract", "--task", "translate", "a.wav", "--out", "s"], "only does transcribe"),
    (["extract", "--manifest", "missing.csv", "--out", "s"], "--manifest missing.csv does not exist"),
])
def test_bad_arguments_fail_before_any_model_loads(argv, message, tmp_path, capsys, restore_logging, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XATTN_HOME", str(tmp_path / "home"))  # no converted model there: nothing could load
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "home" / "models" / "whisper-tiny.en").exists()  # the model was never converted


def test_heads_out_of_range_fail_from_the_config_alone(tmp_path, capsys, restore_logging):
    """--heads is checked against the model's config.json: a folder holding only that (no weights) is enough."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"decoder_layers": 4, "decoder_attention_heads": 6}')
    assert main(["timestamps", "a.wav", "--model", str(folder), "--heads", "L9H9"]) == 2
    err = capsys.readouterr().err
    assert "L9H9" in err and "4 decoder layers x 6 heads" in err, err


def test_log_level_warning_turns_progress_and_third_party_chatter_off(restore_logging):
    from xattn_utils.cli import _progress, quiet_third_parties

    configure_logging("WARNING")
    assert not _progress(argparse.Namespace(quiet=False))
    configure_logging("INFO")
    assert _progress(argparse.Namespace(quiet=False)) and not _progress(argparse.Namespace(quiet=True))
    env: dict = {}
    quiet_third_parties("INFO", "transcribe", env)
    assert env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and env["DASK_LOGGING__DISTRIBUTED"] == "error"
    assert "TQDM_DISABLE" not in env  # our own bars stay at INFO
    env = {}
    quiet_third_parties("INFO", "study", env)
    assert env["TQDM_DISABLE"] == "1"  # notebooks run by a sweep: no bars (no \r in log.txt)
    env = {"HF_HUB_DISABLE_PROGRESS_BARS": "0"}
    quiet_third_parties("DEBUG", "study", env)
    assert env == {"HF_HUB_DISABLE_PROGRESS_BARS": "0"}  # DEBUG shows everything; a user's setting is kept


@pytest.mark.slow  # two fresh processes load tiny.en
def test_transformers_loading_bar_only_at_debug(speech_dir, tmp_path):
    wav = str(speech_dir / "utt0.wav")
    quiet = xattn("-m", "xattn_utils", "transcribe", wav, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "quick brown fox" in quiet.stdout.lower()
    assert "Loading weights" not in quiet.stderr and "\r" not in quiet.stderr, quiet.stderr
    loud = xattn("-m", "xattn_utils", "--log-level", "DEBUG", "transcribe", wav, cwd=tmp_path)
    assert loud.returncode == 0 and "Loading weights" in loud.stderr  # the bar exists: it is the flag that hides it


def test_long_saliency_runs_announce_their_estimated_time(tmp_path, capsys, restore_logging):
    from xattn_utils.attribution.cost import SPES_MASKS_PER_SECOND as rate
    from xattn_utils.attribution.cost import spes_seconds

    assert spes_seconds(10, 256, 256, ["spes-x", "spes-h"], "trimmed") == pytest.approx(
        10 * 256 / rate["trimmed", "x"] + 10 * 256 / rate["trimmed", "h"])
    assert spes_seconds(10, 256, 256, ["spes-x", "ixg"], "padded") == pytest.approx(10 * 256 / rate["padded", "x"])
    base = spes_seconds(10, 256, 0, ["spes-x"], model="bundled:whisper-base")
    assert base == pytest.approx(2.5 * spes_seconds(10, 256, 0, ["spes-x"])) and base > 60
    assert spes_seconds(10, 256, 256, processes=2) == pytest.approx(spes_seconds(10, 256, 256) / 2)
    folder = tmp_path / "model"  # a config and no weights: the estimate comes before the model loads, then it fails
    folder.mkdir()
    (folder / "config.json").write_text('{"decoder_layers": 4, "decoder_attention_heads": 6}')
    files = [str(tmp_path / f"u{i}.wav") for i in range(10)]
    assert main(["saliency", *files, "--model", str(folder), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "estimated time: about 3 min for 10 utterance(s) x 256 + 256 masks" in err, err
    assert main(["saliency", *files[:1], "--model", str(folder), "--out", str(tmp_path / "s")]) == 2
    assert "estimated time" not in capsys.readouterr().err  # 20 s: no line


def test_compare_on_one_utterance_says_interval_na_and_warns_on_low_reliability(tmp_path, capsys, restore_logging):
    import numpy as np
    from test_compare import _utterance

    from xattn_utils.store import ResultStore

    store = ResultStore(tmp_path / "store")
    # one utterance, SMX unrelated to CA, noisy halves: split-half reliability 0.47
    _utterance(store, "u0", np.random.default_rng(5), n_tok=8, smx_from_ca=False, halves_noise=0.04)
    assert main(["compare", "--store", str(store.path), "--out", str(tmp_path / "t"), "--n-boot", "50",
                 "--no-per-head", "--quiet"]) == 0
    out, err = capsys.readouterr()
    table = out.split("\n")[1:-2]
    assert table and all("interval n/a" in row for row in table), out
    assert "[" not in "".join(table)  # no one-utterance interval such as [0.18, 0.18]
    assert "(!)" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "Pearson(CA, SMX): its reliability 0.47 is below 0.5" in warnings[0], err


@pytest.mark.parametrize("argv", [["transcribe", "--model", "tiny.en", "a.wav"],
                                  ["saliency", "a.wav", "--out", "s", "--n-masks-h", "0"],
                                  ["extract", "--manifest", "missing.csv", "--out", "s"]])
def test_a_mistake_answers_without_importing_torch(argv):
    code = "from xattn_utils.cli import main\nassert main(%r) == 2" % (argv,)
    proc, new = _imported_after(code)
    assert proc.returncode == 0 and proc.stderr.startswith("error: "), proc.stderr
    assert "torch" not in new and "transformers" not in new, new


def test_main_in_process_leaves_the_environment_as_it_was(monkeypatch, capsys):
    """The CLI quiets third parties through environment variables (for the notebook kernels it starts); called
    in-process it must not leave them behind, or a later command at DEBUG would show no progress bar."""
    from xattn_utils.cli import QUIET_ENV, main

    for key in (*QUIET_ENV, "TQDM_DISABLE"):
        monkeypatch.delenv(key, raising=False)
    assert main(["--log-level", "WARNING", "transcribe", "--model", "tiny.en", "a.wav"]) == 2  # fails fast, named
    assert "did you mean bundled:whisper-tiny.en?" in capsys.readouterr().err
    assert not any(key in os.environ for key in (*QUIET_ENV, "TQDM_DISABLE"))
