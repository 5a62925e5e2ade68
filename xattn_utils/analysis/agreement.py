"""Putting explanation maps on one grid and measuring how well cross-attention agrees with them.

Grid: every map is brought to ``(I, T')`` — scored tokens × encoder frames — the grid cross-attention lives on.
``L`` decoder layers, ``H`` heads, ``I`` scored tokens, ``T`` input frames, ``F`` features, ``T'`` encoder frames.

Measures (row-wise per token, on the flattened map per utterance; aggregated over a data set with a seeded
percentile bootstrap over utterances):

* ``pearson`` (the paper's choice: magnitudes matter), ``pearson_r2`` (ρ², the share of variance explained),
  ``spearman`` (ranks; robust to the heavy tails of saliency), ``kendall`` (τ-b, pair concordance),
* ``topk_overlap``: the fraction of the top-k% reference (saliency) cells that are also top-k% attention cells.

A constant row or map (e.g. an all-zero saliency row) has no correlation: it gives NaN, which is kept in token and
utterance rows, excluded from every dataset mean, and counted in the ``n_nan`` column.
"""
from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..attribution.grids import normalize_rows, pool_to_encoder_frames  # noqa: F401  (re-exported: the grid lives in grids.py)
from ..errors import XattnError
from ..maps import names as map_names

MEASURES = ("pearson", "pearson_r2", "spearman", "kendall", "topk_overlap")
LEVELS = ("token", "utterance", "dataset", "dataset_token")
_META_KEYS = ("n_frames", "tokens", "utterance", "halves")
# Emitted for references whose maps come with two independent halves (``halves`` in an utterance's entry):
# split_half = Pearson(half A, half B); reliability = Spearman-Brown of it (the full map's reliability);
# pearson_corrected = pearson / sqrt(reliability) (disattenuated: the correlation with the converged map).
RELIABILITY_MEASURES = ("split_half", "reliability", "pearson_corrected")


