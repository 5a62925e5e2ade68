"""One synthesizer interface over three speech engines, each with real word times: espeak-ng, flite and festival.

``speak("After dinner, Marco reads.", "flite:rms", speed=1.1)`` returns a :class:`~.espeak.Speech`: float32 mono audio
at 16 kHz (:data:`~.audio.SAMPLE_RATE`) clipped to [-1, 1], and one :class:`~.espeak.Word` per whitespace-separated
token of the text (the token exactly as written, punctuation attached) with its start and end in seconds.

Where the word times come from:

* ``espeak-ng``: libespeak-ng's WORD events (:mod:`.espeak`); exact starts, ends moved back over trailing silence.
* ``flite``: libflite through ctypes. Each token of flite's ``Token`` relation holds the words it expands to
  ("25" -> "twenty five"); a word starts where the segment before its first phone ends and ends where its last phone
  ends (flite's own segment times, so pauses fall between words).
* ``festival``: a ``festival --batch`` subprocess prints, for each token, the segment-derived ``word_start`` /
  ``word_end`` of its words (punctuation and words without phones skipped).

A token's span runs from its first word's start to its last word's end. Engine tokens are matched to the text's
tokens in order, one to one; when they cannot be (a token the engine splits, drops or does not speak, like a lone
"--"), :class:`~xattn_utils.errors.XattnError` names the text, the token and the voice: word times are never guessed.

Speed: a speaking-rate factor relative to the engine's default (1.25 = 25 % faster): espeak-ng speaks
``round(175 * speed)`` words per minute; flite and festival stretch durations by ``1 / speed`` (festival's HTS voice
ignores ``Duration_Stretch``; it gets the same factor as hts_engine's ``-r`` speech-rate option).

Determinism: the same text, voice and speed give byte-identical audio on every call, in this process or a fresh one.
Both C libraries carry state across utterances: libespeak-ng's wave generator keeps its phase, pitch flutter and echo
from one utterance to the next (nothing in its API resets them, re-initializing does not), and both draw noise from
libc's ``rand()``. So espeak-ng speaks each utterance in a fresh child process (``python -c``, ~0.2 s, most of it
numpy's import), and flite runs in this process with ``rand()`` reseeded to its start-up state for the call (the
process's own ``rand()`` stream is restored afterwards); flite keeps each voice registered (loaded once per process)
and every call sets its duration stretch again. festival runs in a fresh ``festival`` process per call. libflite is
not thread-safe: call :func:`speak` from one thread at a time.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from ..errors import InputError, XattnError
from .audio import SAMPLE_RATE, resample
from .espeak import Speech, Word, _library, espeak_version

__all__ = ["ENGINES", "Engine", "Speech", "Word", "available_voices", "engine_version", "parse_voice", "speak"]

_SPEED_RANGE = (0.25, 4.0)  # speaking-rate factors accepted by every engine
_ESPEAK_WPM, _ESPEAK_WPM_RANGE = 175, (80, 450)  # espeak-ng's default rate and the range it does not clamp
_CHILD_TIMEOUT_S = 120.0  # festival or espeak-ng child process, one utterance


@dataclass(frozen=True)
class Engine:
    """A speech engine: how to tell it is installed, its known voices, how to synthesize and name its version.

    Attributes:
        name: the engine part of a voice spec ("flite" in "flite:rms").
        install: the shell command that installs it (Debian), quoted in errors and test skips.
        voices: language ("en", "it") -> the voice names the study uses, installed or not.
        installed: () -> whether the engine's binary or library is present.
        has_voice: (voice name) -> whether that voice is installed (the engine being installed).
        synthesize: (text, voice name, speed, pitch) -> :class:`Speech` at the engine's own sample rate, one
            :class:`Word` per whitespace token of the text.
        version: (voice name) -> provenance string of engine and voice.
    """

    name: str
    install: str
    voices: dict[str, tuple[str, ...]]
    installed: Callable[[], bool]
    has_voice: Callable[[str], bool]
    synthesize: Callable[[str, str, float, "int | None"], Speech]
    version: Callable[[str], str]


# --------------------------------------------------------------------------------------------- shared helpers


@functools.lru_cache(maxsize=None)
def _dpkg_version(package: str) -> str | None:
    """The installed Debian version of ``package`` ("1:2.5.0-9"), or None without dpkg-query or the package."""
    exe = shutil.which("dpkg-query")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    version = out.stdout.strip() if out.returncode == 0 else ""
    return version or None


def _upstream(debian_version: str) -> str:
    """"1:2.5.0-9" -> "2.5.0", "1.51+dfsg-10+deb12u2" -> "1.51": the upstream part of a Debian version."""
    v = debian_version.split(":", 1)[-1]
    v = v.rsplit("-", 1)[0] if "-" in v else v
    return re.split(r"[+~]", v, maxsplit=1)[0]


def _debian(package: str) -> str:
    """" (Debian PKG VERSION)" when dpkg knows the package, else ""."""
    v = _dpkg_version(package)
    return f" (Debian {package} {v})" if v else ""


def _token_words(text: str, voice: str, tokens: list[tuple[str, list[tuple[float, float]]]]) -> list[Word]:
    """Engine tokens -> one :class:`Word` per whitespace token of ``text``.

    Args:
        tokens: in order, (the engine's token name, the (start, end) seconds of the spoken words it expanded to).
            The engine's name is the text token without surrounding punctuation, so it must occur in that token.
    Raises:
        XattnError: naming text, voice and token when the counts differ, a name does not match, or a token has no
            spoken word.
    """
    words = text.split()
    if len(tokens) != len(words):
        raise XattnError(f"{voice} made {len(tokens)} tokens ({[n for n, _ in tokens]}) of the {len(words)} "
                         f"whitespace tokens of {text!r}; word times cannot be matched: rewrite the text (spell "
                         "out symbols, keep punctuation attached to words)")
    out = []
    for i, (word, (name, spans)) in enumerate(zip(words, tokens)):
        if name not in word:
            raise XattnError(f"{voice}: token {i} of {text!r} is {word!r} but the engine read {name!r}; word times "
                             "cannot be matched: rewrite the text")
        if not spans:
            raise XattnError(f"{voice} does not speak token {word!r} of {text!r} (no phones), so it has no word "
                             "times: remove it or spell it out")
        out.append(Word(word, float(spans[0][0]), float(spans[-1][1]), True))
    return out


def _finish(speech: Speech, text: str, voice: str) -> Speech:
    """Native-rate speech -> 16 kHz float32 audio clipped to [-1, 1]; word times clipped to the audio and checked."""
    audio = np.clip(resample(np.asarray(speech.audio, dtype=np.float32), speech.sample_rate, SAMPLE_RATE), -1.0, 1.0)
    duration = len(audio) / SAMPLE_RATE
    words = [Word(w.word, min(max(w.start, 0.0), duration), min(max(w.end, 0.0), duration), w.exact)
             for w in speech.words]
    starts = np.array([w.start for w in words])
    ends = np.array([w.end for w in words])
    bad = np.nonzero((starts >= ends) | (np.diff(starts, prepend=0.0) < 0))[0]
    if len(audio) == 0:
        raise XattnError(f"{voice} made no audio for {text!r}; try another voice or report the text")
    if len(bad):
        at = words[int(bad[0])]
        raise XattnError(f"{voice} gave {at.word!r} of {text!r} the span {at.start:.3f}-{at.end:.3f} s (audio "
                         f"{duration:.3f} s; starts must rise, end after start): try another voice or report it")
    return Speech(audio.astype(np.float32, copy=False), SAMPLE_RATE, words)


def _reject_pitch(engine: str, pitch: int | None) -> None:
    if pitch is not None:
        raise InputError(f"pitch={pitch!r}: only espeak-ng takes a pitch; {engine} voices keep their own (give "
                         "pitch=None)")


# --------------------------------------------------------------------------------------------- espeak-ng

_ESPEAK_VOICES = {"en": ("en-us", "en-us+f3", "en", "en+m3", "en-gb-x-rp+f2", "en-029+m5", "en-gb-scotland+f4"),
                  "it": ("it", "it+f3", "it+m3", "it+f2", "it+m5")}


# Runs in a fresh interpreter: loads xattn_utils.data.espeak without the package's __init__ (which imports torch),
# synthesizes one utterance and writes a JSON header line, then the float32 samples.
_ESPEAK_CHILD = """\
import ctypes, ctypes.util, json, sys, types
root = sys.argv[1]
for name, path in (("xattn_utils", root), ("xattn_utils.data", root + "/data")):
    stub = types.ModuleType(name)
    stub.__path__ = [path]
    sys.modules[name] = stub
ctypes.CDLL(ctypes.util.find_library("c")).srand(1)
from xattn_utils.data.espeak import Synthesizer
job = json.loads(sys.stdin.read())
try:
    s = Synthesizer().speak(job["text"], job["voice"], rate=job["rate"], pitch=job["pitch"])
except Exception as err:
    sys.stdout.write(json.dumps({"error": str(err)}) + "\\n")
    sys.exit(3)
head = {"sample_rate": s.sample_rate, "n": len(s.audio), "words": [[w.word, w.start, w.end, w.exact] for w in s.words]}
sys.stdout.buffer.write(json.dumps(head).encode() + b"\\n" + s.audio.astype("<f4").tobytes())
"""


def _espeak_lib():
    """libespeak-ng loaded (and initialized) once in this process, only to check voices: synthesis runs in a child."""
    return _library()[0]


def _espeak_installed() -> bool:
    try:
        _espeak_lib()
    except XattnError:
        return False
    return True


def _espeak_has_voice(name: str) -> bool:
    return _espeak_lib().espeak_SetVoiceByName(name.encode()) == 0


def _espeak_synthesize(text: str, name: str, speed: float, pitch: int | None) -> Speech:
    """espeak-ng at ``round(175 * speed)`` words per minute and ``pitch`` (0-100, None -> 50), in a fresh process;
    22.05 kHz."""
    wpm = round(_ESPEAK_WPM * speed)
    if not _ESPEAK_WPM_RANGE[0] <= wpm <= _ESPEAK_WPM_RANGE[1]:
        raise InputError(f"speed={speed}: espeak-ng would speak {wpm} words per minute, outside its "
                         f"{_ESPEAK_WPM_RANGE[0]}-{_ESPEAK_WPM_RANGE[1]}; choose a speed in "
                         f"{_ESPEAK_WPM_RANGE[0] / _ESPEAK_WPM:.2f}-{_ESPEAK_WPM_RANGE[1] / _ESPEAK_WPM:.2f}")
    pitch = 50 if pitch is None else pitch
    if isinstance(pitch, bool) or not isinstance(pitch, (int, np.integer)) or not 0 <= pitch <= 100:
        raise InputError(f"pitch={pitch!r}: espeak-ng's pitch is a whole number 0-100 (50: the voice's default)")
    if not _espeak_has_voice(name):
        raise InputError(f"espeak-ng has no voice {name!r}; list them with 'espeak-ng --voices' (variants: "
                         "'espeak-ng --voices=variant'), e.g. 'en-us', 'en-us+f3', 'it'")
    job = json.dumps({"text": " ".join(text.split()), "voice": name, "rate": wpm, "pitch": int(pitch)})
    run = subprocess.run([sys.executable, "-c", _ESPEAK_CHILD, str(Path(__file__).resolve().parents[1])],
                         input=job.encode(), capture_output=True, timeout=_CHILD_TIMEOUT_S)
    head, _, body = run.stdout.partition(b"\n")
    try:
        info = json.loads(head)
    except ValueError:
        info = {"error": run.stderr.decode(errors="replace")[-500:] or f"exit {run.returncode}"}
    if run.returncode != 0 or "error" in info:
        raise XattnError(f"espeak-ng:{name} failed on {text!r}: {info.get('error', run.returncode)}")
    audio = np.frombuffer(body, dtype="<f4", count=info["n"]).astype(np.float32)
    words = [Word(w, float(a), float(b), bool(x)) for w, a, b, x in info["words"]]
    return Speech(audio, int(info["sample_rate"]), words)


def _espeak_version(name: str) -> str:
    return f"espeak-ng {espeak_version().split()[0]}{_debian('libespeak-ng1')}"


# --------------------------------------------------------------------------------------------- flite

_FLITE_VOICES = {"en": ("rms", "slt", "awb", "kal16", "kal")}


class _FliteVoice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("features", ctypes.c_void_p), ("ffunctions", ctypes.c_void_p),
                ("utt_init", ctypes.c_void_p)]


class _FliteWave(ctypes.Structure):
    _fields_ = [("type", ctypes.c_char_p), ("sample_rate", ctypes.c_int), ("num_samples", ctypes.c_int),
                ("num_channels", ctypes.c_int), ("samples", ctypes.POINTER(ctypes.c_short))]


@functools.lru_cache(maxsize=1)
def _flite() -> ctypes.CDLL:
    """libflite, loaded and initialized once per process."""
    try:
        lib = ctypes.CDLL("libflite.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        raise XattnError(f"libflite is not installed: run '{ENGINES['flite'].install}'") from None
    p, s = ctypes.c_void_p, ctypes.c_char_p
    for fn, res, args in (("flite_synth_text", p, [s, p]), ("utt_wave", ctypes.POINTER(_FliteWave), [p]),
                          ("utt_relation", p, [p, s]), ("relation_head", p, [p]), ("item_next", p, [p]),
                          ("item_daughter", p, [p]), ("item_as", p, [p, s]), ("item_feat_string", s, [p, s]),
                          ("ffeature_float", ctypes.c_float, [p, s]), ("feat_set_float", None, [p, s, ctypes.c_float]),
                          ("delete_utterance", None, [p])):
        getattr(lib, fn).restype, getattr(lib, fn).argtypes = res, args
    lib.flite_init()
    return lib


@functools.lru_cache(maxsize=None)
def _flite_voice(name: str):
    """flite voice ``name`` (a pointer to its cst_voice, from libflite_cmu_us_NAME), registered once per process."""
    _flite()  # the voice libraries need libflite loaded globally first
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise InputError(f"flite voice {name!r} is not a voice name; installed: {_flite_voices()}")
    try:
        vlib = ctypes.CDLL(f"libflite_cmu_us_{name}.so.1")
        register = getattr(vlib, f"register_cmu_us_{name}")
    except (OSError, AttributeError):
        raise InputError(f"flite has no voice {name!r}; installed: {_flite_voices()} (they come with "
                         f"'{ENGINES['flite'].install}')") from None
    register.restype, register.argtypes = ctypes.POINTER(_FliteVoice), [ctypes.c_char_p]
    voice = register(None)
    if not voice:
        raise XattnError(f"flite failed to register voice {name!r}; reinstall it: '{ENGINES['flite'].install}'")
    return voice


def _flite_installed() -> bool:
    try:
        _flite()
    except XattnError:
        return False
    return True


def _flite_has_voice(name: str) -> bool:
    try:
        _flite_voice(name)
    except XattnError:
        return False
    return True


def _flite_voices() -> list[str]:
    return [v for vs in _FLITE_VOICES.values() for v in vs if _flite_has_voice(v)]


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.initstate.restype, libc.initstate.argtypes = ctypes.c_void_p, [ctypes.c_uint, ctypes.c_char_p, ctypes.c_size_t]
    libc.setstate.restype, libc.setstate.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    return libc


@contextlib.contextmanager
def _fresh_rand():
    """libc ``rand()`` as at process start (seed 1, 128-byte state) inside, the caller's stream restored after."""
    libc, state = _libc(), ctypes.create_string_buffer(128)
    previous = libc.initstate(1, state, len(state))
    try:
        yield
    finally:
        libc.setstate(previous)


def _flite_synthesize(text: str, name: str, speed: float, pitch: int | None) -> Speech:
    """flite voice ``name`` with ``duration_stretch = 1 / speed``; the voice's own rate (8 kHz for kal, else 16)."""
    _reject_pitch("flite", pitch)
    lib, voice = _flite(), _flite_voice(name)
    lib.feat_set_float(voice.contents.features, b"duration_stretch", 1.0 / speed)
    with _fresh_rand():  # flite's voices draw excitation noise from rand()
        utt = lib.flite_synth_text(" ".join(text.split()).encode("utf-8"), ctypes.cast(voice, ctypes.c_void_p))
    if not utt:
        raise XattnError(f"flite:{name} failed on {text!r}")
    try:
        wave = lib.utt_wave(utt)
        if not wave or wave.contents.num_samples <= 0:
            raise XattnError(f"flite:{name} made no audio for {text!r}")
        w = wave.contents
        pcm = np.ctypeslib.as_array(w.samples, shape=(w.num_samples * w.num_channels,))
        audio = pcm.reshape(-1, w.num_channels).mean(axis=1, dtype=np.float64).astype(np.float32) / 32768.0
        sample_rate = int(w.sample_rate)
        tokens = []
        token = lib.relation_head(lib.utt_relation(utt, b"Token"))
        while token:
            spans, word = [], lib.item_daughter(token)
            while word:
                syllables = lib.item_as(word, b"SylStructure")
                if syllables and lib.item_daughter(syllables):  # a word with phones
                    spans.append((lib.ffeature_float(word, b"R:SylStructure.daughter1.daughter1.R:Segment.p.end"),
                                  lib.ffeature_float(word, b"R:SylStructure.daughtern.daughtern.R:Segment.end")))
                word = lib.item_next(word)
            tokens.append(((lib.item_feat_string(token, b"name") or b"").decode("utf-8", "replace"), spans))
            token = lib.item_next(token)
    finally:
        lib.delete_utterance(utt)
    return Speech(audio, sample_rate, _token_words(text, f"flite:{name}", tokens))


def _flite_version(name: str) -> str:
    deb = _dpkg_version("libflite1")
    if deb:
        return f"flite {_upstream(deb)} (Debian libflite1 {deb})"
    exe = shutil.which("flite")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout if exe else ""
    m = re.search(r"flite-([0-9][0-9.]*)", out)
    return f"flite {m.group(1) if m else '(version unknown)'}"


# --------------------------------------------------------------------------------------------- festival

_FESTIVAL_VOICES = {"en": ("cmu_us_slt_arctic_hts", "kal_diphone", "ked_diphone"), "it": ("lp_diphone", "pc_diphone")}
_FESTIVAL_PACKAGES = {"cmu_us_slt_arctic_hts": "festvox-us-slt-hts", "kal_diphone": "festvox-kallpc16k",
                      "ked_diphone": "festvox-kdlpc16k", "lp_diphone": "festvox-italp16k",
                      "pc_diphone": "festvox-itapc16k"}
# Typographic punctuation festival cannot take (not Latin-1) -> its ASCII form; the text's tokens keep the original.
_LATIN1_FALLBACK = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})

