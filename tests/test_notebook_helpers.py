"""The calls the study notebooks share: a table saved with its provenance, a store's recorded input mode."""
from __future__ import annotations

import json

import pandas as pd
import pytest


def test_save_table_writes_parquet_csv_and_provenance(tmp_path):
    from xattn_utils.runs.notebook import save_table

    df = pd.DataFrame({"source": ["all", "layer3"], "within_50ms": [0.5, 0.25]})
    save_table(df, tmp_path / "tables", "t", {"params": {"k_max": 3}})
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "tables" / "t.parquet"), df)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "tables" / "t.csv"), df)
    assert json.loads((tmp_path / "tables" / "t.json").read_text()) == {"params": {"k_max": 3}}


def test_store_input_mode_is_the_recorded_one(tmp_path):
    from xattn_utils.errors import InputError
    from xattn_utils.runs.notebook import DEFAULT_INPUT_MODE, store_input_mode
    from xattn_utils.store import ResultStore

    st = ResultStore(tmp_path / "store")  # not created yet
    assert store_input_mode(st) == DEFAULT_INPUT_MODE == "trimmed"  # nothing extracted yet: the study's default
    with pytest.raises(InputError, match="run notebook 01"):
        store_input_mode(st, default=None)
    st.path.mkdir()
    st.update_attrs(model={"model_id": "m", "input_mode": "padded"})  # as extraction records it
    assert store_input_mode(tmp_path / "store") == "padded"
