"""The gap decomposition recovers a planted factor: a map level whose SMX carries no CA signal loses the agreement."""
from __future__ import annotations

import numpy as np
import pytest
from test_compare import _utterance

from xattn_utils.analysis.gap import MODEL_AT_PAPER_POINT, gap_rows, gap_table, store_levels
from xattn_utils.errors import XattnError
from xattn_utils.store import ResultStore


def _store(path, n_segments, n_masks, smx_from_ca, seed, n=6, model="bundled:whisper-tiny.en"):
    st = ResultStore(path)
    rng = np.random.default_rng(seed)
    for i in range(n):
        uid = f"default-en-test-{i:05d}"
        _utterance(st, uid, rng, smx_from_ca=smx_from_ca, halves_noise=2.0)
        ds = st.load(uid, "spes_x").load()
        ds.attrs["provenance"] = {"model": {"model_id": model},
                                  "params": {"n_segments": list(n_segments), "n_masks": n_masks}}
        st.write(uid, "spes_x", ds, key="x2")
    return st


def test_planted_segment_factor_is_recovered(tmp_path):
    default = _store(tmp_path / "cpu", (250, 500, 1000), 256, smx_from_ca=True, seed=0)
    changed = _store(tmp_path / "pub", (2000, 2500, 3000), 256, smx_from_ca=False, seed=0)
    assert store_levels(default) == {"segments": "cpu", "masks": "256", "model": "bundled:whisper-tiny.en",
                                     "speech": "natural"}
    assert store_levels(changed)["segments"] == "published"
    table = gap_table(gap_rows([default, changed], n_boot=200), n_boot=200).set_index("factor")
    seg = table.loc["segments"]
    # same utterance ids, same CA: the difference is paired; SMX built from CA agrees, a permuted SMX does not
    assert seg["paired"] and seg["n_utterances"] == 6
    assert seg["default_pearson"] > 0.5 and abs(seg["changed_pearson"]) < 0.25
    assert seg["difference_high"] < 0
    # comparison factors are computed on the default store alone: both levels on the same maps
    assert {"pool", "normalize"} <= set(table.index)
    assert table.loc["pool", "default_pearson"] == pytest.approx(seg["default_pearson"])


def test_no_change_from_the_default_is_refused(tmp_path):
    only = _store(tmp_path / "pub", (2000, 2500, 3000), 256, smx_from_ca=True, seed=1)
    with pytest.raises(XattnError, match="no change from the default"):
        gap_table(gap_rows([only], n_boot=50), n_boot=50)


def test_spes_budget_steps_pair_the_utterances_both_levels_hold(tmp_path):
    """The paper point (published segments, 20 000 masks) is two factors at once: the table compares it with the
    default and with published segments at 256 masks, on the utterances each pair shares (here 4 of 6)."""
    default = _store(tmp_path / "cpu", (250, 500, 1000), 256, smx_from_ca=False, seed=2)
    coarse_pub = _store(tmp_path / "pub", (2000, 2500, 3000), 256, smx_from_ca=False, seed=3)
    paper = _store(tmp_path / "paper", (2000, 2500, 3000), 20000, smx_from_ca=True, seed=4, n=4)  # stopped early
    table = gap_table(gap_rows([default, coarse_pub, paper], n_boot=200), n_boot=200)
    steps = table[table["factor"] == "spes"].set_index("changed")
    assert list(steps["default"]) == ["published/256", "cpu/256"]
    assert list(steps["n_utterances"]) == [4, 4]
    row = steps.iloc[1]
    assert row["paired"] and row["difference_low"] > 0  # the planted CA signal at the paper point is recovered
    assert abs(row["default_pearson"]) < 0.25 and row["changed_pearson"] > 0.5


def test_a_store_without_maps_yet_is_skipped_with_one_line(tmp_path, capsys):
    from xattn_utils.analysis.gap import main

    default = _store(tmp_path / "cpu", (250, 500, 1000), 256, smx_from_ca=True, seed=0)
    changed = _store(tmp_path / "pub", (2000, 2500, 3000), 256, smx_from_ca=False, seed=0)
    empty = ResultStore(tmp_path / "running")  # a run still computing its first map
    rows = gap_rows([default, empty, changed], n_boot=50)
    assert set(rows["store"]) == {str(default.path), str(changed.path)}
    assert main([str(empty.path), "--n-boot", "50"]) == 2  # nothing else: one line, no traceback
    err = capsys.readouterr().err  # (the "skipped" warning may reach stderr too, depending on logging's setup)
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("error: ")], err


def test_one_shared_utterance_has_no_interval(tmp_path):
    default = _store(tmp_path / "cpu", (250, 500, 1000), 256, smx_from_ca=True, seed=0)
    paper = _store(tmp_path / "paper", (2000, 2500, 3000), 20000, smx_from_ca=True, seed=5, n=1)
    row = gap_table(gap_rows([default, paper], n_boot=50), n_boot=50).iloc[-1]
    assert row["n_utterances"] == 1 and np.isfinite(row["changed_pearson"])
    assert np.isnan(row["changed_low"]) and np.isnan(row["difference_high"])


def test_model_factor_at_the_paper_point_pairs_the_converged_maps(tmp_path):
    """Base at the paper's SPES settings is compared with tiny.en at the same settings (not with the default point):
    a planted agreement of base's maps is recovered there, on the utterances both models hold."""
    default = _store(tmp_path / "cpu", (250, 500, 1000), 256, smx_from_ca=True, seed=0)
    tiny = _store(tmp_path / "tiny", (2000, 2500, 3000), 20000, smx_from_ca=False, seed=6)
    base = _store(tmp_path / "base", (2000, 2500, 3000), 20000, smx_from_ca=True, seed=7, n=3,
                  model="bundled:whisper-base")
    table = gap_table(gap_rows([default, tiny, base], n_boot=200), n_boot=200).set_index("factor")
    row = table.loc[MODEL_AT_PAPER_POINT]
    assert row["default"] == "bundled:whisper-tiny.en" and row["changed"] == "bundled:whisper-base"
    assert row["paired"] and row["n_utterances"] == 3
    assert abs(row["default_pearson"]) < 0.25 and row["changed_pearson"] > 0.5 and row["difference_low"] > 0
    assert "model" not in table.index  # base at the default SPES settings is not among these stores
