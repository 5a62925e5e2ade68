"""The speech engines behind :mod:`xattn_utils.data.engines`, run for real (no mocks).

For each engine: the audio's format, one word per text token, word times checked against the audio's energy (words
hold voice, no pause hides inside a word, the comma's pause falls between the words around the comma), speed,
byte-identical repeats, versions, voice specs and Italian accents. A test skips only when its engine is not installed;
the skip message gives the apt-get command.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from xattn_utils.data.audio import SAMPLE_RATE
from xattn_utils.data.engines import ENGINES, available_voices, engine_version, parse_voice, speak
from xattn_utils.errors import InputError, XattnError

EN = "After dinner, Marco reads a book in the garden."
IT = "Dopo cena, Marco legge un libro corto in giardino."
# (voice, sentence); the comma follows the second word. English festival voices put a phrase break (as long as the
# comma's pause) after about seven words without punctuation ("a short book | in the garden"), so EN stays short.
CASES = [("espeak-ng:en-us", EN), ("flite:rms", EN), ("flite:kal", EN), ("festival:cmu_us_slt_arctic_hts", EN),
         ("festival:kal_diphone", EN), ("festival:lp_diphone", IT), ("festival:pc_diphone", IT),
         ("espeak-ng:it", IT)]
IDS = [v for v, _ in CASES]

FRAME_S = 0.010
VOICED_DB = -20.0  # a frame is voiced when its RMS is within 20 dB of the utterance's loudest frame
SILENT_DB = -40.0  # and silent when more than 40 dB below it
# Inside a word, a stop closure (the k of "Marco") or an Italian geminate is silent for 50-100 ms (measured on these
# sentences: 30-60 ms; 75 ms for a word-final k before a pause); a pause between words is a whole pause segment (100-300
# ms) plus the closures around it. So more than 120 ms of silence inside one word's span means it swallowed a pause.
MAX_SILENCE_IN_WORD_S = 0.120
COMMA_TOLERANCE_S = 0.030


def _need(voice: str) -> None:
    engine = ENGINES[parse_voice(voice)[0]]
    if not engine.installed():
        pytest.skip(f"{engine.name} is not installed: run '{engine.install}'")


@pytest.fixture(scope="module")
def spoken():
    """speak() with results kept for the module (each synthesis runs once)."""
    cache = {}

    def get(text: str, voice: str, speed: float = 1.0):
        _need(voice)
        if (text, voice, speed) not in cache:
            cache[text, voice, speed] = speak(text, voice, speed=speed)
        return cache[text, voice, speed]

    return get


def _frame_db(audio: np.ndarray) -> np.ndarray:
    """(N,) -> (N // 160,) RMS of 10 ms frames in dB relative to the loudest frame."""
    n = int(FRAME_S * SAMPLE_RATE)
    frames = audio[: len(audio) // n * n].astype(np.float64).reshape(-1, n)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-12) / rms.max())


def _runs(mask: np.ndarray) -> np.ndarray:
    """(F,) bool -> (R, 2) [first, stop) frame indices of its runs of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.stack([np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]], axis=1)


@pytest.mark.parametrize(("voice", "text"), CASES, ids=IDS)
def test_audio_and_word_spans(spoken, voice, text):
    s = spoken(text, voice)
    duration = len(s.audio) / s.sample_rate
    assert s.sample_rate == SAMPLE_RATE and s.audio.dtype == np.float32 and s.audio.ndim == 1
    assert np.abs(s.audio).max() > 0.05 and np.abs(s.audio).max() <= 1.0
    assert 0.2 <= duration / len(text.split()) <= 1.0
    assert [w.word for w in s.words] == text.split()
    starts, ends = np.array([w.start for w in s.words]), np.array([w.end for w in s.words])
    assert (starts >= 0).all() and (starts < ends).all() and (ends <= duration).all()
    assert (np.diff(starts) >= 0).all()
    assert (ends[:-1] - starts[1:] <= 0.010).all()  # overlaps of 10 ms at most


@pytest.mark.parametrize(("voice", "text"), CASES, ids=IDS)
def test_word_times_agree_with_energy(spoken, voice, text):
    s = spoken(text, voice)
    db = _frame_db(s.audio)
    t0 = np.arange(len(db)) * FRAME_S  # frame i covers [t0, t0 + 10 ms)
    silent = _runs(db < SILENT_DB)
    for w in s.words:
        inside = (t0 >= w.start - 1e-9) & (t0 + FRAME_S <= w.end + 1e-9)
        assert (db[inside] > VOICED_DB).sum() >= 2, f"{voice}: {w.word!r} ({w.start:.3f}-{w.end:.3f} s) is not voiced"
        longest = _runs(inside & (db < SILENT_DB))
        longest_s = (longest[:, 1] - longest[:, 0]).max(initial=0) * FRAME_S
        assert longest_s <= MAX_SILENCE_IN_WORD_S, f"{voice}: {longest_s:.2f} s of silence inside {w.word!r}"
    # Pauses between the first word's start and the last word's end (not the leading or trailing silence).
    interior = silent[(silent[:, 0] * FRAME_S >= s.words[0].start - FRAME_S)
                      & (silent[:, 1] * FRAME_S <= s.words[-1].end + FRAME_S)]
    first, stop = interior[np.argmax(interior[:, 1] - interior[:, 0])] * FRAME_S
    before, after = s.words[1], s.words[2]
    assert before.word.endswith(",")
    assert before.end - COMMA_TOLERANCE_S <= first and stop <= after.start + COMMA_TOLERANCE_S, \
        f"{voice}: longest pause {first:.2f}-{stop:.2f} s is not between {before.word!r} and {after.word!r} " \
        f"({before.end:.2f}-{after.start:.2f} s)"


@pytest.mark.parametrize(("voice", "text"), CASES, ids=IDS)
def test_speed_shortens_audio(spoken, voice, text):
    assert len(spoken(text, voice, 1.25).audio) <= 0.9 * len(spoken(text, voice, 1.0).audio)


@pytest.mark.parametrize(("voice", "text"), CASES, ids=IDS)
def test_same_call_gives_identical_audio(voice, text):
    _need(voice)
    first = speak(text, voice)
    speak("Marco reads.", voice, speed=1.25)  # another utterance in between must not leak into the next
    again = speak(text, voice)
    assert first.audio.tobytes() == again.audio.tobytes()
    assert first.words == again.words


@pytest.mark.parametrize("voice", ["espeak-ng:en-us", "flite:rms", "festival:lp_diphone"])
def test_engine_version_names_engine(voice):
    _need(voice)
    engine, name = parse_voice(voice)
    version = engine_version(voice)
    assert isinstance(version, str) and version.startswith(engine + " ")
    if engine == "festival" and shutil.which("dpkg-query"):
        assert "festvox-italp16k" in version


def test_parse_voice():
    assert parse_voice("flite:rms") == ("flite", "rms")
    assert parse_voice("espeak-ng:en-us+f3") == ("espeak-ng", "en-us+f3")
    assert parse_voice("festival:lp_diphone") == ("festival", "lp_diphone")
    for bad in ("nope:x", "rms", "flite:", ""):
        with pytest.raises(InputError, match="espeak-ng.*festival.*flite"):
            parse_voice(bad)


@pytest.mark.parametrize("voice", ["festival:lp_diphone", "festival:pc_diphone"])
@pytest.mark.parametrize("text", ["Perché la città è così tranquilla, Giulia?", "Il caffè e l'acqua: c'è tutto.",
                                  "Il caffè e l\u2019acqua: c\u2019è tutto."])
def test_italian_accents(spoken, voice, text):
    s = spoken(text, voice)
    assert [w.word for w in s.words] == text.split()
    assert all(w.end - w.start >= 0.04 for w in s.words)


@pytest.mark.parametrize("voice", ["flite:rms", "festival:kal_diphone"])
def test_tokens_that_expand_to_several_words(spoken, voice):
    text = "Marco reads 25 short books at 3:30pm."
    s = spoken(text, voice)
    assert [w.word for w in s.words] == text.split()
    span = {w.word: w.end - w.start for w in s.words}
    assert span["25"] > span["short"] and span["3:30pm."] > span["books"]  # "twenty five", "three thirty p m"
    with pytest.raises(XattnError, match="'--'"):
        speak("Marco -- reads", voice)  # spoken as nothing: no word times to give


def test_pitch_is_espeak_only():
    for voice in ("flite:rms", "festival:kal_diphone"):
        if ENGINES[parse_voice(voice)[0]].installed():
            with pytest.raises(InputError, match="pitch"):
                speak(EN, voice, pitch=50)
    _need("espeak-ng:en-us")
    low, high = speak("Marco reads.", "espeak-ng:en-us", pitch=20), speak("Marco reads.", "espeak-ng:en-us", pitch=80)
    assert low.audio.tobytes() != high.audio.tobytes()


def test_bad_requests_say_what_to_do():
    with pytest.raises(InputError, match="nothing to say"):
        speak("   ", "flite:rms")
    with pytest.raises(InputError, match="speed"):
        speak(EN, "flite:rms", speed=0)
    for voice in ("flite:nope", "festival:nope", "espeak-ng:xx-nope"):
        if ENGINES[parse_voice(voice)[0]].installed():
            with pytest.raises(InputError, match="no voice"):
                speak(EN, voice)
    if ENGINES["espeak-ng"].installed():
        with pytest.raises(InputError, match="words per minute"):
            speak(EN, "espeak-ng:en-us", speed=0.3)
    if ENGINES["festival"].installed():
        with pytest.raises(InputError, match="Latin-1"):
            speak("Marco \u2014 reads", "festival:kal_diphone")


def test_available_voices_lists_installed_study_voices():
    voices = available_voices()
    expected = {"en": ["espeak-ng:en-us", "flite:rms", "festival:cmu_us_slt_arctic_hts"],
                "it": ["espeak-ng:it", "festival:lp_diphone", "festival:pc_diphone"]}
    for lang, specs in expected.items():
        for spec in specs:
            if ENGINES[parse_voice(spec)[0]].installed():
                assert spec in voices[lang]
    assert all(parse_voice(spec) for specs in voices.values() for spec in specs)
