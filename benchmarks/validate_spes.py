"""Validation of the study's SMX numbers at the paper's budget, and of the settings that matter (a long run, not a
test).

For a few default-corpus utterances and the bundled Whisper tiny.en, SMX is computed under several *variants*
(masks, SLIC segment counts, occlusion value, input mode, seed); every map is kept with its two half maps. Then, per
variant and attention aggregate: the raw Pearson(CA, SMX) on the study's grid (mean pooling, z-scored rows, audio
frames, end-of-text row excluded), the split-half reliability, the noise-corrected Pearson with a bootstrap interval
over tokens, and the agreement of the variant's map with the longest run's map. The correction is validated when the
long run's value falls inside the short runs' corrected intervals.

    python benchmarks/validate_spes.py --out runs/validation                 # the default plan (hours on 2 CPU cores)
    python benchmarks/validate_spes.py --out runs/validation --only v256 v1024   # some variants
    python benchmarks/validate_spes.py --out runs/validation --report        # tables from the maps done so far

Maps are saved per (variant, utterance) as they finish, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xattn_utils import load_model
from xattn_utils.analysis.agreement import (
    ca_selections,
    dataset_aggregate,
    dataset_corrected,
    token_agreement,
)
from xattn_utils.analysis.utterance_maps import alignment_heads
from xattn_utils.attribution.grids import encoder_grid
from xattn_utils.attribution.saliency import scorer_for
from xattn_utils.attribution.spes import SPESConfig, spes_smx
from xattn_utils.data.audio import load_audio
from xattn_utils.data.corpus import study_data
from xattn_utils.extraction.extract import ExtractConfig, extract_cross_attention
from xattn_utils.store import open_store

PUBLISHED = (2000, 2500, 3000)
CPU = (250, 500, 1000)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    n_masks: int
    segments: tuple[int, ...] = PUBLISHED
    occlusion: str = "floor"  # floor: Whisper's log-mel silence floor; zero: 0 in the normalized log-mel
    input_mode: str = "trimmed"
    seed: int = 0
    max_utterances: int | None = None


PLAN = (  # in the order computed: the validation first, then the settings
    Variant("v256", 256),
    Variant("v1024", 1024),
    Variant("v20000", 20000, seed=1),
    Variant("cpu_segments_1024", 1024, segments=CPU),
    Variant("zero_occlusion_1024", 1024, occlusion="zero"),
    Variant("trimmed_256_for_padded", 256, max_utterances=2),
    Variant("padded_256", 256, input_mode="padded", max_utterances=2),
)
AGGREGATES = ("all", "norm:all", "last_layer", "alignment_heads")


def compute(variant: Variant, data: pd.DataFrame, store_dir: Path, maps_dir: Path, models: dict) -> None:
    rows = data if variant.max_utterances is None else data.iloc[: variant.max_utterances]
    if variant.input_mode not in models:
        models[variant.input_mode] = load_model("bundled:whisper-tiny.en", input_mode=variant.input_mode)
    loaded = models[variant.input_mode]
    store = open_store(store_dir)
    cfg = SPESConfig(n_masks=variant.n_masks, n_segments=variant.segments, batch_size=32, seed=variant.seed)
    for _, row in rows.iterrows():
        path = maps_dir / f"{variant.name}__{row['id']}.npz"
        if path.exists():
            continue
        att = store.load(row["id"], "attention")
        scorer = scorer_for(loaded, load_audio(row["audio_path"]), att)
        if variant.occlusion == "zero":
            scorer.occlusion_value = 0.0
        t0 = time.time()
        res = spes_smx(scorer, cfg, progress=False)
        secs = time.time() - t0
        n = scorer.n_audio_frames
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, map=res.map[:, :n].numpy(), halves=res.halves[:, :, :n].numpy(), seconds=secs,
                            n_masks=res.n_masks_done)
        tmp.replace(path)
        print(f"{variant.name} {row['id']}: {res.n_masks_done} masks in {secs:.0f} s "
              f"({res.n_masks_done / secs:.1f} masks/s)", flush=True)


def _grid(m, k, t_enc):
    return encoder_grid(m, k, t_enc, pool="mean", normalize="zscore", rows=slice(0, -1))


def report(variants, data: pd.DataFrame, store_dir: Path, maps_dir: Path, n_boot: int = 2000) -> pd.DataFrame:
    store = open_store(store_dir)
    ref_name = max(variants, key=lambda v: v.n_masks).name
    rows = []
    for v in variants:
        per_agg: dict[str, tuple[list, list]] = {}
        vs_ref, secs, n_utt = [], [], 0
        for _, row in data.iterrows():
            path = maps_dir / f"{v.name}__{row['id']}.npz"
            if not path.exists():
                continue
            n_utt += 1
            z = np.load(path)
            secs.append(float(z["seconds"]))
            att = store.load(row["id"], "attention")
            k, t_enc = int(att.attrs["frames_per_encoder_frame"]), int(att.sizes["enc_frame"])
            smx = _grid(z["map"], k, t_enc)
            ha, hb = (_grid(h, k, t_enc) for h in z["halves"])
            half_tok = token_agreement(ha, hb, "pearson")
            ref_path = maps_dir / f"{ref_name}__{row['id']}.npz"
            if ref_path.exists() and v.name != ref_name:
                vs_ref.extend(token_agreement(smx, _grid(np.load(ref_path)["map"], k, t_enc), "pearson"))
            ca = att.cross_attention.values
            sel = ca_selections(ca, per_layer=False, alignment_heads=alignment_heads(att))
            weighted = ca * att.value_norms.values[:, :, None, :]
            sel.update({f"norm:{n}": m for n, m in ca_selections(weighted, per_layer=False).items()})
            for a in AGGREGATES:
                obs = token_agreement(_grid(sel[a], k, t_enc), smx, "pearson")
                per_agg.setdefault(a, ([], []))
                per_agg[a][0].extend(obs)
                per_agg[a][1].extend(half_tok)
        for a, (obs, half) in per_agg.items():
            # a bootstrap over tokens (a handful of utterances cannot carry an interval over utterances)
            out = dataset_corrected([np.array([o]) for o in obs], [np.array([h]) for h in half], n_boot=n_boot)
            s = dataset_aggregate([np.array([o]) for o in obs], "pearson", n_boot=n_boot)
            c, r = out["pearson_corrected"], out["reliability"]
            rows.append({"variant": v.name, "masks": v.n_masks, "segments": "/".join(map(str, v.segments)),
                         "occlusion": v.occlusion, "input": v.input_mode, "seed": v.seed, "utterances": n_utt,
                         "tokens": len(obs), "aggregate": a, "pearson": s["value"], "pearson_low": s["ci_low"],
                         "pearson_high": s["ci_high"], "reliability": r["value"], "corrected": c["value"],
                         "corrected_low": c["ci_low"], "corrected_high": c["ci_high"],
                         "r_with_longest_map": float(np.nanmean(vs_ref)) if vs_ref else np.nan,
                         "seconds_per_utterance": float(np.mean(secs)) if secs else np.nan})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/validation")
    ap.add_argument("--utterances", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="variant names to compute (default: all of the plan)")
    ap.add_argument("--report", action="store_true", help="only the tables from the maps done so far")
    ap.add_argument("--common", action="store_true",
                    help="report every variant on the utterances the longest run has finished (a like-for-like check)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    out = Path(args.out)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    # the shortest utterances of the default corpus's test split (the long run's cost grows with duration)
    data = study_data(split="test").sort_values("duration_s").iloc[: args.utterances]
    variants = [v for v in PLAN if not args.only or v.name in args.only]
    if not args.report:
        models: dict = {}
        models["trimmed"] = load_model("bundled:whisper-tiny.en", input_mode="trimmed")  # the study's CA
        extract_cross_attention(models["trimmed"], data, out / "store", ExtractConfig(), progress=False)
        for v in variants:
            compute(v, data, out / "store", out / "maps", models)
    if args.common:
        longest = max(PLAN, key=lambda v: v.n_masks).name
        data = data[[(out / "maps" / f"{longest}__{u}.npz").exists() for u in data["id"]]]
    table = report(PLAN, data, out / "store", out / "maps")
    table.to_csv(out / "validation.csv", index=False)
    (out / "validation.json").write_text(json.dumps({"utterances": list(data["id"]),
                                                      "plan": [dataclasses.asdict(v) for v in PLAN]}, indent=1))
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
