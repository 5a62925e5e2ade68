"""SMH with occluded encoder frames zeroed vs removed from the cross-attention softmax (a long run, not a test).

Whisper's cross-attention key projection has no bias, so a zeroed encoder frame still takes part in every softmax
(with logit 0); ``SMHConfig(occlusion="remove")`` masks it out instead, as if the frame were deleted. For the
shortest default-corpus test utterances and the bundled Whisper tiny.en (trimmed input), both variants at the same
masks and seed: the split-half reliability, Pearson(CA, SMH) raw and corrected (interval over tokens), and the
per-token Pearson of the two variants' maps.

    python benchmarks/validate_smh.py --out runs/validation_smh [--utterances 3] [--masks 1024]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from xattn_utils import load_model
from xattn_utils.analysis.agreement import (
    ca_selections,
    dataset_aggregate,
    dataset_corrected,
    token_agreement,
)
from xattn_utils.analysis.utterance_maps import alignment_heads
from xattn_utils.attribution.grids import normalize_rows
from xattn_utils.attribution.saliency import scorer_for
from xattn_utils.attribution.spes import SMHConfig, spes_smh
from xattn_utils.data.audio import load_audio
from xattn_utils.data.corpus import study_data
from xattn_utils.extraction.extract import ExtractConfig, extract_cross_attention
from xattn_utils.store import open_store

OCCLUSIONS = ("zero", "remove")
AGGREGATES = ("all", "last_layer", "alignment_heads")


def _grid(m: np.ndarray, n: int) -> np.ndarray:
    """(I, T') -> audio encoder frames, end-of-text row dropped, rows z-scored."""
    return normalize_rows(m[:-1, :n], "zscore")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/validation_smh")
    ap.add_argument("--utterances", type=int, default=3)
    ap.add_argument("--masks", type=int, default=1024)
    args = ap.parse_args(argv)
    out = Path(args.out)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    data = study_data(split="test").sort_values("duration_s").iloc[: args.utterances]
    loaded = load_model("bundled:whisper-tiny.en", input_mode="trimmed")
    extract_cross_attention(loaded, data, out / "store", ExtractConfig(), progress=False)
    store = open_store(out / "store")
    per: dict[tuple[str, str], list] = {}
    between, halves, secs = [], {o: [] for o in OCCLUSIONS}, {o: [] for o in OCCLUSIONS}
    for _, row in data.iterrows():
        att = store.load(row["id"], "attention")
        scorer = scorer_for(loaded, load_audio(row["audio_path"]), att)
        n = -(-scorer.n_audio_frames // scorer.frames_per_encoder_frame)
        sel = ca_selections(att.cross_attention.values, per_layer=False, alignment_heads=alignment_heads(att))
        ca = {a: _grid(sel[a], n) for a in AGGREGATES}  # once per utterance, shared by both occlusions
        maps = {}
        for occ in OCCLUSIONS:
            path = out / "maps" / f"{occ}_{args.masks}__{row['id']}.npz"
            if not path.exists():
                t0 = time.time()
                res = spes_smh(scorer, SMHConfig(n_masks=args.masks, occlusion=occ, seed=0), progress=False)
                tmp = path.with_suffix(".tmp.npz")
                np.savez_compressed(tmp, map=res.map.numpy(), halves=res.halves.numpy(), seconds=time.time() - t0)
                tmp.replace(path)
            z = np.load(path)
            maps[occ] = _grid(z["map"], n)
            secs[occ].append(float(z["seconds"]))
            halves[occ].extend(token_agreement(_grid(z["halves"][0], n), _grid(z["halves"][1], n), "pearson"))
            for a in AGGREGATES:
                per.setdefault((occ, a), []).extend(token_agreement(ca[a], maps[occ], "pearson"))
        between.extend(token_agreement(maps["zero"], maps["remove"], "pearson"))
    rows = []
    for (occ, a), obs in per.items():
        groups = [np.array([o]) for o in obs]
        raw = dataset_aggregate(groups, "pearson", n_boot=2000)
        cor = dataset_corrected(groups, [np.array([h]) for h in halves[occ]], n_boot=2000)
        c = cor["pearson_corrected"]
        rows.append({"occlusion": occ, "aggregate": a, "masks": args.masks, "utterances": len(data),
                     "tokens": len(obs), "pearson": raw["value"], "pearson_low": raw["ci_low"],
                     "pearson_high": raw["ci_high"], "reliability": cor["reliability"]["value"],
                     "corrected": c["value"], "corrected_low": c["ci_low"], "corrected_high": c["ci_high"],
                     "r_zero_vs_remove": float(np.nanmean(between)),
                     "seconds_per_utterance": float(np.mean(secs[occ]))})
    table = pd.DataFrame(rows)
    table.to_csv(out / "validation_smh.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
