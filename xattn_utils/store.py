"""Labeled results on disk: one folder per run, one zarr group per (utterance, kind).

Layout::

    STORE/store.json                     run-level provenance (model, parameters, versions)
    STORE/<utterance>/<kind>.zarr        an xarray Dataset (kind: "attention", "spes_x", ... see xattn_utils.maps)
    STORE/errors.json                    items that failed, with their message (a sweep goes on with the rest)

Utterances of different lengths each get their own group, so no padding is stored. Every group carries its
provenance and a cache key (a hash of its inputs and parameters) in its attributes; a group is written to a temporary
folder and renamed into place, so an interrupted run never leaves a half-written group that a later run trusts.
Re-running with the same key reuses the stored group. The key covers the model, the audio's sha256 and the
parameters, not which utterances shared a batch: batched float32 kernels round differently for different batch
contents, so a group recomputed in another batch can differ in the last digits (measured up to 1.2e-6 in attention
and 3.3e-6 in log-probs on the bundled model; tests compare across batches with atol 2e-5 and 2e-4). Same key
means same inputs and parameters, equal within that tolerance, not identical bits.

Integrity: every group records the sha256 of each of its files (all but the root metadata, which holds them) in
its attributes (``xattn_checksums``). :meth:`ResultStore.load` checks them and raises
:class:`~xattn_utils.errors.DamagedResultError` naming the utterance, the kind and the file when a chunk is missing,
truncated or changed; :meth:`ResultStore.has` treats such a group as absent, so a re-run recomputes it. A full disk
raises :class:`~xattn_utils.errors.DiskFullError` (the run stops; finished groups are kept); temporary folders left
by a killed writer are removed by :meth:`ResultStore.clean_orphans` at the start of the next run.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import xarray as xr
import zarr

from ._io import atomic_write_json, replace_folder, temporary_folder_beside, write_error
from .errors import (
    DamagedResultError,
    InputError,
    MissingResultError,
    MissingStoreError,
)

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
RESERVED_IDS = ("store.json", "errors.json")  # files at the store's root: an utterance folder cannot take the name
CHECKSUMS = "xattn_checksums"  # group attribute: {relative file path: sha256}
_ROOT_META = ("zarr.json", ".zattrs", ".zgroup", ".zmetadata")  # hold the attributes, so not in the checksums
_ORPHAN = re.compile(r"^\.(?:.+?\.(?P<pid>\d+)\..*\.tmp|.+\.old-(?P<oldpid>\d+)|.+\.tmp)$")
# A temporary folder whose writer is gone (its pid not alive) is removed at once; one older than this is removed
# even when its pid is alive (pids are reused: a group is written in seconds, so an hour-old one has no writer).
ORPHAN_AGE_S = 3600.0


def _file_sums(folder: Path) -> dict[str, str]:
    """sha256 of every file under a zarr group folder, by posix path relative to it (root metadata excluded)."""
    out = {}
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        if f.is_file() and rel not in _ROOT_META:
            out[rel] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        atomic_write_json(self.path / "store.json", {**self.attrs, **attrs})

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
        if utterance in RESERVED_IDS:
            raise InputError(f"utterance id {utterance!r} is reserved (a file of the store); rename the item")
        return self.path / utterance / f"{kind}.zarr"

    def problem(self, utterance: str, kind: str) -> str | None:
        """What is wrong with a stored group (None when it is intact), checked against its recorded checksums.

        A group written before checksums were recorded is checked by reading it in full.
        """
        group = self._group(utterance, kind)
        if not group.is_dir():
            return "not stored"
        try:
            attrs = dict(zarr.open_group(str(group), mode="r").attrs)
        except Exception as err:  # noqa: BLE001 - any failure to read the metadata means the group is damaged
            return f"its metadata cannot be read ({type(err).__name__})"
        want = attrs.get(CHECKSUMS)
        if not isinstance(want, dict):
            try:
                with xr.open_zarr(group, consolidated=False) as ds:
                    ds.load()
            except Exception as err:  # noqa: BLE001
                return f"it cannot be read ({type(err).__name__}: {str(err)[:120]})"
            return None
        have = _file_sums(group)
        missing = sorted(set(want) - set(have))
        changed = sorted(f for f in want if f in have and have[f] != want[f])
        if missing or changed:
            parts = ([f"file(s) missing: {', '.join(missing[:3])}"] if missing else []) + \
                    ([f"file(s) changed or truncated: {', '.join(changed[:3])}"] if changed else [])
            return "; ".join(parts)
        return None

    def damage(self, utterance: str, kind: str) -> str | None:
        """What is wrong with a group that is present but cannot be trusted (a file changed or missing, its root
        metadata deleted); None when it is absent or intact. A run that recomputes such a group reports it."""
        if not self._group(utterance, kind).is_dir():
            return None
        return self.problem(utterance, kind)

    def near_silence(self, utterance: str) -> bool:
        """Whether the utterance's ``attention`` group is flagged as a hypothesis made from (near-)silence or from
        non-speech (Whisper's no-speech probability over its threshold)."""
        group = self._group(utterance, "attention")
        try:
            attrs = zarr.open_group(str(group), mode="r").attrs
            return bool(attrs.get("near_silence", 0)) or bool(attrs.get("non_speech", 0))
        except Exception:  # noqa: BLE001 - absent or unreadable: not flagged (load() reports damage)
            return False

    def clean_orphans(self, min_age_s: float = ORPHAN_AGE_S) -> list[str]:
        """Remove temporary files and folders left by killed writers; returns their paths.

        Every run start calls it (extract, saliency, mixing, ...). One whose name carries a pid is removed when that
        process is gone, or when it is older than ``min_age_s`` (its pid reused by another process); one without a
        pid only when older than ``min_age_s``. This process's own temporaries are always kept.
        """
        if not self.path.is_dir():
            return []
        removed = []
        now = time.time()
        candidates = [p for p in self.path.iterdir() if p.name.startswith(".")]
        for folder in self.path.iterdir():
            if folder.is_dir() and not folder.name.startswith("."):
                candidates += [p for p in folder.iterdir() if p.name.startswith(".")]
        for p in candidates:
            m = _ORPHAN.match(p.name)
            if not m:
                continue
            pid = m.group("pid") or m.group("oldpid")
            try:
                old = now - p.stat().st_mtime >= min_age_s
                if pid is not None and (int(pid) == os.getpid() or (_pid_alive(int(pid)) and not old)):
                    continue  # a live writer (this process included)
                if pid is None and not old:
                    continue
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(str(p))
            except OSError:
                continue
        return removed

    def peek(self, utterance: str, kind: str) -> xr.Dataset | None:
        """A stored group opened lazily: its attributes, variables and coordinates without reading the arrays
        (None when absent or unreadable; unlike :meth:`load`, checksums are not checked)."""
        group = self._group(utterance, kind)
        if not group.exists():
            return None
        try:
            return xr.open_zarr(group, consolidated=False)
        except (OSError, ValueError, KeyError):
            return None

    def key(self, utterance: str, kind: str) -> str | None:
        """The cache key a stored group was written with (None when absent or unreadable)."""
        ds = self.peek(utterance, kind)
        if ds is None:
            return None
        with ds:
            return ds.attrs.get("cache_key")

    def has(self, utterance: str, kind: str, key: str | None = None) -> bool:
        """Whether a finished, intact group exists (and, given a key, was written with that key).

        A damaged group (see :meth:`problem`) counts as absent, with a warning naming it, so a re-run recomputes it.
        """
        stored = self.key(utterance, kind)
        if stored is None or (key is not None and stored != key):
            return False
        bad = self.problem(utterance, kind)
        if bad is not None:
            warnings.warn(f"{utterance}: stored {kind!r} group is damaged ({bad}); recomputing it", stacklevel=2)
            return False
        return True

    def write(self, utterance: str, kind: str, ds: xr.Dataset, key: str) -> None:
        """Write a group atomically, replacing any older one."""
        target = self._group(utterance, kind)
        try:
            with temporary_folder_beside(target, prefix=f".{kind}.{os.getpid()}.") as tmp:
                ds = ds.assign_attrs(cache_key=key)
                ds.attrs.pop(CHECKSUMS, None)
                ds.to_zarr(tmp / "g.zarr", mode="w", consolidated=False)
                zarr.open_group(str(tmp / "g.zarr"), mode="r+").attrs[CHECKSUMS] = _file_sums(tmp / "g.zarr")
                replace_folder(tmp / "g.zarr", target)
        except OSError as err:
            raise write_error(err, f"{utterance}/{kind}", self.path) from None
        self.clear_error(utterance, kind)

    def load(self, utterance: str, kind: str) -> xr.Dataset:
        """The stored group, loaded into memory."""
        group = self._group(utterance, kind)
        if not group.exists():
            raise MissingResultError(f"{self.path}: no {kind!r} result for utterance {utterance!r}; "
                                     f"kinds stored: {self.kinds(utterance) or 'none'}")
        bad = self.problem(utterance, kind)
        if bad is not None:
            raise DamagedResultError(f"{utterance}: stored {kind!r} result in {self.path} is damaged ({bad}); "
                                     "re-run the command that wrote it (xattn extract / xattn saliency) to "
                                     "recompute it")
        with xr.open_zarr(group, consolidated=False) as ds:
            out = ds.load()
        out.attrs.pop(CHECKSUMS, None)
        return out

    def errors(self) -> dict:
        f = self.path / "errors.json"
        return json.loads(f.read_text()) if f.exists() else {}

    @contextmanager
    def _errors_lock(self):
        """An exclusive lock on ``errors.json`` (concurrent writers through the Python API lose no entry)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fh = open(self.path / ".errors.lock", "a")  # noqa: SIM115 - closed below
        except OSError as err:
            raise write_error(err, "errors.json", self.path) from None
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def record_error(self, utterance: str, kind: str, message: str) -> None:
        with self._errors_lock():
            errs = self.errors()
            errs[f"{utterance}/{kind}"] = message
            atomic_write_json(self.path / "errors.json", errs)

    def clear_error(self, utterance: str, kind: str) -> None:
        if f"{utterance}/{kind}" not in self.errors():
            return
        with self._errors_lock():
            errs = self.errors()
            if errs.pop(f"{utterance}/{kind}", None) is not None:
                atomic_write_json(self.path / "errors.json", errs)


def open_store(path: str | Path) -> ResultStore:
    """Open a result store written by ``xattn extract`` / ``xattn saliency`` (or the Python API)."""
    path = Path(path)
    if not path.exists():
        raise MissingStoreError(f"no result store at {path}; create one with `xattn extract --out {path}`")
    return ResultStore(path)
