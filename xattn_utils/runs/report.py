"""What a sweep leaves beside its runs: the collected table of every done run and ``report.md``.

``ROOT/collected.parquet, .csv, .json`` hold every row of each done run's ``tables/agreement.parquet``, plus the
columns ``run`` (folder name) and one per grid key (a table column of the same name is kept as ``<key>_table``);
``ROOT/report.md`` is one page: runs and status, the headline per run beside the paper, key figures and notebooks.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .._io import atomic_write_text, write_table
from ..analysis.agreement import RELIABILITY_FLOOR
from ..analysis.axes import PAPER_AXES, axis_table
from ..analysis.compare import PAPER, paper_comparison
from ..analysis.plots import plot_axis, save_figure
from ..errors import XattnError
from ..provenance import provenance, to_jsonable
from .grid import model_status
from .spec import RunSpec, SweepSpec
from .worker import RunResult, is_done, read_status, utc_now

KEY_FIGURES = ("03_layer_head_grid", "03_layer_curves", "03_utterance_distribution", "03_token_scatter",
               "04_faithfulness", "02_side_by_side", "02_smx_tokens", "01_attention_mean")


@dataclass
class SweepResult:
    """The outcome of a sweep (what :func:`~xattn_utils.runs.sweep.run_sweep` returns and the report sums up)."""

    name: str
    root: Path
    done: list[RunResult] = field(default_factory=list)
    skipped: list[RunResult] = field(default_factory=list)
    failed: list[RunResult] = field(default_factory=list)
    collected: Path | None = None
    report: Path | None = None

    def summary(self) -> str:
        return f"runs: {len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed"

    def __str__(self) -> str:
        """The summary, each failed run's error and where the report is (what ``print(run_sweep(...))`` shows)."""
        lines = [f"sweep {self.name} under {self.root}: {self.summary()}"]
        lines += [f"  failed {r.name}: {r.error}" for r in self.failed]
        lines += [f"  report: {self.report}"] if self.report else []
        return "\n".join(lines)


def collect(runs: list[RunSpec]):
    """Every row of each done run's ``tables/agreement.parquet``, with ``run`` and the grid values as columns."""
    frames = []
    for run in runs:
        table = Path(run.run_dir) / "tables" / "agreement.parquet"
        if not (is_done(run) and table.exists()):
            continue
        df = pd.read_parquet(table)
        df = df.rename(columns={k: f"{k}_table" for k in run.grid if k in df.columns})
        extra = {"run": run.name, **{k: _cell(v) for k, v in run.grid.items()}}
        for i, (k, v) in enumerate(extra.items()):
            df.insert(i, k, [v] * len(df))
        frames.append(df)
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    for k in dict.fromkeys(k for run in runs for k in run.grid):  # mixed types (1 and "x") cannot go to parquet
        if k in df.columns and len({type(v) for v in df[k] if v is not None}) > 1:
            df[k] = df[k].map(lambda v: None if v is None else str(v))
    return df


def _cell(value):
    return json.dumps(to_jsonable(value)) if isinstance(value, (list, tuple, dict)) else value


def write_collected(runs: list[RunSpec], root: Path, name: str) -> Path | None:
    """``collected.parquet`` / ``.csv`` / ``.json`` under the root (stale ones removed when nothing is done)."""
    df = collect(runs)
    if df is None:
        for suffix in (".parquet", ".csv", ".json"):
            (root / f"collected{suffix}").unlink(missing_ok=True)
        return None
    prov = provenance(params={"sweep": name, "runs": {r.name: r.key for r in runs if is_done(r)}})
    write_table(df, root, "collected", prov)
    return root / "collected.parquet"


