"""Reading audio: any sample rate and channel count in, 16 kHz mono float32 out, with errors naming the file."""
from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

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
    missing, a folder, unreadable or corrupt, empty, holds NaN/Inf samples, or is longer than ``max_seconds``
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
