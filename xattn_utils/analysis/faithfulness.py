"""Faithfulness by deletion and insertion: remove (or restore) the input cells an explanation ranks highest.

Protocol (SPES's evaluation, applied to every explanation alike):
- an explanation becomes one importance per input cell of the audio region, ``(T_audio, F)``: token maps are made
  non-negative, each token's row normalized to sum 1 (every token counts equally), and summed over tokens;
  an encoder-frame map ``(I, T')`` (cross-attention, SMH) is spread evenly over its input frames and all mel bins;
- deletion: the top p% cells (p = 0, 5, ..., 50) take the occlusion value (the same silence value as SPES) and the
  model re-decodes (greedy, at most twice the original length plus 8 tokens; Whisper decodes on its padded input,
  as in extraction); insertion: start from an all-occluded input and restore the top p% cells (p = 0, 5, ..., 100);
- quality at each p: WER and CER of the new hypothesis against the original hypothesis, and the mean log-prob of
  the original tokens under forced decoding (texts compared lower-cased without punctuation); area under the
  curve = mean over the p grid (trapezoid on [0, max p]), in WER points (0-100). Deletion: higher = more faithful
  (quality falls faster). Insertion: lower WER area = more faithful. A seeded random ranking gives the floor.
Paper reference (Papi et al. 2025, appendix): deletion score CA 41.2 vs aggregated SMX 52.9 (their metric: the
same deletion protocol scored with WER on their models; higher = more faithful).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..attribution.saliency import scorer_for
from ..data.audio import load_audio
from ..errors import DamagedResultError, MissingResultError, XattnError
from ..extraction.extract import items_from
from ..extraction.forced import Seq2SeqScorer, decode
from ..maps import by_name
from .agreement import ca_selections
from .evaluation import score_texts
from .utterance_maps import ATTENTION, alignment_heads

DELETION_STEPS = tuple(range(0, 55, 5))
INSERTION_STEPS = tuple(range(0, 105, 5))
CA_PREFIX = "ca:"  # explanation names of cross-attention aggregates: ca:all, ca:last_layer, ca:L3H2, ...


@dataclass
class FaithfulnessConfig:
    """Perturbation curve settings (all recorded in provenance)."""

    mode: str = "deletion"  # or "insertion"
    percents: tuple[int, ...] | None = None  # None: DELETION_STEPS / INSERTION_STEPS
    seed: int = 0  # tie-breaking and the random floor
    max_new_tokens: int = 128
    batch_size: int = 11


def importance_cells(explanation: np.ndarray | torch.Tensor, n_audio_frames: int, n_features: int,
                     frames_per_encoder_frame: int) -> torch.Tensor:
    """An explanation -> one importance per audio cell, ``(T_audio, F)`` (see the module docstring).

    Args:
        explanation: ``(I, T, F)`` input-space map, or ``(I, T')`` encoder-frame map.
    """
    m = torch.as_tensor(np.asarray(explanation), dtype=torch.float64).abs()
    rows = m.flatten(1).sum(1).clamp_min(1e-30)
    m = (m / rows.view(-1, *[1] * (m.dim() - 1))).sum(0)  # tokens weigh equally
    if m.dim() == 1:  # (T',) -> (T, F)
        m = m.repeat_interleave(frames_per_encoder_frame)[:, None].expand(-1, n_features) / n_features
    return m[:n_audio_frames].float()


def ranking(importance: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Flat cell indices from most to least important; ties broken by a seeded random permutation."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(importance.numel(), generator=g)
    order = torch.argsort(importance.flatten()[perm], descending=True, stable=True)
    return perm[order]


def random_importance(n_audio_frames: int, n_features: int, seed: int = 0) -> torch.Tensor:
    """The floor: a seeded random importance ``(T_audio, F)``."""
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.rand(n_audio_frames, n_features, generator=g)


def perturbed_inputs(scorer: Seq2SeqScorer, order: torch.Tensor, percents, mode: str) -> torch.Tensor:
    """``(P, F, T)`` inputs with the top p% audio cells removed (deletion) or only they kept (insertion)."""
    x = scorer.features  # (F, T)
    f = x.shape[0]
    n_audio = scorer.n_audio_frames
    n_cells = n_audio * f
    ranks = torch.empty(n_cells, dtype=torch.long)
    ranks[order] = torch.arange(n_cells)
    ranks = ranks.view(n_audio, f).T.to(x.device)  # (F, T_audio): rank of each cell
    k = torch.tensor([round(p / 100 * n_cells) for p in percents], device=x.device)
    top = ranks[None] < k[:, None, None]  # (P, F, T_audio): cells among the top p%
    occlude = top if mode == "deletion" else ~top
    out = x[None].repeat(len(percents), 1, 1)
    audio = out[:, :, :n_audio]
    audio[occlude] = scorer.occlusion_value
    return out


def decoding_input(scorer: Seq2SeqScorer, batch: torch.Tensor) -> torch.Tensor:
    """(B, F, T) -> the input free decoding takes: Whisper decodes on the padded 30 s input (silence-filled)."""
    loaded = scorer.loaded
    if loaded.decode_mode == loaded.input_mode:
        return batch
    full = loaded.model.get_encoder().config.max_source_positions * loaded.frames_per_encoder_frame
    pad = batch.new_full((*batch.shape[:2], full - batch.shape[-1]), scorer.occlusion_value)
    return torch.cat([batch, pad], dim=-1)


def perturbation_curve(scorer: Seq2SeqScorer, importance: torch.Tensor, cfg: FaithfulnessConfig | None = None
                       ) -> pd.DataFrame:
    """Quality against the percentage of cells removed/restored: columns percent, wer, cer, mean_log_prob, text."""
    cfg = cfg or FaithfulnessConfig()
    if cfg.mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', not {cfg.mode!r}")
    percents = list(cfg.percents or (DELETION_STEPS if cfg.mode == "deletion" else INSERTION_STEPS))
    order = ranking(importance, cfg.seed)
    inputs = perturbed_inputs(scorer, order, percents, cfg.mode)
    tok = scorer.loaded.tokenizer
    ref = tok.decode(scorer.hypothesis, skip_special_tokens=True).strip()
    texts, logps = [], []
    limit = min(cfg.max_new_tokens, 2 * len(scorer.hypothesis) + 8)  # a looping decode cannot run away
    with torch.inference_mode():
        for s in range(0, len(percents), cfg.batch_size):
            batch = inputs[s:s + cfg.batch_size]
            hyps = decode(scorer.loaded, decoding_input(scorer, batch), scorer.prompt, 1, limit)
            texts += [tok.decode(h, skip_special_tokens=True).strip() for h in hyps]
            lp = scorer.log_probs(batch).gather(-1, scorer.target_ids.view(1, -1, 1).expand(len(batch), -1, 1))
            logps += lp[..., 0].mean(-1).tolist()
    return pd.DataFrame({
        "percent": percents,
        "wer": [100 * _rate("wer", ref, t) for t in texts],
        "cer": [100 * _rate("cer", ref, t) for t in texts],
        "mean_log_prob": logps,
        "text": texts,
    })


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, spaces collapsed (WER compares words, not casing or commas)."""
    kept = "".join(c if c.isalnum() or c.isspace() or c == "'" else " " for c in text.lower())
    return " ".join(kept.split())


def _rate(measure: str, ref: str, hyp: str) -> float:
    """``wer`` or ``cer`` of one hypothesis as a fraction (an empty reference: 0 if the hypothesis is empty too)."""
    ref, hyp = normalize_text(ref), normalize_text(hyp)
    if not ref.strip():
        return float(bool(hyp.strip()))
    return score_texts([ref], [hyp.strip()], cer=True)[measure] / 100


def usable_items(store, items: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The items whose ``attention`` group is stored intact and whose audio loads, and the others' messages.

    Each failure is recorded in the store's ``errors.json`` (kind ``faithfulness``); :class:`XattnError` when no
    item is usable.
    """
    failed = {}
    for _, row in items.iterrows():
        uid = str(row["id"])
        try:
            bad = store.problem(uid, "attention")  # (an unsafe id raises InputError)
            if bad == "not stored":
                raise MissingResultError(f"{uid}: no 'attention' result in {store.path}; run `xattn extract` (or "
                                         "notebook 01) on it first")
            if bad is not None:
                raise DamagedResultError(f"{uid}: stored 'attention' result is damaged ({bad}); re-run `xattn "
                                         "extract` to recompute it")
            load_audio(row["audio_path"])
        except XattnError as err:
            failed[uid] = str(err) if str(err).startswith(uid) else f"{uid}: {err}"
            store.record_error(uid, "faithfulness", failed[uid])
    if len(failed) == len(items):
        raise XattnError(f"faithfulness: no item can be scored ({len(failed)} failed); first: "
                         f"{next(iter(failed.values()), 'no items given')}")
    return items[~items["id"].astype(str).isin(failed)].reset_index(drop=True), failed


def curve_auc(curve: pd.DataFrame, column: str = "wer") -> float:
    """Area under the curve normalized by the percent range: the curve's mean value (trapezoid rule)."""
    p = curve["percent"].to_numpy(float)
    v = curve[column].to_numpy(float)
    return float(np.trapezoid(v, p) / (p[-1] - p[0])) if len(p) > 1 else float(v[0])


def explanation_importance(store, uid: str, name: str, n_audio_frames: int, n_features: int,
                           frames_per_encoder_frame: int, seed: int = 0) -> torch.Tensor:
    """Importance ``(T_audio, F)`` of a named explanation stored for ``uid``.

    Names: ``ca:<aggregate>`` (e.g. ``ca:all``, ``ca:last_layer``, ``ca:alignment_heads``; see
    :func:`xattn_utils.analysis.agreement.ca_selections`), a saliency map's name (``smx``, ``smh``, ``ig_x``,
    ``saliency_x``, ...; see :mod:`xattn_utils.maps`), or ``random`` (the floor). The end-of-text row is left
    out, as in the agreement tables.
    """
    if name == "random":
        return random_importance(n_audio_frames, n_features, seed)
    if name.startswith(CA_PREFIX):
        att = store.load(uid, ATTENTION)
        sel = ca_selections(att.cross_attention.values, per_head=True, alignment_heads=alignment_heads(att))
        key = name.removeprefix(CA_PREFIX)
        if key not in sel:
            raise ValueError(f"unknown attention aggregate {key!r}; choose from {sorted(sel)}")
        m = np.asarray(sel[key])[:-1]
    else:
        mk = by_name(name)
        m = store.load(uid, mk.kind)[mk.variable].values[:-1]
    return importance_cells(m, n_audio_frames, n_features, frames_per_encoder_frame)


def explanation_available(store, uid: str, name: str) -> bool:
    """Whether ``uid`` has what explanation ``name`` needs in ``store`` (attention for ``ca:*`` and ``random``)."""
    kinds = set(store.kinds(uid))
    if name == "random" or name.startswith(CA_PREFIX):
        return ATTENTION in kinds
    return by_name(name).kind in kinds


def faithfulness_store(loaded, store, items, explanations=("ca:all", "smx", "random"), modes=("deletion",),
                       cfg: FaithfulnessConfig | None = None, progress: bool = True) -> tuple[pd.DataFrame,
                                                                                                  pd.DataFrame]:
    """Deletion/insertion curves for every utterance x explanation x mode; returns (curves, aucs).

    ``items``: manifest rows (id, audio_path) of utterances already in ``store``. Each explanation is evaluated on
    the utterances that have its map (notebook 02 may have explained fewer utterances than notebook 01 extracted):
    compare explanations on their common utterances (:func:`paired_aucs`). AUC is :func:`curve_auc` of WER (higher
    under deletion = more faithful).
    """
    cfg = cfg or FaithfulnessConfig()
    curves = []
    items, failed = usable_items(store, items_from(items))  # bad items recorded; the rest are scored
    for _, row in tqdm(items.iterrows(), total=len(items), desc="faithfulness", disable=not progress):
        uid = str(row["id"])
        att = store.load(uid, "attention")
        scorer = scorer_for(loaded, load_audio(row["audio_path"]), att)
        f = scorer.features.shape[0]
        for name in explanations:
            if not explanation_available(store, uid, name):
                continue
            imp = explanation_importance(store, uid, name, scorer.n_audio_frames, f, scorer.frames_per_encoder_frame,
                                         cfg.seed)
            for mode in modes:
                c = perturbation_curve(scorer, imp, dataclasses.replace(cfg, mode=mode))
                curves.append(c.assign(utterance=uid, explanation=name, mode=mode))
    if not curves:
        raise ValueError(f"no utterance has any of the explanations {list(explanations)} stored; run notebook 02 "
                         "(or `xattn saliency`) on these utterances first")
    curves = pd.concat(curves, ignore_index=True)
    curves.attrs["failed"] = failed  # id -> message (also in the store's errors.json)
    aucs = (curves.groupby(["explanation", "mode", "utterance"])
            .apply(lambda g: pd.Series({"auc_wer": curve_auc(g, "wer"), "auc_logprob": curve_auc(g, "mean_log_prob")}),
                   include_groups=False)
            .reset_index())
    return curves, aucs


def paired_aucs(aucs: pd.DataFrame, column: str = "auc_wer") -> pd.DataFrame:
    """Mean AUC per explanation and mode, over every utterance that has it (``n``) and over the utterances that
    have *every* explanation of the table (``paired``, ``n_paired``): only the paired means compare fairly."""
    per = aucs.groupby(["explanation", "mode"])[column].agg(["mean", "count"]).rename(
        columns={"mean": "all_utterances", "count": "n"})
    n_expl = aucs.explanation.nunique()
    common = aucs.groupby("utterance").explanation.nunique()
    common = set(common[common == n_expl].index)
    paired = aucs[aucs.utterance.isin(common)].groupby(["explanation", "mode"])[column].mean().rename("paired")
    out = per.join(paired).reset_index()
    out["n_paired"] = len(common)
    return out
