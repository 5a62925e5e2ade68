"""The sweep runner: grid expansion and stable run keys, Dask execution, resuming, failures, collected table, report."""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from xattn_utils.runs.sweep import (
    SweepError,
    expand,
    load_sweep,
    parse_sweep,
    read_status,
    run_sweep,
)

REPO = Path(__file__).resolve().parent.parent
PROBE = "sweep_probe.ipynb"

PROBE_PARAMS = '''a = 1             # grid parameters of the test sweeps
b = "x"
model = None      # a model to mark in the report (trained grid folders: on or past the loss plateau)
fail = False      # raise on purpose
manifest = None   # when given, read with the project's loader (a missing or bad manifest fails the run)
run_dir = "."
store = None'''

PROBE_BODY = '''from pathlib import Path
import pandas as pd

run_dir = Path(run_dir)
with open(run_dir.parent / "executions.log", "a") as fh:  # the sweep root counts executions
    fh.write(run_dir.name + "\\n")
if manifest:
    from xattn_utils.data.manifest import load_manifest
    load_manifest(manifest)
if fail:
    raise RuntimeError(f"probe asked to fail (a={a}, b={b})")
tables = run_dir / "tables"
tables.mkdir(parents=True, exist_ok=True)
v = float(a) / 10
rows = [dict(model="probe", level="dataset", attention=att, reference=ref, measure="pearson",
             value=v + d, ci_low=v + d - 0.05, ci_high=v + d + 0.05, n=len(str(b)))
        for att, d in (("all", 0.1), ("last_layer", 0.0)) for ref in ("smx", "smh")]
pd.DataFrame(rows).to_parquet(tables / "agreement.parquet", index=False)
print(f"probe a={a} b={b}: {len(rows)} rows")'''


def write_probe(folder: Path) -> Path:
    """A fast notebook with a 'parameters' cell: counts its executions, fails on request, writes a small table."""
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(PROBE_PARAMS, metadata={"tags": ["parameters"]}),
               nbformat.v4.new_code_cell(PROBE_BODY)],
        metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                  "language_info": {"name": "python"}})
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / PROBE)
    return folder / PROBE


def probe_spec(notebook_dir: Path, grid: dict, name: str = "probe", **fixed) -> dict:
    return {"name": name, "notebook_dir": str(notebook_dir), "notebooks": [{PROBE: fixed}], "grid": grid}


def executions(root: Path) -> list[str]:
    f = root / "executions.log"
    return f.read_text().split() if f.exists() else []


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    write_probe(folder)
    return folder


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


# ---------------------------------------------------------------------------------------------------------- fast


def test_expand_grid_gives_distinct_stable_keys(probe_dir, tmp_path):
    spec = probe_spec(probe_dir, {"a": [1, 2], "b": ["x", "y"]})
    runs = expand(spec, out=tmp_path)
    assert len(runs) == 4
    assert len({r.name for r in runs}) == 4 and len({r.key for r in runs}) == 4
    assert [r.slug for r in runs] == ["a=1_b=x", "a=1_b=y", "a=2_b=x", "a=2_b=y"]
    assert all(r.name == f"{r.slug}-{r.key[:8]}" and Path(r.run_dir).parent == tmp_path for r in runs)
    assert [r.key for r in expand(spec, out=tmp_path)] == [r.key for r in runs]  # same spec, same keys

    changed_grid = expand(probe_spec(probe_dir, {"a": [1, 3], "b": ["x", "y"]}), out=tmp_path)
    assert [r.key for r in changed_grid][:2] == [r.key for r in runs][:2]  # untouched points keep their key
    assert not {r.key for r in changed_grid[2:]} & {r.key for r in runs}
    changed_fixed = expand(probe_spec(probe_dir, {"a": [1, 2], "b": ["x", "y"]}, fail=False), out=tmp_path)
    assert not {r.key for r in changed_fixed} & {r.key for r in runs}

    edited = tmp_path / "edited"  # same parameters, another notebook source: another key
    path = write_probe(edited)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("an edit"))
    nbformat.write(nb, path)
    assert not {r.key for r in expand(probe_spec(edited, {"a": [1, 2], "b": ["x", "y"]}), out=tmp_path)} & \
        {r.key for r in runs}

    params = runs[0].params_for(runs[0].notebooks[0])
    assert params["a"] == 1 and params["run_dir"] == runs[0].run_dir
    assert params["store"] == str(Path(runs[0].run_dir) / "store")


