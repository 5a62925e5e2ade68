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
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import InputError
from .audio import load_utterance_audio, stated_problems  # noqa: F401  (stated_problems: re-exported)

COLUMNS = ("id", "audio_path", "sample_rate", "duration_s", "language", "tasks", "transcript", "translation",
           "word_times_path", "sha256", "source", "licence", "split", "voice")


def load_manifest(path: str | Path, root: str | Path | None = None, split: str | None = None,
                  language: str | None = None, limit: int | None = None,
                  ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a manifest, resolve its paths, and filter it (split, language, the rows of ``ids`` in their order, first
    ``limit`` rows)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"manifest {path} does not exist")
    _check_utf8(path)
    df = pd.read_csv(path, dtype={"id": str, "transcript": str, "translation": str, "sha256": str},
                     keep_default_na=False, encoding="utf-8")
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
    if ids is not None:
        df = _rows_of(df, ids, f"manifest {path}" + (f" (split {split!r})" if split is not None else "")
                      + (f" (language {language!r})" if language is not None else ""))
    if limit is not None:
        df = df.head(int(limit))
    return df.reset_index(drop=True)


def _rows_of(df: pd.DataFrame, ids: Sequence[str], where: str) -> pd.DataFrame:
    """The rows of ``df`` whose id is in ``ids``, in the order of ``ids`` (a repeated id once)."""
    if isinstance(ids, str) or not ids or not all(isinstance(i, str) for i in ids):
        raise InputError(f"{where}: utterance ids must be a non-empty list of id strings (its id column), not "
                         f"{ids!r}")
    wanted = list(dict.fromkeys(ids))
    present = set(df["id"])
    missing = [i for i in wanted if i not in present]
    if missing:
        raise InputError(f"{where}: no utterance {', '.join(map(repr, missing))}; give ids of its id column "
                         f"(e.g. {', '.join(map(repr, df['id'].head(2)))})")
    return df.set_index("id", drop=False).loc[wanted]


def _check_utf8(path: Path) -> None:
    """Refuse a manifest that is not UTF-8, naming the line and the byte (pandas would raise UnicodeDecodeError)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"manifest {path}: cannot read it ({type(err).__name__}: {err.strerror or err})") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError(f"manifest {path}: line {line} is not UTF-8 (byte 0x{data[err.start]:02X} at offset "
                         f"{err.start}); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def row_problems(row, check_audio: bool = True) -> list[str]:
    """Everything wrong with one manifest row (empty list when it is fine)."""
    uid = row.get("id", "?")
    problems = []
    if not str(row.get("transcript", "")).strip():
        problems.append(f"{uid}: empty transcript")
    if not check_audio:
        return problems
    try:
        load_utterance_audio(row)
    except InputError as err:
        problems.append(str(err))
    return problems


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
