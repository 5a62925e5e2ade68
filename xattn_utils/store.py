"""Labeled results on disk: one folder per run, one zarr group per (utterance, kind).

Layout::

    STORE/store.json                     run-level provenance (model, parameters, versions)
    STORE/<utterance>/<kind>.zarr        an xarray Dataset (kind: "attention", "spes_x", "spes_h", "grad_...")
    STORE/errors.json                    items that failed, with their message (a sweep goes on with the rest)

Utterances of different lengths each get their own group, so no padding is stored. Every group carries its
provenance and a cache key (a hash of its inputs and parameters) in its attributes; a group is written to a temporary
folder and renamed into place, so an interrupted run never leaves a half-written group that a later run trusts.
Re-running with the same key reuses the stored group.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from .errors import InputError
from .forced import ForcedPass

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (temp file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class ResultStore:
    """A folder of per-utterance labeled results (see module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r}, utterances={len(self.utterances())})"

    @property
    def attrs(self) -> dict:
        f = self.path / "store.json"
        return json.loads(f.read_text()) if f.exists() else {}

    def update_attrs(self, **attrs) -> None:
        atomic_write_text(self.path / "store.json", json.dumps({**self.attrs, **attrs}, indent=1, default=str))

    def utterances(self) -> list[str]:
        if not self.path.exists():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.is_dir() and not p.name.startswith("."))

    def kinds(self, utterance: str) -> list[str]:
        folder = self.path / utterance
        return sorted(p.name[:-5] for p in folder.glob("*.zarr")) if folder.exists() else []

    def _group(self, utterance: str, kind: str) -> Path:
        if not _SAFE.match(utterance):
            raise InputError(f"utterance id {utterance!r} is not a safe folder name (letters, digits, _ . -)")
        return self.path / utterance / f"{kind}.zarr"

    def key(self, utterance: str, kind: str) -> str | None:
        """The cache key a stored group was written with (None when absent or unreadable)."""
        group = self._group(utterance, kind)
        if not group.exists():
            return None
        try:
            with xr.open_zarr(group, consolidated=False) as ds:
                return ds.attrs.get("cache_key")
        except (OSError, ValueError, KeyError):
            return None

    def has(self, utterance: str, kind: str, key: str | None = None) -> bool:
        """Whether a finished group exists (and, given a key, was written with that key)."""
        stored = self.key(utterance, kind)
        return stored is not None and (key is None or stored == key)

    def write(self, utterance: str, kind: str, ds: xr.Dataset, key: str) -> None:
        """Write a group atomically, replacing any older one."""
        target = self._group(utterance, kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{kind}.", suffix=".tmp"))
        ds = ds.assign_attrs(cache_key=key)
        ds.to_zarr(tmp / "g.zarr", mode="w", consolidated=False)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp / "g.zarr", target)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.clear_error(utterance, kind)

    def load(self, utterance: str, kind: str) -> xr.Dataset:
        """The stored group, loaded into memory."""
        group = self._group(utterance, kind)
        if not group.exists():
            raise KeyError(f"{self.path}: no {kind!r} result for utterance {utterance!r}; "
                           f"kinds stored: {self.kinds(utterance) or 'none'}")
        with xr.open_zarr(group, consolidated=False) as ds:
            return ds.load()

    def errors(self) -> dict:
        f = self.path / "errors.json"
        return json.loads(f.read_text()) if f.exists() else {}

    def record_error(self, utterance: str, kind: str, message: str) -> None:
        errs = self.errors()
        errs[f"{utterance}/{kind}"] = message
        atomic_write_text(self.path / "errors.json", json.dumps(errs, indent=1))

    def clear_error(self, utterance: str, kind: str) -> None:
        errs = self.errors()
        if errs.pop(f"{utterance}/{kind}", None) is not None:
            atomic_write_text(self.path / "errors.json", json.dumps(errs, indent=1))


def open_store(path: str | Path) -> ResultStore:
    """Open a result store written by ``xattn extract`` / ``xattn saliency`` (or the Python API)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no result store at {path}; create one with `xattn extract --out {path}`")
    return ResultStore(path)


def encoder_frame_seconds(frames_per_encoder_frame: int, hop_length: int = 160, sample_rate: int = 16000) -> float:
    """Duration of one encoder frame in seconds (Whisper: 2 x 10 ms = 20 ms)."""
    return frames_per_encoder_frame * hop_length / sample_rate


def attention_dataset(fp: ForcedPass, frames_per_encoder_frame: int, hop_length: int = 160,
                      sample_rate: int = 16000, attrs: dict | None = None) -> xr.Dataset:
    """A :class:`ForcedPass` as a labeled Dataset (dims layer, head, token, enc_frame, mel, frame)."""
    enc_dt = encoder_frame_seconds(frames_per_encoder_frame, hop_length, sample_rate)
    n_l, n_h, n_i, n_t = fp.cross_attention.shape
    data = {
        "cross_attention": (("layer", "head", "token", "enc_frame"), fp.cross_attention.astype(np.float32)),
        "value_norms": (("layer", "head", "enc_frame"), fp.value_norms.astype(np.float32)),
        "log_probs": (("token",), fp.log_probs.astype(np.float32)),
        "features": (("mel", "frame"), fp.features.astype(np.float32)),
        "prompt_ids": (("prompt",), fp.prompt_ids.astype(np.int64)),
    }
    if fp.encoder_hidden is not None:
        data["encoder_hidden"] = (("enc_frame", "dim"), fp.encoder_hidden.astype(np.float32))
    coords = {
        "layer": np.arange(n_l), "head": np.arange(n_h), "token": np.arange(n_i),
        "token_id": ("token", fp.token_ids.astype(np.int64)),
        "token_str": ("token", np.array(fp.tokens, dtype=object)),
        "enc_frame": np.arange(n_t), "enc_time": ("enc_frame", np.arange(n_t) * enc_dt),
        "frame": np.arange(fp.features.shape[1]),
        "time": ("frame", np.arange(fp.features.shape[1]) * hop_length / sample_rate),
    }
    base = {"n_audio_frames": int(fp.n_audio_frames), "n_encoder_frames": int(fp.n_encoder_frames),
            "frames_per_encoder_frame": int(frames_per_encoder_frame), "text": fp.text}
    return xr.Dataset(data, coords=coords, attrs={**base, **(attrs or {})})
