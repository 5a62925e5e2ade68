"""The study's answer over a result store: how well does cross-attention agree with saliency?

``compare_store(store)`` reads, per utterance, the ``attention`` group and every saliency group present
(:class:`xattn_utils.analysis.utterance_maps.UtteranceMaps`; map names from :mod:`xattn_utils.maps`), puts all
maps on the encoder-frame grid ``(I, T')`` and returns the tidy agreement table of
:func:`xattn_utils.analysis.agreement.agreement_table` (token, utterance and dataset levels, bootstrap intervals).

Conventions (all parameters, recorded in ``agreement.json``):
- attention aggregates: every layer's head mean (``layer{l}``), ``last_layer``, ``all``, Whisper's
  ``alignment_heads`` when the model has them, and optionally every head (``L{l}H{h}``); each also norm-based
  (``norm:`` prefix; Kobayashi et al. 2020: weight x ||W_O^h (W_V^h h_j + b)||); the table's ``aggregate``,
  ``layer``, ``head``, ``weighting`` and ``mixing`` columns say which
  (:func:`~xattn_utils.analysis.agreement.attention_columns`);
- references: ``smx`` (SPES on X pooled to encoder frames with the model's own downsampling: ``pool="mean"`` over
  the cells present — a SPES cell is a mean KL, not an amount — or ``"max"``, 2-D max pooling), ``smh`` (SPES on
  H), and gradient maps (``saliency_x``, ``ixg_x``, ``ig_x``: |attribution| pooled by ``gradient_pool``, a sum by
  default since attributions are amounts; ``*_h`` as stored); plus ``smh`` vs ``smx`` (how much the encoder mixes
  context). See :mod:`xattn_utils.attribution.grids`;
- resolution: ``resolution_ms`` pools CA and every map to coarser frames before comparing (40 ms: the paper's
  Conformer frame; Whisper's encoder frame is 20 ms), so the frame size behind a number is a recorded parameter;
- special tokens: the forced prompt is never scored; the end-of-text row is excluded by default;
- each token's row is z-scored before comparing (``normalize``; see
  :func:`xattn_utils.attribution.grids.normalize_rows`), so the flattened (utterance) Pearson is the mean per-token
  Pearson: it compares where relevance lies rather than how fragile each token is, and one outlier column cannot
  dominate (``minmax`` and ``none`` are options);
- SPES maps stored with their two half maps (independent masks) add split-half ``reliability`` and the
  noise-corrected ``pearson_corrected`` (see :func:`xattn_utils.analysis.agreement.dataset_corrected`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import maps as registry
from .._io import write_table
from ..errors import XattnError
from ..maps import by_name
from ..provenance import provenance, stable_hash
from ..store import ResultStore, open_store
from .agreement import (
    RELIABILITY_MEASURES,
    agreement_table,
    dataset_aggregate,
    dataset_corrected,
    fisher_mean,
    utterance_agreement,
)
from .utterance_maps import ATTENTION, MapsConfig, UtteranceMaps

PAPER = {"pearson_ca_smx_best": 0.58, "pearson_ca_smh_range": (0.52, 0.75), "deletion_ca": 41.2,
         "deletion_smx": 52.9}


@dataclass
class CompareConfig(MapsConfig):
    """What to compare and how (recorded in provenance): the maps and their grid (:class:`MapsConfig`: per_head,
    norm_based, special, normalize, pool, gradient_pool, mixing...) and the measures."""

    measures: tuple[str, ...] = ("pearson", "pearson_r2", "spearman", "kendall", "topk_overlap")
    levels: tuple[str, ...] = ("token", "utterance", "dataset")
    topk: float = 0.1
    exclude_near_silence: bool = True  # leave out hypotheses made from (near-)silence (flagged by extraction)
    n_boot: int = 1000
    seed: int = 0
    resolution_ms: float | None = None  # frame of the comparison: None = the encoder's (Whisper 20 ms); 40 = the
    # paper's Conformer (4x subsampling); CA and every map pooled to it (UtteranceMaps.at_resolution)


def compared_maps(store: ResultStore, uid: str, cfg: MapsConfig | None = None) -> UtteranceMaps:
    """One utterance's maps as the comparison sees them: on the encoder grid, rows normalized as ``cfg`` says."""
    cfg = cfg or CompareConfig()
    maps = UtteranceMaps.from_store(store, uid, cfg).on_encoder_grid()
    return maps.at_resolution(getattr(cfg, "resolution_ms", None)).normalized(cfg.normalize)


