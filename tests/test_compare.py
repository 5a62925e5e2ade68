"""Agreement over a store: known relationships between maps come out as known numbers; files and provenance."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xattn_utils.analysis.agreement import NOTE_OUT_OF_RANGE, normalize_rows
from xattn_utils.analysis.compare import (
    CompareConfig,
    compare_store,
    paper_comparison,
    utterance_maps,
)
from xattn_utils.analysis.faithfulness import curve_auc, importance_cells, ranking
from xattn_utils.extraction.extract import attention_dataset
from xattn_utils.extraction.forced import ForcedPass
from xattn_utils.store import ResultStore

from tolerances import f32, f64, printed

L, H, T_ENC = 2, 3, 40
# Maps equal up to float32 rounding δ correlate at r = 1 − ½(δ/σ)² (second order): SMX = 5 + token + 3·mean CA is
# stored in float32 (values ≤ 11, the head mean and storage ≤ L·H + 2 roundings) over a row spread σ ≥ 3 × 0.011
# (the smallest row std of the mean CA in the seeded stores below); plus the 1 − 1e-12 clip before Fisher's z
SMX_MAX, CA_ROW_STD = 11.0, 0.011
SAME_MAP_ABS = 0.5 * (f32(n_ops=L * H + 2, scale=SMX_MAX) / (3 * CA_ROW_STD)) ** 2 + 1e-12


def _utterance(store, uid, rng, n_tok=6, smx_from_ca=True, halves_noise=None):
    ca = rng.random((L, H, n_tok, T_ENC)).astype(np.float32) ** 4
    ca /= ca.sum(-1, keepdims=True)
    fp = ForcedPass(prompt_ids=np.array([1, 2]), token_ids=np.arange(n_tok), tokens=[f" t{i}" for i in range(n_tok - 1)]
                    + ["<|endoftext|>"], log_probs=np.zeros(n_tok, np.float32), cross_attention=ca,
                    value_norms=np.ones((L, H, T_ENC), np.float32), features=np.zeros((80, 2 * T_ENC), np.float32),
                    n_audio_frames=2 * T_ENC, n_encoder_frames=T_ENC)
    ds = attention_dataset(fp, 2, attrs={"provenance": {"model": {"model_id": "toy", "alignment_heads": [[1, 0]]}}})
    store.write(uid, "attention", ds, key="a")
    coords = {k: ds.coords[k] for k in ("token", "token_id", "token_str")}
    mean = ca.mean((0, 1))  # (I, T')
    # SMX built as SPES maps are (mean KLs with a per-token offset): every input cell of an encoder frame holds
    # 5 + token + 3 * mean CA, so mean-pooled over mel and frame pairs it is exactly that
    base = mean if smx_from_ca else rng.permutation(mean.ravel()).reshape(mean.shape)
    pooled = 5 + np.arange(n_tok)[:, None] + 3 * base
    smx = np.repeat(pooled, 2, axis=1)[:, :, None].repeat(80, axis=2)  # (I, T, F)
    data = {"saliency": (("token", "frame", "mel"), smx.astype(np.float32))}
    if halves_noise is not None:  # two noisy halves whose merge is the stored map
        e = halves_noise * rng.normal(size=smx.shape[:2])[:, :, None].repeat(80, 2)
        data["saliency_half"] = (("half", "token", "frame", "mel"), np.stack([smx + e, smx - e]).astype(np.float32))
    store.write(uid, "spes_x", xr.Dataset(data, coords=coords), key="x")
    store.write(uid, "spes_h", xr.Dataset({"saliency": (("token", "enc_frame"), ca[-1].mean(0))}, coords=coords),
                key="h")


@pytest.fixture
def store(tmp_path):
    st = ResultStore(tmp_path / "store")
    rng = np.random.default_rng(0)
    for i in range(4):
        _utterance(st, f"u{i}", rng)
    return st


def test_known_relationships(store, tmp_path):
    table = compare_store(store, tmp_path / "out", CompareConfig(n_boot=100), progress=False)
    ds = table[(table.level == "dataset") & (table.measure == "pearson")].set_index(["attention", "reference"])
    # SMX is an affine function of the mean CA per row: after per-row normalization, identical -> 1
    assert ds.loc[("all", "smx"), "value"] == pytest.approx(1.0, abs=SAME_MAP_ABS)
    assert ds.loc[("norm:all", "smx"), "value"] == pytest.approx(1.0, abs=SAME_MAP_ABS)  # unit value norms
    assert ds.loc[("last_layer", "smh"), "value"] == pytest.approx(1.0, abs=SAME_MAP_ABS)  # float32 head mean
    assert ds.loc[("L1H0", "smh"), "value"] < 0.99  # one head is not the layer mean
    assert ("alignment_heads", "smx") in ds.index and ("smh", "smx") in ds.index
    tok = table[(table.level == "token") & (table.measure == "pearson") & (table.attention == "all")
                & (table.reference == "smx")]
    assert len(tok) == 4 * 5  # the end-of-text row is excluded by default
    assert set(tok.columns) >= {"model", "utterance", "token", "level", "attention", "reference", "measure", "value",
                                "ci_low", "ci_high"}
    back = pd.read_parquet(tmp_path / "out" / "agreement.parquet")
    assert len(back) == len(table) and (tmp_path / "out" / "agreement.csv").exists()
    assert (tmp_path / "out" / "agreement.json").exists()
    pc = paper_comparison(table)
    # "ours" is rounded to 3 decimals
    assert pc.iloc[0]["ours"] == pytest.approx(1.0, abs=printed(3) + SAME_MAP_ABS) and pc.iloc[0]["aggregate"] == "all"
    assert set(pc.selection) >= {"fixed", "best on 2 calibration utterances", "in-sample best (biased up)"}


def test_store_halves_give_reliability_and_corrected_values(tmp_path):
    st = ResultStore(tmp_path / "store")
    rng = np.random.default_rng(5)
    for i in range(6):
        _utterance(st, f"u{i}", rng, n_tok=8, halves_noise=0.02)
    table = compare_store(st, None, CompareConfig(n_boot=200, per_head=False), progress=False)
    ds = table[table.level == "dataset"].set_index(["attention", "reference", "measure"])
    rel = ds.loc[("", "smx", "reliability"), "value"]
    assert 0.2 < rel < 0.99  # noisy halves: the map is far from converged
    raw = ds.loc[("all", "smx", "pearson"), "value"]
    cor = ds.loc[("all", "smx", "pearson_corrected"), "value"]
    # the attention equals the map (raw ~ 1) and the halves are noisy: raw / sqrt(reliability) on the same Fisher
    # means is above 1, which no correlation can be, so the corrected value is undefined and says why (the formula
    # inside [-1, 1]: tests/test_grids.py)
    assert np.tanh(np.arctanh(raw)) / np.sqrt(rel) > 1 and np.isnan(cor)
    assert ds.loc[("all", "smx", "pearson_corrected"), "note"] == NOTE_OUT_OF_RANGE
    pc = paper_comparison(table)
    assert pc[pc.comparison == "Pearson(CA, SMX)"].reliability.str.len().min() > 0


def test_unrelated_saliency_is_near_zero(tmp_path):
    st = ResultStore(tmp_path)
    rng = np.random.default_rng(1)
    for i in range(6):
        _utterance(st, f"u{i}", rng, n_tok=12, smx_from_ca=False)
    table = compare_store(st, None, CompareConfig(n_boot=100, per_head=False), progress=False)
    v = table[(table.level == "dataset") & (table.measure == "pearson") & (table.attention == "all")
              & (table.reference == "smx")].value.item()
    assert abs(v) < 0.15


def test_special_tokens_and_raw_option(store):
    inc = utterance_maps(store, "u0", CompareConfig(special="include", normalize="none"))
    exc = utterance_maps(store, "u0", CompareConfig())
    assert inc["all"].shape[0] == exc["all"].shape[0] + 1 and inc["tokens"][-1] == "<|endoftext|>"
    assert inc["smx"].min() > 4  # raw SPES rows keep their offset; z-scored ones have mean 0 and std 1
    # float64 row mean and its subtraction (T' terms each) on values ≤ 11, over the row std ≥ 3 × 0.011
    np.testing.assert_allclose(exc["smx"].mean(1), 0, rtol=0,
                               atol=f64(n_ops=2 * T_ENC, scale=SMX_MAX / (3 * CA_ROW_STD)))
    np.testing.assert_allclose(exc["smx"].std(1), 1)
    mm = utterance_maps(store, "u0", CompareConfig(normalize="minmax"))
    assert mm["smx"].min() == 0 and mm["smx"].max() == 1


def test_normalize_rows():
    x = np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    np.testing.assert_allclose(normalize_rows(x, "minmax"), [[0, 1, 0.5], [0, 0, 0]])
    np.testing.assert_allclose(normalize_rows(x)[0], np.array([-1, 1, 0]) / np.sqrt(2 / 3))
    np.testing.assert_allclose(normalize_rows(x, "sum")[0], [1 / 6, 3 / 6, 2 / 6])


def test_faithfulness_pieces():
    # an encoder-frame map spreads evenly over its input frames and mel bins; every token counts equally
    m = np.zeros((2, 4))
    m[0, 1], m[1, 3] = 10.0, 1.0
    imp = importance_cells(m, n_audio_frames=8, n_features=3, frames_per_encoder_frame=2)
    assert imp.shape == (8, 3) and float(imp[2:4].sum()) == pytest.approx(float(imp[6:8].sum()))
    order = ranking(imp, seed=0)
    assert set(order[:12].tolist()) == set(range(6, 12)) | set(range(18, 24))
    curve = pd.DataFrame({"percent": [0, 50, 100], "wer": [0.0, 50.0, 100.0]})
    assert curve_auc(curve) == pytest.approx(50.0)


def test_resolution_pools_every_map_to_coarser_frames(store, tmp_path):
    from xattn_utils.analysis.utterance_maps import UtteranceMaps
    from xattn_utils.errors import XattnError

    # known answer on a ragged row: 5 encoder frames of 20 ms -> 3 frames of 40 ms (the last holds one frame)
    row = np.array([[1.0, 3.0, 5.0, 7.0, 9.0]])
    m = UtteranceMaps("u", {"all": row}, {"smh": row, "smx": row}, {"smh": (row, 2 * row)}, ["a"], 10, 2, 5, 0.02,
                      pools={"smh": "mean", "smx": "max"})
    at40 = m.at_resolution(40)
    np.testing.assert_array_equal(at40.attention["all"], [[2.0, 6.0, 9.0]])  # means of the groups present
    np.testing.assert_array_equal(at40.references["smh"], [[2.0, 6.0, 9.0]])
    np.testing.assert_array_equal(at40.halves["smh"][1], [[4.0, 12.0, 18.0]])
    np.testing.assert_array_equal(at40.references["smx"], [[3.0, 7.0, 9.0]])  # 2-D max pooling stays a max
    assert (at40.n_frames, at40.encoder_frame_s) == (3, pytest.approx(0.04))
    np.testing.assert_array_equal(m.at_resolution(80).attention["all"], [[4.0, 9.0]])
    assert m.at_resolution(None) is m and m.at_resolution(20).n_frames == 5
    with pytest.raises(XattnError, match="multiple"):
        m.at_resolution(30)

    # on a store: each map pooled to 40 ms equals the pair means of its 20 ms map; SMX = affine(mean CA) still holds
    fine = utterance_maps(store, "u0", CompareConfig(normalize="none"))
    coarse = utterance_maps(store, "u0", CompareConfig(normalize="none", resolution_ms=40))
    assert coarse["n_frames"] == T_ENC // 2
    for name in ("all", "L0H1", "smx", "smh"):
        want = fine[name].reshape(fine[name].shape[0], -1, 2).mean(-1)
        np.testing.assert_allclose(coarse[name], want, rtol=f64(n_ops=2), atol=0)  # a pair mean, in float64
    table = compare_store(store, tmp_path / "out40", CompareConfig(n_boot=50, resolution_ms=40), progress=False)
    ds = table[(table.level == "dataset") & (table.measure == "pearson")].set_index(["attention", "reference"])
    assert ds.loc[("all", "smx"), "value"] == pytest.approx(1.0, abs=SAME_MAP_ABS)
    assert ds.loc[("L1H0", "smh"), "value"] < 0.99
