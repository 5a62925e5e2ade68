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
4. write ``report.html`` beside ``report.md`` (the same page for a browser: runs, quality, headline, axes, figures
   embedded, links to each executed notebook as HTML; it opens offline) and print where both are, the headline
   numbers beside the paper's and the wall time.

    xattn study --out runs/study --workers 2 [--train]      # also python -m xattn_utils study / ...runs.study
"""
from __future__ import annotations

import argparse
import html
import logging
import re
import sys
import time
from pathlib import Path

import mistune
import pandas as pd
import yaml

from .._entry import module_main
from .._io import atomic_write_text
from ..data.corpus import ensure_corpus
from ..models.registry import grid_dir, load_registry
from ..paths import resource
from .report import readable_comparison
from .sweep import run_sweep
from .worker import export_html

DEFAULT_SWEEP = resource("sweeps/default.yaml")
STUDY_CORPORA = (resource("sweeps/corpus_enit.json"),
                 resource("sweeps/corpus_hard.json"))  # built relative to the working directory (data/<name>)
TRAIN_NOTEBOOK = resource("notebooks/00_train_models.ipynb")
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


def command(args: argparse.Namespace) -> int:
    """``xattn study``: train if asked and needed, run the sweep, write report.html, print the headline per model; 1
    when a run failed."""
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
                shown, warnings = readable_comparison(part)
                print(f"\n{run}\n" + shown.to_string(index=False))
                for msg in warnings:
                    logger.warning("%s: %s", run, msg)
    page = write_report_html(Path(result.report)) if result.report else None
    print(f"\nreport: {result.report}\npage: {page}\nstudy wall time: {(time.time() - t0) / 60:.1f} min")
    return 1 if result.failed else 0


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; }}
th {{ background: #f0f0f0; }}
img {{ max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }}
code {{ background: #f5f5f5; padding: 0 0.2em; }}
</style></head>
<body>
{body}
<hr><p><small>Written by <code>xattn study</code> from <code>report.md</code>; figures and notebook pages are files
beside this page (it opens offline).</small></p>
</body></html>
"""
_FIGURE_LINK = re.compile(r"^- \[([^\]]+)\]\(([^)\s]+\.png)\)$")
_NOTEBOOK_LINK = re.compile(r"\]\(([^)\s]+)\.ipynb\)")


def write_report_html(report_md: Path) -> Path:
    """``report.html`` beside a sweep's ``report.md``: the same sections (runs, quality, headline, axes), each run's
    key figures shown (not only linked), the paper's-axes figure under its section, and links to every executed
    notebook as HTML (exported with nbconvert when the sweep left none). Every link and image is a relative path to a
    file under the sweep root, so the page opens offline."""
    root = report_md.parent
    lines = []
    for line in report_md.read_text().splitlines():
        figure = _FIGURE_LINK.match(line)
        if figure and (root / figure.group(2)).exists():  # a key figure: shown, with its link under it
            lines += ["", f"![{figure.group(1)}]({figure.group(2)})", "", f"[{figure.group(1)}]({figure.group(2)})", ""]
            continue
        for target in _NOTEBOOK_LINK.findall(line):  # executed notebooks as pages
            notebook = root / f"{target}.ipynb"
            if notebook.exists() and (notebook.with_suffix(".html").exists() or export_html(notebook)):
                line = line.replace(f"{target}.ipynb", f"{target}.html")
        lines.append(line)
        if "`figures/axes.png`" in line and (root / "figures" / "axes.png").exists():
            lines += ["", "![the paper's axes](figures/axes.png)", ""]
    body = mistune.html("\n".join(lines))
    title = lines[0].lstrip("# ").replace("`", "") if lines else "xattn study"
    page = root / "report.html"
    atomic_write_text(page, _PAGE.format(title=html.escape(title), body=body))
    return page


def main(argv: list[str] | None = None) -> int:
    """``python -m xattn_utils.runs.study``: the same options and output as ``xattn study`` (kept for old scripts)."""
    return module_main("study", command, argv)


if __name__ == "__main__":
    sys.exit(main())
