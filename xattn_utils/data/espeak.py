"""Speech with exact word times from libespeak-ng, through ctypes.

libespeak-ng in synchronous mode hands its samples to a callback together with events; a WORD event carries the
output sample at which that word starts. So word starts are exact by construction. A word ends where the next word
starts, moved back over any trailing silence (frame energy below a threshold); the last word ends at the last voiced
frame. libespeak sometimes emits an extra WORD event of length 0 at the final pause: it is dropped.
(Measured here with forced pauses: silence never falls inside a word span; see tests/test_corpus.py.)

The library handle is loaded once and cached; synthesis state lives in :class:`Synthesizer`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass

import numpy as np

from ..errors import XattnError

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_WORD = 1
_EVENT_MSG_TERMINATED = 6
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@functools.lru_cache(maxsize=1)
def _library() -> tuple[ctypes.CDLL, int]:
    """The loaded libespeak-ng and its output sample rate (initialized once per process)."""
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise XattnError("libespeak-ng is not installed: run 'apt-get install -y espeak-ng' "
                         "(or 'conda install -c conda-forge espeak-ng')") from None
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, 0)
    if sample_rate <= 0:
        raise XattnError("libespeak-ng failed to initialize (is espeak-ng-data installed?)")
    return lib, sample_rate


def espeak_version() -> str:
    """The libespeak-ng version string (recorded in the corpus provenance)."""
    lib, _ = _library()
    lib.espeak_Info.restype = ctypes.c_char_p
    return lib.espeak_Info(None).decode()


@dataclass
class Word:
    """A word's span in seconds; ``exact`` when it had its own WORD event (else split from a merged group)."""

    word: str
    start: float
    end: float
    exact: bool = True


@dataclass
class Speech:
    """Synthesized audio and its word times (seconds)."""

    audio: np.ndarray
    sample_rate: int
    words: list[Word]


def _voiced_end(audio: np.ndarray, start: int, stop: int, sr: int, threshold: float) -> int:
    """Last sample in [start, stop) of a 5 ms frame whose RMS exceeds ``threshold`` (start if none)."""
    hop = max(1, sr // 200)
    seg = audio[start:stop]
    n = len(seg) // hop
    if n == 0:
        return stop
    rms = np.sqrt((seg[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(1))
    loud = np.nonzero(rms > threshold)[0]
    return start + (int(loud[-1]) + 1) * hop if len(loud) else start


class Synthesizer:
    """libespeak-ng synthesis with word events. Not thread-safe (libespeak is process-global)."""

    def __init__(self):
        self._lib, self.sample_rate = _library()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int]] = []  # (text_position, length, sample)
        self._n = 0
        self._cb = _CALLBACK(self._on_audio)  # keep a reference: the library calls it
        self._lib.espeak_SetSynthCallback(self._cb)

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != 0:
            ev = events[i]
            if ev.type == _EVENT_WORD:
                self._events.append((ev.text_position, ev.length, ev.sample))
            i += 1
        self._n += max(n, 0)
        return 0

    def speak(self, text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50,
              silence_threshold: float = 0.01) -> Speech:
        """Synthesize ``text``; words are the whitespace-separated tokens of ``text`` with their times.

        Args:
            voice: espeak-ng voice name, optionally with a variant ("en-us+f3").
            rate: words per minute; pitch: 0-100.
        """
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise XattnError(f"espeak-ng has no voice {voice!r}; list them with 'espeak-ng --voices'")
        self._lib.espeak_SetParameter(_RATE, int(rate), 0)
        self._lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        self._lib.espeak_SetSynthCallback(self._cb)
        self._chunks, self._events, self._n = [], [], 0
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data)
        self._lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        return Speech(audio, self.sample_rate, self._word_times(text, audio, silence_threshold))

    def _word_times(self, text: str, audio: np.ndarray, threshold: float) -> list[Word]:
        """Word spans from WORD events, matched to the text's words by character position.

        libespeak sometimes voices an unstressed function word together with its neighbour ("in the" -> one event).
        Such a group's span is split between its words in proportion to their letters (``Word.exact`` False).
        """
        sr = self.sample_rate
        offsets, pos = [], 0
        words = text.split()
        for w in words:
            pos = text.index(w, pos)
            offsets.append(pos)
            pos += len(w)
        at = {p - 1: smp for p, ln, smp in self._events if ln > 0}  # 1-based positions; drop empty events
        if offsets[0] not in at:
            at[offsets[0]] = min(at.values()) if at else 0
        anchors = [i for i, o in enumerate(offsets) if o in at]
        starts = [0] * len(words)
        exact = [False] * len(words)
        for k, i in enumerate(anchors):
            j = anchors[k + 1] if k + 1 < len(anchors) else len(words)
            s0 = min(at[offsets[i]], len(audio))
            s1 = min(at[offsets[j]], len(audio)) if j < len(words) else \
                _voiced_end(audio, s0, len(audio), sr, threshold)
            letters = np.cumsum([0] + [len(w) for w in words[i:j]])
            for n, wi in enumerate(range(i, j)):
                starts[wi] = int(s0 + (s1 - s0) * letters[n] / letters[-1])
                exact[wi] = j - i == 1
        out = []
        for i, (w, st) in enumerate(zip(words, starts)):
            nxt = starts[i + 1] if i + 1 < len(words) else len(audio)
            e = _voiced_end(audio, st, nxt, sr, threshold)
            out.append(Word(w, st / sr, max(e, st + 1) / sr, exact[i]))
        return out
