"""The gap to the paper, decomposed: which of the study's choices moves Pearson(CA, SMX), each changed alone?

The study's default point (:data:`DEFAULT`: CPU segments, 256 masks, mean pooling, per-token z-scores, 20 ms
encoder frames, Whisper tiny.en, natural speech) differs from Papi et al. 2025 in several ways at once. Each
:data:`CHANGES` entry moves one of them to the paper's side and keeps the others at the default; the table gives the
Fisher-mean Pearson(CA all layers and heads, SMX) at both levels with bootstrap intervals over utterances and the
difference (paired over the utterances both levels share, as :func:`xattn_utils.analysis.axes.axis_table` does).

Map factors (segments, masks, model, speech) come from result stores: each store's SPES provenance says which
level it is. Comparison factors (pooling, normalization, resolution) are computed on the default point's store with
another :class:`~xattn_utils.analysis.compare.CompareConfig`, so they cost no forward pass.

    python -m xattn_utils.analysis.gap STORE [STORE ...] [--out DIR]   # stores of sweeps/paper_settings.yaml runs
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import pandas as pd

from .._io import write_table
from ..errors import XattnError
from ..provenance import provenance
from ..store import ResultStore, open_store
from .axes import Axis, axis_table
from .compare import CompareConfig, compare_store

DEFAULT = {"segments": "cpu", "masks": "256", "pool": "mean", "normalize": "zscore", "resolution_ms": "20",
           "model": "bundled:whisper-tiny.en", "speech": "natural"}
# (factor, the level it takes on the paper's side or a step towards it)
CHANGES = (("segments", "published"), ("masks", "1024"), ("masks", "20000"), ("pool", "max"),
           ("normalize", "zscore_map"), ("resolution_ms", "40"), ("model", "bundled:whisper-base"),
           ("speech", "hard"))
# Steps of the SPES budget (segments and masks together, the ``spes`` column "segments/masks"): the masks factor at
# the paper's segments, and the paper's SPES settings against the default
SPES_STEPS = (("published/256", "published/20000"), ("cpu/256", "published/20000"))
# The model factor again at the paper's SPES settings (converged maps: the default point's 256-mask maps are noisy,
# and noise lowers a correlation more for the model whose maps are noisier)
PAPER_POINT = "published/20000"
MODEL_AT_PAPER_POINT = "model at the paper's SPES"
COMPARE_FACTORS = ("pool", "normalize", "resolution_ms")
MAP_FACTORS = ("segments", "masks", "model", "speech")
CPU_SEGMENTS, PUBLISHED_SEGMENTS = (250, 500, 1000), (2000, 2500, 3000)
logger = logging.getLogger(__name__)


def store_levels(store: ResultStore, kind: str = "spes_x") -> dict:
    """The map factors' levels of a store, from the SPES provenance of its first utterance holding ``kind``:
    ``{"segments": "cpu"|"published"|"a-b-c", "masks": "256", "model": model id, "speech": "natural"|"hard"}``
    (speech from the utterance id's corpus prefix: the ``hard`` corpus is hard speech, every other is natural)."""
    for uid in store.utterances():
        ds = store.peek(uid, kind) if kind in store.kinds(uid) else None
        if ds is not None:
            with ds:
                prov = ds.attrs["provenance"]
            seg = tuple(prov["params"]["n_segments"])
            segments = {CPU_SEGMENTS: "cpu", PUBLISHED_SEGMENTS: "published"}.get(seg, "-".join(map(str, seg)))
            return {"segments": segments, "masks": str(prov["params"]["n_masks"]),
                    "model": prov["model"]["model_id"], "speech": "hard" if uid.startswith("hard-") else "natural"}
    raise XattnError(f"{store.path}: no utterance holds a {kind} map; run `xattn saliency --method spes-x` first")


def _compare_config(over: dict, n_boot: int, seed: int) -> CompareConfig:
    fields = {f.name for f in dataclasses.fields(CompareConfig)}
    kw = {k: (float(v) if k == "resolution_ms" else v) for k, v in over.items() if k in fields}
    missing = set(over) - set(kw)
    if missing:
        raise XattnError(f"CompareConfig has no field {sorted(missing)}: this comparison factor cannot be computed")
    return CompareConfig(per_head=False, norm_based=False, measures=("pearson",), levels=("utterance",),
                         n_boot=n_boot, seed=seed, **kw)


def gap_rows(stores, reference: str = "smx", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Utterance-level Pearson and split-half rows of ``reference`` for every store, one column per factor.

    The store at the default map levels also gets one comparison per :data:`COMPARE_FACTORS` change.
    """
    frames = []
    for path in stores:
        store = path if isinstance(path, ResultStore) else open_store(path)
        try:
            levels = store_levels(store)
        except XattnError as err:  # a run still computing its first map: the table goes on with the rest
            logger.warning("skipped: %s", err)
            continue
        variants = [{}]
        if all(levels[k] == DEFAULT[k] for k in MAP_FACTORS):
            variants += [{k: v} for k, v in CHANGES if k in COMPARE_FACTORS]
        for over in variants:
            try:
                cfg = _compare_config(over, n_boot, seed)
            except XattnError:
                continue  # a comparison factor this version cannot compute is left out of the table
            t = compare_store(store, cfg=cfg, progress=False)
            t = t[t["reference"] == reference].copy()
            for k, v in {**DEFAULT, **levels, **over}.items():
                t[k] = str(v)
            t["spes"] = f"{t['segments'].iloc[0]}/{t['masks'].iloc[0]}" if len(t) else ""
            t["store"] = str(store.path)
            frames.append(t)
    if not frames:
        raise XattnError(f"none of the {len(stores)} store(s) given holds an SMX map yet: pass the result stores of "
                         "sweeps/paper_settings.yaml's runs once they have computed one")
    return pd.concat(frames, ignore_index=True)


def gap_table(rows: pd.DataFrame, reference: str = "smx", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per change that ``rows`` holds both levels of: factor, default and changed level, n utterances, the
    Pearson at each level with its interval, the difference (changed − default) with its interval, paired or not.

    After the single-factor changes (:data:`CHANGES`), the SPES budget steps (:data:`SPES_STEPS`, factor ``spes``,
    levels "segments/masks"): 256 -> 20 000 masks at the published segments, and the paper's SPES settings
    (published segments, 20 000 masks) against the default; then the model factor at the paper's SPES settings
    (factor :data:`MODEL_AT_PAPER_POINT`); each on the utterances both levels hold.
    """
    axes = tuple(Axis(f"{k}={v}", k, (DEFAULT[k], v), {c: DEFAULT[c] for c in DEFAULT if c != k}) for k, v in CHANGES)
    if "spes" in rows.columns:
        others = {c: DEFAULT[c] for c in DEFAULT if c not in ("segments", "masks")}
        axes += tuple(Axis(f"spes={a}->{b}", "spes", (a, b), others) for a, b in SPES_STEPS)
        at_paper = {c: DEFAULT[c] for c in DEFAULT if c not in ("segments", "masks", "model")} | {"spes": PAPER_POINT}
        axes += (Axis(MODEL_AT_PAPER_POINT, "model", (DEFAULT["model"], "bundled:whisper-base"), at_paper),)
    present = tuple(a for a in axes if set(a.levels) <= set(rows[a.vary].astype(str)))
    if not present:
        raise XattnError("the stores hold no change from the default point (see xattn_utils.analysis.gap.CHANGES)")
    t = axis_table(rows, present, references=(reference,), attention="all", n_boot=n_boot, seed=seed)
    out = []
    for axis in present:
        a = t[t["axis"] == axis.name].set_index("level")
        if len(a) < 3:
            continue
        d, b, c = a.iloc[2], a.loc[axis.levels[0]], a.loc[axis.levels[1]]
        factor = axis.name if axis.name == MODEL_AT_PAPER_POINT else axis.vary
        out.append({"factor": factor, "default": axis.levels[0], "changed": axis.levels[1],
                    "n_utterances": int(d["n_utterances"]), "default_pearson": b["pearson"],
                    "default_low": b["ci_low"], "default_high": b["ci_high"], "changed_pearson": c["pearson"],
                    "changed_low": c["ci_low"], "changed_high": c["ci_high"], "difference": d["pearson"],
                    "difference_low": d["ci_low"], "difference_high": d["ci_high"], "paired": bool(d["paired"]),
                    "changed_reliability": c["reliability"], "changed_corrected": c["corrected"]})
    return pd.DataFrame(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xattn_utils.analysis.gap",
                                     description="the gap to the paper, each factor changed alone (see module doc)")
    parser.add_argument("stores", nargs="+", metavar="STORE", help="result stores (one per map-factor level)")
    parser.add_argument("--out", help="folder for gap.csv/.parquet/.json (default: print only)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        table = gap_table(gap_rows([Path(s) for s in args.stores], n_boot=args.n_boot), n_boot=args.n_boot)
    except XattnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table.round(3).to_string(index=False))
    if args.out:
        write_table(table, Path(args.out), "gap", provenance(data={"stores": args.stores}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
