"""The data manifest: one row per utterance, the single index of every data set the study reads.

Columns (:data:`COLUMNS`): id, audio_path, sample_rate, duration_s, language, tasks (";"-separated: asr, st),
transcript, translation, word_times_path, sha256, source, licence, split, voice (``engine:name`` for synthetic
speech; optional: the quality table groups by it when present). Relative paths resolve against the
manifest's folder (or ``root``). User data sets (LibriSpeech, CoVoST 2, FLEURS, ...) follow the same schema with their
own audio.

Sample rate: ``sample_rate`` states the file's rate and must match it (a mismatch means the manifest is stale: an
error); files at rates other than 16 kHz are fine and are resampled on load.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import soundfile as sf

from .._io import sha256_file
from ..errors import InputError
from .audio import MAX_SECONDS

COLUMNS = ("id", "audio_path", "sample_rate", "duration_s", "language", "tasks", "transcript", "translation",
           "word_times_path", "sha256", "source", "licence", "split", "voice")


def load_manifest(path: str | Path, root: str | Path | None = None, split: str | None = None,
                  language: str | None = None, limit: int | None = None) -> pd.DataFrame:
    """Read a manifest, resolve its paths, and filter it (split, language, first ``limit`` rows)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"manifest {path} does not exist")
    df = pd.read_csv(path, dtype={"id": str, "transcript": str, "translation": str, "sha256": str},
                     keep_default_na=False)
    missing = [c for c in ("id", "audio_path") if c not in df.columns]
    if missing:
        raise InputError(f"manifest {path} lacks column(s) {missing}; expected {', '.join(COLUMNS)}")
    base = Path(root) if root else path.parent
    for col in ("audio_path", "word_times_path"):
        if col in df.columns:
            df[col] = [str(base / p) if p and not Path(p).is_absolute() else p for p in df[col]]
    if split is not None and "split" in df.columns:
        df = df[df["split"] == split]
    if language is not None and "language" in df.columns:
        df = df[df["language"] == language]
    if limit is not None:
        df = df.head(int(limit))
    return df.reset_index(drop=True)


def row_problems(row, check_audio: bool = True) -> list[str]:
    """Everything wrong with one manifest row (empty list when it is fine)."""
    uid = row.get("id", "?")
    problems = []
    if not str(row.get("transcript", "")).strip():
        problems.append(f"{uid}: empty transcript")
    if not check_audio:
        return problems
    audio = Path(str(row["audio_path"]))
    if not audio.exists():
        return problems + [f"{uid}: audio file {audio} is missing"]
    try:
        info = sf.info(audio)
    except (sf.LibsndfileError, RuntimeError) as err:
        return problems + [f"{uid}: audio file {audio} is corrupt or unreadable ({err})"]
    if info.frames == 0:
        problems.append(f"{uid}: audio file {audio} is empty")
    if info.frames / info.samplerate > MAX_SECONDS:
        problems.append(f"{uid}: audio is {info.frames / info.samplerate:.1f} s, over the {MAX_SECONDS:.0f} s window")
    problems += stated_problems(row, audio, info)
    want = row.get("sha256")
    if want and sha256_file(audio) != want:
        problems.append(f"{uid}: checksum mismatch for {audio}; rebuild the data or update the manifest")
    return problems


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


def validate_manifest(df: pd.DataFrame, check_audio: bool = True) -> dict[str, list[str]]:
    """Problems of every row, by id (rows without problems are absent): all rows are checked, none stops the rest."""
    out = {}
    for _, row in df.iterrows():
        p = row_problems(row, check_audio)
        if p:
            out[str(row["id"])] = p
    return out


def read_word_times(row) -> list[dict]:
    """The row's word times: [{"word", "start", "end"}, ...] in seconds (empty when the row has none)."""
    path = str(row.get("word_times_path", "") or "")
    if not path:
        return []
    try:
        return json.loads(Path(path).read_text())["words"]
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{row.get('id', '?')}: cannot read word times {path} ({err})") from None