def _md_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_none_\n"
    columns = columns or list(rows[0])

    def cell(v):
        return str("" if v is None else v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def key_figures(run_dir: Path, limit: int = 8) -> list[Path]:
    """The run's most telling figures (PNG), the study's key ones first."""
    pngs = sorted((run_dir / "figures").glob("*.png"))
    ranked = sorted(pngs, key=lambda p: next((i for i, k in enumerate(KEY_FIGURES) if p.stem.startswith(k)),
                                             len(KEY_FIGURES)))
    return ranked[:limit]


RELIABILITY_WARN = 0.5  # a corrected value from a reliability below this is marked and explained


def readable_comparison(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``compare.paper_comparison`` for people, with the warnings to print beside it: from fewer than 2 utterances
    there is no interval ("interval n/a", not ``[0.18, 0.18]``), and a corrected value whose reliability is below
    ``RELIABILITY_WARN`` is marked ``(!)`` with a warning (dividing by the square root of a small, noisy reliability
    inflates the value)."""
    shown = paper_comparison(table)
    low: dict[str, tuple[float, list[str]]] = {}  # comparison -> (reliability, its corrected values)
    for i, row in shown.iterrows():
        if int(row["n"]) < 2:
            shown.loc[i, "95% CI"] = "interval n/a"
            for col in ("reliability", "corrected"):  # "0.58 [0.58, 0.58]" -> "0.58 (interval n/a)"
                shown.loc[i, col] = re.sub(r" \[[^\]]*\]$", " (interval n/a)", str(row[col]))
        reliability = pd.to_numeric(str(row["reliability"]).split(" ")[0], errors="coerce")
        corrected = pd.to_numeric(str(row["corrected"]).split(" ")[0], errors="coerce")  # NaN: none, "undefined"
        if np.isfinite(corrected) and reliability < RELIABILITY_WARN:
            shown.loc[i, "corrected"] = f"{shown.loc[i, 'corrected']} (!)"
            values = low.setdefault(row["comparison"], (reliability, []))[1]
            values.append(row["corrected"].split()[0])
    warnings = [f"{comparison}: its reliability {reliability:.2f} is below {RELIABILITY_WARN}, so the corrected "
                f"values marked (!) ({_span(values)}) are unstable: the SPES map is mostly noise at this mask count "
                "and dividing by sqrt(reliability) inflates it; read the raw value, or raise the masks (--n-masks, "
                "--n-masks-h) and the utterances" for comparison, (reliability, values) in low.items()]
    return shown, warnings


def _span(values: list[str]) -> str:
    """``0.62`` or ``0.62–0.80``: the range of printed numbers."""
    numbers = sorted(set(values), key=float)
    return numbers[0] if len(numbers) == 1 else f"{numbers[0]}–{numbers[-1]}"


def run_headline(run_dir: Path) -> list[dict]:
    """:func:`readable_comparison` of a run's agreement table as records (empty when there is none)."""
    table = run_dir / "tables" / "agreement.parquet"
    if not table.exists():
        return []
    try:
        return readable_comparison(pd.read_parquet(table))[0].to_dict("records")
    except Exception:  # noqa: BLE001 - a table without the expected columns has no headline
        return []


def run_quality(run_dir: Path) -> pd.DataFrame:
    """A run's quality gate (``tables/01_quality.csv``: per voice and ``all``); empty when notebook 01 wrote none."""
    path = run_dir / "tables" / "01_quality.csv"
    return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.exists() else pd.DataFrame()


def quality_label(q: pd.DataFrame) -> str:
    """The error rate beside a headline: ``WER 4.2 %`` (transcription) or ``chrF 55.1`` (translation), loops."""
    if q.empty:
        return "not scored"
    row = q[q.voice == "all"].iloc[0]
    label = f"chrF {row.chrf:.1f}" if row.task == "translate" and pd.notna(row.get("chrf")) else \
        f"WER {row.wer:.1f} %" if pd.notna(row.get("wer")) else "no hypothesis"
    return label + (f", {int(row.loops)} loop(s)" if row.loops else "")


def quality_section(runs: list[RunSpec]) -> list[str]:
    """The quality gate of every done run: per voice and overall, beside the targets."""
    rows = []
    for run in runs:
        q = run_quality(Path(run.run_dir))
        for r in q.to_dict("records"):
            rows.append({"run": run.name, **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()}})
    if not rows:
        return []
    cols = ["run", "language", "task", "voice", "scored", "loops", "wer", "cer",
            *(["bleu", "chrf"] if any("chrf" in r for r in rows) else []), "target", "gate"]
    return ["## Did the models understand their input? (quality gate)\n",
            "Greedy hypotheses (as the study decodes) against the references, text normalized (lower case, no "
            "punctuation, numbers as words): WER/CER for transcription, BLEU/chrF against the English sentence for "
            "translation; loops are decoding loops (recorded, never explained). Each run's `tables/01_hypotheses.csv` "
            "shows every hypothesis beside its reference.\n",
            _md_table([{k: ("" if (isinstance(v, float) and np.isnan(v)) else v) for k, v in r.items()}
                       for r in rows], cols)]


def _undefined_corrected(reliability: float) -> str:
    """The cell of a noise-corrected value left undefined (NaN): why, from the reliability."""
    if not np.isfinite(reliability):
        return ""
    if reliability < RELIABILITY_FLOOR:
        return f"undefined (reliability < {RELIABILITY_FLOOR})"
    return "undefined (beyond ±1)"


def axes_section(root: Path) -> list[str]:
    """The paper's axes (language, task, scale) when the collected runs span them: ``axes.csv``, ``axes.png`` and a
    table; nothing when they do not."""
    collected = root / "collected.parquet"
    if not collected.exists():
        return []
    try:
        table = axis_table(pd.read_parquet(collected))
    except XattnError:
        return []
    write_table(table, root, "axes", provenance(params={"axes": [asdict(a) for a in PAPER_AXES],
                                                       "attention": "all", "n_boot": 1000}))
    names = list(dict.fromkeys(table["axis"]))
    import matplotlib.pyplot as plt  # optional, loaded when a figure is drawn

    fig, axs = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axs[0], names):
        plot_axis(ax, table, name)
    fig.tight_layout()
    save_figure(fig, root / "figures", "axes")
    plt.close(fig)
    show = table.assign(**{"95% CI": [f"[{a:.2f}, {b:.2f}]" for a, b in zip(table.ci_low, table.ci_high)],
                           "corrected [95% CI]": [f"{c:.2f} [{a:.2f}, {b:.2f}]" if np.isfinite(c)
                                                  else _undefined_corrected(r)
                                                  for c, a, b, r in zip(table.corrected, table.corrected_low,
                                                                        table.corrected_high, table.reliability)]})
    show["pearson"] = show["pearson"].round(3)
    show["reliability"] = show["reliability"].round(2)
    show = show.astype(object).where(show.notna(), "")
    notes = "".join(f"- **{a.name}**: {a.note}\n" for a in PAPER_AXES if a.name in names)
    return ["## The paper's axes: language, task, scale\n",
            "Pearson(CA averaged over all layers and heads, map) per level, Fisher mean over utterances with a "
            "bootstrap interval; the map's reliability and the noise-corrected value; then the difference between "
            "the levels. Levels that share utterances (task: the same Italian audio; scale: the English utterances "
            "both models explained) are both reported on the shared ones, with a paired bootstrap of the difference. "
            "Figure: `figures/axes.png` (a panel per axis); "
            "table: `axes.csv`.\n", notes,
            _md_table(show.to_dict("records"), ["axis", "reference", "level", "n_utterances", "pearson", "95% CI",
                                                "reliability", "corrected [95% CI]"])]


