"""Independent recomputation of the study's headline from a run's stored maps (numpy + zarr only, no xattn_utils
analysis code): Pearson(CA[all], SMX) and (CA[all], SMH), their split-half reliability and noise-corrected values,
and notebook 03's grid ablation (old sum + min-max grid, mean + z-score, 2-D max + z-score) by frame-count parity.

Grid: CA head-and-layer mean; SMX averaged over mel and over the input frames of each encoder frame that are present;
both cut to the encoder frames holding audio, end-of-text row dropped, rows z-scored; Pearson of the flattened maps
per utterance, Fisher-z mean over utterances; reliability = Spearman-Brown of the halves' Fisher-mean Pearson.

    python benchmarks/check_headline.py runs/study/<run>
    python benchmarks/check_headline.py STORE_PARENT   # any folder holding store/ (no tables: numpy values only)
    python benchmarks/check_headline.py RUN RUN ... [--same-utterances-as RUN ...]
        # the utterances of several runs pooled (e.g. a paper point computed from both ends of the test set);
        # restricted to the utterances with an SMX map in the other runs (a paired comparison's subset)

It also prints the Pearson on 40 ms frames (CA and SMX each averaged over pairs of encoder frames, a ragged last
frame alone), the comparison resolution of the paper's Conformers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr


def zscore(m):
    return (m - m.mean(1, keepdims=True)) / m.std(1, keepdims=True)


def pooled_mean(smx, t_enc, k=2):
    """(I, T, F) -> (I, t_enc): mean over mel, then over the present frames of each group of k."""
    x = smx.mean(-1)
    padded = np.full((x.shape[0], t_enc * k), np.nan)
    padded[:, : x.shape[1]] = x[:, : t_enc * k]
    return np.nanmean(padded.reshape(x.shape[0], t_enc, k), -1)


def pooled_max(smx, t_enc, k=2):
    """(I, T, F) -> (I, t_enc): the max over the (frame, mel) cells present in each encoder frame (2-D max pool)."""
    x = smx.max(-1)
    padded = np.full((x.shape[0], t_enc * k), -np.inf)
    padded[:, : x.shape[1]] = x[:, : t_enc * k]
    return padded.reshape(x.shape[0], t_enc, k).max(-1)


def pearson(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def fisher(r) -> float:
    return float(np.tanh(np.mean(np.arctanh(np.asarray(r)))))


def zscore_map(m):
    """One mean and std over the whole map (the paper's mean-variance normalization; token offsets stay)."""
    return (m - m.mean()) / m.std()


def coarser(m, k=2):
    """(I, T') -> (I, ceil(T'/k)): mean over each group of k frames (the last group over the frames it has)."""
    t = m.shape[1]
    padded = np.full((m.shape[0], -(-t // k) * k), np.nan)
    padded[:, :t] = m
    return np.nanmean(padded.reshape(m.shape[0], -1, k), -1)


def per_utterance(run_dir) -> pd.DataFrame:
    """Per utterance: Pearson(CA[all], map) on the comparison grid for SMX (three grids) and SMH, and each map's
    split-half Pearson, from the stored zarr arrays alone."""
    store = Path(run_dir) / "store"
    rows = []
    for utt in sorted(p for p in store.iterdir() if p.is_dir()):
        if not ((utt / "attention.zarr").exists() and (utt / "spes_x.zarr").exists()):
            continue
        att = xr.open_zarr(utt / "attention.zarr", consolidated=False)
        if att.attrs.get("near_silence"):
            continue
        sx = xr.open_zarr(utt / "spes_x.zarr", consolidated=False)
        n_audio = int(att.attrs["n_audio_frames"])
        t_enc = -(-n_audio // 2)  # encoder frames holding audio
        ca = att.cross_attention.values.mean((0, 1))[:-1, :t_enc]
        x = sx.saliency.values[:-1, :n_audio]
        smx = pooled_mean(x, t_enc)
        ha, hb = (pooled_mean(h[:-1, :n_audio], t_enc) for h in sx.saliency_half.values)
        # the grid before the fix: sums over mel and zero-padded frame pairs, then per-token min-max
        summed = np.pad(x.sum(-1), ((0, 0), (0, 2 * t_enc - n_audio))).reshape(x.shape[0], t_enc, 2).sum(-1)
        mm = lambda m: (m - m.min(1, keepdims=True)) / (m.max(1, keepdims=True) - m.min(1, keepdims=True))  # noqa
        row = {"utterance": utt.name, "parity": "odd" if n_audio % 2 else "even",
               "mean+zscore": pearson(zscore(ca), zscore(smx)), "sum+minmax": pearson(mm(ca), mm(summed)),
               "max+zscore": pearson(zscore(ca), zscore(pooled_max(x, t_enc))),
               "smx_half": pearson(zscore(ha), zscore(hb)),
               "mean+zscore_map": pearson(zscore_map(ca), zscore_map(smx)),
               "mean+zscore 40ms": pearson(zscore(coarser(ca)), zscore(coarser(smx))),
               "smx_half 40ms": pearson(zscore(coarser(ha)), zscore(coarser(hb)))}
        if (utt / "spes_h.zarr").exists():
            sh = xr.open_zarr(utt / "spes_h.zarr", consolidated=False)
            h = sh.saliency.values[:-1, :t_enc]
            hha, hhb = (m[:-1, :t_enc] for m in sh.saliency_half.values)
            row.update(smh=pearson(zscore(ca), zscore(h)), smh_half=pearson(zscore(hha), zscore(hhb)))
        rows.append(row)
    return pd.DataFrame(rows)


def with_smx(run_dir) -> set[str]:
    """Utterances of a run whose SMX map is stored."""
    store = Path(run_dir) / "store"
    return {p.name for p in store.iterdir() if (p / "spes_x.zarr").exists()} if store.is_dir() else set()


def main(*argv: str) -> None:
    runs = list(argv)
    same = []
    if "--same-utterances-as" in runs:
        at = runs.index("--same-utterances-as")
        runs, same = runs[:at], runs[at + 1:]
    df = pd.concat([per_utterance(r) for r in runs], ignore_index=True)
    if same:
        keep = set.union(*(with_smx(r) for r in same))
        df = df[df["utterance"].isin(keep)]
    run_dir = runs[0]
    print(f"{len(df)} utterances, numpy on the stored maps:")
    for ref, obs_col, half_col in (("smx", "mean+zscore", "smx_half"), ("smh", "smh", "smh_half"),
                                   ("smx at 40 ms", "mean+zscore 40ms", "smx_half 40ms")):
        if obs_col not in df:
            continue
        obs, half = fisher(df[obs_col]), fisher(df[half_col])
        rel = 2 * half / (1 + half)
        print(f"  Pearson(CA[all], {ref.upper()}) = {obs:.4f}; split-half {half:.4f}; reliability {rel:.4f}; "
              f"corrected {obs / np.sqrt(rel):.4f}")
    print(f"  per-map z-score (zscore_map), Pearson(CA[all], SMX) = {fisher(df['mean+zscore_map']):.4f}; "
          f"2-D max pooling {fisher(df['max+zscore']):.4f}")
    if len(runs) > 1 or same or not (Path(run_dir) / "tables" / "03_headline.csv").exists():
        return
    h = pd.read_csv(Path(run_dir) / "tables" / "03_headline.csv")
    for ref in ("smx", "smh"):
        sel = h[(h["reference"] == ref) & (h["aggregate"] == "all") & (h["selection"] == "fixed")]
        if len(sel):
            row = sel.iloc[0]
            print(f"  notebook 03 (library) {ref.upper()}: Pearson = {row.pearson:.4f}; reliability "
                  f"{row.reliability:.4f}; corrected {row.corrected:.4f}")
    ablation = Path(run_dir) / "tables" / "03_grid_ablation.csv"
    lib = pd.read_csv(ablation) if ablation.exists() else None
    print("grid ablation, CA[all] vs SMX (Fisher mean over utterances): numpy | notebook 03")
    for variant in ("sum+minmax", "mean+zscore", "max+zscore"):
        for parity in ("odd", "even", "all"):
            part = df if parity == "all" else df[df["parity"] == parity]
            ours = fisher(part[variant]) if len(part) else float("nan")
            theirs = float("nan")
            if lib is not None:
                m = lib[(lib["variant"] == variant) & (lib["attention"] == "all") & (lib["frames"] == parity)]
                theirs = float(m["value"].iloc[0]) if len(m) else float("nan")
            print(f"  {variant:12s} {parity:5s} n={len(part):2d}  {ours:.4f} | {theirs:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
