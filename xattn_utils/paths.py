"""Where built artifacts live (converted models, synthetic audio, caches); nothing here is committed.

The root is ``$XATTN_HOME`` when set (the Makefile sets it to ``<repo>/.cache``), else ``~/.cache/xattn``.
"""
from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def xattn_home() -> Path:
    """Root folder for everything xattn builds (created on demand)."""
    root = Path(os.environ.get("XATTN_HOME", Path.home() / ".cache" / "xattn")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(kind: str) -> Path:
    """A sub-folder of :func:`xattn_home`, e.g. ``cache_dir("models")``."""
    path = xattn_home() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


# The project's top-level files that the code reads: in a checkout they stay where they are; a wheel carries copies
# in xattn_utils/_resources/ (setup.py copies them at build time).
RESOURCES = ("models.csv", "data_manifest.csv", "notebooks", "sweeps")


def checkout_root() -> Path | None:
    """The source checkout this package runs from (the folder holding ``pyproject.toml`` beside ``xattn_utils/``), or
    None for an installed package."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "models.csv").is_file() else None


def resource(name: str) -> Path:
    """A project file or folder the code reads (``models.csv``, ``data_manifest.csv``, ``notebooks``, ``sweeps``,
    or a path below them): the checkout's own when running from one, else the copy installed with the package
    (found through ``importlib.resources``), so ``pip install .`` works from any directory."""
    if name.split("/", 1)[0] not in RESOURCES:
        raise ValueError(f"{name!r} is not a packaged resource; one of {', '.join(RESOURCES)}")
    root = checkout_root()
    if root is not None:
        return root / name
    return Path(str(files(__package__) / "_resources" / name))
