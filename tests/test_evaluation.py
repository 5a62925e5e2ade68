"""Scoring of real-model output against the synthetic references: normalization and known-answer scores."""
from __future__ import annotations

import pandas as pd
import pytest

from xattn_utils.analysis.evaluation import normalize_text, score_model, score_texts
from xattn_utils.errors import InputError


def test_normalize_text():
    assert normalize_text(" The red car sees 2 small dogs, in the garden.") == \
        "the red car sees two small dogs in the garden"
    assert normalize_text("Il cane vede 3 gatti!", "it") == "il cane vede tre gatti"
    assert normalize_text("Let's go -- now?") == "let's go now"
    assert normalize_text("12 dogs, 25 cats") == normalize_text("twelve dogs, twenty-five cats") == \
        "twelve dogs twenty five cats"  # digits as words, as the references spell them
    assert normalize_text("Nel 1995 ho visto 21 gatti", "it") == \
        "nel millenovecentonovantacinque ho visto ventuno gatti"
    assert normalize_text("In 1995 we paid 1,000 dollars") == "in nineteen ninety five we paid one thousand dollars"
    assert normalize_text("") == ""


def test_score_texts_known_answers():
    refs = ["the dog sees the cat", "a red car"]
    # one substitution and one deletion over 8 reference words
    s = score_texts(refs, ["the dog sees a cat", "a red"])
    assert s == {"n": 2, "wer": pytest.approx(100 * 2 / 8)}
    t = score_texts(refs, refs, task="translate")
    assert t["wer"] == 0 and t["bleu"] == pytest.approx(100) and t["chrf"] == pytest.approx(100)
    bad = score_texts(refs, ["", "blue boat"], task="translate")
    assert bad["wer"] == pytest.approx(100 * 8 / 8) and bad["bleu"] < 1 and bad["chrf"] < 20
    with pytest.raises(InputError, match="as many"):
        score_texts(refs, ["x"])


def test_score_model_needs_items_in_the_language():
    manifest = pd.DataFrame({"id": ["a"], "audio_path": ["a.wav"], "language": ["en"], "split": ["test"],
                             "transcript": ["the dog"], "translation": ["il cane"]})
    with pytest.raises(InputError, match="spoken in 'it'"):
        score_model(None, manifest, [("it", "translate")])
