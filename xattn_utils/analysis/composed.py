"""CA∘M: cross-attention carried back through the encoder's context mixing, compared with saliency, summarized.

:mod:`xattn_utils.attribution.mixing` computes and stores the mixing maps ``M`` (kind ``mixing``); this module is
what the analysis does with them:

* composing: :func:`composed_maps` / :func:`store_composed` turn an utterance's raw CA aggregates ``(I, T')`` into
  extra attention entries ``method∘aggregate`` (every encoder layer undone), ``method[k]∘aggregate`` (the top k) and
  ``method-blur∘aggregate`` (the smoothing control, :func:`diagonal_average`), which
  :class:`~xattn_utils.analysis.utterance_maps.UtteranceMaps` adds when ``MapsConfig.mixing`` is set;
  :func:`xattn_utils.analysis.agreement.composed_name` and
  :func:`~xattn_utils.analysis.agreement.parse_composed` are the naming and its inverse;
* the answer: :func:`mixing_answer` reads an agreement table compared with the composed entries
  (:func:`xattn_utils.analysis.compare.compare_store` with ``CompareConfig.mixing``) as one row per (aggregate,
  method, depth) (:func:`mixing_layers`: the depth of the full composition), :func:`mixing_headline`,
  :func:`mixing_gain` (paired over utterances), :func:`answer_lines`, :func:`gain_lines`,
  :func:`through_mixing_lines` and :func:`best_composed` say it in numbers;
* the cost: :func:`cost_comparison` times CA, CA∘M and SPES on one utterance.

``I`` scored tokens, ``T'`` encoder frames holding audio, ``L`` encoder layers.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import xarray as xr

from ..attribution.mixing import KIND, compose_attention
from ..attribution.saliency import scorer_for
from ..attribution.spes import spes_smx
from ..errors import XattnError
from ..extraction.forced import forced_pass
from .agreement import bootstrap_interval, composed_name, parse_composed

# ------------------------------------------------------------------------------------------------ composing


def diagonal_average(m: np.ndarray) -> np.ndarray:
    """(T', T') map -> the same map averaged along its diagonals (mean weight per offset j − i), rows renormalized.

    A control: it keeps how far M spreads attention (its blur) and drops what depends on the input. If CA∘blur(M)
    agrees with SMX as well as CA∘M, the gain of composing is smoothing, not the encoder's mixing.
    """
    m = np.asarray(m, dtype=np.float64)
    n = m.shape[-1]
    off = np.subtract.outer(np.arange(n), np.arange(n)) + n - 1  # (T', T') offset index i - j + T' - 1
    profile = np.bincount(off.ravel(), m.ravel(), minlength=2 * n - 1) / np.bincount(off.ravel(), minlength=2 * n - 1)
    t = profile[off]
    tot = t.sum(-1, keepdims=True)
    return np.divide(t, tot, out=np.eye(n), where=tot > 0)


def composed_maps(maps: dict, mixing: xr.Dataset, methods=None, aggregates=("all",), depths: bool = False,
                  control: bool = False) -> dict:
    """Composed attention entries for :class:`xattn_utils.analysis.utterance_maps.UtteranceMaps`
    (``MapsConfig.mixing``).

    Args:
        maps: name -> raw (I, T'_audio) map (before any normalization); aggregates absent from it are skipped.
        mixing: the utterance's ``mixing`` group.
        methods: mixing methods to use (None: every stored one).
        aggregates: names in ``maps`` to carry back (attention aggregates, or ``smh`` to ask whether mixing
            explains how SMH differs from SMX).
        depths: also add the partial compositions ``method[k]∘aggregate`` for k = 1..L-1 top layers undone.
        control: also add ``method-blur∘aggregate``, the full composition's :func:`diagonal_average` (its smoothing
            without its input dependence).
    Returns:
        name -> (I, T'_audio) composed map.
    """
    stored = [str(m) for m in mixing.method.values]
    methods = stored if methods is None else list(methods)
    missing = [m for m in methods if m not in stored]
    if missing:
        raise XattnError(f"mixing maps {missing} are not in the store (it holds {stored}); run compute_mixing "
                         "with MixingConfig(methods=...) including them")
    n_depth = int(mixing.sizes["depth"])
    out = {}
    for method in methods:
        und = mixing.undone.sel({"method": method}).values  # (L, T', T')
        for agg in aggregates:
            if agg not in maps:
                continue
            ca = np.asarray(maps[agg], dtype=np.float64)
            t = und.shape[-1]
            out[composed_name(method, agg)] = compose_attention(ca[:, :t], und[-1].astype(np.float64))
            if control:
                out[composed_name(f"{method}-blur", agg)] = compose_attention(ca[:, :t], diagonal_average(und[-1]))
            if depths:
                for k in range(1, n_depth):
                    out[composed_name(method, agg, k)] = compose_attention(ca[:, :t], und[k - 1].astype(np.float64))
    return out


def store_composed(store, uid: str, maps: dict, methods=None, aggregates=("all",), depths: bool = False,
                   control: bool = False) -> dict:
    """:func:`composed_maps` for a stored utterance."""
    if KIND not in store.kinds(uid):
        raise XattnError(f"{store.path}: utterance {uid!r} has no mixing maps; run "
                         "xattn_utils.attribution.mixing.compute_mixing (or notebook 06) on it, or drop "
                         "CompareConfig.mixing")
    return composed_maps(maps, store.load(uid, KIND), methods, aggregates, depths, control)


# ------------------------------------------------------------------------------------------------ the answer


def mixing_answer(table, n_layers: int, reference: str = "smx", measure: str = "pearson"):
    """Dataset-level agreement of CA and CA∘M with ``reference``, one row per (aggregate, method, depth).

    Args:
        table: a :func:`xattn_utils.analysis.compare.compare_store` table computed with ``CompareConfig.mixing``.
        n_layers: encoder layers (depth of the full composition).
    Returns:
        DataFrame with columns attention (the CA aggregate), method ("none" for CA itself), depth (encoder layers
        undone, 0..L), value, ci_low, ci_high, n; the depth-0 row (CA itself) of each aggregate is repeated under
        every method, so each method's curve starts at CA.
    """
    d = table[(table.level == "dataset") & (table.measure == measure) & (table.reference == reference)]
    rows = []
    for _, r in d.iterrows():
        agg, method, depth = parse_composed(str(r.attention))
        rows.append({"attention": agg, "method": method or "none", "depth": n_layers if depth is None else depth,
                     "value": float(r.value), "ci_low": float(r.ci_low), "ci_high": float(r.ci_high),
                     "n": int(r.n)})
    out = pd.DataFrame(rows, columns=["attention", "method", "depth", "value", "ci_low", "ci_high", "n"])
    composed = out[out.method != "none"]
    base = out[(out.method == "none") & out["attention"].isin(set(composed["attention"]))]
    starts = [base.assign(method=m) for m in sorted(set(composed.method))]
    return pd.concat([composed, *starts], ignore_index=True).sort_values(
        ["attention", "method", "depth"]).reset_index(drop=True)


def mixing_headline(answer) -> pd.DataFrame:
    """One row per aggregate: CA's value [CI] and each method's full composition's [CI] (:func:`mixing_answer`)."""
    full = answer[answer.depth == answer.depth.max()]
    ca = answer[answer.depth == 0].drop_duplicates("attention").set_index("attention")
    rows = []
    for agg in ca.index:
        row = {"attention": agg, "CA": _fmt(ca.loc[agg])}
        for _, r in full[full.attention == agg].iterrows():
            row[f"{r.method}∘"] = _fmt(r)
        rows.append(row)
    return pd.DataFrame(rows)


def mixing_gain(table, reference: str = "smx", measure: str = "pearson", n_boot: int = 1000, seed: int = 0,
                ci: float = 0.95, exclude=()):
    """Paired gain of every full composition over its CA: Δ = value(M∘CA) − value(CA), bootstrapped over utterances.

    Both maps are scored on the same utterances, so the interval of the difference (utterances resampled together,
    Fisher-z means for Pearson as in :func:`xattn_utils.analysis.agreement.dataset_aggregate`) is much tighter than
    comparing two separate intervals. Needs the ``utterance`` level in ``table``. Attention names in ``exclude`` (e.g.
    ``smh``, a reference carried back rather than a CA aggregate) are left out.
    Returns: DataFrame attention, method, ca, composed, gain, ci_low, ci_high, n_utterances.
    """
    u = table[(table.level == "utterance") & (table.measure == measure) & (table.reference == reference)]
    if u.empty:
        raise XattnError(f"no utterance-level {measure} rows against {reference!r}: compare with levels including "
                         "'utterance'")
    wide = u.pivot_table(index="utterance", columns="attention", values="value")
    fwd = (lambda v: np.arctanh(np.clip(v, -1 + 1e-12, 1 - 1e-12))) if measure == "pearson" else (lambda v: v)
    inv = np.tanh if measure == "pearson" else (lambda v: v)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(wide), size=(int(n_boot), len(wide)))
    rows = []
    for name in wide.columns:
        agg, method, depth = parse_composed(str(name))
        if method is None or depth is not None or agg not in wide.columns or agg in exclude:
            continue
        pair = wide[[agg, name]].dropna()
        keep = wide.index.isin(pair.index)
        a, b = fwd(wide[agg].values), fwd(wide[name].values)
        a, b = np.where(keep, a, np.nan), np.where(keep, b, np.nan)
        boot = inv(np.nanmean(b[idx], 1)) - inv(np.nanmean(a[idx], 1))
        lo, hi = bootstrap_interval(boot, ci, int(keep.sum()))
        ca_v, comp_v = inv(np.nanmean(a)), inv(np.nanmean(b))
        rows.append({"attention": agg, "method": method, "ca": float(ca_v), "composed": float(comp_v),
                     "gain": float(comp_v - ca_v), "ci_low": float(lo), "ci_high": float(hi),
                     "n_utterances": int(keep.sum())})
    return pd.DataFrame(rows)


