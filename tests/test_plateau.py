"""Is a trained model past the loss plateau? Known curves and scores in, the verdict out."""
from __future__ import annotations

import pytest

from xattn_utils.runs.grid import model_status, plateau_label, plateau_status


def _curve(final):
    return [(s, 3.0 - s / 1000) for s in range(0, 1000, 100)] + [(1000 + s, final) for s in range(0, 500, 100)]


def _asr(wer_en, wer_it=None):
    rows = [{"language": "en", "task": "transcribe", "split": "test", "wer": wer_en},
            {"language": "en", "task": "transcribe", "split": "test_unseen_voice", "wer": 95.0}]
    if wer_it is not None:
        rows.append({"language": "it", "task": "transcribe", "split": "test", "wer": wer_it})
    return rows


@pytest.mark.parametrize("final, scores, past", [
    (0.05, _asr(6.8), True),                # xattn-en-asr-m: the decoder reads the audio
    (0.60, _asr(71.0), False),              # xattn-en-asr-s: fluent text, wrong words
    (0.05, _asr(6.8, wer_it=80.0), False),  # one language still on the plateau: the worst one decides
    (0.10, _asr(60.0), False),              # low loss on training text, held-out text ignores the audio
    (0.50, [{"language": "en", "task": "translate", "split": "test", "wer": 40.0, "chrf": 50.0}], False),
    (0.05, [{"language": "en", "task": "translate", "split": "test", "wer": 40.0, "chrf": 50.0}], True),
])
def test_plateau_verdicts(final, scores, past):
    status = plateau_status(_curve(final), scores)
    assert status["past_plateau"] is past and status["final_loss"] == pytest.approx(final)
    assert plateau_label(status).startswith("past" if past else "ON THE LOSS PLATEAU")


def test_no_curve_is_not_past_and_untrained_models_are_unmarked(tmp_path):
    assert plateau_status([], _asr(5.0))["past_plateau"] is False
    assert plateau_label(None) == ""
    assert model_status("bundled:whisper-tiny.en") == "" and model_status(str(tmp_path / "nope")) == ""
