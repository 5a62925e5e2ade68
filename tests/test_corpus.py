"""Synthetic corpora: natural sentences and their splits, word times, determinism, the committed manifest and a
rebuild elsewhere, translations, manifest validation, audio."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import soundfile as sf

from xattn_utils._io import sha256_file
from xattn_utils.data.audio import load_audio
from xattn_utils.data.corpus import (
    REPO_MANIFEST,
    VOICES,
    CorpusConfig,
    build_corpus,
    default_config,
    ensure_default_corpus,
    plan_corpus,
    study_data,
)
from xattn_utils.data.espeak import Synthesizer
from xattn_utils.data.grammar import sentence, vocabulary
from xattn_utils.data.manifest import load_manifest, read_word_times, validate_manifest
from xattn_utils.data.sentences import load_pairs, split_of, split_pairs
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
    for lang in ("en", "it"):
        by = {sp: {r["text"] for r in a if r["split"] == sp and r["language"] == lang}
              for sp in ("train", "dev", "test")}
        assert not by["train"] & by["test"] and not by["dev"] & by["test"] and not by["train"] & by["dev"]
    unseen = [r for r in a if r["split"] == "test_unseen_voice"]
    assert len(unseen) == 8 and all(r["voice"] not in cfg.voices[r["language"]] for r in unseen)
    # the unseen voice shares nothing with train: for English not even the engine
    train_voices = {r["voice"] for r in a if r["split"] == "train"}
    assert not train_voices & {r["voice"] for r in unseen}
    assert {r["voice"].split(":")[0] for r in unseen if r["language"] == "en"}.isdisjoint(
        {r["voice"].split(":")[0] for r in a if r["split"] == "train" and r["language"] == "en"})
    # Italian utterances say the translations of the English ones and carry the English sentence as translation
    pairs = {s.english: s.italian for _, s in load_pairs()}
    for en, it in zip([r for r in a if r["language"] == "en"], [r for r in a if r["language"] == "it"]):
        assert it["text"] == pairs[en["text"]] == en["translation"] and it["translation"] == en["text"]
        assert en["split"] == it["split"] and en["tasks"] == "asr;st"


def test_sentence_set_is_natural_bilingual_and_split_by_sentence():
    pairs = load_pairs()
    assert len(pairs) >= 300
    ids = [i for i, _ in pairs]
    english = [s.english for _, s in pairs]
    assert len(set(ids)) == len(ids) and len(set(english)) == len(english)
    for _, s in pairs:
        assert 4 <= len(s.english.split()) <= 15 and 4 <= len(s.italian.split()) <= 15
        assert not any(c.isdigit() for c in s.english + s.italian)  # numbers spelled as a speaker says them
    assert sum(s.english.endswith("?") for _, s in pairs) >= 30
    pools = split_pairs()
    assert sorted(len(v) for v in pools.values()) and sum(len(v) for v in pools.values()) == len(pairs)
    seen = [{i for i, _ in v} for v in pools.values()]
    assert all(not (x & y) for k, x in enumerate(seen) for y in seen[k + 1:])
    assert 0.15 < len(pools["test"]) / len(pairs) < 0.35  # a quarter, by hash
    assert all(split_of(i) == sp for sp, v in pools.items() for i, _ in v)
    # a test sentence never becomes training data, however many training utterances are asked for
    plan = plan_corpus(CorpusConfig(name="big", n_train=600, n_test=5, languages=("en",)))
    test = {s.english for _, s in pools["test"]}
    assert not test & {r["text"] for r in plan if r["split"] == "train"}
    assert len({r["text"] for r in plan if r["split"] == "train"}) == len(pools["train"])  # repeats, all used


@pytest.mark.parametrize("kw,match", [
    ({"unseen_voices": {"en": ["flite:rms"]}, "n_test_unseen_voice": 1}, "both voices and unseen_voices"),
    ({"voices": {"en": ["nope:x"]}}, "nope"),
    ({"sentences": "poems"}, "sentences"),
    ({"speed": [1.2, 0.9]}, "speed"),
    ({"speed": {"en": [0.9, 1.0]}, "languages": ("en", "it")}, "no range for"),
])
def test_bad_corpus_configs_say_what_is_wrong(kw, match):
    with pytest.raises(InputError, match=match):
        CorpusConfig(name="bad", **kw)


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
    # other speeds: the same sentences, other audio -> every file re-synthesized, none kept under its old label
    slower = {**cfg.__dict__, "speed": {"en": (0.8, 0.85), "it": (0.7, 0.75)}}
    changed = build_corpus(CorpusConfig(**slower), progress=False).set_index("id")
    fresh = build_corpus(CorpusConfig(**{**slower, "out_dir": str(tmp_path / "f")}), progress=False).set_index("id")
    assert list(changed.sha256) == list(fresh.sha256)  # identical to a build from scratch
    assert list(changed.transcript) == list(first.transcript)
    assert all(first.at[i, "sha256"] != changed.at[i, "sha256"] for i in first.index)
    assert (changed.duration_s > first.duration_s).all()  # slower speech is longer
    for i in changed.index:  # every rebuilt file's words are its row's transcript
        assert [w["word"] for w in read_word_times(changed.loc[i])] == changed.at[i, "transcript"].split()


def test_a_rebuild_with_other_engine_bytes_warns_with_the_difference_and_goes_on(tmp_path):
    """A committed manifest made elsewhere (other engine version: other bytes) -> re-synthesize here, warn with
    the measured difference, return this machine's manifest; the committed file is left as it is."""
    built = build_corpus(default_config(tmp_path), progress=False)
    committed = built.copy()
    committed.loc[:2, "sha256"] = "0" * 64
    committed.loc[:2, "duration_s"] = committed.loc[:2, "duration_s"] + 0.25
    committed["source"] = [s.replace("flite 2.2", "flite 2.1") for s in committed.source]
    committed["audio_path"] = [os.path.relpath(p, tmp_path) for p in committed.audio_path]
    committed["word_times_path"] = [os.path.relpath(p, tmp_path) for p in committed.word_times_path]
    committed.to_csv(tmp_path / "data_manifest.csv", index=False)
    before = (tmp_path / "data_manifest.csv").read_bytes()
    for p in built.audio_path[:3]:
        os.remove(p)
    differs = r"differs from data_manifest.csv in 3 of 24 rows.*0\.250 s at most.*flite 2\.1"
    with pytest.warns(UserWarning, match=differs):
        path = ensure_default_corpus(tmp_path / "data_manifest.csv", progress=False)
    assert path == tmp_path / "data" / "default" / "manifest.csv"
    local = load_manifest(path)
    assert list(local.sha256) == list(built.sha256)  # this machine's bytes, recorded
    assert (tmp_path / "data_manifest.csv").read_bytes() == before
    assert ensure_default_corpus(tmp_path / "data_manifest.csv", progress=False) == path  # and again, silently


