"""Files written so that a crash never leaves half a result, and the hashes that name inputs.

Every module that writes a finished result goes through here: a file or a folder is built beside its destination
and renamed into place (``os.replace`` is atomic within one filesystem), so a reader sees the old result or the new
one, never a mix. A full disk becomes :class:`~xattn_utils.errors.DiskFullError` naming what was being written.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .errors import DiskFullError, ModelError, StoreError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def write_error(err: OSError, what: str, where: Path) -> StoreError:
    """The project's error for an OSError while writing ``what`` (DiskFullError when the disk or quota is full)."""
    if err.errno in _NO_SPACE:
        return DiskFullError(f"{what}: no space left writing to {where} ({err.strerror}); free some space and "
                             "re-run: everything finished before is kept and is skipped")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(f"{what}: {where} is read-only or not writable ({err.strerror}); make it writable "
                          "(chmod u+w) or write to another folder, and re-run: finished results are kept")
    return StoreError(f"{what}: cannot write to {where} ({type(err).__name__}: {err}); check the folder's "
                      "permissions and re-run")


def current_umask() -> int:
    """The process's umask (read from ``/proc/self/status`` where it can be, else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def public_mode(folder: bool = False) -> int:
    """The mode a plain ``open`` / ``mkdir`` would give under the current umask (0644 / 0755 under 022):
    ``mkstemp`` and ``mkdtemp`` make results private (0600 / 0700), which a colleague sharing a run cannot read."""
    return (0o777 if folder else 0o666) & ~current_umask()


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Write a file atomically: ``write(tmp)`` fills a temporary file beside ``path``, which is renamed onto it
    (readable as the umask allows, as a plain ``open`` would make it). An unwritable or read-only folder is a
    :class:`~xattn_utils.errors.StoreError` naming it."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, public_mode())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_error(err, path.name, path.parent) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON atomically (non-JSON values as their ``str``)."""
    return atomic_write_text(path, json.dumps(obj, indent=1, default=str))


@contextmanager
def temporary_folder_beside(dest: str | Path, prefix: str | None = None) -> Iterator[Path]:
    """A fresh temporary folder in ``dest``'s parent (same filesystem, so it can be renamed onto ``dest``);
    removed on exit unless it was renamed away."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=prefix or f".{dest.name}.{os.getpid()}.", suffix=".tmp"))
    try:
        tmp.chmod(public_mode(folder=True))  # mkdtemp makes it private; renamed into place it is a result
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(built: Path, dest: Path) -> None:
    """Rename the finished folder ``built`` onto ``dest``, replacing an older ``dest`` (moved aside, then removed)."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(built, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_table(df: pd.DataFrame, out_dir: str | Path, name: str, provenance: dict) -> None:
    """``name.parquet``, ``name.csv`` and ``name.json`` (the provenance), each written atomically."""
    out_dir = Path(out_dir)
    atomic_write(out_dir / f"{name}.parquet", lambda tmp: df.to_parquet(tmp, index=False))
    atomic_write(out_dir / f"{name}.csv", lambda tmp: df.to_csv(tmp, index=False))
    atomic_write_json(out_dir / f"{name}.json", provenance)


def _update(h, path: Path, chunk: int = 1 << 22) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    _update(h, Path(path))
    return h.hexdigest()


def sha256_files(files: Iterable[str | Path]) -> str:
    """One hex sha256 over several files: for each, in the order given, its name then its bytes."""
    h = hashlib.sha256()
    for f in map(Path, files):
        h.update(f.name.encode())
        _update(h, f)
    return h.hexdigest()


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a model folder (``*.safetensors``, ``*.bin``), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def weights_sha256(folder: str | Path) -> str:
    """sha256 over a model folder's weight files (identifies the exact model)."""
    files = weight_files(folder)
    if not files:
        raise ModelError(f"no weight files (*.safetensors, *.bin) in {folder}")
    return sha256_files(files)