def utterance_maps(store: ResultStore, uid: str, cfg: MapsConfig | None = None) -> dict:
    """One utterance's named ``(I, T')`` maps on the comparison grid (attention aggregates and references), plus
    ``n_frames``, ``tokens`` and ``halves`` (``{reference: (half A, half B)}`` for SPES maps stored with halves):
    :func:`compared_maps` as a dict."""
    return compared_maps(store, uid, cfg).as_dict()


def compare_store(store: str | Path | ResultStore, out_dir: str | Path | None = None,
                  cfg: CompareConfig | None = None, progress: bool = True) -> pd.DataFrame:
    """Every agreement measure for every utterance with attention and saliency; writes ``agreement.*`` to out_dir."""
    cfg = cfg or CompareConfig()
    store = store if isinstance(store, ResultStore) else open_store(store)
    maps, skipped = {}, {}
    for uid in tqdm(store.utterances(), desc="maps", disable=not progress):
        kinds = store.kinds(uid)
        if ATTENTION not in kinds or not set(registry.kinds()) & set(kinds):
            skipped[uid] = f"kinds stored: {kinds}"
            continue
        if cfg.exclude_near_silence and store.near_silence(uid):
            skipped[uid] = "near silence: its hypothesis was made from (near-)silent audio"
            continue
        maps[uid] = compared_maps(store, uid, cfg)
    if not maps:
        raise XattnError(f"{store.path}: no utterance has both cross-attention and a saliency map; "
                         "run `xattn saliency` (or notebook 02) first")
    refs = [r for r in registry.names() if all(r in m.references for m in maps.values())]  # the registry's order
    attention = list(next(iter(maps.values())).attention)
    data = {uid: m.as_dict() for uid, m in maps.items()}
    prov = store.attrs.get("model", {})
    model = prov.get("model_id", "")
    kw = dict(measures=cfg.measures, levels=cfg.levels, topk=cfg.topk, n_boot=cfg.n_boot, seed=cfg.seed, model=model)
    tables = [agreement_table(data, references=refs, attention=attention, **kw)]
    if {"smx", "smh"} <= set(refs):
        mix = agreement_table(data, references=["smx"], attention=["smh"], **kw)
        # SMH is sampled too: correcting for SMX's noise alone would be wrong, and SMX's reliability is in table 1
        tables.append(mix[~mix.measure.isin(RELIABILITY_MEASURES)])
    table = pd.concat(tables, ignore_index=True)
    if out_dir is not None:
        write_table(table, Path(out_dir), "agreement",
                    provenance(model=prov, data={"store": str(store.path), "utterances": sorted(data),
                                                 "skipped": skipped}, params=asdict(cfg), seed=cfg.seed))
    return table


def headline(table: pd.DataFrame, measure: str = "pearson") -> pd.DataFrame:
    """Dataset-level values of ``measure`` per attention aggregate and reference, best first (in-sample: choosing
    the best of many aggregates on the utterances it is reported on biases it upward; see :func:`study_headline`)."""
    d = table[(table.level == "dataset") & (table.measure == measure) & (table.attention != "")]
    d = d.sort_values("value", ascending=False)[["attention", "reference", "value", "ci_low", "ci_high", "n"]]
    return d.reset_index(drop=True)


FIXED_AGGREGATES = ("all", "last_layer", "norm:all")


