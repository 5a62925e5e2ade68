"""The default study (``make study``): the bundled real models on the default corpora, and any trained grid model.

Steps:
1. with ``--train`` only, when no model of the offline grid is trained yet, train it first
   (``notebooks/00_train_models.ipynb`` through papermill, CPU-sized budgets; ``make models`` does the same): the
   default study needs no training;
2. build the corpora the sweep reads when missing: the default English corpus (on first use), the English +
   Italian one of ``sweeps/corpus_enit.json`` (into ``data/enit``) and the hard-speech one of
   ``sweeps/corpus_hard.json`` (espeak-ng voices, grammar sentences; into ``data/hard``);
3. run ``sweeps/default.yaml`` (bundled Whisper tiny.en through notebooks 01-06 and on hard speech; bundled Whisper
   base on the paper's axes) with a ``model`` grid of every trained grid model present, through
   :func:`xattn_utils.runs.sweep.run_sweep` (resumable: finished runs are skipped);
4. print where ``report.md`` is, the headline numbers beside the paper's and the wall time.

    xattn study --out runs/study --workers 2 [--train]      # also python -m xattn_utils study / ...runs.study
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from .._entry import module_main
from ..analysis.compare import paper_comparison
from ..data.corpus import ensure_corpus
from ..models.registry import grid_dir, load_registry
from .sweep import run_sweep

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SWEEP = REPO / "sweeps" / "default.yaml"
STUDY_CORPORA = (REPO / "sweeps" / "corpus_enit.json", REPO / "sweeps" / "corpus_hard.json")  # built relative to the working directory (data/<name>)
TRAIN_NOTEBOOK = REPO / "notebooks" / "00_train_models.ipynb"
DESCRIPTION = ("Run the default xattn study: the default sweep over the bundled model and every trained grid model "
               "present.")

logger = logging.getLogger(__name__)


def trained_models(root: Path | None = None) -> list[str]:
    """Registry names of the grid models that are trained (their folder holds a model)."""
    root = root or grid_dir()
    return [e.name for e in load_registry().values()
            if e.source == "trained" and (root / e.location / "config.json").exists()]


def train_first(out: Path) -> None:
    """Execute the training notebook into ``out`` (its default parameters: the CPU-sized grid)."""
    import papermill as pm

    out.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(TRAIN_NOTEBOOK), str(out / TRAIN_NOTEBOOK.name), parameters={"run_dir": str(out)},
                        cwd=str(out), progress_bar=False, kernel_name="python3")


def study_sweep(models: list[str], sweep: Path = DEFAULT_SWEEP) -> dict:
    """The default sweep's spec with its model grid extended by ``models`` (every notebook, default parameters)."""
    spec = yaml.safe_load(sweep.read_text())
    if models:
        grid = spec.setdefault("grid", {})
        grid["model"] = list(dict.fromkeys([*grid.get("model", []), *models]))
    spec["name"] = spec.get("name", sweep.stem)
    return spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``xattn study``."""
    parser.add_argument("--out", default="runs/study", help="output root of the sweep (runs are resumed there)")
    parser.add_argument("--train", action="store_true", help="train the grid first when no trained model exists")
    parser.add_argument("--no-train", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old scripts
    parser.add_argument("--workers", type=int, default=2,
                        help="Dask worker processes (one run at a time each, one thread each: Dask sets "
                             "OMP_NUM_THREADS=1)")


def command(args: argparse.Namespace) -> int:
    """``xattn study``: train if asked and needed, run the sweep, print the headline per model; 1 when a run failed."""
    t0 = time.time()
    out = Path(args.out).resolve()
    if args.train and not trained_models():
        logger.info("no trained grid model found: training the grid first (notebooks/00_train_models.ipynb)")
        train_first(out / "train")
    for config in STUDY_CORPORA:
        logger.info("corpus %s: %s", config.name, ensure_corpus(config))
    result = run_sweep(study_sweep(trained_models()), out=out, workers=args.workers)
    print(result.summary(), flush=True)
    if result.collected is not None:
        table = pd.read_parquet(result.collected)
        for run, part in table.groupby("run", sort=False):  # one model may run in several settings
            if (part["level"] == "utterance").any():
                print(f"\n{run}\n" + paper_comparison(part).to_string(index=False))
    print(f"\nreport: {result.report}\nstudy wall time: {(time.time() - t0) / 60:.1f} min")
    return 1 if result.failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m xattn_utils.runs.study``: the same options and output as ``xattn study`` (kept for old scripts)."""
    return module_main("python -m xattn_utils.runs.study", DESCRIPTION, add_arguments, command, argv)


if __name__ == "__main__":
    sys.exit(main())