def write_report(spec: SweepSpec, runs: list[RunSpec], root: Path, result: SweepResult) -> Path:
    """``report.md``: the runs and their status, the headline per run beside the paper, figures and notebooks."""
    this_time = {r.name: r for r in result.done + result.failed}
    trained = {run.name: model_status(run.grid.get("model", "")) for run in runs}
    lo, hi = PAPER["pearson_ca_smh_range"]
    out = [f"# Sweep `{spec.name}`\n",
           f"{len(runs)} runs under `{root}` ({utc_now()}); {result.summary()}.\n",
           (f"Notebooks: {', '.join(nb.notebook for nb in spec.notebooks)}. "
            f"Grid: {', '.join(f'{k} ∈ {v}' for k, v in spec.grid.items()) or 'none'}"
            + (f"; plus {len(spec.points)} listed point(s)" if spec.points else "") + ".\n"),
           "## Runs\n"]
    rows = []
    for run in runs:
        st = read_status(run.run_dir)
        rows.append({"run": run.name, "status": st["state"] + (" (this time)" if run.name in this_time else ""),
                     "seconds": st.get("seconds", ""), "error": st["error"], "trained model": trained[run.name],
                     **{k: _cell(v) for k, v in run.grid.items()}})
    marked = any(trained.values())
    out.append(_md_table(rows, ["run", "status", *spec.keys, *(["trained model"] if marked else []), "seconds",
                                "error"]))
    if marked:
        out.append("Models trained here are marked: one still on the loss plateau writes fluent text that ignores "
                   "the audio, so its rows below answer another question and are kept apart (`runs.grid."
                   "plateau_status`).\n")
    out.append("## Headline per run, beside the paper\n")
    out.append(f"Papi et al. (2025): best Pearson(CA, SMX) ≈ {PAPER['pearson_ca_smx_best']:.2f}; "
               f"Pearson(CA, SMH) {lo:.2f}–{hi:.2f}. Ours (`compare.paper_comparison`): dataset-level Pearson with "
               "its 95% interval for fixed aggregates and for the best aggregate chosen on a calibration half of the "
               "utterances (reported on the other half); the SPES map's split-half reliability; the noise-corrected "
               f"Pearson (raw / sqrt(reliability)), *undefined* where the reliability is below {RELIABILITY_FLOOR} "
               "or the ratio would leave [−1, 1] (`analysis.agreement.RELIABILITY_FLOOR`; the tables' `note` column "
               "says which).\n")
    heads = []
    plateau = [run for run in runs if trained[run.name].startswith("ON THE")]
    for run in sorted(runs, key=lambda r: r in plateau):  # models on the plateau last, marked, never mixed in
        if not is_done(run):
            continue
        for rec in run_headline(Path(run.run_dir)):
            if not str(rec.get("corrected", "")).strip() and str(rec.get("reliability", "")).strip():
                rec = {**rec, "corrected": "undefined"}  # reliability below the floor, or beyond ±1
            heads.append({"run": run.name + (" — ON THE LOSS PLATEAU" if run in plateau else ""),
                          "quality": quality_label(run_quality(Path(run.run_dir))), **rec})
    out.append(_md_table(heads, ["run", "quality", "comparison", "aggregate", "selection", "n", "ours", "95% CI",
                                "reliability", "corrected", "paper"]) if heads
               else "_no done run has tables/agreement.parquet_\n")
    out.extend(quality_section(runs))
    out.extend(axes_section(root))
    out.append("## Figures and executed notebooks\n")
    for run in runs:
        folder = Path(run.run_dir)
        figs = key_figures(folder)
        pages = sorted(folder.glob("*.html")) or sorted(folder.glob("*.ipynb"))
        if not figs and not pages:
            continue
        mark = f" ({trained[run.name]})" if trained[run.name] else ""
        out.append(f"**{run.name}**{mark} — " + " · ".join(f"[{p.name}]({run.name}/{p.name})" for p in pages) + "\n"
                   + "".join(f"- [{p.stem}]({run.name}/figures/{p.name})\n" for p in figs))
    out.append("Collected table: `collected.parquet` / `collected.csv` (one row per run × agreement row).\n")
    path = root / "report.md"
    atomic_write_text(path, "\n".join(s.strip("\n") + "\n" for s in out))
    return path
