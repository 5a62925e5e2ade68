"""Independent recomputation of the right/wrong-token split (notebook 03's ``03_right_wrong``) from a run's stored
maps: numpy + zarr for the per-token Pearson(CA[all], SMX) on the comparison grid (mean pooling, z-scored rows, as
`check_headline.py`), and Python's difflib (not jiwer) for which hypothesis words match the reference.

A word is right when difflib's longest-matching-blocks alignment of the normalized hypothesis words to the normalized
reference words covers it; a token inherits its word's label (tokens grouped at leading spaces). Fisher-z means of
the token values per group, over all tokens of all utterances.

    python benchmarks/check_right_wrong.py RUN MANIFEST
"""
from __future__ import annotations

import difflib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_headline import fisher, pooled_mean, zscore  # noqa: E402

from xattn_utils.analysis.evaluation import normalize_text  # the comparison's text normalization, by design shared


def labels(tokens: list[str], reference: str) -> np.ndarray:
    words, owner = [], []
    for t in tokens:
        if not words or t.startswith(" "):
            words.append("")
        words[-1] += t
        owner.append(len(words) - 1)
    pieces = [(k, p) for k, w in enumerate(words) for p in normalize_text(w).split()]
    ref = normalize_text(reference).split()
    hit = np.zeros(len(pieces), bool)
    sm = difflib.SequenceMatcher(a=[p for _, p in pieces], b=ref, autojunk=False)
    for blk in sm.get_matching_blocks():
        hit[blk.a: blk.a + blk.size] = True
    right = np.full(len(words), np.nan)
    for k in range(len(words)):
        mine = [h for (o, _), h in zip(pieces, hit) if o == k]
        if mine:
            right[k] = float(all(mine))
    return right[np.asarray(owner)]


def main(run_dir: str, manifest: str) -> None:
    refs = pd.read_csv(manifest, dtype=str, keep_default_na=False).set_index("id")["transcript"]
    values, rights = [], []
    for utt in sorted(p for p in (Path(run_dir) / "store").iterdir() if p.is_dir()):
        if not ((utt / "attention.zarr").exists() and (utt / "spes_x.zarr").exists()):
            continue
        att = xr.open_zarr(utt / "attention.zarr", consolidated=False)
        sx = xr.open_zarr(utt / "spes_x.zarr", consolidated=False)
        n_audio = int(att.attrs["n_audio_frames"])
        t_enc = -(-n_audio // 2)
        ca = zscore(att.cross_attention.values.mean((0, 1))[:-1, :t_enc])
        smx = zscore(pooled_mean(sx.saliency.values[:-1, :n_audio], t_enc))
        r = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(ca, smx)])
        values.append(r)
        rights.append(labels([str(t) for t in att.token_str.values[:-1]], refs[utt.name]))
    v, y = np.concatenate(values), np.concatenate(rights)
    ok = np.isfinite(v)
    for name, sel in (("right", y == 1), ("wrong", y == 0)):
        print(f"  CA[all] vs SMX, {name}: {fisher(v[sel & ok]):.4f} over {int((sel & ok).sum())} tokens")
    lib = pd.read_csv(Path(run_dir) / "tables" / "03_right_wrong.csv")
    lib = lib[(lib.attention == "all") & (lib.reference == "smx")].set_index("group")
    print("  notebook 03 (library): right {:.4f} ({} tokens), wrong {:.4f} ({} tokens)".format(
        lib.at["right", "value"], lib.at["right", "n_tokens"], lib.at["wrong", "value"], lib.at["wrong", "n_tokens"]))


if __name__ == "__main__":
    main(*sys.argv[1:])
