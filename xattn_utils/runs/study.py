"""The default study (``make study``): the default sweep over the bundled Whisper and every trained grid model.

Steps:
1. with ``--train`` only, when no model of the offline grid is trained yet, train it first
   (``notebooks/00_train_models.ipynb`` through papermill, CPU-sized budgets; ``make models`` does the same): the
   default study needs no training;
2. run ``sweeps/default.yaml`` (notebooks 01-06, CPU-sized) with its ``model`` grid extended by every trained
   grid model present, through :func:`xattn_utils.sweep.run_sweep` (resumable: finished runs are skipped);
3. print where ``report.md`` is, the headline numbers beside the paper's and the wall time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..models.registry import grid_dir, load_registry

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SWEEP = REPO / "sweeps" / "default.yaml"
TRAIN_NOTEBOOK = REPO / "notebooks" / "00_train_models.ipynb"


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
    """The default sweep's spec with its model grid extended by ``models``."""
    import yaml

    spec = yaml.safe_load(sweep.read_text())
    grid = spec.setdefault("grid", {})
    grid["model"] = list(dict.fromkeys([*grid.get("model", []), *models]))
    spec["name"] = spec.get("name", sweep.stem)
    return spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the default xattn study: the default sweep over the bundled model and "
                                             "every trained grid model present.")
    ap.add_argument("--out", default="runs/study", help="output root of the sweep (runs are resumed there)")
    ap.add_argument("--train", action="store_true", help="train the grid first when no trained model exists")
    ap.add_argument("--no-train", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old scripts
    ap.add_argument("--workers", type=int, default=2,
                    help="Dask worker processes (one run at a time each, one thread each: Dask sets OMP_NUM_THREADS=1)")
    args = ap.parse_args(argv)
    t0 = time.time()
    out = Path(args.out).resolve()
    if args.train and not trained_models():
        print("no trained grid model found: training the grid first (notebooks/00_train_models.ipynb)", flush=True)
        train_first(out / "train")
    from .sweep import run_sweep

    result = run_sweep(study_sweep(trained_models()), out=out, workers=args.workers)
    if result.collected is not None:
        import pandas as pd

        from ..analysis.compare import paper_comparison

        table = pd.read_parquet(result.collected)
        for model, part in table.groupby("model", sort=False):
            print(f"\n{model}\n" + paper_comparison(part).to_string(index=False))
    print(f"\nreport: {result.report}\nstudy wall time: {(time.time() - t0) / 60:.1f} min")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