# Prints, per top-level token: "XATTN_TOKEN <name>", then "XATTN_WORD <start> <end>" for each of its words that is in
# the Word relation and has syllables (punctuation and silent words skipped).
_FESTIVAL_SCRIPT = """\
(voice_{voice})
(Parameter.set 'Duration_Stretch {stretch!r})
(if (equal? (Parameter.get 'Synth_Method) 'HTS)
    (set! hts_engine_params (append hts_engine_params (list (list "-r" {speed!r})))))
(set! utt (utt.synth (eval (list 'Utterance 'Text "{text}"))))
(utt.save.wave utt "{wav}" 'riff)
(set! xattn_tok (utt.relation.first utt 'Token))
(while xattn_tok
  (format t "XATTN_TOKEN %s\\n" (item.name xattn_tok))
  (mapcar (lambda (w)
            (if (and (item.relation w 'Word) (item.relation.daughters w 'SylStructure))
                (format t "XATTN_WORD %l %l\\n" (item.feat w 'R:Word.word_start) (item.feat w 'R:Word.word_end))))
          (item.daughters xattn_tok))
  (set! xattn_tok (item.next xattn_tok)))
"""


def _festival_exe() -> str:
    exe = shutil.which("festival")
    if exe is None:
        raise XattnError(f"festival is not installed: run '{ENGINES['festival'].install}'")
    return exe


