"""How well do heads, layers, aggregates and saliency maps time words? Accuracy against exact word times, head
discovery, and timestamps from a result store.

Accuracy: every source (one head ``L{l}H{h}``, one layer's heads ``layer{l}``, ``all`` heads, the model's
``alignment`` heads, a discovered set, a saliency map) goes through the same recipe
(:func:`xattn_utils.analysis.timestamps.alignment_matrix` + DTW) on the **reference** transcript forced through the
model, so every source times the same words; errors are against the espeak-ng word times of the synthetic corpus.
Summaries (:func:`accuracy_summary`): mean absolute start / end error and the share of boundaries within 20 / 50 /
100 ms (Yeh et al. 2025's tolerances), with percentile-bootstrap intervals that resample utterances.

Head discovery (:func:`discover_heads`): rank every head by its accuracy on a calibration set, choose k (the number of
top heads averaged) on the same calibration set, report on another set.

``L`` layers, ``H`` heads, ``S`` decoder positions, ``R`` DTW rows (text tokens + end-of-text), ``T'`` encoder frames.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from ..data.audio import load_audio
from ..data.manifest import read_word_times
from ..errors import XattnError
from ..store import ResultStore, open_store
from .agreement import with_attention_columns
from .aligner import _frames_per_second, alignment_pass, parse_heads, text_token_ids
from .timestamps import (
    WHISPER_FRAMES_PER_SECOND,
    dtw_entry_frames,
    median_filter,
    standardize_tokens,
    timestamp_errors,
    timestamps_from_saliency,
    word_timestamps,
    words_from_token_times,
)
from .utterance_maps import ATTENTION, MapsConfig, UtteranceMaps, alignment_heads

TOLERANCES_MS = (20, 50, 100)


# --------------------------------------------------------------------------------------------------- sources
def head_sets(n_layers: int, n_heads: int, alignment_heads=None, per_head: bool = True,
              extra: Mapping[str, Sequence[tuple[int, int]]] | None = None) -> dict[str, list[tuple[int, int]]]:
    """Named sets of (layer, head): ``L{l}H{h}`` (per_head), ``layer{l}``, ``all``, ``alignment``, and ``extra``."""
    sets: dict[str, list[tuple[int, int]]] = {}
    if per_head:
        sets.update({f"L{l}H{h}": [(l, h)] for l in range(n_layers) for h in range(n_heads)})
    sets.update({f"layer{l}": [(l, h) for h in range(n_heads)] for l in range(n_layers)})
    sets["all"] = [(l, h) for l in range(n_layers) for h in range(n_heads)]
    if alignment_heads:
        sets["alignment"] = [tuple(map(int, p)) for p in alignment_heads]
    sets.update({k: [tuple(map(int, p)) for p in v] for k, v in (extra or {}).items()})
    return sets


def set_word_times(attention, rows: slice, pieces: Sequence[str], sets: Mapping[str, Sequence[tuple[int, int]]],
                   medfilt_width: int = 7, ties: str = "diagonal",
                   frames_per_second: float = WHISPER_FRAMES_PER_SECOND) -> dict[str, list]:
    """Words of every head set from one pass's attention, the Whisper recipe for each set.

    Args:
        attention: (L, H, S, T') renormalized cross-attention of every decoder position.
        rows: the DTW rows (R = N + 1: the N text tokens' queries and the end-of-text query).
        pieces: N text token strings.
        sets: name -> (layer, head) pairs.
    Returns: name -> list of :class:`~xattn_utils.analysis.timestamps.Word`.

    Standardization and the median filter run once for every head (batched); a set's matrix is the mean of its heads'
    filtered matrices (exactly :func:`~xattn_utils.analysis.timestamps.alignment_matrix` of that set); DTW runs
    batched over the sets.
    """
    w = torch.as_tensor(attention).float()
    n_l, n_h, _, n_t = w.shape
    per_head = median_filter(standardize_tokens(w.reshape(n_l * n_h, -1, n_t)), medfilt_width)[:, rows]  # (LH, R, T)
    names = list(sets)
    index = [torch.tensor([l * n_h + h for l, h in sets[k]]) for k in names]
    mats = torch.stack([per_head[i].mean(0) for i in index])  # (n_sets, R, T')
    n_text = len(pieces)
    if mats.shape[1] != n_text + 1:
        raise XattnError(f"{mats.shape[1]} DTW rows for {n_text} text tokens: rows must hold the text tokens' "
                         "queries and the end-of-text query")
    entry = dtw_entry_frames(-mats.numpy(), ties).astype(np.float64) / frames_per_second  # (n_sets, R)
    return {k: words_from_token_times(pieces, entry[s, :-1], entry[s, 1:]) for s, k in enumerate(names)}


def utterance_errors(words_by_source: Mapping[str, list], ref_words: Sequence[dict], uid: str) -> pd.DataFrame:
    """One utterance's :func:`~xattn_utils.analysis.timestamps.timestamp_errors` for every source, stacked (columns
    ``utterance``, ``source``)."""
    frames = []
    for name, words in words_by_source.items():
        df = timestamp_errors(words, ref_words)
        df.insert(0, "source", name)
        df.insert(0, "utterance", uid)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def model_errors(loaded, items: pd.DataFrame, sets: Mapping[str, Sequence[tuple[int, int]]] | None = None,
                 medfilt_width: int = 7, ties: str = "diagonal", progress: bool = False) -> pd.DataFrame:
    """Word-boundary errors of every head set over manifest rows with word times (reference text forced).

    ``sets`` default: every head, every layer, all heads, the model's alignment heads.
    """
    sets = sets or head_sets(loaded.n_layers, loaded.n_heads, loaded.alignment_heads)
    return passes_errors(model_passes(loaded, items, progress), sets, medfilt_width, ties, _frames_per_second(loaded))


# --------------------------------------------------------------------------------------------------- summaries
def _metrics(errors: pd.DataFrame) -> pd.DataFrame:
    """Per word: start/end absolute errors (ms) and boundary-within flags (mean of start and end) per tolerance."""
    out = pd.DataFrame({"start_mae_ms": errors.start_error * 1000, "end_mae_ms": errors.end_error * 1000})
    for ms in TOLERANCES_MS:
        s = errors[f"start_within_{ms}ms"].astype(float) if f"start_within_{ms}ms" in errors else \
            (errors.start_error <= ms / 1000 + 1e-9).astype(float)
        e = errors[f"end_within_{ms}ms"].astype(float) if f"end_within_{ms}ms" in errors else \
            (errors.end_error <= ms / 1000 + 1e-9).astype(float)
        out[f"within_{ms}ms"] = (s + e) / 2
    return out


def accuracy_summary(errors: pd.DataFrame, by: str | Sequence[str] = "source", n_boot: int = 1000, seed: int = 0,
                     ci: float = 0.95) -> pd.DataFrame:
    """Per group: mean start / end error (ms), share of boundaries within 20 / 50 / 100 ms, bootstrap intervals.

    ``errors``: rows of :func:`model_errors` / :func:`utterance_errors` (columns ``utterance``, the ``by``
    columns, and the timestamp_errors columns). The interval resamples utterances with replacement (words of one
    utterance share its voice and rate) and is the percentile interval of the word-weighted mean; a missing
    predicted word counts as outside every tolerance and is left out of the mean errors.
    Returns: one row per group: ``n_words``, ``n_utterances``, and for each metric its value, ``_lo`` and ``_hi``.
    """
    by = [by] if isinstance(by, str) else list(by)
    m = _metrics(errors)
    metrics = list(m.columns)
    m[by] = errors[by].to_numpy()
    m["utterance"] = errors["utterance"].to_numpy()
    rng = np.random.default_rng(seed)
    alpha = 100 * (1 - ci) / 2
    rows = []
    for key, g in m.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        valid = g[metrics].notna()
        sums = g[metrics].fillna(0.0).groupby(g.utterance, sort=False).sum().to_numpy()  # (U, M)
        counts = valid.groupby(g.utterance, sort=False).sum().to_numpy().astype(float)  # (U, M)
        n_u = len(sums)
        idx = rng.integers(0, n_u, size=(int(n_boot), n_u))
        with np.errstate(invalid="ignore", divide="ignore"):
            value = sums.sum(0) / counts.sum(0)
            boot = sums[idx].sum(1) / counts[idx].sum(1)  # (B, M)
        lo, hi = np.nanpercentile(boot, [alpha, 100 - alpha], axis=0)
        if n_u < 2:  # one utterance: every resample repeats it (as agreement.bootstrap_interval)
            lo, hi = np.full_like(lo, np.nan), np.full_like(hi, np.nan)
        row = dict(zip(by, key))
        row.update(n_words=len(g), n_utterances=n_u)
        for k, name in enumerate(metrics):
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = float(value[k]), float(lo[k]), float(hi[k])
        rows.append(row)
    return pd.DataFrame(rows)


def head_grid(summary: pd.DataFrame, metric: str = "within_50ms") -> pd.DataFrame:
    """The single-head rows (``L{l}H{h}``) of a summary as a layer x head table of ``metric``."""
    heads = summary[summary.source.str.fullmatch(r"L\d+H\d+")].copy()
    heads[["layer", "head"]] = heads.source.str.extract(r"L(\d+)H(\d+)").astype(int)
    return heads.pivot(index="layer", columns="head", values=metric)


# --------------------------------------------------------------------------------------------------- discovery
def rank_heads(errors: pd.DataFrame, metric: str = "within_50ms") -> list[tuple[int, int]]:
    """Single heads (sources ``L{l}H{h}``) best first by ``metric`` (higher better), ties by mean boundary error."""
    s = accuracy_summary(errors[errors.source.str.fullmatch(r"L\d+H\d+")], n_boot=1)
    s["mae"] = (s.start_mae_ms + s.end_mae_ms) / 2
    s = s.sort_values([metric, "mae", "source"], ascending=[False, True, True])
    return [tuple(map(int, p)) for p in s.source.str.extract(r"L(\d+)H(\d+)").to_numpy()]


def choose_k(passes: Sequence[dict], ranking: Sequence[tuple[int, int]], k_max: int = 12,
             metric: str = "within_50ms", medfilt_width: int = 7, ties: str = "diagonal",
             frames_per_second: float = WHISPER_FRAMES_PER_SECOND) -> tuple[int, pd.DataFrame]:
    """The number k of top-ranked heads whose mean times words best on ``passes`` (the calibration set).

    ``passes``: dicts with ``attention`` (L, H, S, T'), ``rows``, ``pieces``, ``ref_words``, ``utterance``.
    Returns: (k, the per-k summary); the smallest k among the best (ties) wins.
    """
    sets = {f"top{k}": list(ranking[:k]) for k in range(1, min(k_max, len(ranking)) + 1)}
    errs = pd.concat([utterance_errors(set_word_times(p["attention"], p["rows"], p["pieces"], sets, medfilt_width,
                                                      ties, frames_per_second), p["ref_words"], p["utterance"])
                      for p in passes], ignore_index=True)
    s = accuracy_summary(errs, n_boot=1)
    s["k"] = s.source.str[3:].astype(int)
    s = s.sort_values("k").reset_index(drop=True)
    best = s[metric].max()
    return int(s[s[metric] >= best - 1e-12].k.min()), s


def discover_heads(calibration: Sequence[dict], k_max: int = 12, metric: str = "within_50ms",
                   medfilt_width: int = 7, ties: str = "diagonal",
                   frames_per_second: float = WHISPER_FRAMES_PER_SECOND) -> dict:
    """Rank every head on the calibration passes and choose k there: ``{"heads", "k", "ranking", "per_k"}``."""
    if not calibration:
        raise XattnError("head discovery needs at least one calibration utterance with word times")
    n_l, n_h = calibration[0]["attention"].shape[:2]
    sets = head_sets(n_l, n_h)
    errs = pd.concat([utterance_errors(set_word_times(p["attention"], p["rows"], p["pieces"], sets, medfilt_width,
                                                      ties, frames_per_second), p["ref_words"], p["utterance"])
                      for p in calibration], ignore_index=True)
    ranking = rank_heads(errs, metric)
    k, per_k = choose_k(calibration, ranking, k_max, metric, medfilt_width, ties, frames_per_second)
    return {"heads": sorted(ranking[:k]), "k": k, "ranking": ranking, "per_k": per_k, "errors": errs}


def model_passes(loaded, items: pd.DataFrame, progress: bool = False) -> list[dict]:
    """Reference-text alignment passes of manifest rows, as :func:`discover_heads` / :func:`choose_k` take them."""
    out = []
    for row in tqdm(list(items.itertuples(index=False)), desc="passes", disable=not progress):
        row = row._asdict()
        ref = read_word_times(row)
        if not ref:
            raise XattnError(f"{row['id']}: no word times (word_times_path) in the manifest; accuracy needs them")
        ap = alignment_pass(loaded, load_audio(row["audio_path"]), text_token_ids(loaded, row["transcript"]),
                            language=row.get("language") or None)
        out.append({"attention": ap.attention, "rows": ap.rows, "pieces": ap.pieces, "ref_words": ref,
                    "utterance": row["id"]})
    return out


def passes_errors(passes: Sequence[dict], sets: Mapping[str, Sequence[tuple[int, int]]], medfilt_width: int = 7,
                  ties: str = "diagonal", frames_per_second: float = WHISPER_FRAMES_PER_SECOND) -> pd.DataFrame:
    """Errors of every head set over precomputed passes (see :func:`model_passes`)."""
    return pd.concat([utterance_errors(set_word_times(p["attention"], p["rows"], p["pieces"], sets, medfilt_width,
                                                      ties, frames_per_second), p["ref_words"], p["utterance"])
                      for p in passes], ignore_index=True)


def head_overlap(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> dict:
    """Overlap of two head sets: shared heads, their count, Jaccard index."""
    sa, sb = {tuple(x) for x in a}, {tuple(x) for x in b}
    inter = sorted(sa & sb)
    return {"shared": inter, "n_shared": len(inter), "jaccard": len(inter) / max(1, len(sa | sb))}


# --------------------------------------------------------------------------------------------------- store
def store_timestamps(store, heads: Sequence[tuple[int, int]] | None = None, medfilt_width: int = 7,
                     ties: str = "diagonal") -> dict[str, dict[str, list]]:
    """Words from every map of a result store: uid -> source -> words (each a ``Word``).

    Sources: ``attention`` (the given heads, default the model's alignment heads, else all heads; the Whisper recipe
    on the stored scored rows: standardized over those rows), ``all_heads`` and every saliency map stored
    (``smx``, ``smh``, gradient kinds), each through :func:`~xattn_utils.analysis.timestamps.timestamps_from_saliency`
    (|map|, rows scaled to sum 1, same filter and DTW). Frame rate from the store's encoder-frame times.
    """
    store = store if isinstance(store, ResultStore) else open_store(store)
    every_row = MapsConfig(per_head=False, norm_based=False, special="include")  # saliency maps: all rows, as stored
    out: dict[str, dict[str, list]] = {}
    for uid in store.utterances():
        if ATTENTION not in store.kinds(uid):
            continue
        att = store.load(uid, ATTENTION)
        enc_time = att.enc_time.values
        fps = 1.0 / float(enc_time[1] - enc_time[0]) if len(enc_time) > 1 else WHISPER_FRAMES_PER_SECOND
        tokens = [str(t) for t in att.token_str.values]
        ca = torch.from_numpy(att.cross_attention.values)  # (L, H, I, T')
        chosen = [tuple(h) for h in (heads or alignment_heads(att) or [])]
        srcs: dict[str, list] = {}
        if chosen:
            srcs["attention"] = word_timestamps(ca[[h[0] for h in chosen], [h[1] for h in chosen]], tokens,
                                                frames_per_second=fps, medfilt_width=medfilt_width, ties=ties)
        srcs["all_heads"] = word_timestamps(ca.flatten(0, 1), tokens, frames_per_second=fps,
                                            medfilt_width=medfilt_width, ties=ties)
        # every saliency map on the encoder grid, pooled as the registry says (SPES: mean KLs; gradients: amounts)
        maps = UtteranceMaps.from_store(store, uid, every_row).on_encoder_grid().references
        for name, m in maps.items():
            srcs[name] = timestamps_from_saliency(m, tokens, frames_per_second=fps, medfilt_width=medfilt_width)
        out[uid] = srcs
    return out


def store_errors(store, items: pd.DataFrame, same_utterances: bool = True, **kw) -> pd.DataFrame:
    """Errors of every map of a store against the word times of the manifest rows with the same ids.

    With ``same_utterances`` (default) only the utterances that hold every source are scored, so attention and each
    saliency map are compared on the same words (a store often has attention for more utterances than maps).
    """
    words = store_timestamps(store, **kw)
    by_id = {r["id"]: r for r in items.to_dict("records")}
    words = {uid: srcs for uid, srcs in words.items() if uid in by_id and read_word_times(by_id[uid])}
    if same_utterances and words:
        every = set().union(*(srcs.keys() for srcs in words.values()))
        words = {uid: srcs for uid, srcs in words.items() if set(srcs) == every}
    frames = [utterance_errors(srcs, read_word_times(by_id[uid]), uid) for uid, srcs in words.items()]
    if not frames:
        raise XattnError("no stored utterance has word times in the given manifest rows (ids must match)")
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------------- study
def split_calibration(items: pd.DataFrame, calibration: pd.DataFrame | None = None,
                      fraction: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(calibration, test) rows: the given calibration rows, else the first ``fraction`` of ``items`` (by id)."""
    if calibration is not None:
        overlap = set(calibration.id) & set(items.id)
        if overlap:
            raise XattnError(f"{len(overlap)} utterance(s) are in both calibration and test (e.g. {sorted(overlap)[0]})"
                             "; heads must be chosen on other utterances than they are scored on")
        return calibration.reset_index(drop=True), items.reset_index(drop=True)
    rows = items.sort_values("id").reset_index(drop=True)
    n = max(1, int(round(len(rows) * fraction)))
    if n >= len(rows):
        raise XattnError(f"{len(rows)} utterance(s): too few to split into calibration and test; give more")
    return rows.iloc[:n].reset_index(drop=True), rows.iloc[n:].reset_index(drop=True)


def timestamp_study(loaded, items: pd.DataFrame, calibration: pd.DataFrame | None = None, k_max: int = 12,
                    metric: str = "within_50ms", n_boot: int = 1000, seed: int = 0, ties: str = "diagonal",
                    progress: bool = False, unseen: pd.DataFrame | None = None) -> dict:
    """Which heads tell when a word is spoken? One call: passes, discovery on calibration, accuracy on test.

    Returns: ``summary`` (per source on the test rows: every head, layer, ``all``, ``alignment`` (official, when the
    model has them), ``discovered``; with bootstrap intervals), ``errors`` (per word), ``discovered`` heads, ``k``,
    ``per_k`` (calibration), ``overlap`` with the official heads, ``test_passes`` (for figures); with ``unseen``
    (held-out items, e.g. the ``test_unseen_voice`` split: voices the calibration never heard), ``unseen_summary``
    and ``unseen_errors``: the same sources, heads chosen on the calibration split as before.
    """
    cal, test = split_calibration(items, calibration)
    fps = _frames_per_second(loaded)
    cal_passes = model_passes(loaded, cal, progress)
    found = discover_heads(cal_passes, k_max, metric, ties=ties, frames_per_second=fps)
    test_passes = model_passes(loaded, test, progress)
    sets = head_sets(loaded.n_layers, loaded.n_heads, loaded.alignment_heads, extra={"discovered": found["heads"]})
    errors = passes_errors(test_passes, sets, ties=ties, frames_per_second=fps)
    summary = accuracy_summary(errors, n_boot=n_boot, seed=seed)
    out = {"summary": summary, "errors": errors, "discovered": found["heads"], "k": found["k"],
           "per_k": found["per_k"], "ranking": found["ranking"],
           "overlap": head_overlap(found["heads"], loaded.alignment_heads or []),
           "calibration_ids": list(cal.id), "test_ids": list(test.id), "test_passes": test_passes}
    if unseen is not None and len(unseen):
        unseen_errors = passes_errors(model_passes(loaded, unseen, progress), sets, ties=ties, frames_per_second=fps)
        out.update(unseen_errors=unseen_errors, unseen_ids=list(unseen.id),
                   unseen_summary=accuracy_summary(unseen_errors, n_boot=n_boot, seed=seed))
    return out


def headline_table(summary: pd.DataFrame, sources: Sequence[str] = ("alignment", "discovered", "all")) -> pd.DataFrame:
    """The README's rows: tolerance accuracy and mean errors of the named sources (and the best single head)."""
    heads = summary[summary.source.str.fullmatch(r"L\d+H\d+")]
    best = heads.sort_values("within_50ms", ascending=False).head(1)
    rows = pd.concat([summary[summary.source.isin(sources)], best])
    cols = ["source", "n_words", "within_20ms", "within_50ms", "within_50ms_lo", "within_50ms_hi", "within_100ms",
            "start_mae_ms", "end_mae_ms"]
    return rows[cols].reset_index(drop=True)


def alignment_vs_agreement(summary: pd.DataFrame, agreement: pd.DataFrame, metric: str = "within_50ms",
                           measure: str = "pearson") -> pd.DataFrame:
    """Per head: does timing accuracy go with agreement? Spearman ρ over heads between ``metric`` (this module's
    summary) and the dataset-level ``measure`` of (CA head, reference) in an agreement table (``xattn compare``).

    Returns one row per reference (``smx``, ``smh``, ...): rho, p value, n_heads; the joined per-head values are in
    ``attrs["heads"]``.
    """
    heads = summary[summary.source.str.fullmatch(r"L\d+H\d+")][["source", metric]]
    ag = with_attention_columns(agreement)
    ag = ag[(ag.level == "dataset") & (ag.measure == measure) & (ag["aggregate"] == "head")
            & (ag["weighting"] == "attention") & ag["mixing"].isna()][["attention", "reference", "value"]]
    joined = ag.merge(heads, left_on="attention", right_on="source")
    rows = []
    for ref, g in joined.groupby("reference"):
        rho, p = spearmanr(g[metric], g["value"]) if len(g) > 2 else (float("nan"), float("nan"))
        rows.append({"reference": ref, "rho": float(rho), "p": float(p), "n_heads": len(g)})
    out = pd.DataFrame(rows, columns=["reference", "rho", "p", "n_heads"])
    out.attrs["heads"] = joined
    return out


def store_word_rows(store, heads=None, medfilt_width: int = 7, ties: str = "diagonal") -> list[dict]:
    """Words from every map of a result store (see :func:`store_timestamps`):
    ``[{"file": utterance, "source", "words": [...]}]``; probability: the stored forced log-prob (mean over the
    word's tokens, exponentiated), the same for every source."""
    store = store if isinstance(store, ResultStore) else open_store(store)
    chosen = None
    if heads is not None and heads != "alignment":
        att = store.load(store.utterances()[0], "attention")
        chosen = parse_heads(heads, att.sizes["layer"], att.sizes["head"])
    out = []
    for uid, sources in store_timestamps(store, chosen, medfilt_width, ties).items():
        logp = store.load(uid, "attention").log_probs.values
        for name, words in sources.items():
            out.append({"file": uid, "source": name, "words": [
                {"word": w.text.strip(), "start": round(w.start, 3), "end": round(w.end, 3),
                 "probability": round(float(np.exp(np.mean(logp[list(w.tokens)]))), 4)} for w in words]})
    return out
