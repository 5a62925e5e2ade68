"""Did the model understand its input? The quality gate of a run, and agreement on right vs wrong tokens.

Explaining a hypothesis only explains grounded behaviour when the hypothesis is (mostly) right. This module reads
the hypotheses a run stored (extraction decodes once per utterance) and scores them against the manifest:

* :func:`quality_table`: per voice and overall — WER and CER (transcription) or BLEU and chrF (translation, into
  English), decoding loops and empty hypotheses (recorded by extraction, not explained), beside the gate's targets;
* :func:`hypotheses_table`: each reference beside its hypothesis;
* :func:`token_correctness`: whether each scored token belongs to a word that matches the reference (word
  alignment of the normalized texts), so agreement can be split by it (:func:`agreement_by_correctness`: does
  cross-attention agree less with saliency on the tokens the model got wrong?).

Texts are compared after :func:`xattn_utils.analysis.evaluation.normalize_text` (lower case, no punctuation,
numbers as words).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._io import write_table
from ..errors import XattnError
from ..extraction.extract import KIND as ATTENTION
from ..provenance import provenance
from .agreement import _bootstrap_means, _value_sums, bootstrap_interval
from .evaluation import normalize_text, score_texts

# The gate's targets on the default test split (greedy decoding, as the study decodes).
TARGETS_BY_LANGUAGE = {("en", "transcribe"): {"wer": 10.0}, ("it", "transcribe"): {"wer": 15.0},
                       ("it", "translate"): {"chrf": 50.0}}
LOOP_MARK = "repeats itself"


def _reference_column(task: str) -> str:
    return "translation" if task == "translate" else "transcript"


def hypotheses_table(store, data: pd.DataFrame, language: str = "en", task: str = "transcribe") -> pd.DataFrame:
    """One row per manifest item: id, voice, reference, hypothesis (raw), both normalized, and ``status``
    (``ok``, ``loop``, ``empty``, ``failed`` or ``missing``: not extracted)."""
    ref_lang = "en" if task == "translate" else language
    errors = store.errors() if hasattr(store, "errors") else {}
    rows = []
    for r in data.itertuples(index=False):
        uid = str(r.id)
        ref = str(getattr(r, _reference_column(task)))
        hyp, status = "", "missing"
        if store.has(uid, ATTENTION):
            with store.peek(uid, ATTENTION) as ds:
                hyp, status = str(ds.attrs.get("text", "")).strip(), "ok"
        else:
            msg = str(errors.get(f"{uid}/{ATTENTION}", ""))
            status = "loop" if LOOP_MARK in msg else "empty" if "empty hypothesis" in msg else \
                "failed" if msg else "missing"
        rows.append({"id": uid, "voice": getattr(r, "voice", "") or "", "reference": ref, "hypothesis": hyp,
                     "reference_norm": normalize_text(ref, ref_lang), "hypothesis_norm": normalize_text(hyp, ref_lang),
                     "status": status})
    return pd.DataFrame(rows)


def score_hypotheses(hyps: pd.DataFrame, task: str = "transcribe") -> dict:
    """Corpus scores of a :func:`hypotheses_table` slice: n, loops, empty, and over the decoded (``ok``) items
    wer and cer (%), plus bleu and chrf for translation."""
    ok = hyps[hyps.status == "ok"]
    out = {"n": len(hyps), "scored": len(ok), "loops": int((hyps.status == "loop").sum()),
           "empty": int((hyps.status == "empty").sum())}
    if ok.empty:
        return out
    scores = score_texts(list(ok.reference_norm), list(ok.hypothesis_norm), task, cer=True)
    del scores["n"]  # n counts every item here, the scored ones are ``scored``
    return {**out, **scores}


def gate(scores: dict, language: str, task: str) -> str:
    """``pass`` / ``miss (...)`` against :data:`TARGETS_BY_LANGUAGE` (loops always miss); ``n/a`` without target."""
    target = TARGETS_BY_LANGUAGE.get((language, task))
    if target is None:
        return "n/a"
    misses = [f"{scores.get('loops', 0)} loop(s)"] if scores.get("loops") else []
    for key, bound in target.items():
        value = scores.get(key)
        if value is None or not np.isfinite(value):
            misses.append(f"no {key}")
        elif (key == "wer" and value > bound) or (key == "chrf" and value < bound):
            misses.append(f"{key} {value:.1f} vs {'≤' if key == 'wer' else '≥'} {bound:g}")
    return "pass" if not misses else "miss: " + ", ".join(misses)


def quality_table(store, data: pd.DataFrame, language: str = "en", task: str = "transcribe",
                  model: str = "", hyps: pd.DataFrame | None = None) -> pd.DataFrame:
    """The quality gate of one run: one row per voice and an ``all`` row (model, language, task, voice, n, scored,
    loops, empty, wer, cer[, bleu, chrf], target, gate). ``hyps``: its :func:`hypotheses_table`, when already read."""
    hyps = hypotheses_table(store, data, language, task) if hyps is None else hyps
    groups = [("all", hyps)] + ([(v, g) for v, g in hyps.groupby("voice", sort=True)]
                                if hyps.voice.astype(bool).any() else [])
    target = TARGETS_BY_LANGUAGE.get((language, task), {})
    rows = []
    for voice, g in groups:
        s = score_hypotheses(g, task)
        rows.append({"model": model, "language": language, "task": task, "voice": voice, **s,
                     "target": ", ".join(f"{k} {'≤' if k == 'wer' else '≥'} {v:g}" for k, v in target.items()),
                     "gate": gate(s, language, task) if voice == "all" else ""})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------- right and wrong tokens
def _token_words(tokens: list[str]) -> list[int]:
    """Word index of each token: a token starting with a space (or the first) starts a new word."""
    out, w = [], -1
    for i, t in enumerate(tokens):
        if i == 0 or t.startswith((" ", "Ġ")) or w < 0:
            w += 1
        out.append(w)
    return out


def token_correctness(tokens: list[str], reference: str, language: str = "en") -> np.ndarray:
    """(I,) float: 1 where the token's word matches the reference, 0 where it does not, NaN where the word has no
    normalized text (punctuation alone).

    The hypothesis words (tokens grouped at leading spaces) are normalized one by one (a word may become several,
    e.g. "25" -> "twenty five", or none); the normalized hypothesis is aligned to the normalized reference by
    jiwer's word alignment; a word is right when every normalized piece of it is a hit.
    """
    words_of = _token_words(tokens)
    n_words = (max(words_of) + 1) if words_of else 0
    text = ["".join(t for t, w in zip(tokens, words_of) if w == k) for k in range(n_words)]
    pieces, owner = [], []
    for k, w in enumerate(text):
        for p in normalize_text(w, language).split():
            pieces.append(p)
            owner.append(k)
    ref = normalize_text(reference, language)
    hit = np.zeros(len(pieces), dtype=bool)
    if pieces and ref:
        import jiwer  # optional, loaded where words are aligned

        out = jiwer.process_words(ref, " ".join(pieces))
        for chunk in out.alignments[0]:
            if chunk.type == "equal":
                hit[chunk.hyp_start_idx:chunk.hyp_end_idx] = True
    right = np.full(n_words, np.nan)
    for k in range(n_words):
        mine = [hit[i] for i, o in enumerate(owner) if o == k]
        if mine:
            right[k] = float(all(mine))
    return right[np.asarray(words_of, dtype=int)] if words_of else np.zeros(0)


def correctness_table(store, data: pd.DataFrame, language: str = "en", task: str = "transcribe",
                      special: str = "exclude") -> pd.DataFrame:
    """Per stored utterance and scored token (the agreement table's ``token`` index): ``correct`` (1/0/NaN)."""
    ref_lang = "en" if task == "translate" else language
    col = _reference_column(task)
    rows = []
    for r in data.itertuples(index=False):
        uid = str(r.id)
        if not store.has(uid, ATTENTION):
            continue
        with store.peek(uid, ATTENTION) as ds:
            tokens = [str(t) for t in ds.token_str.values]
        if special == "exclude":
            tokens = tokens[:-1]
        right = token_correctness(tokens, str(getattr(r, col)), ref_lang)
        rows += [{"utterance": uid, "token": i, "token_text": t, "correct": c}
                 for i, (t, c) in enumerate(zip(tokens, right))]
    return pd.DataFrame(rows, columns=["utterance", "token", "token_text", "correct"])


def agreement_by_correctness(table: pd.DataFrame, correctness: pd.DataFrame, attention=("all",),
                             references=("smx", "smh"), measure: str = "pearson", n_boot: int = 1000,
                             seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Token-level agreement split by whether the token is right: per (attention, reference), the mean over right
    tokens and over wrong tokens (Fisher z for Pearson) and their difference ``wrong − right``, each with a
    percentile bootstrap over utterances (paired: the same draws for both groups). A group found in fewer than two
    utterances has no interval (NaN): resampling one utterance says nothing about others.

    Returns columns attention, reference, measure, group (``right``, ``wrong``, ``wrong − right``), value, ci_low,
    ci_high, n_tokens, n_utterances.
    """
    tok = table[(table.level == "token") & (table.measure == measure)]
    if tok.empty:
        raise XattnError(f"the agreement table has no token-level {measure} rows; compare with levels "
                         "including 'token'")
    merged = tok.merge(correctness[["utterance", "token", "correct"]], on=["utterance", "token"], how="inner")
    fisher = measure == "pearson"
    out = []
    for a in attention:
        for ref in references:
            d = merged[(merged.attention == a) & (merged.reference == ref)]
            if d.empty:
                continue
            utts = sorted(d.utterance.unique())
            by = {u: g for u, g in d.groupby("utterance")}
            series = []
            for flag in (1.0, 0.0):
                groups = [by[u].value.to_numpy(float)[by[u].correct.to_numpy(float) == flag] for u in utts]
                series.append(_value_sums(groups, fisher))
            with np.errstate(invalid="ignore", divide="ignore"):
                (v_r, b_r), (v_w, b_w) = _bootstrap_means(series, n_boot, seed, fisher)
            counts_r, counts_w = series[0][1], series[1][1]
            for group, value, boot, counts in (("right", v_r, b_r, counts_r), ("wrong", v_w, b_w, counts_w),
                                               ("wrong − right", v_w - v_r, b_w - b_r, counts_r + counts_w)):
                # an interval over utterances needs two of them in each group it uses
                used = (counts_r, counts_w) if group == "wrong − right" else (counts,)
                lo, hi = bootstrap_interval(boot, ci, min(int((c > 0).sum()) for c in used))
                out.append({"attention": a, "reference": ref, "measure": measure, "group": group,
                            "value": float(value), "ci_low": float(lo), "ci_high": float(hi),
                            "n_tokens": int(counts.sum()), "n_utterances": int((counts > 0).sum())})
    return pd.DataFrame(out)


def quality_gate(store, data: pd.DataFrame, language: str | None = None, task: str | None = None,
                 out_dir=None, model: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's quality gate: (:func:`quality_table`, :func:`hypotheses_table`), written to ``out_dir`` as
    ``01_quality.*`` and ``01_hypotheses.*`` when given. ``language``/``task`` None: English, transcription."""
    language, task = language or "en", task or "transcribe"
    hyps = hypotheses_table(store, data, language, task)
    summary = quality_table(store, data, language, task, model, hyps=hyps)
    if out_dir is not None:
        prov = provenance(data={"store": str(getattr(store, "path", store)), "utterances": list(hyps.id)},
                          params={"language": language, "task": task, "targets": TARGETS_BY_LANGUAGE.get(
                              (language, task), {})})
        write_table(summary, out_dir, "01_quality", prov)
        write_table(hyps, out_dir, "01_hypotheses", prov)
    return summary, hyps


def store_decoding(store) -> tuple[str, str]:
    """(language, task) the store's hypotheses were decoded with (English transcription when not recorded)."""
    for uid in store.utterances():
        if store.has(uid, ATTENTION):
            with store.peek(uid, ATTENTION) as ds:
                dec = ds.attrs.get("decoding") or {}
            return dec.get("language") or "en", dec.get("task") or "transcribe"
    return "en", "transcribe"


def right_and_wrong(table: pd.DataFrame, store, data: pd.DataFrame, attention=("all", "norm:all"),
                    n_boot: int = 1000, seed: int = 0, out_dir=None) -> pd.DataFrame:
    """Does cross-attention agree less with saliency on the tokens the model got wrong? Per-token Pearson split by
    :func:`token_correctness` (:func:`agreement_by_correctness`; language and task as the store decoded), written
    to ``out_dir/03_right_wrong.*`` when given."""
    language, task = store_decoding(store)
    right = correctness_table(store, data[data.id.isin(set(table.utterance.dropna()))], language, task)
    refs = [r for r in ("smx", "smh") if r in set(table.reference)]
    out = agreement_by_correctness(table, right, attention=attention, references=refs, n_boot=n_boot, seed=seed)
    out.insert(0, "task", task)
    out.insert(0, "language", language)
    if out_dir is not None:
        write_table(out, out_dir, "03_right_wrong",
                    provenance(data={"store": str(getattr(store, "path", store))},
                               params={"attention": list(attention), "n_boot": n_boot}, seed=seed))
    return out
