"""Word timestamps from the bundled Whisper: parity with CTranslate2's ``Whisper.align``, head choice, words."""
from __future__ import annotations

import numpy as np
import pytest

from xattn_utils.analysis.aligner import (
    align,
    alignment_pass,
    ctranslate2_parity,
    parse_heads,
    text_token_ids,
)
from xattn_utils.analysis.evaluation import normalize_text
from xattn_utils.data.audio import load_audio
from xattn_utils.errors import XattnError

from tolerances import f32, f64, measured, printed

TINY_EN_HEADS = [(1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)]


def test_parse_heads():
    assert parse_heads("alignment", 4, 6, TINY_EN_HEADS) == TINY_EN_HEADS
    assert len(parse_heads("all", 4, 6)) == 24
    assert parse_heads("L3H2, l1h0,L3H2", 4, 6) == [(1, 0), (3, 2)]
    with pytest.raises(XattnError, match="L4H0"):
        parse_heads("L4H0", 4, 6)
    with pytest.raises(XattnError, match="L<layer>H<head>"):
        parse_heads("3:2", 4, 6)
    with pytest.raises(XattnError, match="no alignment_heads"):
        parse_heads("alignment", 4, 6, None)


@pytest.fixture(scope="module")
def corpus():
    from xattn_utils.data.corpus import study_data

    return study_data(split="test", limit=4)


def test_ctranslate2_align_parity(bundled, corpus):
    """Same hypothesis, same official heads: CTranslate2's DTW path and ours are identical, token by token."""
    pytest.importorskip("ctranslate2")
    rows = corpus[corpus.id != "default-en-test-00007"].head(3)  # (00007: tiny.en loops to 128 tokens; slow)
    df = ctranslate2_parity(bundled, {r.id: load_audio(r.audio_path) for r in rows.itertuples()}, ties="time")
    assert len(df) == 3 and df.n_tokens.min() >= 5
    assert df.path_identical.all(), df
    assert (df.start_frames_equal == 1.0).all() and (df.max_frame_diff == 0).all()
    # float32 runtimes, same weights, other kernels: token probabilities measured at most 2.8e-5 apart (1 and 2
    # threads); ×10
    assert df.prob_max_abs_diff.max() < measured(3e-5, margin=10)


def test_align_reference_text_gives_ordered_words(bundled, corpus):
    row = corpus.iloc[3]  # "two cars carry a key"
    audio = load_audio(row.audio_path)
    words = align(bundled, audio, heads="alignment", text=row.transcript)
    assert [w["word"] for w in words] == row.transcript.split()
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(w["end"] >= w["start"] for w in words)
    # word ends lie on the 20 ms encoder-frame grid (the last frame may reach past the audio), printed to the ms
    assert words[-1]["end"] <= row.duration_s + 1 / 50 + printed(3)
    assert all(0 < w["probability"] <= 1 for w in words)
    # the pass keeps every decoder position: prompt (2) + text + end-of-text
    ap = alignment_pass(bundled, audio, text_token_ids(bundled, row.transcript))
    assert ap.attention.shape[2] == 2 + len(ap.text_ids) + 1
    # float32 rows: the softmax normalizer over T' frames and this sum over them
    np.testing.assert_allclose(ap.attention.sum(-1), 1.0, rtol=0, atol=f32(n_ops=2 * ap.attention.shape[-1]))


def test_cli_timestamps_json_csv_and_errors(corpus, capsys, tmp_path):
    import json

    from xattn_utils.cli import main

    wav = corpus.iloc[3].audio_path
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio")
    assert main(["timestamps", "--format", "json", "--heads", "L3H2,L2H1", wav, str(bad)]) == 1
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert [d["file"] for d in data] == [wav] and "broken.wav" in err
    words = data[0]["words"]
    # reference "Rome is older than any other city I've visited."; tiny.en's greedy hypothesis drops the "'ve"
    said = "Rome is older than any other city I visited."
    assert corpus.iloc[3].transcript == "Rome is older than any other city I've visited."
    assert [normalize_text(w["word"]) for w in words] == normalize_text(said).split()
    assert all(set(w) == {"word", "start", "end", "probability"} for w in words)
    # a shared boundary is the same frame / 50 rounded to the ms on both sides; float64 rounding of a ≤ 30 s time
    assert all(a["end"] <= b["start"] + f64(n_ops=2, scale=30.0) for a, b in zip(words, words[1:]))
    assert main(["timestamps", "--format", "csv", wav]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "file,word,start,end,probability" and len(lines) == 1 + len(said.split())
    assert main(["timestamps", "--heads", "L9H0", wav]) == 2
    assert "L0H0 .. L3H5" in capsys.readouterr().err


def test_cli_discovered_heads_need_and_use_calibration(corpus, capsys, tmp_path):
    from xattn_utils.cli import main

    wav = corpus.iloc[3].audio_path
    assert main(["timestamps", "--heads", "discovered", wav]) == 2
    assert "--calibration" in capsys.readouterr().err
    cal = tmp_path / "cal.csv"
    corpus.iloc[:2].to_csv(cal, index=False)  # absolute paths: resolved on load
    assert main(["timestamps", "--heads", "discovered", "--calibration", str(cal), "--k-max", "2",
                 "--format", "csv", wav]) == 0
    out, err = capsys.readouterr()
    assert "discovered heads (k=" in err and "2 calibration utterances" in err
    assert len(out.splitlines()) == 1 + 9  # the 9 words of the hypothesis
