"""Independent recomputation of the study's headline from a run's stored maps (numpy + zarr only, no xattn_utils
analysis code): Pearson(CA[all], SMX), SMX's split-half reliability and the noise-corrected value.

Grid: CA head-and-layer mean; SMX averaged over mel and over the input frames of each encoder frame that are present;
both cut to the encoder frames holding audio, end-of-text row dropped, rows z-scored; Pearson of the flattened maps
per utterance, Fisher-z mean over utterances; reliability = Spearman-Brown of the halves' Fisher-mean Pearson.

    python benchmarks/check_headline.py runs/study/<run>
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


def pearson(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def main(run_dir: str) -> None:
    store = Path(run_dir) / "store"
    r_obs, r_half, r_old = [], [], []
    for utt in sorted(p for p in store.iterdir() if p.is_dir()):
        if not ((utt / "attention.zarr").exists() and (utt / "spes_x.zarr").exists()):
            continue
        att = xr.open_zarr(utt / "attention.zarr", consolidated=False)
        sx = xr.open_zarr(utt / "spes_x.zarr", consolidated=False)
        t_enc = att.sizes["enc_frame"]
        ca = att.cross_attention.values.mean((0, 1))[:-1, :t_enc]
        smx = pooled_mean(sx.saliency.values[:-1], t_enc)
        ha, hb = (pooled_mean(h[:-1], t_enc) for h in sx.saliency_half.values)
        r_obs.append(pearson(zscore(ca), zscore(smx)))
        # the grid before the fix: sums over mel and zero-padded frame pairs, then per-token min-max
        summed = np.pad(sx.saliency.values[:-1].sum(-1), ((0, 0), (0, 2 * t_enc - sx.sizes["frame"])))
        summed = summed[:, : 2 * t_enc].reshape(summed.shape[0], t_enc, 2).sum(-1)
        mm = lambda m: (m - m.min(1, keepdims=True)) / (m.max(1, keepdims=True) - m.min(1, keepdims=True))  # noqa
        r_old.append(pearson(mm(ca), mm(summed)))
        r_half.append(pearson(zscore(ha), zscore(hb)))
    fisher = lambda r: float(np.tanh(np.mean(np.arctanh(r))))  # noqa: E731
    obs, half = fisher(r_obs), fisher(r_half)
    rel = 2 * half / (1 + half)
    print(f"{len(r_obs)} utterances (numpy): Pearson(CA[all], SMX) = {obs:.4f}; split-half {half:.4f}; "
          f"reliability {rel:.4f}; corrected {obs / np.sqrt(rel):.4f}; the old sum + min-max grid {fisher(r_old):.4f}")
    h = pd.read_csv(Path(run_dir) / "tables" / "03_headline.csv")
    row = h[(h["reference"] == "smx") & (h["aggregate"] == "all") & (h["selection"] == "fixed")].iloc[0]
    print(f"notebook 03 (library): Pearson = {row.pearson:.4f}; reliability {row.reliability:.4f}; "
          f"corrected {row.corrected:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