def mixing_layers(store) -> int:
    """Encoder layers of the maps in ``store`` (the depth of the full composition), read from a ``mixing`` group."""
    for uid in store.utterances():
        if KIND in store.kinds(uid):
            return int(store.load(uid, KIND).sizes["depth"])
    raise XattnError(f"{store.path}: no utterance has mixing maps; run "
                     "xattn_utils.attribution.mixing.compute_mixing (or notebook 06) first")


def without_controls(answer) -> pd.DataFrame:
    """The rows of a :func:`mixing_answer` table that are not smoothing controls (``method-blur``: full depth only)."""
    return answer[~answer.method.str.endswith("-blur")]


def answer_lines(answer, aggregates, reference: str = "SMX", measure: str = "Pearson") -> list[str]:
    """``Pearson(CA[all], SMX) = v [lo, hi]`` for each aggregate, then an indented line per full composition."""
    full = answer[answer.depth == answer.depth.max()]
    lines = []
    for agg in aggregates:
        ca = answer[(answer.attention == agg) & (answer.depth == 0)]
        if ca.empty:
            continue
        lines.append(f"{measure}(CA[{agg}], {reference}) = {_fmt(ca.iloc[0])}")
        lines += [f"  {measure}({r.method}∘{agg}, {reference}) = {_fmt(r)}"
                  for _, r in full[full.attention == agg].iterrows()]
    return lines