def _festival_run(script: str, tmp: Path) -> subprocess.CompletedProcess:
    """Run a Scheme script (Latin-1) in a fresh ``festival --batch``; output decoded as Latin-1."""
    path = tmp / "script.scm"
    path.write_bytes(script.encode("latin-1"))
    return subprocess.run([_festival_exe(), "--batch", str(path)], capture_output=True, cwd=tmp,
                          timeout=_CHILD_TIMEOUT_S, encoding="latin-1")


@functools.lru_cache(maxsize=1)
def _festival_voices() -> tuple[str, ...]:
    """festival's installed voices (``(voice.list)``), asked once per process."""
    with tempfile.TemporaryDirectory(prefix="xattn-festival-") as tmp:
        out = _festival_run('(format t "XATTN_VOICES %l\\n" (voice.list))\n', Path(tmp)).stdout
    m = re.search(r"XATTN_VOICES \((.*)\)", out)
    return tuple(m.group(1).split()) if m else ()


def _festival_installed() -> bool:
    return shutil.which("festival") is not None


def _festival_has_voice(name: str) -> bool:
    return _festival_installed() and name in _festival_voices()


def _scheme_string(text: str, voice: str) -> str:
    """``text`` as the inside of a Scheme string literal in Latin-1 (festival's Italian voices need it)."""
    flat = " ".join(text.split()).translate(_LATIN1_FALLBACK)
    try:
        flat.encode("latin-1")
    except UnicodeEncodeError as err:
        raise InputError(f"{voice}: {text!r} has {flat[err.start:err.end]!r}, which festival cannot read (it takes "
                         "Latin-1 text): replace it") from None
    return flat.replace("\\", "\\\\").replace('"', '\\"')


