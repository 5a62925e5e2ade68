"""Discovered heads written into a model's generation config drive transformers' own word timestamps."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from xattn_utils.data.audio import load_audio
from xattn_utils.errors import ModelError
from xattn_utils.models.alignment_heads import is_trained_here, save_alignment_heads


def _token_times(folder, features):
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model.generate(features, return_token_timestamps=True, max_new_tokens=40)
    return model.generation_config.alignment_heads, out["sequences"], out["token_timestamps"]


def test_written_heads_are_the_ones_transformers_times_words_with(bundled, speech_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(bundled.path, folder)
    assert not is_trained_here(bundled.path) and not is_trained_here(folder)  # no training.json: not ours
    (folder / "training.json").write_text("{}")
    assert is_trained_here(folder)
    features = bundled.processor.feature_extractor(load_audio(speech_dir / "utt0.wav"), sampling_rate=16000,
                                                   return_tensors="pt").input_features
    official, seq, times = _token_times(folder, features)
    assert official == [list(h) for h in bundled.alignment_heads]
    chosen = [(0, 1), (1, 5)]  # early heads: they do not align words, so the timestamps must move
    save_alignment_heads(folder, chosen, source="test")
    heads, seq2, times2 = _token_times(folder, features)
    assert heads == [list(h) for h in chosen] and torch.equal(seq, seq2)  # same text, other heads
    assert times2.shape == times.shape and not torch.allclose(times, times2)
    assert (times2.diff(dim=-1) >= 0).all()  # DTW: monotone token times
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["xattn_alignment_heads"] == {"previous": official, "source": "test"}
    for bad in ([(4, 0)], [(0, 6)], []):  # tiny.en: 4 decoder layers × 6 heads
        with pytest.raises(ModelError, match="alignment heads"):
            save_alignment_heads(folder, bad)
    assert json.loads((folder / "generation_config.json").read_text())["alignment_heads"] == [list(h) for h in chosen]