def test_shipped_sweeps_expand():
    for name in ("smoke", "default", "paper"):
        spec = load_sweep(REPO / "sweeps" / f"{name}.yaml")
        runs = expand(spec)
        assert spec.name == name and len(runs) == (7 if name == "default" else 1)
        assert [nb.name[:2] for nb in runs[0].notebooks][:4] == ["01", "02", "03", "04"]
        assert ("06" in [nb.name[:2] for nb in runs[0].notebooks]) == (name == "default")  # context mixing
        assert runs[0].grid["model"] == "bundled:whisper-tiny.en"


def test_default_study_runs_the_real_models_on_the_papers_axes():
    runs = expand(load_sweep(REPO / "sweeps" / "default.yaml"))
    setting = [(r.grid["model"].split("-")[-1], r.grid["language"], r.grid["task"], "manifest" in r.grid,
                [nb.name[:2] for nb in r.notebooks]) for r in runs]
    assert setting == [
        ("tiny.en", "en", "transcribe", False, ["01", "02", "03", "04", "05", "06"]),  # the headline
        ("base", "en", "transcribe", False, ["01", "02", "03"]),  # scale: tiny.en's first utterances
        ("base", "it", "transcribe", True, ["01", "02", "03", "05"]),  # language; task (same audio)
        ("base", "it", "translate", True, ["01", "02", "03"]),
        ("tiny.en", "en", "transcribe", True, ["01", "02", "03"]),  # hard speech: right vs wrong tokens
        ("base", "en", "transcribe", True, ["05"]),  # timestamps with the unseen-voice split
        ("tiny.en", "en", "transcribe", True, ["05"])]
    base = runs[1]
    p02 = base.params_for(base.notebooks[1])  # the point's notebook parameters replace the fixed ones
    assert p02["n_utterances"] == 5 and p02["methods"] == ["spes-x", "spes-h"] and p02["n_masks"] == 256
    assert runs[0].params_for(runs[0].notebooks[1])["n_utterances"] == 12
    assert "notebooks" not in base.grid and "notebooks" not in load_sweep(REPO / "sweeps" / "default.yaml").keys


def test_point_notebook_subsets(probe_dir, tmp_path):
    spec = {**probe_spec(probe_dir, {}), "points": [{"a": 1}, {"a": 2, "notebooks": {PROBE: {"b": "y"}}}]}
    full, sub = expand(spec, out=tmp_path)
    assert "b" not in full.params_for(full.notebooks[0]) and sub.params_for(sub.notebooks[0])["b"] == "y"
    assert full.grid == {"a": 1} and sub.grid == {"a": 2} and full.key != sub.key
    for bad in (["other.ipynb"], [], {PROBE: {"nope": 1}}):
        with pytest.raises(SweepError, match="notebooks|nope"):
            expand({**probe_spec(probe_dir, {}), "points": [{"a": 1, "notebooks": bad}]}, out=tmp_path)
    paper = expand(load_sweep(REPO / "sweeps" / "paper.yaml"))[0]
    p01, p02 = (paper.params_for(nb) for nb in paper.notebooks[:2])
    assert p01["input_mode"] == "padded" and "input_mode" not in p02  # 02 reads the store's (01's) input mode
    assert p02["n_masks"] == 20000 and p02["n_utterances"] is None


