"""Where built artifacts live (converted models, synthetic audio, caches); nothing here is committed.

The root is ``$XATTN_HOME`` when set (the Makefile sets it to ``<repo>/.cache``), else ``~/.cache/xattn``.
"""
from __future__ import annotations

import os
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
