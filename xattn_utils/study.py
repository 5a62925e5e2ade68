"""Run the study's notebooks top to bottom with papermill into one run folder (``make study``).

Each notebook gets the run folder's shared store and its own figures/tables folder; executed copies land in the run
folder, never beside the committed (output-free) notebooks. A failing notebook keeps its executed copy with the
traceback and the study goes on with the next one.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"

# CPU-sized defaults for the default study: bundled Whisper tiny.en + the synthetic corpus.
DEFAULT_PLAN: list[tuple[str, dict]] = [
    ("01_extract_cross_attention.ipynb", {"n_utterances": 24, "input_mode": "trimmed"}),
    ("02_saliency_maps.ipynb", {"n_utterances": 12, "input_mode": "trimmed", "n_masks": 256, "n_masks_h": 256,
                                "ig_steps": 16}),
    ("03_alignment_analysis.ipynb", {"n_boot": 1000}),
    ("04_faithfulness.ipynb", {"n_utterances": 4, "input_mode": "trimmed", "modes": ["deletion"],
                               "explanations": ["ca:all", "ca:last_layer", "smx", "ig_x", "random"]}),
]


def run_notebook(src: Path, out_dir: Path, params: dict, cwd: Path | None = None) -> Path:
    """Execute one notebook with papermill; returns the executed copy's path (raises on a failing cell)."""
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / src.name
    pm.execute_notebook(str(src), str(dest), parameters=params, cwd=str(cwd or out_dir), progress_bar=False,
                        kernel_name="python3")
    return dest


def run_study(out: Path, plan: list[tuple[str, dict]] | None = None, common: dict | None = None,
              notebook_dir: Path = NOTEBOOK_DIR) -> dict:
    """Run the plan's notebooks that exist, in order; returns {notebook: "done" | "failed: ..."}."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = {"run_dir": str(out), "store": str(out / "store"), **(common or {})}
    status: dict[str, str] = {}
    for name, params in plan or DEFAULT_PLAN:
        src = notebook_dir / name
        if not src.exists():
            continue
        t0 = time.time()
        try:
            run_notebook(src, out, {**base, **params})
            status[name] = f"done in {time.time() - t0:.0f} s"
        except Exception as err:  # papermill raises PapermillExecutionError with the cell's traceback
            status[name] = f"failed: {type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"
        print(f"{name}: {status[name]}", flush=True)
    (out / "status.json").write_text(json.dumps(status, indent=1))
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the xattn study notebooks into a run folder.")
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--model", default=None, help="override the model of every notebook")
    args = ap.parse_args(argv)
    common = {"model": args.model} if args.model else {}
    t0 = time.time()
    status = run_study(Path(args.out), common=common)
    out = Path(args.out).resolve()
    print(f"\nexecuted notebooks: {out}\nfigures: {out / 'figures'}\ntables: {out / 'tables'}")
    table = out / "tables" / "agreement.parquet"
    if table.exists():
        import pandas as pd

        from .compare import paper_comparison

        print("\n" + paper_comparison(pd.read_parquet(table)).to_string(index=False))
    print(f"\nstudy wall time: {(time.time() - t0) / 60:.1f} min")
    return 1 if any(s.startswith("failed") for s in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
