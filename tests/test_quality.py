"""The quality gate and right/wrong tokens: known answers on hand-made hypotheses and planted agreement values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xattn_utils.analysis.evaluation import normalize_text
from xattn_utils.analysis.quality import agreement_by_correctness, gate, score_hypotheses, token_correctness


def _hyps(pairs, status=None, task_lang="en"):
    rows = []
    for k, (ref, hyp) in enumerate(pairs):
        rows.append({"id": f"u{k}", "voice": "flite:rms" if k % 2 == 0 else "flite:slt", "reference": ref,
                     "hypothesis": hyp, "reference_norm": normalize_text(ref, task_lang),
                     "hypothesis_norm": normalize_text(hyp, task_lang),
                     "status": (status or {}).get(k, "ok")})
    return pd.DataFrame(rows)


def test_scores_of_a_known_small_case():
    # 1 substitution ("a" for "the") over 9 reference words; digits and case do not count as errors
    hyps = _hyps([("The dog saw twenty-five cats.", "the dog saw 25 cats"),
                  ("Where is the station?", "Where is a station?"), ("loop", ""), ])
    hyps.loc[2, "status"] = "loop"
    s = score_hypotheses(hyps)
    assert (s["n"], s["scored"], s["loops"]) == (3, 2, 1)
    assert s["wer"] == pytest.approx(100 * 1 / 10)  # "the dog saw twenty five cats" + "where is the station"
    # CER: one word swapped ("the" -> "a": 3 chars against 1: 2 deletions + 1 substitution) over 48 characters
    ref_chars = len("the dog saw twenty five cats") + len("where is the station")
    assert s["cer"] == pytest.approx(100 * 3 / ref_chars)
    assert gate(s, "en", "transcribe") == "miss: 1 loop(s)"
    assert gate({**s, "loops": 0}, "en", "transcribe") == "pass"
    assert gate({**s, "loops": 0, "wer": 12.0}, "en", "transcribe") == "miss: wer 12.0 vs ≤ 10"
    t = score_hypotheses(_hyps([("The old captain opens the heavy door.", "The old captain opens the heavy door."),
                                ("The child reads a book in the garden.", "I hope you enjoyed this video.")]),
                         task="translate")
    assert t["chrf"] < 70 and t["bleu"] < 70 and t["wer"] == pytest.approx(100 * 8 / 15)
    assert gate({**t, "loops": 0, "chrf": 42.0}, "it", "translate") == "miss: chrf 42.0 vs ≥ 50"
    perfect = score_hypotheses(_hyps([("Ciao Marco, come stai?", "ciao marco come stai")], task_lang="it"),
                               task="translate")
    assert perfect["chrf"] == pytest.approx(100) and gate({**perfect, "loops": 0}, "it", "translate") == "pass"


def test_token_correctness_marks_the_words_that_match_the_reference():
    tokens = [" Two", " farm", "ers", " buy", " a", " big", " happy", " chair", " at", " 5", "."]
    right = token_correctness(tokens, "two farmers buy six happy chairs at five")
    #                 Two farm ers buy  a   big  happy chair at  5.
    assert list(right) == [1, 1, 1, 1, 0, 0, 1, 0, 1, 1, 1]
    assert np.isnan(token_correctness([" Hello", " ,"], "hello")[1])  # punctuation alone has no word
    assert list(token_correctness([" Ciao", " Marco"], "ciao marco", "it")) == [1, 1]


def test_agreement_split_by_correctness_recovers_a_planted_difference():
    """Right tokens agree at 0.6, wrong ones at 0.2 (tanh of Fisher means): the split and the difference come back,
    the interval of the difference excludes 0."""
    rng = np.random.default_rng(0)
    rows, right = [], []
    for u in range(12):
        for t in range(10):
            ok = float(t % 3 != 0)
            value = np.tanh(np.arctanh(0.6 if ok else 0.2) + rng.normal(0, 0.05))
            rows.append({"utterance": f"u{u}", "token": t, "level": "token", "measure": "pearson",
                         "attention": "all", "reference": "smx", "value": value})
            right.append({"utterance": f"u{u}", "token": t, "correct": ok})
    out = agreement_by_correctness(pd.DataFrame(rows), pd.DataFrame(right), attention=("all",), references=("smx",),
                                   n_boot=500).set_index("group")
    assert out.at["right", "value"] == pytest.approx(0.6, abs=0.02)
    assert out.at["wrong", "value"] == pytest.approx(0.2, abs=0.03)
    assert out.at["wrong − right", "ci_high"] < -0.3
    assert out.at["right", "n_tokens"] == 12 * 6 and out.at["wrong", "n_tokens"] == 12 * 4
    # one wrong token in one utterance: a value, no interval
    one = pd.DataFrame(right).assign(correct=lambda d: ((d.utterance != "u0") | (d.token != 0)).astype(float))
    few = agreement_by_correctness(pd.DataFrame(rows), one, attention=("all",), references=("smx",),
                                   n_boot=200).set_index("group")
    assert few.at["wrong", "n_tokens"] == 1 and np.isfinite(few.at["wrong", "value"])
    assert np.isnan(few.at["wrong", "ci_low"]) and np.isnan(few.at["wrong − right", "ci_high"])