def test_committed_manifest_reproduces():
    path = ensure_default_corpus(REPO_MANIFEST, progress=False)
    df = load_manifest(path)
    assert len(df) == 24 and set(df.split) == {"test"} and (df.language == "en").all()
    assert all(sha256_file(p) == s for p, s in zip(df.audio_path, df.sha256))
    assert df.duration_s.between(1.0, 8.0).all()
    assert df.source.str.startswith("flite").all() and set(df.voice) <= set(VOICES["en"])


def test_utterances_by_id_keep_their_order_and_a_missing_id_is_named():
    """A notebook's ``utterances``: the rows of those ids in the order given (a repeat once), however many
    ``n_utterances`` (``limit``) says."""
    ids = ["default-en-test-00020", "default-en-test-00003", "default-en-test-00020", "default-en-test-00007"]
    got = study_data(REPO_MANIFEST, split="test", ids=ids)
    assert list(got.id) == ids[:2] + ids[3:] and list(got.index) == [0, 1, 2]
    full = load_manifest(REPO_MANIFEST).set_index("id")
    assert list(got.transcript) == [full.transcript[i] for i in got.id]  # whole rows, not ids relabelled
    assert list(study_data(REPO_MANIFEST, ids=ids, limit=1).id) == ids[:2] + ids[3:]
    assert list(load_manifest(REPO_MANIFEST, ids=ids, limit=1).id) == ids[:1]  # the manifest reader: both filters
    with pytest.raises(InputError, match=r"split 'test'.*no utterance 'default-en-test-00099'; give ids"):
        study_data(REPO_MANIFEST, split="test", ids=["default-en-test-00003", "default-en-test-00099"])
    with pytest.raises(InputError, match="must be a non-empty list of id strings"):
        study_data(REPO_MANIFEST, ids="default-en-test-00003")
    with pytest.raises(InputError, match="must be a non-empty list of id strings"):
        study_data(REPO_MANIFEST, ids=[])  # not silently no utterance at all


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