def _festival_synthesize(text: str, name: str, speed: float, pitch: int | None) -> Speech:
    """festival voice ``name`` with ``Duration_Stretch = 1 / speed`` (HTS voices: ``-r speed``), in a fresh process.

    Sample rates: the HTS voice writes 32 kHz, the diphone voices 16 kHz.
    """
    _reject_pitch("festival", pitch)
    spec = f"festival:{name}"
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise InputError(f"{spec}: not a festival voice name; installed: {list(_festival_voices())}")
    with tempfile.TemporaryDirectory(prefix="xattn-festival-") as tmp:
        wav = Path(tmp) / "out.wav"
        script = _FESTIVAL_SCRIPT.format(voice=name, stretch=1.0 / speed, speed=float(speed),
                                         text=_scheme_string(text, spec), wav=wav.as_posix())
        run = _festival_run(script, Path(tmp))
        log = (run.stdout + run.stderr).strip()
        if f"unbound variable : voice_{name}" in log:
            package = _FESTIVAL_PACKAGES.get(name)
            raise InputError(f"festival has no voice {name!r}; installed: {list(_festival_voices())}"
                             + (f" (install it: 'apt-get install -y {package}')" if package else ""))
        if run.returncode != 0 or "SIOD ERROR" in log or not wav.exists():
            raise XattnError(f"{spec} failed on {text!r} (exit {run.returncode}): {log[-500:]}")
        audio, sample_rate = sf.read(wav, dtype="float32", always_2d=True)
    tokens: list[tuple[str, list[tuple[float, float]]]] = []
    for line in run.stdout.splitlines():
        if line.startswith("XATTN_TOKEN "):
            tokens.append((line[len("XATTN_TOKEN "):], []))
        elif line.startswith("XATTN_WORD ") and tokens:
            start, end = line.split()[1:3]
            tokens[-1][1].append((float(start), float(end)))
    # Compare names after the same Latin-1 fallback festival was given.
    shown = " ".join(text.split()).translate(_LATIN1_FALLBACK)
    words = _token_words(shown, spec, tokens)
    originals = text.split()
    return Speech(audio.mean(axis=1), int(sample_rate),
                  [Word(o, w.start, w.end, w.exact) for o, w in zip(originals, words)])