def test_bad_sweep_files_say_what_to_fix(probe_dir, tmp_path):
    with pytest.raises(SweepError, match="set by the runner"):
        parse_sweep(probe_spec(probe_dir, {"run_dir": ["x"]}))
    with pytest.raises(SweepError, match="unknown sweep key"):
        parse_sweep({**probe_spec(probe_dir, {}), "grids": {}})
    with pytest.raises(SweepError, match="non-empty list"):
        parse_sweep({"name": "x", "notebooks": []})
    with pytest.raises(SweepError, match="no values"):
        parse_sweep(probe_spec(probe_dir, {"a": []}))
    with pytest.raises(SweepError, match="not found"):
        expand({"notebooks": ["nope.ipynb"], "notebook_dir": str(probe_dir)}, out=tmp_path)
    with pytest.raises(SweepError, match="does not exist"):
        load_sweep(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------------------------------------- Dask


@pytest.mark.slow
def test_sweep_runs_resumes_and_collects(probe_dir, client, tmp_path, caplog):
    spec_file = tmp_path / "probe.yaml"
    spec_file.write_text(yaml.safe_dump({**probe_spec(probe_dir, {"a": [1, 2], "b": ["x", "yy"]}), "out": "out"}))
    # first invocation through the command line (its own LocalCluster of 2 worker processes)
    proc = subprocess.run([sys.executable, "-m", "xattn_utils.runs.sweep", str(spec_file), "--workers", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "runs: 4 done, 0 skipped, 0 failed"
    # before any work, one line with the estimated time (no finished run here yet: the default study's mean run)
    assert "estimated time for the 4 run(s) to do: 33 min with 2 worker(s) (16 min per run: the default study's " \
        "mean run on 2 CPU cores)" in proc.stderr
    root = tmp_path / "out"
    runs = expand(load_sweep(spec_file), out=root)
    assert sorted(executions(root)) == sorted(r.name for r in runs)
    for r in runs:
        folder = Path(r.run_dir)
        assert read_status(folder)["state"] == "done"
        assert {"parameters.yaml", "status", "log.txt", PROBE, "sweep_probe.html"} <= {p.name for p in folder.iterdir()}
        assert yaml.safe_load((folder / "parameters.yaml").read_text())["key"] == r.key
        assert "probe a=" in (folder / "log.txt").read_text()

    # again: everything is done already
    res = run_sweep(spec_file, out=root, client=client, verbose=False)
    assert res.summary() == "runs: 0 done, 4 skipped, 0 failed" and len(executions(root)) == 4

    # a killed sweep: one run left 'running', one without a status -> exactly those two run again
    (Path(runs[0].run_dir) / "status").write_text("running\n")
    (Path(runs[3].run_dir) / "status").unlink()
    with caplog.at_level(logging.DEBUG, logger="xattn_utils.runs.sweep"):
        res = run_sweep(spec_file, out=root, client=client, verbose=False)
    assert res.summary() == "runs: 2 done, 2 skipped, 0 failed"
    assert "per run: the mean of 2 finished run(s) here)" in caplog.text  # learned from the runs it has seen
    assert sorted(executions(root)[4:]) == sorted([runs[0].name, runs[3].name])

    table = pd.read_parquet(root / "collected.parquet")
    assert len(table) == 4 * 4 and (root / "collected.csv").exists()
    assert {"run", "a", "b", "model", "attention", "reference", "value"} <= set(table.columns)
    assert not table.duplicated(["run", "attention", "reference"]).any()
    assert set(table.run) == {r.name for r in runs}
    for r in runs:
        sub = table[table.run == r.name]
        assert (sub.a == r.grid["a"]).all() and (sub.b == r.grid["b"]).all()
        assert sub.set_index("attention").value.max() == pytest.approx(r.grid["a"] / 10 + 0.1)
    report = (root / "report.md").read_text()
    assert "0.58" in report and "0.52" in report
    assert all(r.name in report for r in runs) and f"]({runs[0].name}/sweep_probe.html)" in report


@pytest.mark.slow
def test_bad_input_fails_alone(probe_dir, client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative manifests resolve against where the sweep starts
    (tmp_path / "bad.csv").write_text("name,path\nu1,a.wav\n")
    spec = probe_spec(probe_dir, {"manifest": [None, "missing.csv", "bad.csv"], "a": [1]})
    res = run_sweep(spec, out=tmp_path / "out", client=client, verbose=False)
    assert res.summary() == "runs: 1 done, 0 skipped, 2 failed"
    failed = {Path(r.run_dir).name: read_status(r.run_dir) for r in res.failed}
    assert all(st["state"] == "failed" for st in failed.values())
    errors = sorted(st["error"] for st in failed.values())
    assert errors[0] == f"{PROBE}: InputError: manifest {tmp_path / 'bad.csv'} lacks column(s) ['id', 'audio_path']; " \
        "expected id, audio_path, sample_rate, duration_s, language, tasks, transcript, translation, " \
        "word_times_path, sha256, source, licence, split, voice"
    assert errors[1] == f"{PROBE}: InputError: manifest {tmp_path / 'missing.csv'} does not exist"
    for r in res.failed:  # the executed copy keeps the traceback
        executed = nbformat.read(Path(r.run_dir) / PROBE, as_version=4)
        tracebacks = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert tracebacks and tracebacks[0].ename == "InputError"
        assert not (Path(r.run_dir) / "tables").exists()
    table = pd.read_parquet(tmp_path / "out" / "collected.parquet")
    assert set(table.run) == {res.done[0].name} and table.manifest.isna().all()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "does not exist" in report and "failed" in report

    # failed runs run again next time; the done one is skipped
    res = run_sweep(spec, out=tmp_path / "out", client=client, verbose=False)
    assert res.summary() == "runs: 0 done, 1 skipped, 2 failed"


@pytest.mark.slow
def test_smoke_sweep_on_the_study_notebooks(client, tmp_path):
    """sweeps/smoke.yaml restricted to notebooks 01-03 and made smaller still (keeps the test near a minute)."""
    spec = load_sweep(REPO / "sweeps" / "smoke.yaml")
    tinier = {"01": {"n_utterances": 1}, "03": {"n_boot": 20},
              "02": {"n_utterances": 1, "methods": ["spes-x"], "n_masks": 16}}
    spec = dataclasses.replace(spec, notebooks=[dataclasses.replace(e, params={**e.params, **tinier[e.notebook[:2]]})
                                                for e in spec.notebooks if e.notebook[:2] in tinier])
    res = run_sweep(spec, out=tmp_path, client=client, verbose=False)
    assert res.summary() == "runs: 1 done, 0 skipped, 0 failed", [r.error for r in res.failed]
    run = Path(res.done[0].run_dir)
    assert {"01_extract_cross_attention.html", "03_alignment_analysis.html"} <= {p.name for p in run.glob("*.html")}
    table = pd.read_parquet(tmp_path / "collected.parquet")
    pearson = table[(table.measure == "pearson") & (table.reference == "smx") & (table.level == "dataset")]
    assert len(pearson) and (table.model == "bundled:whisper-tiny.en").all() and "model_table" in table.columns
    report = (tmp_path / "report.md").read_text()
    assert "0.58" in report and "Pearson(CA, SMX)" in report
    assert f"]({run.name}/figures/03_layer_head_grid.png)" in report


def test_study_sweeps_the_bundled_model_and_every_trained_one(tmp_path, monkeypatch):
    from xattn_utils.runs.study import study_sweep, trained_models

    monkeypatch.setenv("XATTN_HOME", str(tmp_path))
    assert trained_models() == []
    folder = tmp_path / "models" / "grid" / "xattn-en-asr-s"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert trained_models() == ["xattn-en-asr-s"]
    assert "grid" not in study_sweep([])  # the bundled models are the sweep's points
    spec = study_sweep(trained_models())
    assert spec["grid"]["model"] == ["xattn-en-asr-s"]
    runs = expand(spec, tmp_path / "out")
    assert len(runs) == 8 and len({r.key for r in runs}) == 8
    assert runs[0].grid == {"model": "xattn-en-asr-s"}  # every notebook, default settings
    assert [nb.name for nb in runs[0].notebooks][:2] == ["01_extract_cross_attention.ipynb", "02_saliency_maps.ipynb"]


def test_points_add_runs_after_the_grid(probe_dir, tmp_path):
    grid_only = expand(probe_spec(probe_dir, {"a": [1, 2]}), out=tmp_path)
    spec = {**probe_spec(probe_dir, {"a": [1, 2]}), "points": [{"a": 3, "b": "it"}, {"a": 1}, {"b": "z"}]}
    runs = expand(spec, out=tmp_path)
    assert [r.grid for r in runs] == [{"a": 1}, {"a": 2}, {"a": 3, "b": "it"}, {"b": "z"}]  # {"a": 1} is a duplicate
    assert [r.key for r in runs[:2]] == [r.key for r in grid_only]  # adding points keeps the grid's run keys
    assert parse_sweep(spec).keys == ["a", "b"]
    only_points = expand({**probe_spec(probe_dir, {}), "points": [{"a": 5}]}, out=tmp_path)
    assert [r.grid for r in only_points] == [{"a": 5}]
    with pytest.raises(SweepError, match="non-empty mappings"):
        parse_sweep({**probe_spec(probe_dir, {}), "points": [{}]})
    with pytest.raises(SweepError, match="set by the runner"):
        parse_sweep({**probe_spec(probe_dir, {}), "points": [{"store": "x"}]})


def test_real_models_sweep_expands():
    runs = expand(load_sweep(REPO / "sweeps" / "real_models.yaml"))
    assert [r.grid for r in runs] == [
        {"model": "bundled:whisper-tiny.en", "language": "en", "task": "transcribe"},
        {"model": "bundled:whisper-base", "language": "en", "task": "transcribe"},
        {"model": "bundled:whisper-base", "language": "it", "task": "transcribe"},
        {"model": "bundled:whisper-base", "language": "it", "task": "translate"}]
    p01 = runs[0].params_for(runs[0].notebooks[0])
    assert Path(p01["manifest"]).is_absolute() and p01["manifest"].endswith("data/enit/manifest.csv")


def _grid_model(folder: Path, final_loss: float, wer: float) -> str:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    losses = [[s, 2.0] for s in range(0, 400, 100)] + [[400 + s, final_loss] for s in range(0, 500, 100)]
    (folder / "training.json").write_text(json.dumps({"losses": losses, "scores": [
        {"language": "en", "task": "transcribe", "split": "test", "wer": wer},
        {"language": "en", "task": "transcribe", "split": "test_unseen_voice", "wer": wer + 20}]}))
    return str(folder)


@pytest.mark.slow
def test_report_marks_trained_models_on_the_loss_plateau(probe_dir, client, tmp_path):
    past = _grid_model(tmp_path / "m" / "past", 0.05, 6.8)
    stuck = _grid_model(tmp_path / "m" / "stuck", 0.6, 77.4)
    result = run_sweep(probe_spec(probe_dir, {"model": [stuck, past, "bundled:whisper-tiny.en"]}), out=tmp_path / "o",
                       client=client)
    report = result.report.read_text()
    runs_table, rest = report.split("## Headline per run", 1)
    assert "| trained model |" in runs_table
    assert runs_table.count("ON THE LOSS PLATEAU (final loss 0.60, test WER 77 %)") == 1
    assert runs_table.count("past the loss plateau (final loss 0.05, test WER 7 %)") == 1
    figures = rest.split("## Figures and executed notebooks", 1)[1]
    stuck_line, past_line, tiny_line = [ln for ln in figures.splitlines() if ln.startswith("**model=")]  # run order
    assert "ON THE LOSS PLATEAU" in stuck_line and "past the loss plateau" in past_line
    assert "plateau" not in tiny_line  # models not trained here carry no mark


@pytest.mark.slow
def test_runs_start_in_the_sweeps_order(probe_dir, client, tmp_path):
    spec = probe_spec(probe_dir, {"a": [1, 2, 3, 4, 5]})
    runs = expand(spec, out=tmp_path / "o")
    result = run_sweep(spec, out=tmp_path / "o", client=client)
    assert len(result.done) == 5
    started = executions(tmp_path / "o")  # each run appends its name when it starts
    names = [r.name for r in runs]
    # two slots: the first two start together, each later run when one ends (kernels start with some jitter, so
    # neighbours submitted on the heels of each other may log in either order; the last one is never early)
    assert set(started[:2]) == set(names[:2]) and set(started[2:4]) == set(names[2:4]) and started[4] == names[4]


def test_the_estimate_counts_the_masks_a_run_asks_for(tmp_path):
    """The paper-settings sweep: 20 000-mask points cost hours, and its estimate says so before any work (the
    default study's mean run alone would call every point 16 min)."""
    from xattn_utils.attribution.cost import spes_seconds
    from xattn_utils.paths import resource
    from xattn_utils.runs.sweep import DEFAULT_RUN_SECONDS, estimated_seconds, expand, extra_spes_seconds, load_sweep

    runs = {r.name: r for r in expand(load_sweep(resource("sweeps/paper_settings.yaml")), tmp_path)}
    by_masks = {}
    for run in runs.values():
        nb2 = next(nb for nb in run.notebooks if nb.name.startswith("02_"))
        p = run.params_for(nb2)
        by_masks.setdefault((p["model"], p["n_masks"], tuple(p.get("segments") or ())), run)
    default = by_masks["bundled:whisper-tiny.en", 256, ()]
    paper = by_masks["bundled:whisper-tiny.en", 20000, (2000, 2500, 3000)]
    assert extra_spes_seconds(default) == 0
    assert extra_spes_seconds(paper) == pytest.approx(
        spes_seconds(12, 20000, 20000) - spes_seconds(12, 256, 256))
    assert extra_spes_seconds(paper) > 3 * 3600  # hours on one core, not the 16 min of a default run
    base = by_masks["bundled:whisper-base", 20000, (2000, 2500, 3000)]  # six utterances named by id
    how = {"model": "bundled:whisper-base"}
    assert extra_spes_seconds(base) == pytest.approx(spes_seconds(6, 20000, 20000, **how)
                                                     - spes_seconds(6, 256, 256, **how))
    fewer = dataclasses.replace(base, grid={**base.grid, "utterances": base.grid["utterances"][:2]})
    assert extra_spes_seconds(fewer) == pytest.approx(extra_spes_seconds(base) / 3)  # 2 ids (n_utterances 6)
    seconds, how = estimated_seconds(tmp_path, list(runs.values()), workers=2)
    assert seconds == pytest.approx((len(runs) * DEFAULT_RUN_SECONDS
                                     + sum(extra_spes_seconds(r) for r in runs.values())) / 2)
    assert "of SPES masks beyond the default's 256" in how