def _torch_of(x):
    """torch when ``x`` is a torch tensor, else None. Maps may be tensors or arrays; a tensor means torch is already
    imported by whoever made it, so this module never imports torch itself."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and isinstance(x, torch.Tensor) else None


# --------------------------------------------------------------------------------------------------- grids
def smx_to_encoder_frames(smx, frames_per_encoder_frame: int, reduce: str = "sum"):
    """Input-frame map ``(I, T, F)`` -> ``(I, T')`` by **sums** (``reduce="abs"``: sums of magnitudes).

    For additive attributions only (gradient amounts). SPES cells are mean KLs, not amounts: pool them with
    :func:`xattn_utils.attribution.grids.pool_to_encoder_frames` (``pool="mean"``), which
    :mod:`xattn_utils.analysis.compare` uses. Sums over a ragged last group (odd ``T``) cover one input frame instead
    of ``k``.
    """
    if reduce not in ("sum", "abs"):
        raise XattnError(f"reduce={reduce!r}: use 'sum' (relevance maps) or 'abs' (signed gradient maps)")
    k = int(frames_per_encoder_frame)
    if k < 1 or smx.ndim != 3:
        raise XattnError(f"smx_to_encoder_frames expects an (I, T, F) map and k >= 1, got shape "
                         f"{tuple(smx.shape)} and k={k}")
    x = abs(smx) if reduce == "abs" else smx
    x = x.sum(-1)  # (I, T)
    n_i, t = x.shape
    pad = (-t) % k
    if pad:
        torch = _torch_of(x)
        x = torch.nn.functional.pad(x, (0, pad)) if torch else np.pad(x, ((0, 0), (0, pad)))
    return x.reshape(n_i, (t + pad) // k, k).sum(-1)


def ca_aggregate(ca, layers: Sequence[int] | None = None, heads: Iterable | None = None):
    """Mean cross-attention over a set of (layer, head): ``(L, H, I, T')`` -> ``(I, T')``.

    Args:
        layers: layer indices (negative allowed; None: all).
        heads: head indices applied to every chosen layer (None: all), or an iterable of ``(layer, head)`` pairs
            (then ``layers`` must be None), e.g. a model's alignment heads.
    """
    if ca.ndim != 4:
        raise XattnError(f"cross-attention must be (L, H, I, T'), got shape {tuple(ca.shape)}")
    n_l, n_h = ca.shape[:2]
    heads = None if heads is None else list(heads)
    if heads and not np.isscalar(heads[0]) and getattr(heads[0], "ndim", None) != 0:
        if layers is not None:
            raise XattnError("pass either layers (+ head indices) or a set of (layer, head) pairs, not both")
        pairs = [(int(l) % n_l, int(h) % n_h) for l, h in heads]
        li = [p[0] for p in pairs]
        hi = [p[1] for p in pairs]
        return ca[li, hi].mean(0)
    li = list(range(n_l)) if layers is None else [int(l) % n_l for l in layers]
    hi = list(range(n_h)) if heads is None else [int(h) % n_h for h in heads]
    if not li or not hi:
        raise XattnError("empty selection of layers/heads: choose at least one")
    return ca[li][:, hi].mean((0, 1)) if isinstance(ca, np.ndarray) else ca[li][:, hi].mean(dim=(0, 1))


def ca_all(ca):
    """``(L, H, I, T')`` -> ``(I, T')`` mean over every layer and head."""
    return ca_aggregate(ca)


def ca_last_layer(ca):
    """``(L, H, I, T')`` -> ``(I, T')`` head mean of the last decoder layer."""
    return ca_aggregate(ca, layers=[-1])


def ca_layer_means(ca):
    """``(L, H, I, T')`` -> ``(L, I, T')`` head mean of each layer."""
    return ca.mean(1) if isinstance(ca, np.ndarray) else ca.mean(dim=1)


def ca_alignment_heads(ca, alignment_heads: Iterable[tuple[int, int]]):
    """``(L, H, I, T')`` -> ``(I, T')`` mean over the model's alignment heads (e.g. Whisper's)."""
    return ca_aggregate(ca, heads=[tuple(p) for p in alignment_heads])


def ca_selections(ca, per_head: bool = False, per_layer: bool = True,
                  alignment_heads: Iterable[tuple[int, int]] | None = None,
                  sets: Mapping[str, Iterable[tuple[int, int]]] | None = None) -> dict[str, Any]:
    """Named ``(I, T')`` aggregates, ready to be attention entries of :func:`agreement_table`.

    Names: ``all``, ``last_layer``, ``layer{l}`` (per_layer), ``L{l}H{h}`` (per_head), ``alignment_heads``, and
    the keys of ``sets`` (user-chosen sets of (layer, head)).
    """
    out: dict[str, Any] = {"all": ca_all(ca), "last_layer": ca_last_layer(ca)}
    if per_layer:
        means = ca_layer_means(ca)
        out.update({f"layer{l}": means[l] for l in range(ca.shape[0])})
    if per_head:
        out.update({f"L{l}H{h}": ca[l, h] for l in range(ca.shape[0]) for h in range(ca.shape[1])})
    if alignment_heads is not None:
        out["alignment_heads"] = ca_alignment_heads(ca, alignment_heads)
    for name, pairs in (sets or {}).items():
        out[name] = ca_aggregate(ca, heads=[tuple(p) for p in pairs])
    return out


# --------------------------------------------------------------------------------------------------- measures
def _np(x) -> np.ndarray:
    if _torch_of(x):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _constant(x: np.ndarray) -> np.ndarray:
    """(N, n) -> (N,) rows with no variation (or holding a non-finite value)."""
    return ~(np.isfinite(x).all(-1)) | (x.max(-1) == x.min(-1))


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip((a * b).sum(-1) / den, -1.0, 1.0)


def _kendall_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # τ-b via scipy's O(n log n) algorithm, one row at a time (a vectorized pair count would be O(n²) memory).
    return np.array([stats.kendalltau(x, y).statistic for x, y in zip(a, b)], dtype=np.float64)


def _topk_rows(att: np.ndarray, ref: np.ndarray, topk: float) -> np.ndarray:
    n = att.shape[-1]
    m = min(n, max(1, round(topk * n)))
    top_ref = np.argpartition(-ref, m - 1, axis=-1)[:, :m]
    top_att = np.argpartition(-att, m - 1, axis=-1)[:, :m]
    in_att = np.zeros(att.shape, dtype=bool)
    np.put_along_axis(in_att, top_att, True, axis=-1)
    return np.take_along_axis(in_att, top_ref, axis=-1).sum(-1) / m


def row_agreement(att, ref, measure: str, topk: float = 0.1) -> np.ndarray:
    """Agreement of each row pair: ``(N, n)`` attention and reference -> ``(N,)``; NaN where a row is constant.

    Pearson, Spearman (Pearson of average ranks) and top-k overlap are vectorized over rows; Kendall τ-b loops.
    """
    a, r = _np(att), _np(ref)
    if a.shape != r.shape or a.ndim != 2:
        raise XattnError(f"agreement needs two (N, n) arrays of one shape, got {a.shape} and {r.shape}")
    bad = _constant(a) | _constant(r)
    a = np.where(bad[:, None], 0.0, a)
    r = np.where(bad[:, None], 0.0, r)
    a[bad, 0] = r[bad, 0] = 1.0  # keep the algorithms away from constant rows; their result is discarded
    if measure in ("pearson", "pearson_r2"):
        out = _pearson_rows(a, r)
        out = out * out if measure == "pearson_r2" else out
    elif measure == "spearman":
        out = _pearson_rows(stats.rankdata(a, axis=-1), stats.rankdata(r, axis=-1))
    elif measure == "kendall":
        out = _kendall_rows(a, r)
    elif measure == "topk_overlap":
        if not 0 < topk <= 1:
            raise XattnError(f"topk={topk}: give the top fraction of cells, in (0, 1]")
        out = _topk_rows(a, r, topk)
    else:
        raise XattnError(f"unknown measure {measure!r}: use one of {', '.join(MEASURES)}")
    out = np.asarray(out, dtype=np.float64)
    out[bad] = np.nan
    return out


def token_agreement(att, ref, measure: str, topk: float = 0.1) -> np.ndarray:
    """Per token: ``(I, T')`` × ``(I, T')`` -> ``(I,)``."""
    return row_agreement(att, ref, measure, topk)


def utterance_agreement(att, ref, measure: str, topk: float = 0.1) -> float:
    """Per utterance, on the flattened maps: ``(I, T')`` × ``(I, T')`` -> scalar (NaN if a map is constant)."""
    return float(row_agreement(_np(att).reshape(1, -1), _np(ref).reshape(1, -1), measure, topk)[0])


def fisher_mean(r) -> float:
    """Mean correlation through Fisher's z: tanh(mean(arctanh r)); NaNs excluded; NaN if none is left."""
    r = _np(r).ravel()
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan")
    return float(np.tanh(np.arctanh(np.clip(r, -1 + 1e-12, 1 - 1e-12)).mean()))


def _value_sums(groups: Sequence, fisher: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the sum of its finite values (of their Fisher z when ``fisher``) and their count, shapes (n,)."""
    arrs = [_np(g).ravel() for g in groups]
    finite = [g[np.isfinite(g)] for g in arrs]
    z = [np.arctanh(np.clip(g, -1 + 1e-12, 1 - 1e-12)) if fisher else g for g in finite]
    return np.array([v.sum() for v in z]), np.array([v.size for v in z], dtype=np.float64)


def _bootstrap_means(series: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int, seed: int,
                     fisher: bool = True) -> list[tuple[float, np.ndarray]]:
    """Pooled means of per-utterance values and their bootstrap replicates, utterances resampled with replacement.

    Args:
        series: per series, ``(sums, counts)`` over the same n utterances (shapes (n,), n >= 1; see
            :func:`_value_sums`). Every series is resampled with the same draws (a paired bootstrap).
        n_boot, seed: number of resamples and the seed of their draws.
        fisher: sums are of Fisher z; means go back through tanh.
    Returns: per series ``(value, boot)``: the mean over all utterances and the ``(n_boot,)`` resampled means.
    """
    n = len(series[0][0])
    idx = np.random.default_rng(seed).integers(0, n, size=(int(n_boot), n))
    inv = np.tanh if fisher else (lambda v: v)
    return [(inv(s.sum() / c.sum()), inv(s[idx].sum(1) / c[idx].sum(1))) for s, c in series]


def dataset_aggregate(groups: Sequence, measure: str, n_boot: int = 1000, seed: int = 0,
                      ci: float = 0.95) -> dict[str, float]:
    """Dataset value of per-utterance (or per-token, grouped by utterance) agreement values, with a bootstrap CI.

    Args:
        groups: one array of values per utterance (one value each for utterance-level values, I values each for
            token-level values). NaNs are excluded and counted.
        measure: Pearson values (and ρ², given as ρ² — the aggregate squares the Fisher-mean ρ, recovered from
            sqrt) are averaged through Fisher's z; the other measures by their plain mean.
        n_boot, seed, ci: percentile bootstrap that resamples utterances with replacement.
    Returns: {value, ci_low, ci_high, n (values used), n_nan (values excluded), n_utterances, boot (the
        bootstrap replicates of the value; absent when no value is valid)}.
    """
    if measure == "pearson_r2":
        raise XattnError("aggregate pearson_r2 from the Pearson values (agreement_table does this)")
    fisher = measure == "pearson"
    n_nan = int(sum((~np.isfinite(_np(g))).sum() for g in groups))
    sums, counts = _value_sums(groups, fisher)
    keep = counts > 0
    res = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": int(counts.sum()),
           "n_nan": n_nan, "n_utterances": int(keep.sum())}
    if not keep.any():
        return res
    [(value, boot)] = _bootstrap_means([(sums[keep], counts[keep])], n_boot, seed, fisher)
    res["value"] = float(value)
    res["ci_low"], res["ci_high"] = bootstrap_interval(boot, ci, res["n_utterances"])
    res["boot"] = boot
    return res


def bootstrap_interval(boot, ci: float, n_utterances: int) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates over utterances (NaN replicates ignored).

    NaN, NaN for fewer than two utterances (every resample repeats the one utterance: a zero-width interval would
    claim a certainty the data cannot give) and where no replicate is finite.
    """
    boot = np.asarray(boot, dtype=np.float64)
    if n_utterances < 2 or not np.isfinite(boot).any():
        return float("nan"), float("nan")
    alpha = 100 * (1 - ci) / 2
    lo, hi = np.nanpercentile(boot, [alpha, 100 - alpha])
    return float(lo), float(hi)


def _square_summary(d: dict, ci: float) -> dict:
    """ρ-summary -> ρ²-summary (the CI of ρ² from the bootstrap ρ samples, so a CI spanning 0 starts at 0)."""
    out = dict(d)
    out["value"] = d["value"] ** 2
    if "boot" in d:
        out["ci_low"], out["ci_high"] = bootstrap_interval(d["boot"] ** 2, ci, d["n_utterances"])
    return out


# --------------------------------------------------------------------------------------------------- reliability
def spearman_brown(r, factor: float = 2.0):
    """Reliability of a map built from ``factor`` times the samples of maps whose correlation is ``r``:
    ``factor·r / (1 + (factor − 1)·r)``. Works elementwise on arrays."""
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return factor * r / (1.0 + (factor - 1.0) * r)


# Below this reliability the noise-corrected correlation is undefined (NaN, with the reason in the ``note`` column).
# Chosen on the stored tables of a default-study run (5 runs, 72 672 token rows with a corrected value): |corrected|
# exceeded 1 in 21 % of the rows whose reliability was in (0, 0.1], 4.8 % in (0.1, 0.2], under 1 % above 0.2 and
# 0.04 % above 0.5; the 99th percentile of |corrected| was 5.8, 1.39, then under 1 from 0.2 up. Utterance and
# dataset rows (reliability >= 0.1 there) never exceeded 1.
RELIABILITY_FLOOR = 0.2
NOTE_BELOW_FLOOR = f"undefined: reliability below {RELIABILITY_FLOOR}"
NOTE_OUT_OF_RANGE = "undefined: |r / sqrt(reliability)| > 1 (sampling noise of r)"


def disattenuate(r_obs, r_half, floor: float = RELIABILITY_FLOOR, beyond: str = "nan"):
    """Noise-corrected correlation (Spearman 1904): ``r_obs / sqrt(spearman_brown(r_half))``, always in [-1, 1].

    ``r_obs``: observed correlation of a deterministic map (cross-attention) with a sampled one; ``r_half``: the
    correlation between two independent halves of the sampled map. NaN where the reliability is below ``floor``
    (:data:`RELIABILITY_FLOOR`: dividing by the root of a reliability near 0 explodes) and, with ``beyond="nan"``,
    where the ratio exceeds 1 in magnitude (``r_obs`` is itself noisy); ``beyond="clip"`` clips it to ±1 instead
    (bootstrap replicates, so that intervals are not cut). :func:`corrected_note` says which.
    """
    rel = spearman_brown(r_half)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = rel >= max(floor, 1e-12)
        out = np.where(ok, np.asarray(r_obs, dtype=np.float64) / np.sqrt(np.where(ok, rel, 1.0)), np.nan)
        if beyond == "clip":
            return np.clip(out, -1.0, 1.0)
        return np.where(np.abs(out) > 1.0, np.nan, out)


def corrected_note(r_obs, r_half, floor: float = RELIABILITY_FLOOR):
    """Why :func:`disattenuate` is NaN, elementwise (an object array, or a str for scalars): ``""`` where it is
    defined or where ``r_obs`` or the reliability is itself NaN, else :data:`NOTE_BELOW_FLOOR` or
    :data:`NOTE_OUT_OF_RANGE`."""
    rel = spearman_brown(r_half)
    obs = np.asarray(r_obs, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = rel < max(floor, 1e-12)
        beyond = ~below & (np.abs(obs / np.sqrt(np.where(below, 1.0, rel))) > 1.0)
    note = np.where(below & np.isfinite(obs), NOTE_BELOW_FLOOR, np.where(beyond, NOTE_OUT_OF_RANGE, ""))
    return str(note) if np.ndim(note) == 0 else note.astype(object)


def dataset_corrected(obs_groups: Sequence, half_groups: Sequence, n_boot: int = 1000, seed: int = 0,
                      ci: float = 0.95) -> dict[str, Any]:
    """Dataset-level reliability and noise-corrected Pearson with a paired bootstrap over utterances.

    Args:
        obs_groups: per utterance, the observed Pearson value(s) of one attention map with the reference;
            None to compute only the reliability.
        half_groups: per utterance (same order), the split-half Pearson value(s) of the reference.
    Returns: ``{"split_half": summary, "reliability": summary, "pearson_corrected": summary or None}``, each summary
        ``{value, ci_low, ci_high, n, n_nan, n_utterances}``. Both parts are Fisher means over the utterances kept
        (those with a finite value in both), and every bootstrap replicate recomputes both from the same resample.
        An interval is NaN where its point is (an undefined corrected value has no interval either) and for fewer
        than two utterances (:func:`bootstrap_interval`).
    """
    hs, hc = _value_sums(half_groups, fisher=True)
    keep = hc > 0
    if obs_groups is not None:
        os_, oc = _value_sums(obs_groups, fisher=True)
        keep &= oc > 0
    n_nan = int(sum((~np.isfinite(_np(g))).sum() for g in half_groups))
    n_utt = int(keep.sum())
    empty = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0, "n_nan": n_nan,
             "n_utterances": 0}
    out: dict[str, Any] = {"split_half": dict(empty), "reliability": dict(empty),
                           "pearson_corrected": None if obs_groups is None else dict(empty)}
    if n_utt == 0:
        return out

    def summary(values: np.ndarray, point: float, n: int) -> dict:
        lo, hi = bootstrap_interval(values, ci, n_utt) if np.isfinite(point) else (np.nan, np.nan)
        return {"value": float(point), "ci_low": float(lo), "ci_high": float(hi), "n": int(n), "n_nan": n_nan,
                "n_utterances": n_utt}

    series = [(hs[keep], hc[keep])] + ([(os_[keep], oc[keep])] if obs_groups is not None else [])
    (half_point, half_boot), *obs = _bootstrap_means(series, n_boot, seed)
    out["split_half"] = summary(half_boot, half_point, hc[keep].sum())
    out["reliability"] = summary(spearman_brown(half_boot), float(spearman_brown(half_point)), hc[keep].sum())
    if obs:
        (obs_point, obs_boot), = obs
        out["pearson_corrected"] = summary(disattenuate(obs_boot, half_boot, beyond="clip"),
                                           float(disattenuate(obs_point, half_point)), oc[keep].sum())
        out["pearson_corrected"]["note"] = corrected_note(obs_point, half_point)
    return out


# --------------------------------------------------------------------------------------------------- attention names
NORM_PREFIX = "norm:"  # norm-based weighting of an aggregate (compare: ``norm:all``, ``norm:L3H2``, ...)
ATTENTION_COLUMNS = ("aggregate", "layer", "head", "weighting", "mixing")
_HEAD_NAME = re.compile(r"L(\d+)H(\d+)")
_LAYER_NAME = re.compile(r"layer(\d+)")


def composed_name(method: str, aggregate: str, depth: int | None = None) -> str:
    """``rollout∘all`` (every encoder layer undone) or ``rollout[2]∘all`` (the top 2 layers undone)."""
    return f"{method}∘{aggregate}" if depth is None else f"{method}[{depth}]∘{aggregate}"


def parse_composed(name: str) -> tuple[str, str | None, int | None]:
    """``alti[2]∘norm:all`` -> ("norm:all", "alti", 2); ``rollout∘all`` -> ("all", "rollout", None) (every layer);
    a plain aggregate -> (name, None, 0)."""
    if "∘" not in name:
        return name, None, 0
    head, agg = name.split("∘", 1)
    if head.endswith("]") and "[" in head:
        method, k = head[:-1].split("[", 1)
        return agg, method, int(k)
    return agg, head, None


def attention_columns(name: str, references: Iterable[str] = ()) -> dict[str, Any]:
    """What an attention entry's name says, as the agreement table's columns :data:`ATTENTION_COLUMNS`.

    ``L3H2`` -> aggregate ``head``, layer 3, head 2, weighting ``attention``; ``norm:layer1`` -> ``layer``, 1, None,
    ``norm``; ``all``, ``last_layer``, ``alignment_heads`` and user-named sets -> themselves (layer and head None);
    ``rollout[2]∘norm:all`` (CA carried back through encoder mixing, see
    :func:`composed_name`) -> the aggregate's columns and mixing ``rollout[2]``.
    Reliability rows (``""``) and a saliency map compared as attention (``smh`` vs ``smx``: a name of
    :mod:`xattn_utils.maps` or of ``references``) -> None but for mixing.
    """
    aggregate, method, depth = parse_composed(name)
    mixing = None if method is None else (method if depth is None else f"{method}[{depth}]")
    if not aggregate or aggregate in map_names() or aggregate in set(references):
        return {**dict.fromkeys(ATTENTION_COLUMNS), "mixing": mixing}
    weighting = "norm" if aggregate.startswith(NORM_PREFIX) else "attention"
    aggregate = aggregate.removeprefix(NORM_PREFIX)
    layer = head = None
    if m := _HEAD_NAME.fullmatch(aggregate):
        aggregate, layer, head = "head", int(m[1]), int(m[2])
    elif m := _LAYER_NAME.fullmatch(aggregate):
        aggregate, layer = "layer", int(m[1])
    return {"aggregate": aggregate, "layer": layer, "head": head, "weighting": weighting, "mixing": mixing}


def with_attention_columns(table: pd.DataFrame, references: Iterable[str] | None = None) -> pd.DataFrame:
    """``table`` with the :data:`ATTENTION_COLUMNS` parsed from its ``attention`` names (:func:`attention_columns`;
    ``references``: default the table's), placed after ``attention``. A table that has them is returned as it is:
    this adds them to tables written before they existed."""
    if all(c in table.columns for c in ATTENTION_COLUMNS):
        return table
    refs = set(table.reference) if references is None else set(references)
    codes, names = pd.factorize(table.attention)
    parsed = pd.DataFrame([attention_columns(str(a), refs) for a in names], columns=list(ATTENTION_COLUMNS))
    out = table.drop(columns=[c for c in ATTENTION_COLUMNS if c in table.columns])
    at = out.columns.get_loc("attention") + 1
    for i, c in enumerate(ATTENTION_COLUMNS):
        values = parsed[c].astype("Int64" if c in ("layer", "head") else object).take(codes).to_numpy()
        out.insert(at + i, c, pd.array(values, dtype="Int64") if c in ("layer", "head") else values)
    return out


# --------------------------------------------------------------------------------------------------- table
_ROW_COLUMNS = ("utterance", "token", "token_text", "level", "attention", "reference", "measure", "value", "ci_low",
                "ci_high", "n", "n_nan", "note")  # note: why a value is undefined (pearson_corrected), else ""
TABLE_COLUMNS = ("model", *_ROW_COLUMNS[:5], *ATTENTION_COLUMNS, *_ROW_COLUMNS[5:])


@dataclass
class _Entry:
    """One utterance's checked maps: ``maps`` name -> (I, T'), ``token_text`` (I,) or None, ``halves`` reference ->
    two (I, T') half maps."""

    uid: str
    maps: dict[str, np.ndarray]
    token_text: np.ndarray | None
    halves: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def shape(self) -> tuple[int, int]:
        return next(iter(self.maps.values())).shape


@dataclass
class _Scores:
    """Per-utterance values the dataset levels aggregate, keyed in the order first computed: ``token`` and
    ``utterance``: (attention, reference, measure) -> one (I,) / (1,) array per utterance; ``half_token`` and
    ``half_utterance``: reference -> the split-half Pearson per utterance (NaN where it has no halves)."""

    token: dict[tuple[str, str, str], list[np.ndarray]] = field(default_factory=dict)
    utterance: dict[tuple[str, str, str], list[np.ndarray]] = field(default_factory=dict)
    half_token: dict[str, list[np.ndarray]] = field(default_factory=dict)
    half_utterance: dict[str, list[np.ndarray]] = field(default_factory=dict)


def _utterances(data) -> list[tuple[str, Mapping[str, Any]]]:
    if isinstance(data, Mapping):
        return [(str(k), v) for k, v in data.items()]
    return [(str(d.get("utterance", i)), d) for i, d in enumerate(data)]


def _checked_choices(measures: Sequence[str], levels: Sequence[str]) -> None:
    bad = [m for m in measures if m not in MEASURES] + [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise XattnError(f"unknown measures/levels {bad}: measures {MEASURES}, levels {LEVELS}")


def _computed_measures(measures: Sequence[str]) -> list[str]:
    """The measures computed from the maps (``pearson_r2`` is derived from ``pearson``)."""
    base = [m for m in measures if m != "pearson_r2"]
    if "pearson_r2" in measures and "pearson" not in base:
        base.append("pearson")
    return base


def _prepare(uid: str, maps: Mapping[str, Any], names: Sequence[str]) -> dict[str, np.ndarray]:
    missing = [n for n in names if n not in maps]
    if missing:
        raise XattnError(f"utterance {uid!r} has no map named {missing}; it has {sorted(maps)}")
    out = {n: _np(maps[n]) for n in names}
    for n, m in out.items():
        if m.ndim != 2:
            raise XattnError(f"utterance {uid!r}: map {n!r} must be (I, T'), got shape {m.shape}")
    rows = {m.shape[0] for m in out.values()}
    if len(rows) > 1:
        raise XattnError(f"utterance {uid!r}: maps have different token counts "
                         f"{ {n: m.shape[0] for n, m in out.items()} }; score the same hypothesis")
    n_frames = maps.get("n_frames")
    if n_frames is not None:
        short = [n for n, m in out.items() if m.shape[1] < int(n_frames)]
        if short:
            raise XattnError(f"utterance {uid!r}: maps {short} have fewer than n_frames={n_frames} frames")
        out = {n: m[:, : int(n_frames)] for n, m in out.items()}
    elif len({m.shape[1] for m in out.values()}) > 1:
        raise XattnError(f"utterance {uid!r}: maps have different frame counts "
                         f"{ {n: m.shape[1] for n, m in out.items()} }; add 'n_frames' (real encoder frames) "
                         "to the utterance's entry to cut them to the audio")
    return out


def _prepare_halves(uid: str, entry: Mapping[str, Any], references: Sequence[str],
                    maps: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The ``halves`` of an entry's references, cut like the maps and checked against the reference's shape."""
    out = {}
    for r, pair in (entry.get("halves") or {}).items():
        if r not in references:
            continue
        if len(pair) != 2:
            raise XattnError(f"utterance {uid!r}: halves of {r!r} must be a pair of (I, T') maps")
        n_t = maps[r].shape[1]
        a, b = (_np(h)[:, :n_t] for h in pair)
        if a.shape != maps[r].shape or b.shape != maps[r].shape:
            raise XattnError(f"utterance {uid!r}: halves of {r!r} have shapes {a.shape}, {b.shape}; the map has "
                             f"{maps[r].shape}")
        out[r] = (a, b)
    return out


def _entry(uid: str, entry: Mapping[str, Any], names: Sequence[str], references: Sequence[str]) -> _Entry:
    """An utterance's entry of :func:`agreement_table`'s ``data``, checked and cut to its audio frames."""
    maps = _prepare(uid, entry, names)
    n_i = next(iter(maps.values())).shape[0]
    tokens = entry.get("tokens")
    if tokens is not None and len(tokens) != n_i:
        raise XattnError(f"utterance {uid!r}: {len(tokens)} token strings for {n_i} map rows")
    token_text = np.array(list(tokens), dtype=object) if tokens is not None else None
    return _Entry(uid, maps, token_text, _prepare_halves(uid, entry, references, maps))


def _block(k: int, **values) -> dict[str, np.ndarray]:
    """k table rows: every row column -> a (k,) object array (scalars repeated; absent columns None)."""
    return {c: np.broadcast_to(np.asarray(values.get(c), dtype=object), (k,)) for c in _ROW_COLUMNS}


def _level_rows(e: _Entry, levels: Sequence[str], attention: str, reference: str, measure: str, token_values,
                utterance_value, token_note="", utterance_note="") -> list[dict]:
    """The token rows (one per token) and the utterance row of one measure of one utterance."""
    n_i, n_t = e.shape
    common = {"utterance": e.uid, "attention": attention, "reference": reference, "measure": measure}
    out = []
    if "token" in levels:
        out.append(_block(n_i, **common, token=np.arange(n_i), token_text=e.token_text, level="token",
                          value=token_values, n=n_t, note=token_note))
    if "utterance" in levels:
        out.append(_block(1, **common, level="utterance", value=utterance_value, n=n_i * n_t, note=utterance_note))
    return out


def _reliability_rows(e: _Entry, references: Sequence[str], levels: Sequence[str], scores: _Scores) -> list[dict]:
    """Split-half and reliability rows of the references that have halves; records split-half values (NaN for the
    references without) in ``scores``."""
    out = []
    for r in references:
        if r not in e.halves:
            scores.half_token.setdefault(r, []).append(np.full(e.shape[0], np.nan))
            scores.half_utterance.setdefault(r, []).append(np.array([np.nan]))
            continue
        ht = token_agreement(*e.halves[r], "pearson")
        hu = utterance_agreement(*e.halves[r], "pearson")
        scores.half_token.setdefault(r, []).append(ht)
        scores.half_utterance.setdefault(r, []).append(np.array([hu]))
        out += _level_rows(e, levels, "", r, "split_half", ht, hu)
        out += _level_rows(e, levels, "", r, "reliability", spearman_brown(ht), float(spearman_brown(hu)))
    return out


def _reported(measure: str, tv: np.ndarray, uv: float, measures: Sequence[str], half: tuple | None) -> list[tuple]:
    """``(measure, token values, utterance value, token notes, utterance note)`` reported for one computed measure:
    itself (when asked for), ``pearson_r2`` and, with the reference's split-half values ``half``,
    ``pearson_corrected`` from ``pearson`` (NaN below :data:`RELIABILITY_FLOOR` or beyond ±1: the notes say which)."""
    out = [(measure, tv, uv, "", "")] if measure in measures else []
    if measure == "pearson" and "pearson_r2" in measures:
        out.append(("pearson_r2", tv ** 2, uv ** 2, "", ""))
    if measure == "pearson" and half is not None:
        out.append(("pearson_corrected", disattenuate(tv, half[0]), float(disattenuate(uv, half[1])),
                    corrected_note(tv, half[0]), corrected_note(uv, half[1])))
    return out


def _agreement_rows(e: _Entry, attention: Sequence[str], references: Sequence[str], computed: Sequence[str],
                    measures: Sequence[str], levels: Sequence[str], topk: float, scores: _Scores) -> list[dict]:
    """Token and utterance rows of every (attention, reference, measure) of one utterance; records the values in
    ``scores`` (after :func:`_reliability_rows` recorded this utterance's split-half values)."""
    out = []
    for a, r, m in itertools.product(attention, references, computed):
        tv = token_agreement(e.maps[a], e.maps[r], m, topk)
        uv = utterance_agreement(e.maps[a], e.maps[r], m, topk)
        scores.token.setdefault((a, r, m), []).append(tv)
        scores.utterance.setdefault((a, r, m), []).append(np.array([uv]))
        half = (scores.half_token[r][-1], scores.half_utterance[r][-1][0]) if r in e.halves else None
        for om, t_out, u_out, t_note, u_note in _reported(m, tv, uv, measures, half):
            out += _level_rows(e, levels, a, r, om, t_out, u_out, t_note, u_note)
    return out


def _summary_row(level: str, attention: str, reference: str, measure: str, summary: dict) -> dict:
    return _block(1, level=level, attention=attention, reference=reference, measure=measure,
                  value=summary["value"], ci_low=summary["ci_low"], ci_high=summary["ci_high"], n=summary["n"],
                  n_nan=summary["n_nan"], note=summary.get("note", ""))


def _dataset_levels(scores: _Scores, levels: Sequence[str]) -> list[tuple[str, dict, dict]]:
    """(level, values by (attention, reference, measure), split-half values by reference) of each dataset level
    asked for: ``dataset`` aggregates utterance values, ``dataset_token`` token values."""
    both = (("dataset", scores.utterance, scores.half_utterance), ("dataset_token", scores.token, scores.half_token))
    return [lv for lv in both if lv[0] in levels]


def _dataset_rows(scores: _Scores, levels: Sequence[str], measures: Sequence[str], n_boot: int, seed: int,
                  ci: float) -> list[dict]:
    """Dataset rows of every (attention, reference, measure): bootstrap over utterances."""
    out = []
    for level, values, _ in _dataset_levels(scores, levels):
        for (a, r, m), groups in values.items():
            summ = dataset_aggregate(groups, m, n_boot=n_boot, seed=seed, ci=ci)
            if m in measures:
                out.append(_summary_row(level, a, r, m, summ))
            if m == "pearson" and "pearson_r2" in measures:
                out.append(_summary_row(level, a, r, "pearson_r2", _square_summary(summ, ci)))
    return out


def _corrected_rows(scores: _Scores, attention: Sequence[str], levels: Sequence[str], n_boot: int, seed: int,
                    ci: float) -> list[dict]:
    """Dataset split-half and reliability rows of every reference with halves, and each attention's noise-corrected
    Pearson against it."""
    out = []
    for level, values, halves in _dataset_levels(scores, levels):
        for r, groups in halves.items():
            if not any(np.isfinite(g).any() for g in groups):
                continue
            rel = dataset_corrected(None, groups, n_boot=n_boot, seed=seed, ci=ci)
            out += [_summary_row(level, "", r, om, rel[om]) for om in ("split_half", "reliability")]
            for a in attention:
                if (a, r, "pearson") in values:
                    cor = dataset_corrected(values[(a, r, "pearson")], groups, n_boot=n_boot, seed=seed, ci=ci)
                    out.append(_summary_row(level, a, r, "pearson_corrected", cor["pearson_corrected"]))
    return out


def _frame(blocks: list[dict], model: str, references: Sequence[str]) -> pd.DataFrame:
    """The rows as the table: typed columns, the attention name parsed into :data:`ATTENTION_COLUMNS`."""
    df = pd.DataFrame({c: np.concatenate([b[c] for b in blocks]) if blocks else [] for c in _ROW_COLUMNS})
    df.insert(0, "model", model)
    for c in ("value", "ci_low", "ci_high"):
        df[c] = df[c].astype(float)
    for c in ("token", "n", "n_nan"):
        df[c] = df[c].astype("Int64")
    df["note"] = ["" if v is None else str(v) for v in df["note"]]
    return with_attention_columns(df, references)[list(TABLE_COLUMNS)]


def agreement_table(data, references: Sequence[str], attention: Sequence[str] | None = None,
                    measures: Sequence[str] = MEASURES, levels: Sequence[str] = ("token", "utterance", "dataset"),
                    topk: float = 0.1, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                    model: str = "") -> pd.DataFrame:
    """Tidy agreement table between attention maps and reference (saliency) maps.

    Args:
        data: ``{utterance_id: {name: (I, T') map, ...}}`` or a list of such dicts (id: an ``"utterance"`` key or
            the position). Optional per-utterance keys: ``"n_frames"`` (encoder frames holding audio: all maps
            are cut to it — do pass it, padding frames would otherwise count), ``"tokens"`` (I token strings),
            ``"halves"`` (``{reference: (half A, half B)}``: two independent halves of a sampled reference map on the
            same grid; adds the :data:`RELIABILITY_MEASURES` rows — split_half and reliability rows have an empty
            ``attention``).
        references: names of the reference maps (e.g. ``["smx", "smh"]``).
        attention: names of the attention maps (None: every other map name of the first utterance).
        measures: any of :data:`MEASURES`.
        levels: any of ``token`` (one row per token), ``utterance`` (flattened map), ``dataset`` (mean of the
            utterance values; Fisher-z mean for Pearson), ``dataset_token`` (mean of all token values).
        topk: fraction of cells for ``topk_overlap``.
        n_boot, seed, ci: bootstrap over utterances for the dataset levels.
        model: value of the ``model`` column.
    Returns: DataFrame with the columns :data:`TABLE_COLUMNS`: model, utterance, token, token_text, level,
        attention, aggregate, layer, head, weighting, mixing (the attention name parsed by
        :func:`attention_columns`), reference, measure, value, ci_low, ci_high, n, n_nan, note. ``n``: cells
        (token/utterance rows) or values used (dataset rows); ``n_nan``: values excluded as NaN (dataset rows);
        ``note``: why a ``pearson_corrected`` value is NaN (reliability below :data:`RELIABILITY_FLOOR`, or beyond
        ±1), else empty.
    """
    _checked_choices(measures, levels)
    utts = _utterances(data)
    if not utts:
        raise XattnError("agreement_table got no utterances")
    if attention is None:
        attention = [k for k in utts[0][1] if k not in references and k not in _META_KEYS]
    names = list(dict.fromkeys([*attention, *references]))
    computed = _computed_measures(measures)
    scores = _Scores()
    blocks: list[dict] = []  # each: column -> (k,) array; stacked once at the end
    for uid, entry in utts:
        e = _entry(uid, entry, names, references)
        blocks += _reliability_rows(e, references, levels, scores)
        blocks += _agreement_rows(e, attention, references, computed, measures, levels, topk, scores)
    blocks += _dataset_rows(scores, levels, measures, n_boot, seed, ci)
    blocks += _corrected_rows(scores, attention, levels, n_boot, seed, ci)
    return _frame(blocks, model, references)
