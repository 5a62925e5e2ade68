"""Independent recomputation of the paper's axes (language, task, scale) from a sweep's stored maps: numpy + zarr
only (the per-utterance Pearson of `check_headline.py`), compared with the library's `axes.csv`.

Per run: model, language, task from its `parameters.yaml`; per axis, the two levels' runs (the others fixed as in
`analysis/axes.py`); both levels on the utterances they share when they share any (the difference is then paired),
else each on all its own; Fisher-z mean over utterances; reliability = Spearman–Brown of the halves' Fisher mean;
corrected = raw / sqrt(reliability); a paired (or independent) percentile bootstrap of the difference with its own
generator: its interval need not equal the library's to the digit, the point values must.

    python benchmarks/check_axes.py runs/study
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_headline import fisher, per_utterance  # noqa: E402

AXES = (  # name, varying parameter, (level a, level b), fixed parameters
    ("language", "language", ("en", "it"), {"model": "bundled:whisper-base", "task": "transcribe"}),
    ("task", "task", ("transcribe", "translate"), {"model": "bundled:whisper-base", "language": "it"}),
    ("scale", "model", ("bundled:whisper-tiny.en", "bundled:whisper-base"), {"language": "en", "task": "transcribe"}),
)
MAPS = {"smx": ("mean+zscore", "smx_half"), "smh": ("smh", "smh_half")}


def runs(root: Path) -> list[tuple[dict, pd.DataFrame]]:
    """(parameters, per-utterance table) of every run with saliency maps in its store."""
    out = []
    for folder in sorted(p for p in root.iterdir() if (p / "store").is_dir()):
        params = yaml.safe_load((folder / "parameters.yaml").read_text()) if (folder / "parameters.yaml").exists() \
            else {}
        grid = params.get("grid", params)
        df = per_utterance(folder)
        if len(df):
            out.append(({k: str(grid.get(k)) for k in ("model", "language", "task")}, df.set_index("utterance")))
    return out


def level_rows(all_runs, vary, level, fixed) -> pd.DataFrame:
    parts = [df for params, df in all_runs
             if params[vary] == level and all(params[k] == v for k, v in fixed.items())]
    return pd.concat(parts) if parts else pd.DataFrame()


def main(root: str, n_boot: int = 2000) -> None:
    root = Path(root)
    all_runs = runs(root)
    lib = pd.read_csv(root / "axes.csv") if (root / "axes.csv").exists() else None
    rng = np.random.default_rng(0)
    print("axis      map level                              n  numpy: Pearson reliab. corrected | library: Pearson "
          "corrected")
    for name, vary, levels, fixed in AXES:
        a, b = (level_rows(all_runs, vary, lv, fixed) for lv in levels)
        if a.empty or b.empty:
            continue
        for ref, (obs_col, half_col) in MAPS.items():
            if obs_col not in a or obs_col not in b:
                continue
            shared = sorted(set(a.index) & set(b.index))
            parts = [(x.loc[shared] if shared else x) for x in (a, b)]
            values = []
            for lv, x in zip(levels, parts):
                obs, half = fisher(x[obs_col]), fisher(x[half_col])
                rel = 2 * half / (1 + half)
                values.append(obs)
                theirs = ""
                if lib is not None:
                    m = lib[(lib.axis == name) & (lib.reference == ref) & (lib.level == lv)]
                    theirs = f"{m.pearson.iloc[0]:.4f}   {m.corrected.iloc[0]:.4f}" if len(m) else "–"
                print(f"{name:9s} {ref:3s} {lv:34s} {len(x):2d}  {obs:.4f} {rel:.4f} {obs / np.sqrt(rel):.4f} | "
                      f"{theirs}")
            za, zb = (np.arctanh(x[obs_col].to_numpy()) for x in parts)
            if shared:
                idx = rng.integers(0, len(za), (n_boot, len(za)))
                boot = np.tanh(zb[idx].mean(1)) - np.tanh(za[idx].mean(1))
            else:
                boot = (np.tanh(zb[rng.integers(0, len(zb), (n_boot, len(zb)))].mean(1))
                        - np.tanh(za[rng.integers(0, len(za), (n_boot, len(za)))].mean(1)))
            lo, hi = np.percentile(boot, [2.5, 97.5])
            theirs = ""
            if lib is not None:
                m = lib[(lib.axis == name) & (lib.reference == ref) & (lib.level == f"{levels[1]} − {levels[0]}")]
                theirs = f"{m.pearson.iloc[0]:.4f} [{m.ci_low.iloc[0]:.2f}, {m.ci_high.iloc[0]:.2f}]" if len(m) else "–"
            print(f"{name:9s} {ref:3s} {'difference (' + ('paired' if shared else 'independent') + ')':34s} "
                  f"{min(len(p) for p in parts):2d}  {values[1] - values[0]:.4f} [{lo:.2f}, {hi:.2f}] | {theirs}")


if __name__ == "__main__":
    main(*sys.argv[1:])
