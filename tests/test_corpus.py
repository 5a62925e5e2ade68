"""Synthetic corpus: word times, determinism, the committed manifest, translations, manifest validation, audio."""
from __future__ import annotations

import random

import numpy as np
import pytest
import soundfile as sf

from xattn_utils._io import sha256_file
from xattn_utils.data.audio import load_audio
from xattn_utils.data.corpus import (
    REPO_MANIFEST,
    CorpusConfig,
    build_corpus,
    ensure_default_corpus,
    plan_corpus,
)
from xattn_utils.data.espeak import Synthesizer
from xattn_utils.data.grammar import NUMBERS, sentence, vocabulary
from xattn_utils.data.manifest import load_manifest, read_word_times, validate_manifest
from xattn_utils.errors import InputError


def _rms(audio, sr, hop_s=0.005):
    hop = int(sr * hop_s)
    n = len(audio) // hop
    return np.sqrt((audio[: n * hop].reshape(n, hop) ** 2).mean(1)), hop_s


def test_word_times_bracket_speech_with_forced_pauses():
    """Commas force pauses: the silence between words must fall outside word spans, onsets near word starts."""
    text = "apple, orange, banana, window, yellow"
    speech = Synthesizer().speak(text, "en-us", 140, 50)
    sr = speech.sample_rate
    rms, dt = _rms(speech.audio, sr)
    loud = rms > 0.02
    words = speech.words
    assert [w.word for w in words] == text.split()
    inside = np.zeros_like(loud)
    for w in words:
        inside[int(w.start / dt): int(np.ceil(w.end / dt))] = True
    assert loud[~inside].mean() < 0.02  # nothing voiced outside the word spans
    onsets = []
    for w in words:  # first loud frame at or after the word start
        k = int(w.start / dt)
        onsets.append((np.argmax(loud[k:]) + k) * dt - w.start)
    assert np.mean(np.abs(onsets)) < 0.05
    gaps = [b.start - a.end for a, b in zip(words, words[1:])]
    assert min(gaps) > 0.05  # the pauses are outside the words


def test_word_times_monotone_and_cover_the_audio():
    speech = Synthesizer().speak("the small dog sees the old man in the garden", "en-us", 150, 50)
    starts = [w.start for w in speech.words]
    assert starts == sorted(starts) and all(w.end > w.start for w in speech.words)
    assert speech.words[-1].end <= len(speech.audio) / speech.sample_rate + 1e-6
    assert sum(not w.exact for w in speech.words) >= 0  # merged groups are flagged, never dropped
    assert len(speech.words) == 10


def test_italian_translation_reorders_adjective_and_agrees():
    rng = random.Random(3)
    pairs = [sentence(rng) for _ in range(300)]
    by_en = {p.english: p.italian for p in pairs}
    hits = [(e, i) for e, i in by_en.items() if e.startswith("the red ")]
    for en, it in hits:
        noun = en.split()[2]
        assert it.split()[2] in ("rosso", "rossa", "rossi", "rosse") and it.split()[1] != "rosso"
        if noun == "car":
            assert it.startswith("la macchina rossa")
    assert any(p.italian.startswith(("le ", "i ")) for p in pairs)  # plurals with the right article
    assert 150 < len(vocabulary()) < 600


def test_plan_is_deterministic_and_splits_are_disjoint():
    cfg = CorpusConfig(name="c", n_train=40, n_dev=5, n_test=10, n_test_unseen_voice=4, languages=("en", "it"))
    a, b = plan_corpus(cfg), plan_corpus(cfg)
    assert a == b
    train = {r["text"] for r in a if r["split"] == "train" and r["language"] == "en"}
    test = {r["text"] for r in a if r["split"] == "test" and r["language"] == "en"}
    assert not train & test
    unseen = [r for r in a if r["split"] == "test_unseen_voice"]
    assert len(unseen) == 8 and all(r["voice"] not in cfg.voices[r["language"]] for r in unseen)
    assert all(r["translation"] for r in a if r["language"] == "en")
    # Italian utterances carry their English sentence (Whisper translates into English): the same grammar pair
    it_rows = [r for r in a if r["language"] == "it"]
    english = {"the", "a", *(n[0] for n in NUMBERS)}
    assert it_rows and all(r["tasks"] == "asr;st" and r["translation"].split()[0] in english
                           and r["text"].split()[0] not in english for r in it_rows)