def gain_lines(gain) -> list[str]:
    """``gain rollout∘all: +0.012 [-0.003, +0.027]`` per row of :func:`mixing_gain`."""
    return [f"gain {r.method}∘{r.attention}: {r.gain:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
            for _, r in gain.iterrows()]


def through_mixing_lines(answer, name: str = "smh", label: str = "SMH", reference: str = "SMX",
                         measure: str = "Pearson") -> list[str]:
    """A composed reference against ``reference``: ``name`` itself (depth 0), then each method's full composition
    (``M∘SMH``: does the mixing explain how SMH differs from SMX?)."""
    rows = answer[answer.attention == name]
    if rows.empty:
        raise XattnError(f"the answer has no rows for {name!r}: compare with CompareConfig.mixing_aggregates "
                         f"including {name!r}")
    lines = [f"{measure}({label}, {reference}) = {_fmt(rows[rows.depth == 0].iloc[0])}"]
    lines += [f"{measure}({r.method}∘{label}, {reference}) = {_fmt(r)}"
              for _, r in rows[rows.depth == rows.depth.max()].iterrows()]
    return lines


def best_composed(answer, cost, exclude=("smh",), measure: str = "Pearson") -> dict:
    """The full composition closest to the reference, its cost and its smoothing control: a cheap heuristic.

    Args:
        answer: :func:`mixing_answer` (computed with ``CompareConfig.mixing_control`` for the control).
        cost: :func:`cost_comparison` of the same methods.
        exclude: attention names that are not CA aggregates (``smh``).
    Returns: dict with ``best`` and ``best_ca`` (answer rows), ``ratio_to_spes`` (the best's seconds over SPES's),
    ``control`` (the best's ``method-blur`` row, or None) and ``line``, the sentence that says it.
    """
    depth = answer.depth.max()
    comp = without_controls(answer[(answer.depth == depth) & ~answer.attention.isin(exclude)])
    plain = answer[(answer.depth == 0) & ~answer.attention.isin(exclude)]
    if comp.empty or plain.empty:
        raise XattnError("the answer holds no composed CA aggregate: compare with CompareConfig.mixing set")
    best = comp.sort_values("value", ascending=False).iloc[0]
    best_ca = plain.sort_values("value", ascending=False).iloc[0]
    c = cost.set_index("explanation")
    key = f"CA∘{best.method}"
    if key not in c.index:
        raise XattnError(f"the cost table has no row {key!r}: run cost_comparison with method {best.method!r}")
    ratio = float(c.loc[key, "ratio_to_spes"])
    spes = next((e for e in c.index if e.startswith("SPES")), "SPES")
    blur = answer[(answer.method == f"{best.method}-blur") & (answer.attention == best.attention)
                  & (answer.depth == depth)]
    control = blur.iloc[0] if len(blur) else None
    line = (f"best composed: {best.method}∘{best.attention} {measure} = {_fmt(best)} at {ratio:.4f} x the cost of "
            f"{spes}; best CA: {best_ca.attention} {best_ca.value:.3f}")
    if control is not None:
        line += f"\nits smoothing control {control.method}∘{control.attention}: {measure} = {_fmt(control)}"
    return {"best": best, "best_ca": best_ca, "ratio_to_spes": ratio, "control": control, "line": line}


