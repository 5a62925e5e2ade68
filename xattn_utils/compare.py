"""The study's answer over a result store: how well does cross-attention agree with saliency?

``compare_store(store)`` reads, per utterance, the ``attention`` group and every saliency group present, puts all
maps on the encoder-frame grid ``(I, T')`` and returns the tidy agreement table of
:func:`xattn_utils.agreement.agreement_table` (token, utterance and dataset levels, bootstrap intervals).

Conventions (all parameters, recorded in ``agreement.json``):
- attention aggregates: every layer's head mean (``layer{l}``), ``last_layer``, ``all``, Whisper's
  ``alignment_heads`` when the model has them, and optionally every head (``L{l}H{h}``); each also norm-based
  (``norm:`` prefix; Kobayashi et al. 2020: weight x ||W_O^h (W_V^h h_j + b)||);
- references: ``smx`` (SPES on X: relevance summed over frequency, pooled to encoder frames with the model's own
  downsampling), ``smh`` (SPES on H), and gradient maps (``saliency_x``, ``ixg_x``, ``ig_x`` pooled from |attribution|;
  ``*_h`` as stored); plus ``smh`` vs ``smx`` (how much the encoder mixes context);
- special tokens: the forced prompt is never scored; the end-of-text row is excluded by default;
- each token's row is min-max normalized before comparing (``normalize``; see
  :func:`xattn_utils.agreement.normalize_rows`), so flattened correlations compare where relevance lies rather
  than how fragile each token is. ``normalize="none"`` gives the raw maps.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .agreement import agreement_table, ca_selections, normalize_rows, smx_to_encoder_frames
from .errors import XattnError
from .provenance import provenance
from .store import ResultStore, atomic_write_text, open_store

GRADIENT_X = ("saliency_x", "ixg_x", "ig_x")
GRADIENT_H = ("saliency_h", "ixg_h", "ig_h")
PAPER = {"pearson_ca_smx_best": 0.58, "pearson_ca_smh_range": (0.52, 0.75), "deletion_ca": 41.2,
         "deletion_smx": 52.9}


@dataclass
class CompareConfig:
    """What to compare and how (recorded in provenance)."""

    per_head: bool = True
    norm_based: bool = True
    special: str = "exclude"  # or "include": the end-of-text row
    normalize: str = "minmax"
    measures: tuple[str, ...] = ("pearson", "pearson_r2", "spearman", "kendall", "topk_overlap")
    levels: tuple[str, ...] = ("token", "utterance", "dataset")
    topk: float = 0.1
    exclude_near_silence: bool = True  # leave out hypotheses made from (near-)silence (flagged by extraction)
    n_boot: int = 1000
    seed: int = 0


def utterance_maps(store: ResultStore, uid: str, cfg: CompareConfig | None = None) -> dict:
    """One utterance's named ``(I, T')`` maps (attention aggregates and references) plus ``n_frames``/``tokens``."""
    cfg = cfg or CompareConfig()
    att = store.load(uid, "attention")
    kinds = set(store.kinds(uid))
    k = int(att.attrs["frames_per_encoder_frame"])
    rows = slice(0, att.sizes["token"] - 1) if cfg.special == "exclude" else slice(None)
    ca = att.cross_attention.values
    heads = att.attrs.get("provenance", {}).get("model", {}).get("alignment_heads")
    maps = dict(ca_selections(ca, per_head=cfg.per_head, alignment_heads=heads))
    if cfg.norm_based:
        weighted = ca * att.value_norms.values[:, :, None, :]
        maps.update({f"norm:{n}": m for n, m in ca_selections(weighted, per_head=cfg.per_head,
                                                               alignment_heads=heads).items()})
    if "spes_x" in kinds:
        maps["smx"] = smx_to_encoder_frames(store.load(uid, "spes_x").saliency.values, k)
    if "spes_h" in kinds:
        maps["smh"] = store.load(uid, "spes_h").saliency.values
    for kind in GRADIENT_X:
        if kind in kinds:
            maps[kind] = smx_to_encoder_frames(store.load(uid, kind).absolute.values, k)
    for kind in GRADIENT_H:
        if kind in kinds:
            maps[kind] = store.load(uid, kind).absolute.values
    t_enc = int(att.sizes["enc_frame"])
    out = {n: normalize_rows(np.asarray(m)[rows, :t_enc], cfg.normalize) for n, m in maps.items()}
    out["n_frames"] = t_enc
    out["tokens"] = [str(t) for t in att.token_str.values[rows]]
    return out


def references_in(maps: dict) -> list[str]:
    return [r for r in ("smx", "smh", *GRADIENT_X, *GRADIENT_H) if r in maps]


def compare_store(store: str | Path | ResultStore, out_dir: str | Path | None = None,
                  cfg: CompareConfig | None = None, progress: bool = True) -> pd.DataFrame:
    """Every agreement measure for every utterance with attention and saliency; writes ``agreement.*`` to out_dir."""
    from tqdm.auto import tqdm

    cfg = cfg or CompareConfig()
    store = store if isinstance(store, ResultStore) else open_store(store)
    data, skipped = {}, {}
    for uid in tqdm(store.utterances(), desc="maps", disable=not progress):
        kinds = store.kinds(uid)
        if "attention" not in kinds or not ({"spes_x", "spes_h"} | set(GRADIENT_X) | set(GRADIENT_H)) & set(kinds):
            skipped[uid] = f"kinds stored: {kinds}"
            continue
        if cfg.exclude_near_silence and store.near_silence(uid):
            skipped[uid] = "near silence: its hypothesis was made from (near-)silent audio"
            continue
        data[uid] = utterance_maps(store, uid, cfg)
    if not data:
        raise XattnError(f"{store.path}: no utterance has both cross-attention and a saliency map; "
                         "run `xattn saliency` (or notebook 02) first")
    refs = sorted(set.intersection(*(set(references_in(m)) for m in data.values())),
                  key=lambda r: ("smx", "smh", *GRADIENT_X, *GRADIENT_H).index(r))
    first = next(iter(data.values()))
    attention = [n for n in first if n not in refs and n not in ("n_frames", "tokens", "smx", "smh")
                 and n not in GRADIENT_X + GRADIENT_H]
    prov = store.attrs.get("model", {})
    model = prov.get("model_id", "")
    kw = dict(measures=cfg.measures, levels=cfg.levels, topk=cfg.topk, n_boot=cfg.n_boot, seed=cfg.seed, model=model)
    tables = [agreement_table(data, references=refs, attention=attention, **kw)]
    if {"smx", "smh"} <= set(refs):
        tables.append(agreement_table(data, references=["smx"], attention=["smh"], **kw))
    table = pd.concat(tables, ignore_index=True)
    if out_dir is not None:
        write_table(table, Path(out_dir), "agreement",
                    provenance(model=prov, data={"store": str(store.path), "utterances": sorted(data),
                                                 "skipped": skipped}, params=asdict(cfg), seed=cfg.seed))
    return table


def write_table(df: pd.DataFrame, out_dir: Path, name: str, prov: dict) -> None:
    """``name.parquet``, ``name.csv`` and ``name.json`` (provenance), each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for suffix, write in ((".parquet", lambda p: df.to_parquet(p, index=False)),
                          (".csv", lambda p: df.to_csv(p, index=False))):
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=suffix + ".tmp")
        os.close(fd)
        write(tmp)
        os.replace(tmp, out_dir / f"{name}{suffix}")
    atomic_write_text(out_dir / f"{name}.json", json.dumps(prov, indent=1, default=str))


def headline(table: pd.DataFrame, measure: str = "pearson") -> pd.DataFrame:
    """Dataset-level values of ``measure`` per attention aggregate and reference, best first, beside the paper."""
    d = table[(table.level == "dataset") & (table.measure == measure)]
    d = d.sort_values("value", ascending=False)[["attention", "reference", "value", "ci_low", "ci_high", "n"]]
    return d.reset_index(drop=True)


def paper_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Our best dataset-level Pearson(CA, SMX) and Pearson(CA, SMH) beside Papi et al. 2025's numbers."""
    h = headline(table)
    rows = []
    for ref, paper in (("smx", "≈ 0.58 (best aggregate)"), ("smh", "0.52–0.75")):
        sub = h[(h.reference == ref) & (h.attention != "smh")]
        if len(sub):
            b = sub.iloc[0]
            rows.append({"comparison": f"Pearson(CA, {ref.upper()})", "best aggregate": b.attention,
                         "ours": round(float(b.value), 3),
                         "95% CI": f"[{b.ci_low:.3f}, {b.ci_high:.3f}]", "paper": paper})
    return pd.DataFrame(rows)
