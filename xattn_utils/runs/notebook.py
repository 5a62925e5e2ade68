"""Calls the study notebooks share that belong to no single step: save a table, read a store's input mode.

* :func:`save_table` writes a table as ``name.parquet``, ``name.csv`` and ``name.json`` (its provenance), each
  atomically: what every notebook's tables folder holds and ``report.md`` collects.
* :func:`check_parameters` refuses, inside a notebook, a parameter whose type differs from its parameters cell's
  default (a direct ``papermill -p n_masks "1; import os"``; a sweep checks before it starts the notebook).
* :func:`store_input_mode` reads the input mode (``padded`` / ``trimmed``) a store's cross-attention was extracted
  with, so a notebook that explains stored hypotheses loads the model the same way (notebook 01, ``xattn extract``
  and the tour choose it; the notebooks after them read it).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._io import write_table
from ..errors import InputError
from ..paths import resource
from ..store import ResultStore
from .spec import check_parameter_types, notebook_defaults

DEFAULT_INPUT_MODE = "trimmed"  # the study's (notebooks, sweeps, CLI): the audio only; "padded" = Whisper's 30 s


def save_table(df: pd.DataFrame, out_dir: str | Path, name: str, provenance: dict) -> None:
    """``out_dir/name.parquet``, ``name.csv`` and ``name.json`` (``provenance``), each written atomically."""
    write_table(df, out_dir, name, provenance)


def check_parameters(notebook: str, namespace: dict) -> None:
    """Refuse (one line naming the parameter, its value and the type expected) any parameter in ``namespace`` (a
    notebook's ``globals()``) whose type differs from the default in the parameters cell of ``notebook`` (a file
    name in ``notebooks/``)."""
    path = resource(f"notebooks/{notebook}")
    check_parameter_types(path, {k: namespace[k] for k in notebook_defaults(path) if k in namespace}, name=notebook)


def store_input_mode(store: str | Path | ResultStore, default: str | None = DEFAULT_INPUT_MODE) -> str:
    """The input mode a store's cross-attention was extracted with (its ``store.json`` provenance, else the first
    stored ``attention`` group's); ``default`` for a store that holds none yet (None: raise)."""
    st = store if isinstance(store, ResultStore) else ResultStore(store)  # may not exist yet
    mode = (st.attrs.get("model") or {}).get("input_mode")
    if not mode:
        for uid in st.utterances():
            ds = st.peek(uid, "attention")
            if ds is not None:
                with ds:
                    mode = ((ds.attrs.get("provenance") or {}).get("model") or {}).get("input_mode")
                break
    if mode:
        return str(mode)
    if default is None:
        raise InputError(f"{st.path}: no cross-attention stored, so no input mode recorded; run notebook 01 "
                         "(or `xattn extract`) on this store first")
    return default
