"""Reading audio: any sample rate and channel count in, 16 kHz mono float32 out, with errors naming the file."""
from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from .._io import sha256_file
from ..errors import InputError

SAMPLE_RATE = 16000
MAX_SECONDS = 30.0


def resample(audio: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """(N,) -> (N * sr_out / sr_in,) polyphase resampling."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(audio, sr_out // g, sr_in // g).astype(np.float32)


def load_audio(path: str | Path, target_sr: int = SAMPLE_RATE, max_seconds: float | None = MAX_SECONDS) -> np.ndarray:
    """Read an audio file as mono float32 at ``target_sr``.

    Channels are averaged; other sample rates are resampled. Raises :class:`InputError` naming the file when it is
    missing, a folder, unreadable or corrupt, empty, truncated (a WAV whose data is shorter than its header says, a
    stream that decodes fewer frames than it states), holds NaN/Inf samples, or is longer than ``max_seconds``
    (Whisper's window: split longer audio).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: audio file is missing")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an audio file; give the audio files inside it")
    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise InputError(f"{path}: cannot read audio ({err}); the file is corrupt or not a supported format "
                         "(wav, flac, ogg, mp3)") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read audio ({type(err).__name__}: {err.strerror or err})") from None
    if audio.size == 0:
        raise InputError(f"{path}: audio is empty (0 samples)")
    short = _wav_shortfall(path)
    if short is not None:
        stated, present, rate = short
        secs = (lambda n: f" ({n / rate:.2f} s)") if rate else (lambda n: "")
        raise InputError(f"{path}: audio is truncated: its header states {stated} bytes of data{secs(stated)} but "
                         f"only {present} are present{secs(present)}; the file was cut short (an interrupted copy "
                         "or download): copy or export it again")
    try:
        stated_frames = sf.info(str(path)).frames
    except (sf.LibsndfileError, RuntimeError):
        stated_frames = 0
    if stated_frames > audio.shape[0]:
        raise InputError(f"{path}: audio is damaged: its header states {stated_frames} frames but only "
                         f"{audio.shape[0]} decode; copy or export it again")
    bad = int(audio.size - np.isfinite(audio).sum())
    if bad:
        raise InputError(f"{path}: audio holds {bad} non-finite sample(s) (NaN or Inf); the model would explain "
                         "garbage: repair or re-export the file")
    duration = audio.shape[0] / sr
    if max_seconds is not None and duration > max_seconds:
        raise InputError(f"{path}: audio is {duration:.1f} s, over the model's {max_seconds:.0f} s window; "
                         "split it into shorter utterances first")
    return resample(audio.mean(axis=1), sr, target_sr)


def active_seconds(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, frame_s: float = 0.02,
                   threshold_db: float = -45.0) -> float:
    """Seconds of audio above a level: (N,) -> number of ``frame_s`` frames whose RMS exceeds ``threshold_db``
    (dB relative to full scale 1.0), times ``frame_s``. A cheap energy detector: 0 for digital silence.
    """
    n = max(1, int(round(frame_s * sample_rate)))
    x = np.asarray(audio, dtype=np.float64)
    if x.size == 0:
        return 0.0
    frames = np.pad(x, (0, (-x.size) % n)).reshape(-1, n)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    return float((rms > 10 ** (threshold_db / 20)).sum() * n / sample_rate)


def _wav_shortfall(path: Path) -> tuple[int, int, int] | None:
    """For a RIFF/WAVE file whose ``data`` chunk holds fewer bytes than its header states: (bytes stated, bytes
    present, bytes per second from the ``fmt`` chunk, 0 if absent). None when the file is whole, is not a WAV, or
    states no size (0 or 0xFFFFFFFF: a stream whose writer never finished the header)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos, byte_rate = 12, 0
            while pos + 8 <= size:
                fh.seek(pos)
                chunk = fh.read(20)
                stated = int.from_bytes(chunk[4:8], "little")
                if chunk[:4] == b"fmt " and len(chunk) >= 20:
                    byte_rate = int.from_bytes(chunk[16:20], "little")
                if chunk[:4] == b"data":
                    present = size - pos - 8
                    if stated in (0, 0xFFFFFFFF) or present >= stated:
                        return None
                    return stated, present, byte_rate
                pos += 8 + stated + (stated & 1)
    except OSError:
        return None
    return None


def stated_problems(row, audio: str | Path, info=None, tolerance_s: float = 0.05) -> list[str]:
    """Disagreements between a row's ``sample_rate`` / ``duration_s`` and its audio file (non-numbers included)."""
    uid = row.get("id", "?")
    info = info if info is not None else sf.info(str(audio))
    out = []
    stated = row.get("sample_rate")
    if stated is not None and str(stated).strip() != "":
        try:
            rate = float(stated)
        except (TypeError, ValueError):
            out.append(f"{uid}: sample_rate {stated!r} is not a number; write the file's rate ({info.samplerate})")
        else:
            if rate != info.samplerate:
                out.append(f"{uid}: manifest says {stated} Hz but {audio} is {info.samplerate} Hz; update the row")
    stated = row.get("duration_s")
    if stated is not None and str(stated).strip() != "":
        actual = info.frames / info.samplerate
        try:
            dur = float(stated)
        except (TypeError, ValueError):
            dur = float("nan")
        if dur != dur or abs(dur) == float("inf"):
            out.append(f"{uid}: duration_s {stated!r} is not a number; write the file's duration ({actual:.3f})")
        elif abs(dur - actual) > tolerance_s:
            out.append(f"{uid}: manifest says {dur:.3f} s but {audio} lasts {actual:.3f} s; update the row")
    return out


def load_utterance_audio(row) -> tuple[np.ndarray, str]:
    """Load and verify one utterance's audio: ``(samples (N,) float32 at 16 kHz mono, the file's sha256)``.

    ``row``: a mapping (a manifest row, a dict) with ``id`` and ``audio_path``, optionally ``sha256``,
    ``sample_rate`` and ``duration_s``. Raises :class:`InputError` naming the utterance and the file when the file
    is missing, a folder, unreadable, differs from the stated checksum, is damaged (a WAV whose data is shorter than
    its header says, a stream that decodes fewer frames than it states), or is refused by :func:`load_audio`
    (corrupt, empty, non-finite, too long), or when its stated rate or duration disagree with it. The one place
    extraction, explanation runs, shards and manifest checks read an utterance's audio.
    """
    get = row.get if hasattr(row, "get") else (lambda k, d=None: row[k] if k in row else d)
    uid = str(get("id", "?"))
    path = Path(str(get("audio_path")))
    if not path.exists():
        raise InputError(f"{uid}: audio file {path} is missing; rebuild the data (make data) or fix the manifest")
    if not path.is_file():
        raise InputError(f"{uid}: {path} is a folder, not an audio file; give the audio files inside it")
    try:
        digest = sha256_file(path)
    except OSError as err:
        raise InputError(f"{uid}: cannot read {path} ({type(err).__name__}: {err.strerror or err})") from None
    want = get("sha256")
    if isinstance(want, str) and want and want != digest:
        raise InputError(f"{uid}: checksum mismatch for {path} (manifest {want[:12]}…, file {digest[:12]}…); "
                         "the file changed since the manifest was written: rebuild it or update the manifest")
    audio = load_audio(path)
    info = sf.info(str(path))
    problems = stated_problems(row if hasattr(row, "get") else dict(row), path, info)
    if problems:
        raise InputError("; ".join(problems))
    return audio, digest