def _fmt(r) -> str:
    return f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


def cost_comparison(loaded, store, uid: str, audio, spes_cfg, methods=None) -> pd.DataFrame:
    """Measured seconds of CA (one forced pass), of CA + each stored mixing method, and of SPES on X, for one utterance.

    SPES runs ``spes_cfg`` (its ``n_masks``) on the stored hypothesis; mixing seconds are the ones stored with the
    utterance's ``mixing`` group (trace + method). ``ratio`` = seconds / SPES seconds.
    """
    att = store.load(uid, "attention")
    mix = store.load(uid, KIND)
    scorer = scorer_for(loaded, audio, att)
    feats = loaded.features(audio)
    t0 = time.perf_counter()
    forced_pass(loaded, [feats], scorer.prompt, [scorer.hypothesis])
    t_ca = time.perf_counter() - t0
    t0 = time.perf_counter()
    spes_smx(scorer, spes_cfg, progress=False)
    t_spes = time.perf_counter() - t0
    rows = [{"explanation": "CA (forced pass)", "seconds": t_ca}]
    trace = float(mix.attrs.get("trace_seconds", 0.0))
    for m in (methods or [str(v) for v in mix.method.values]):
        rows.append({"explanation": f"CA∘{m}", "seconds": t_ca + trace + float(mix.seconds.sel({"method": m}))})
    rows.append({"explanation": f"SPES-X ({spes_cfg.n_masks} masks)", "seconds": t_spes})
    df = pd.DataFrame(rows)
    df["ratio_to_spes"] = df.seconds / t_spes
    return df
