"""Accuracy of a model on a manifest in a given language and task: WER for transcription, BLEU/chrF for translation.

``score_model(loaded, manifest, [("en", "transcribe"), ("it", "translate")])`` decodes (greedy, the study's decoder)
the manifest's utterances spoken in each language and scores them against the manifest's ``transcript``
(transcription) or ``translation`` (translation into English; the corpus builder gives Italian items their English
sentence). Real models write cased, punctuated text with digits while the synthetic references are lower case words
without punctuation, so both sides go through :func:`normalize_text` first (lower case, punctuation removed,
numbers spelled out); WER is jiwer's corpus WER, BLEU and chrF are sacrebleu's corpus scores on the
normalized text.

    xattn evaluate --model bundled:whisper-base --manifest M.csv --setting it:translate
"""
from __future__ import annotations

import argparse
import re
import sys
import unicodedata

import pandas as pd
from num2words import num2words

from .._entry import module_main
from ..data.audio import load_audio
from ..data.manifest import load_manifest
from ..errors import InputError, XattnError
from ..extraction.forced import transcribe
from ..models.loader import load_model


def _spell_number(match: re.Match, language: str) -> str:
    """A run of digits as words, as a speaker says it: num2words in ``language`` (English four-digit numbers
    1100-2099 as years: "nineteen ninety-five")."""
    n = int(match.group(0))
    lang = language if language in ("en", "it") else "en"
    if lang == "en" and len(match.group(0)) == 4 and 1100 <= n <= 2099:
        return f" {num2words(n, to='year')} "
    return f" {num2words(n, lang=lang)} "


def normalize_text(text: str, language: str = "en") -> str:
    """Lower case, numbers as words, punctuation to spaces (apostrophes kept), whitespace collapsed.

    Whisper writes digits where the references spell numbers out (as a speaker says them), so digits become words
    (:func:`_spell_number`; "25" and "twenty-five" both give "twenty five").

    >>> normalize_text(" The red car sees 2 small dogs, in the garden.")
    'the red car sees two small dogs in the garden'
    >>> normalize_text("Ho 25 anni.", "it")
    'ho venticinque anni'
    """
    text = unicodedata.normalize("NFC", text).lower().replace("\u2019", "'")
    text = re.sub(r"(?<=\d)[,.](?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"\d+", lambda m: _spell_number(m, language), text)
    text = "".join(" " if unicodedata.category(c).startswith(("P", "S")) and c != "'" else c for c in text)
    return " ".join(w for w in re.split(r"\s+", text) if w)


def score_texts(refs: list[str], hyps: list[str], task: str = "transcribe", cer: bool = False) -> dict:
    """Corpus scores of hypotheses against references (already normalized): ``n``, ``wer`` (%), ``cer`` (%) when
    asked, and for ``translate`` also ``bleu`` and ``chrf`` (sacrebleu). An empty hypothesis counts as one wrong
    word (jiwer refuses empty strings). The one place text is scored: the grid, the quality gate and faithfulness
    call it."""
    import jiwer  # optional scorers, loaded when text is scored (importing this module stays light)
    import sacrebleu

    if len(refs) != len(hyps) or not refs:
        raise InputError(f"need as many hypotheses as references, at least one (got {len(hyps)} and {len(refs)})")
    guarded = [h if h else "<empty>" for h in hyps]
    out = {"n": len(refs), "wer": 100 * jiwer.wer(refs, guarded)}
    if cer:
        out["cer"] = 100 * jiwer.cer(refs, guarded)
    if task == "translate":
        out["bleu"] = sacrebleu.corpus_bleu(hyps, [refs]).score
        out["chrf"] = sacrebleu.corpus_chrf(hyps, [refs]).score
    return out


def score_model(loaded, manifest: pd.DataFrame, settings: list[tuple[str, str]], split: str | None = "test",
                limit: int | None = None, batch_size: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores of ``loaded`` per (spoken language, task) setting, and the per-utterance hypotheses.

    Args:
        manifest: a loaded manifest (``language``, ``transcript``, ``translation`` columns).
        settings: (language, task) pairs, e.g. ``[("it", "transcribe"), ("it", "translate")]``; translation
            references are the ``translation`` column (into English for Italian items).
        split: manifest split to use (None: all); limit: first n utterances per language.
    Returns:
        (scores: one row per setting with model, language, task, split, n, wer[, bleu, chrf];
         hypotheses: one row per utterance and setting with id, reference, hypothesis (raw and normalized)).
    """
    rows, hyp_rows = [], []
    for language, task in settings:
        part = manifest if split is None else manifest[manifest["split"] == split]
        part = part[part["language"] == language].head(limit) if limit else part[part["language"] == language]
        if part.empty:
            raise InputError(f"the manifest has no {split or 'any'} utterances spoken in {language!r}; build a "
                             "corpus with that language (CorpusConfig(languages=(..., 'it')))")
        ref_col = "translation" if task == "translate" else "transcript"
        ref_lang = "en" if task == "translate" else language
        refs = [normalize_text(str(t), ref_lang) for t in part[ref_col]]
        if not all(refs):
            raise InputError(f"some {language!r} utterances have no {ref_col} to score against; rebuild the corpus")
        raw = transcribe(loaded, [load_audio(p) for p in part["audio_path"]], language=language, task=task,
                         batch_size=batch_size)
        hyps = [normalize_text(h, ref_lang) for h in raw]
        rows.append({"model": loaded.model_id, "language": language, "task": task, "split": split,
                     **score_texts(refs, hyps, task)})
        hyp_rows += [{"model": loaded.model_id, "id": i, "language": language, "task": task, "reference": r,
                      "hypothesis": h, "raw": x} for i, r, h, x in zip(part["id"], refs, hyps, raw)]
    return pd.DataFrame(rows), pd.DataFrame(hyp_rows)


def command(args: argparse.Namespace) -> int:
    """``xattn evaluate``: print the scores per setting (and write them with ``--out``); 2 on bad input."""
    try:
        settings = [tuple(s.split(":", 1)) for s in args.setting]
        if any(len(s) != 2 for s in settings):
            raise InputError(f"--setting takes LANGUAGE:TASK pairs, not {args.setting}")
        scores, hyps = score_model(load_model(args.model), load_manifest(args.manifest), settings, args.split,
                                   args.limit)
    except XattnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(scores.round(1).to_string(index=False))
    if args.out:
        scores.to_csv(f"{args.out}.scores.csv", index=False)
        hyps.to_csv(f"{args.out}.hypotheses.csv", index=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m xattn_utils.analysis.evaluation``: the same as ``xattn evaluate`` (kept for old scripts)."""
    return module_main("evaluate", command, argv)


if __name__ == "__main__":
    sys.exit(main())