def calibration_split(utterances, fraction: float = 0.5, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic split of utterance ids into (calibration, report) by a seeded hash of each id."""
    ids = sorted({str(u) for u in utterances}, key=lambda u: stable_hash("calibration", seed, u))
    n_cal = int(round(fraction * len(ids)))
    return sorted(ids[:n_cal]), sorted(ids[n_cal:])


def _values_by_utterance(utt: pd.DataFrame, attention: str, reference: str, measure: str,
                         utterances: list[str]) -> list[np.ndarray]:
    """Per utterance (in ``utterances`` order) the one utterance-level value of (attention, reference, measure);
    ``utt``: the table's utterance-level rows."""
    d = utt[(utt.attention == attention) & (utt.reference == reference)
            & (utt.measure == measure)].set_index("utterance")["value"]
    return [np.array([d.get(u, np.nan)], dtype=np.float64) for u in utterances]


def study_headline(table: pd.DataFrame, fixed: tuple[str, ...] = FIXED_AGGREGATES, calibration: float = 0.5,
                   n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """The study's answer per reference (SMX, SMH): raw Pearson with its interval, the reference's reliability and
    the noise-corrected Pearson (paired bootstrap over utterances), for

    * the fixed aggregates (every utterance; no selection), and
    * the best aggregate chosen on a calibration split of the utterances, reported on the rest;
    * for contrast, the best chosen and reported on every utterance (``in-sample``, biased upward).

    Needs the utterance-level rows of :func:`compare_store`'s table. Columns: reference, aggregate, selection,
    n_utterances, pearson, pearson_low, pearson_high, reliability, reliability_low, reliability_high, corrected,
    corrected_low, corrected_high.
    """
    utt = table[(table.level == "utterance") & table.measure.isin(["pearson", "split_half"])]
    rows = []
    for ref in ("smx", "smh"):
        sub = utt[(utt.reference == ref) & (utt.measure == "pearson") & (utt.attention != "")
                  & (utt.attention != "smh")]
        if sub.empty:
            continue
        everyone = sorted(sub.utterance.unique())
        cal, rep = calibration_split(everyone, calibration, seed)

        def mean_on(att, ids, sub=sub, ref=ref):
            return fisher_mean(_values_by_utterance(sub, att, ref, "pearson", ids))

        cands = sorted(sub.attention.unique())
        picks = [(a, "fixed", everyone) for a in fixed if a in cands]
        if cal and rep:
            best_cal = max(cands, key=lambda a: np.nan_to_num(mean_on(a, cal), nan=-np.inf))
            picks.append((best_cal, f"best on {len(cal)} calibration utterances", rep))
        best_in = max(cands, key=lambda a: np.nan_to_num(mean_on(a, everyone), nan=-np.inf))
        picks.append((best_in, "in-sample best (biased up)", everyone))
        for att, how, ids in picks:
            obs = _values_by_utterance(sub, att, ref, "pearson", ids)
            raw = dataset_aggregate(obs, "pearson", n_boot=n_boot, seed=seed, ci=ci)
            row = {"reference": ref, "aggregate": att, "selection": how, "n_utterances": raw["n_utterances"],
                   "pearson": raw["value"], "pearson_low": raw["ci_low"], "pearson_high": raw["ci_high"]}
            halves = _values_by_utterance(utt, "", ref, "split_half", ids)
            if any(np.isfinite(h).any() for h in halves):
                cor = dataset_corrected(obs, halves, n_boot=n_boot, seed=seed, ci=ci)
                row.update(reliability=cor["reliability"]["value"], reliability_low=cor["reliability"]["ci_low"],
                           reliability_high=cor["reliability"]["ci_high"],
                           corrected=cor["pearson_corrected"]["value"],
                           corrected_low=cor["pearson_corrected"]["ci_low"],
                           corrected_high=cor["pearson_corrected"]["ci_high"])
            rows.append(row)
    cols = ["reference", "aggregate", "selection", "n_utterances", "pearson", "pearson_low", "pearson_high",
            "reliability", "reliability_low", "reliability_high", "corrected", "corrected_low", "corrected_high"]
    return pd.DataFrame(rows, columns=cols)


def _ci(lo, hi) -> str:
    return f"[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) and np.isfinite(hi) else ""


def paper_comparison(table: pd.DataFrame, **kw) -> pd.DataFrame:
    """:func:`study_headline` as a readable table beside Papi et al. 2025's numbers (SMX: best ≈ 0.58 at 20 000
    masks; SMH: 0.52–0.75). ``ours`` is the raw dataset-level Pearson; ``corrected`` divides it by the square root of
    the SPES map's split-half reliability (the correlation with the map at infinite masks)."""
    paper = {"smx": "≈ 0.58 (best aggregate)", "smh": "0.52–0.75"}
    rows = []
    for r in study_headline(table, **kw).itertuples(index=False):
        rows.append({"comparison": f"Pearson(CA, {r.reference.upper()})", "aggregate": r.aggregate,
                     "selection": r.selection, "n": r.n_utterances, "ours": round(float(r.pearson), 3),
                     "95% CI": _ci(r.pearson_low, r.pearson_high),
                     "reliability": "" if pd.isna(r.reliability) else f"{r.reliability:.2f} "
                                                                      + _ci(r.reliability_low, r.reliability_high),
                     "corrected": "" if pd.isna(r.corrected) else f"{r.corrected:.2f} "
                                                                  + _ci(r.corrected_low, r.corrected_high),
                     "paper": paper[r.reference]})
    return pd.DataFrame(rows, columns=["comparison", "aggregate", "selection", "n", "ours", "95% CI",
                                       "reliability", "corrected", "paper"])


def grid_ablation(store: str | Path | ResultStore, variants: dict[str, CompareConfig] | None = None,
                  aggregates: tuple[str, ...] = ("all", "norm:all", "last_layer"), n_boot: int = 1000,
                  seed: int = 0) -> pd.DataFrame:
    """How the comparison grid changes the answer: dataset Pearson(CA, SMX) per grid variant, split by the parity of
    each utterance's audio frame count (a ragged last pooling group exists only for odd counts).

    Default variants: ``sum+minmax`` (sums over frequency and frame pairs, then per-token min-max: the grid before
    the fix), ``mean+zscore`` (the study's default), ``max+zscore`` (2-D max pooling). Returns columns variant,
    attention, frames (odd / even / all), value, ci_low, ci_high, n_utterances.
    """
    variants = variants or {"sum+minmax": CompareConfig(pool="sum", normalize="minmax"),
                            "mean+zscore": CompareConfig(),
                            "max+zscore": CompareConfig(pool="max")}
    st = store if isinstance(store, ResultStore) else open_store(store)
    smx = by_name("smx").kind
    uids = [u for u in st.utterances() if {ATTENTION, smx} <= set(st.kinds(u))]
    if not uids:
        raise XattnError(f"{st.path}: no utterance has cross-attention and SMX; run notebook 02 first")
    # SMX is stored cut to the audio frames: its frame count is the utterance's
    parity = {u: "odd" if st.load(u, smx).sizes["frame"] % 2 else "even" for u in uids}
    rows = []
    for name, cfg in variants.items():
        cfg = dataclasses.replace(cfg, per_head=False)
        maps = {u: utterance_maps(st, u, cfg) for u in uids}
        for a in aggregates:
            values = {u: utterance_agreement(m[a], m["smx"], "pearson") for u, m in maps.items()}
            for frames in ("odd", "even", "all"):
                group = [np.array([v]) for u, v in values.items() if frames == "all" or parity[u] == frames]
                if not group:
                    continue
                s = dataset_aggregate(group, "pearson", n_boot=n_boot, seed=seed)
                rows.append({"variant": name, "attention": a, "frames": frames, "value": s["value"],
                             "ci_low": s["ci_low"], "ci_high": s["ci_high"], "n_utterances": s["n_utterances"]})
    return pd.DataFrame(rows)
