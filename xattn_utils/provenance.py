"""Provenance: what produced an artifact (model and weights hash, data checksums, parameters, seed, versions)."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("xattn_utils", "torch", "transformers", "numpy", "scipy", "scikit-image", "captum", "xarray", "zarr")


def versions() -> dict[str, str]:
    """Python and key package versions."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the source checkout, when run from one."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def to_jsonable(obj):
    """Dataclasses, paths, tuples and numpy scalars to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def stable_hash(*parts, length: int = 16) -> str:
    """Hash of JSON-able parts, stable across runs and machines (cache keys)."""
    text = json.dumps(to_jsonable(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def provenance(model: dict | None = None, data: dict | None = None, params=None, seed: int | None = None) -> dict:
    """A provenance record: model (id, weights hash, input mode), data checksums, parameters, seed, versions."""
    return to_jsonable({
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model or {},
        "data": data or {},
        "params": params or {},
        "seed": seed,
        "versions": versions(),
        "git_commit": git_commit(),
    })