@functools.lru_cache(maxsize=1)
def _festival_release() -> str:
    """festival's upstream version ("2.5.0"), from ``festival --version`` or else dpkg."""
    try:
        out = subprocess.run([_festival_exe(), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    m = re.search(r"System: ([0-9][0-9.]*)", out)
    deb = _dpkg_version("festival")
    return m.group(1) if m else (_upstream(deb) if deb else "(version unknown)")


def _festival_version(name: str) -> str:
    package = _FESTIVAL_PACKAGES.get(name)
    voice_deb = _dpkg_version(package) if package else None
    voice = f"{package} {voice_deb}" if voice_deb else name
    return f"festival {_festival_release()}{_debian('festival')} + {voice}"


# --------------------------------------------------------------------------------------------- the interface

ENGINES: dict[str, Engine] = {
    "espeak-ng": Engine("espeak-ng", "apt-get install -y espeak-ng", _ESPEAK_VOICES, _espeak_installed,
                        _espeak_has_voice, _espeak_synthesize, _espeak_version),
    "flite": Engine("flite", "apt-get install -y flite", _FLITE_VOICES, _flite_installed, _flite_has_voice,
                    _flite_synthesize, _flite_version),
    "festival": Engine("festival", "apt-get install -y festival festvox-us-slt-hts festvox-kallpc16k "
                       "festvox-kdlpc16k festvox-italp16k festvox-itapc16k", _FESTIVAL_VOICES, _festival_installed,
                       _festival_has_voice, _festival_synthesize, _festival_version),
}


def parse_voice(spec: str) -> tuple[str, str]:
    """"flite:rms" -> ("flite", "rms"); "espeak-ng:en-us+f3" -> ("espeak-ng", "en-us+f3").

    Raises:
        InputError: naming the spec and the engines when it has no colon, an unknown engine or no voice name.
    """
    engine, sep, name = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or engine not in ENGINES or not name.strip():
        raise InputError(f"voice {spec!r} must be 'engine:voice' with engine one of {sorted(ENGINES)} "
                         "(e.g. 'flite:rms', 'espeak-ng:en-us+f3', 'festival:lp_diphone')")
    return engine, name.strip()


def speak(text: str, voice: str, speed: float = 1.0, pitch: int | None = None) -> Speech:
    """Synthesize ``text`` with ``voice`` ("engine:name").

    Args:
        text: what to say; its whitespace-separated tokens become the words (punctuation attached, e.g. "today?").
        speed: speaking-rate factor relative to the engine's default, 0.25-4 (1.1 = 10 % faster).
        pitch: espeak-ng's pitch, 0-100 (None -> 50); must be None for flite and festival.
    Returns:
        :class:`Speech`: float32 mono audio at 16 kHz in [-1, 1] and one :class:`Word` per token, times in seconds
        (0 <= start < end <= duration, starts non-decreasing).
    Raises:
        InputError: bad voice spec, unknown voice, empty text, speed or pitch out of range.
        XattnError: engine not installed, failed, or its words cannot be matched to the text's tokens.
    """
    engine_name, name = parse_voice(voice)
    if not isinstance(text, str) or not text.split():
        raise InputError(f"{voice}: nothing to say in {text!r}; give a sentence")
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed) \
            or not _SPEED_RANGE[0] <= speed <= _SPEED_RANGE[1]:
        raise InputError(f"{voice}: speed={speed!r} must be a number in {_SPEED_RANGE[0]}-{_SPEED_RANGE[1]} "
                         "(1.0: the engine's default rate)")
    engine = ENGINES[engine_name]
    if not engine.installed():
        raise XattnError(f"{engine_name} is not installed: run '{engine.install}'")
    return _finish(engine.synthesize(text, name, float(speed), pitch), text, voice)


@functools.lru_cache(maxsize=None)
def engine_version(voice: str) -> str:
    """Provenance of a voice spec's engine, e.g. "flite 2.2 (Debian libflite1 2.2-5)", "festival 2.5.0 (Debian
    festival 1:2.5.0-9) + festvox-italp16k 2.0+debian0-6", "espeak-ng 1.51 (Debian libespeak-ng1 1.51+dfsg-10)".
    Debian versions come from dpkg-query and are left out where it is absent. Cached per process."""
    engine_name, name = parse_voice(voice)
    engine = ENGINES[engine_name]
    if not engine.installed():
        raise XattnError(f"{engine_name} is not installed: run '{engine.install}'")
    return engine.version(name)


def available_voices() -> dict[str, list[str]]:
    """Language ("en", "it") -> the study's voice specs installed here, e.g. {"en": ["espeak-ng:en-us", ...]}."""
    out: dict[str, list[str]] = {}
    for engine in ENGINES.values():
        if not engine.installed():
            continue
        for lang, names in engine.voices.items():
            out.setdefault(lang, []).extend(f"{engine.name}:{n}" for n in names if engine.has_voice(n))
    return out