def test_build_is_byte_identical_and_resumable(tmp_path):
    cfg = CorpusConfig(name="t", out_dir=str(tmp_path / "a"), n_test=3, languages=("en", "it"))
    df1 = build_corpus(cfg, progress=False)
    df2 = build_corpus(CorpusConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "b")}), progress=False)
    assert list(df1.sha256) == list(df2.sha256)
    again = build_corpus(cfg, progress=False)  # everything already there: kept
    assert list(again.sha256) == list(df1.sha256)
    row = df1.iloc[0]
    audio, sr = sf.read(row.audio_path)
    assert sr == 16000 and audio.ndim == 1 and abs(len(audio) / sr - row.duration_s) < 1e-3
    words = read_word_times(row)
    assert [w["word"] for w in words] == row.transcript.split()
    assert validate_manifest(df1) == {}


def test_a_changed_config_resynthesizes_instead_of_relabelling(tmp_path):
    cfg = CorpusConfig(name="t", out_dir=str(tmp_path), n_test=2, languages=("en", "it"))
    first = build_corpus(cfg, progress=False).set_index("id")
    # an unseen-voice split for English draws from the shared generator: the Italian rows get other sentences
    changed = build_corpus(CorpusConfig(**{**cfg.__dict__, "n_test_unseen_voice": 1}), progress=False).set_index("id")
    fresh = build_corpus(CorpusConfig(**{**cfg.__dict__, "n_test_unseen_voice": 1, "out_dir": str(tmp_path / "f")}),
                         progress=False).set_index("id")
    assert list(changed.sha256) == list(fresh.sha256)  # identical to a build from scratch
    moved = [i for i in first.index if first.at[i, "transcript"] != changed.at[i, "transcript"]]
    assert moved and all(first.at[i, "sha256"] != changed.at[i, "sha256"] for i in moved)
    for i in changed.index:  # every kept or rebuilt file's words are its row's transcript
        assert [w["word"] for w in read_word_times(changed.loc[i])] == changed.at[i, "transcript"].split()


def test_committed_manifest_reproduces():
    path = ensure_default_corpus(REPO_MANIFEST, progress=False)
    df = load_manifest(path)
    assert len(df) == 24 and set(df.split) == {"test"} and (df.language == "en").all()
    assert all(sha256_file(p) == s for p, s in zip(df.audio_path, df.sha256))
    assert df.duration_s.between(1.0, 5.0).all()


def test_manifest_validation_names_every_bad_row(tmp_path):
    cfg = CorpusConfig(name="v", out_dir=str(tmp_path), n_test=5)
    df = build_corpus(cfg, progress=False)
    df.loc[0, "audio_path"] = str(tmp_path / "gone.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"not audio at all")
    df.loc[1, "audio_path"] = str(tmp_path / "corrupt.wav")
    df.loc[2, "transcript"] = ""
    df.loc[3, "sha256"] = "0" * 64
    df.loc[4, "sample_rate"] = 22050
    problems = validate_manifest(df)
    assert set(problems) == set(df.id)
    assert "missing" in problems[df.id[0]][0]
    assert "corrupt" in problems[df.id[1]][0]
    assert "empty transcript" in problems[df.id[2]][0]
    assert "checksum" in problems[df.id[3]][0]
    assert "22050" in problems[df.id[4]][0]


@pytest.mark.parametrize("make,match", [
    (lambda p: None, "missing"),
    (lambda p: p.write_bytes(b"RIFFxxxxWAVE"), "corrupt"),
    (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "empty"),
    (lambda p: sf.write(p, np.zeros(16000 * 31, np.float32), 16000), "over the model's 30 s"),
])
def test_load_audio_errors_name_the_file(tmp_path, make, match):
    path = tmp_path / "x.wav"
    make(path)
    with pytest.raises(InputError, match=match) as err:
        load_audio(path)
    assert "x.wav" in str(err.value)


def test_load_audio_resamples_and_downmixes(tmp_path):
    sr = 44100
    t = np.arange(int(1.5 * sr)) / sr
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "st.wav", np.stack([tone, tone], 1), sr)
    audio = load_audio(tmp_path / "st.wav")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 1.5 * 16000) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 2
