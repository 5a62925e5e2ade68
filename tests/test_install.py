"""Installs: a wheel built from this checkout, installed (not editable) elsewhere, runs from another directory with the
project's files (models.csv, data_manifest.csv, notebooks, sweeps) found inside the package; environment.yml lists
what pyproject.toml does."""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xattn_utils.paths import RESOURCES

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (pyproject.toml is read as the installer reads it)

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("xattn_utils", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md", *RESOURCES)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """This checkout as a wheel (built offline from a copy: no build folder in the checkout), installed with
    ``pip install --no-deps --target`` (the dependencies are this interpreter's); the environment that runs it."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc",
                                                                                   ".ipynb_checkpoints"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(root / "wheel")],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((root / "wheel").glob("xattn_utils-*.whl"))
    site = root / "site"
    install = subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], capture_output=True,
                             text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = root / "elsewhere"  # not the checkout: nothing there to find by accident
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    return {"site": site, "cwd": elsewhere, "env": env, "wheel": wheel}


def run(installed: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # builds and installs a wheel (about 30 s on the shared 2-core machine)
def test_installed_package_finds_its_files_from_another_directory(installed):
    site = installed["site"]
    code = ("import xattn_utils, xattn_utils.paths as p; from xattn_utils.runs.study import study_sweep; "
            "from xattn_utils.runs.sweep import expand; from xattn_utils.data.manifest import load_manifest; "
            "from xattn_utils.models.registry import load_registry; "
            "print(xattn_utils.__file__); print(p.checkout_root()); "
            "print(*[p.resource(n) for n in p.RESOURCES], sep='\\n'); "
            "runs = expand(study_sweep([]), 'out'); print(len(runs), runs[0].notebooks[0].path); "
            "print(len(load_registry()), len(load_manifest(p.resource('data_manifest.csv'))))")
    proc = run(installed, sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == str(site / "xattn_utils" / "__init__.py")  # the installed copy, not this checkout
    assert lines[1] == "None"
    resources = site / "xattn_utils" / "_resources"
    assert lines[2:6] == [str(resources / n) for n in RESOURCES]
    assert {p.name for p in (resources / "notebooks").glob("*.ipynb")} == \
        {p.name for p in (REPO / "notebooks").glob("*.ipynb")}
    n_runs, first = lines[6].split()
    assert int(n_runs) >= 2 and first.startswith(str(resources / "notebooks"))
    registry_rows, manifest_rows = map(int, lines[7].split())
    assert registry_rows == len((REPO / "models.csv").read_text().strip().splitlines()) - 1
    assert manifest_rows == len((REPO / "data_manifest.csv").read_text().strip().splitlines()) - 1


@pytest.mark.slow
def test_installed_command_answers_from_another_directory(installed):
    xattn = installed["site"] / "bin" / "xattn"  # the console script pip wrote
    version = run(installed, str(xattn), "--version")
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version.returncode == 0 and version.stdout.strip() == f"xattn {expected}", version.stderr
    helped = run(installed, str(xattn), "study", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: xattn study"), helped.stderr
    # a small real command: the packaged models.csv names the model the user meant, before any model loads
    wrong = run(installed, str(xattn), "transcribe", "--model", "tiny.en", "a.wav")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().endswith("did you mean bundled:whisper-tiny.en?"), wrong.stderr


def _requirement(spec: str) -> tuple[str, str]:
    """``name[extra]>=1,<2`` -> (``name``, ``>=1,<2``), names normalized as pip does."""
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", spec)
    return re.sub(r"[-_.]+", "-", m.group(1)).lower(), m.group(3).replace(" ", "")


def test_environment_yml_lists_what_pyproject_does():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = dict(map(_requirement, project["dependencies"] + project["optional-dependencies"]["test"]))
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = dict(_requirement(p) for p in pip if not p.startswith(("-", ".")))
    assert listed == wanted  # same packages, same bounds: no pin of torch in either
    assert any(p.strip() in ("-e .", ".") for p in pip)
    assert "==" not in wanted["torch"]


@pytest.mark.slow  # synthesizes the 24 default utterances (flite; about 20 s)
def test_installed_package_builds_its_corpus_under_xattn_home(installed, tmp_path):
    """An installed package never writes into itself: the default corpus is built under $XATTN_HOME, byte-identical
    to the committed manifest's files, and found there on the next call without rebuilding."""
    env = {**installed["env"], "XATTN_HOME": str(tmp_path / "home")}
    code = ("from xattn_utils.data.corpus import ensure_default_corpus; from xattn_utils.data.manifest import "
            "load_manifest; from xattn_utils._io import sha256_file; p = ensure_default_corpus(progress=False); "
            "df = load_manifest(p); print(p); print(all(sha256_file(a) == s for a, s in zip(df.audio_path, "
            "df.sha256))); print(ensure_default_corpus(progress=False) == p)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=installed["cwd"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path, identical, again = proc.stdout.split()
    assert path == str(tmp_path / "home" / "data" / "default" / "manifest.csv")
    assert identical == "True" and again == "True"
    assert not (installed["site"] / "xattn_utils" / "_resources" / "data").exists()
    def sha256s(manifest: Path) -> dict:
        with open(manifest, newline="") as f:
            return {row["id"]: row["sha256"] for row in csv.DictReader(f)}

    # the same bytes as the committed manifest says (this machine's engines)
    assert sha256s(Path(path)) == sha256s(REPO / "data_manifest.csv")
