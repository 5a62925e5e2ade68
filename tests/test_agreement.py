"""Agreement measures: known answers, NaN accounting, pooling conservation, bootstrap coverage."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from xattn_utils.analysis.agreement import (
    MEASURES,
    agreement_table,
    ca_aggregate,
    ca_alignment_heads,
    ca_all,
    ca_last_layer,
    ca_layer_means,
    ca_selections,
    dataset_aggregate,
    fisher_mean,
    row_agreement,
    smx_to_encoder_frames,
    token_agreement,
    utterance_agreement,
)
from xattn_utils.errors import XattnError

CORR = ["pearson", "spearman", "kendall"]


def test_pooling_conserves_totals_numpy_and_torch():
    rng = np.random.default_rng(0)
    smx = rng.normal(size=(3, 11, 5))  # odd T: ragged last group
    pooled = smx_to_encoder_frames(smx, 2)
    assert pooled.shape == (3, 6)
    np.testing.assert_allclose(pooled.sum(1), smx.sum((1, 2)))
    np.testing.assert_allclose(pooled[:, 0], smx[:, :2].sum((1, 2)))
    pooled_abs = smx_to_encoder_frames(torch.from_numpy(smx), 2, reduce="abs")
    assert isinstance(pooled_abs, torch.Tensor)
    np.testing.assert_allclose(pooled_abs.sum(1).numpy(), np.abs(smx).sum((1, 2)))
    with pytest.raises(XattnError, match="reduce"):
        smx_to_encoder_frames(smx, 2, reduce="mean")


def test_ca_aggregates():
    rng = np.random.default_rng(1)
    ca = rng.random((4, 3, 5, 7))
    np.testing.assert_allclose(ca_all(ca), ca.mean((0, 1)))
    np.testing.assert_allclose(ca_last_layer(ca), ca[3].mean(0))
    np.testing.assert_allclose(ca_layer_means(ca)[2], ca[2].mean(0))
    np.testing.assert_allclose(ca_aggregate(ca, layers=[1, 2], heads=[0]), ca[1:3, 0].mean(0))
    pairs = [(1, 0), (3, 2), (-1, 1)]
    np.testing.assert_allclose(ca_alignment_heads(ca, pairs), (ca[1, 0] + ca[3, 2] + ca[3, 1]) / 3)
    t = ca_aggregate(torch.from_numpy(ca), heads={(0, 0), (2, 1)})
    np.testing.assert_allclose(t.numpy(), (ca[0, 0] + ca[2, 1]) / 2)
    sel = ca_selections(ca, per_head=True, alignment_heads=pairs, sets={"mine": [(0, 0)]})
    assert {"all", "last_layer", "layer0", "L3H2", "alignment_heads", "mine"} <= set(sel)
    np.testing.assert_allclose(sel["mine"], ca[0, 0])
    with pytest.raises(XattnError, match="not both"):
        ca_aggregate(ca, layers=[0], heads=pairs)


@pytest.mark.parametrize("measure", CORR + ["topk_overlap"])
def test_identical_maps_agree_perfectly(measure):
    x = np.random.default_rng(2).random((6, 50))
    np.testing.assert_allclose(token_agreement(x, x, measure), 1.0)
    assert utterance_agreement(x, x, measure) == pytest.approx(1.0)


@pytest.mark.parametrize("measure", CORR)
def test_permuted_map_is_uncorrelated(measure):
    rng = np.random.default_rng(3)
    x = rng.random((40, 500))
    y = rng.permutation(x.ravel()).reshape(x.shape)
    assert abs(utterance_agreement(x, y, measure)) < 0.1
    assert abs(np.mean(token_agreement(x, y, measure))) < 0.1


def test_measures_match_scipy():
    rng = np.random.default_rng(4)
    a = rng.random((5, 30))
    b = a + rng.normal(scale=0.3, size=a.shape)
    b[0, :10] = b[0, 0]  # ties
    for row in range(5):
        assert row_agreement(a, b, "pearson")[row] == pytest.approx(stats.pearsonr(a[row], b[row]).statistic)
        assert row_agreement(a, b, "spearman")[row] == pytest.approx(stats.spearmanr(a[row], b[row]).statistic)
        assert row_agreement(a, b, "kendall")[row] == pytest.approx(stats.kendalltau(a[row], b[row]).statistic)
    np.testing.assert_allclose(row_agreement(a, b, "pearson_r2"), row_agreement(a, b, "pearson") ** 2)


def test_topk_overlap_known():
    ref = np.array([[10.0, 9, 1, 1, 1, 1, 1, 1, 1, 2]])
    att = np.array([[9.0, 1, 8, 1, 1, 1, 1, 1, 1, 2]])
    assert row_agreement(att, ref, "topk_overlap", topk=0.2)[0] == pytest.approx(0.5)
    assert row_agreement(att, ref, "topk_overlap", topk=0.1)[0] == pytest.approx(1.0)


@pytest.mark.parametrize("measure", MEASURES)
def test_constant_row_is_nan(measure):
    rng = np.random.default_rng(5)
    a, b = rng.random((3, 20)), rng.random((3, 20))
    b[1] = 0.0
    out = row_agreement(a, b, measure)
    assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()


def test_fisher_mean():
    assert fisher_mean([0.6, 0.6, 0.6]) == pytest.approx(0.6)
    assert fisher_mean([1.0, 1.0]) == pytest.approx(1.0)
    assert fisher_mean([0.2, np.nan, 0.2]) == pytest.approx(0.2)
    assert np.isnan(fisher_mean([np.nan]))
    # z-mean differs from the plain mean for unequal values
    assert fisher_mean([0.1, 0.9]) == pytest.approx(np.tanh((np.arctanh(0.1) + np.arctanh(0.9)) / 2))


def test_bootstrap_covers_true_correlation():
    rho, n_utt, n_cells = 0.5, 20, 60
    cov = [[1, rho], [rho, 1]]
    rng = np.random.default_rng(6)
    covered = 0
    for rep in range(100):
        xy = rng.multivariate_normal([0, 0], cov, size=(n_utt, n_cells))  # (U, n, 2)
        r = row_agreement(xy[..., 0], xy[..., 1], "pearson")
        s = dataset_aggregate([[v] for v in r], "pearson", n_boot=500, seed=rep)
        covered += s["ci_low"] <= rho <= s["ci_high"]
    assert covered >= 85


def _dataset(n_utt=4, seed=7):
    rng = np.random.default_rng(seed)
    data = {}
    for u in range(n_utt):
        n_i = 3 + u
        sal = rng.random((n_i, 12))
        data[f"u{u}"] = {"ca_all": sal + rng.normal(scale=0.2, size=sal.shape), "same": sal.copy(),
                         "smx": np.concatenate([sal, np.zeros((n_i, 4))], 1), "n_frames": 12,
                         "tokens": [f"t{i}" for i in range(n_i)]}
    return data


def test_agreement_table_layout_and_values():
    data = _dataset()
    data["u0"]["smx"][1] = 0.0  # a constant saliency row
    df = agreement_table(data, references=["smx"], levels=("token", "utterance", "dataset", "dataset_token"),
                         n_boot=200, model="toy")
    assert set(df.columns) >= {"model", "utterance", "token", "level", "attention", "reference", "measure", "value",
                               "ci_low", "ci_high", "n"}
    assert set(df.attention) == {"ca_all", "same"} and set(df.measure) == set(MEASURES)
    n_tok = sum(3 + u for u in range(4))
    assert (df.level == "token").sum() == n_tok * 2 * len(MEASURES)
    tok = df[(df.level == "token") & (df.attention == "same") & (df.measure == "pearson")]
    assert tok.value.isna().sum() == 1 and tok.value.dropna().round(9).eq(1).all()
    ds = df[(df.level == "dataset_token") & (df.attention == "same") & (df.measure == "pearson")].iloc[0]
    assert ds.value == pytest.approx(1.0) and ds.n_nan == 1 and ds.n == n_tok - 1
    ds_u = df[(df.level == "dataset") & (df.attention == "ca_all") & (df.measure == "spearman")].iloc[0]
    utt = df[(df.level == "utterance") & (df.attention == "ca_all") & (df.measure == "spearman")]
    assert ds_u.value == pytest.approx(utt.value.mean())
    assert ds_u.ci_low <= ds_u.value <= ds_u.ci_high and ds_u.n == 4
    r2 = df[(df.level == "dataset") & (df.attention == "ca_all") & (df.measure == "pearson_r2")].value.iloc[0]
    r = df[(df.level == "dataset") & (df.attention == "ca_all") & (df.measure == "pearson")].value.iloc[0]
    assert r2 == pytest.approx(r ** 2)
    assert df.loc[df.level == "utterance", "token"].isna().all() and (df.model == "toy").all()
    assert (df.loc[(df.level == "token") & (df.utterance == "u1"), "token_text"].iloc[:4] == ["t0", "t1", "t2", "t3"]
            ).all()


def test_agreement_table_list_input_and_errors():
    data = list(_dataset(2).values())
    for d in data:
        d.pop("n_frames")
    with pytest.raises(XattnError, match="n_frames"):
        agreement_table(data, references=["smx"])
    df = agreement_table([{k: v for k, v in d.items() if k != "smx"} for d in data], references=["same"],
                         attention=["ca_all"], measures=["kendall"], levels=["utterance"])
    assert list(df.utterance) == ["0", "1"] and (df.measure == "kendall").all()
    with pytest.raises(XattnError, match="no map named"):
        agreement_table(data, references=["smh"], attention=["ca_all"])


def test_r2_interval_from_squared_bootstrap():
    rng = np.random.default_rng(8)
    data = [{"ca": rng.random((2, 30)), "sal": rng.random((2, 30))} for _ in range(12)]  # r around 0
    df = agreement_table(data, references=["sal"], measures=["pearson", "pearson_r2"], levels=["dataset"], n_boot=300)
    r = df[df.measure == "pearson"].iloc[0]
    r2 = df[df.measure == "pearson_r2"].iloc[0]
    assert r.ci_low < 0 < r.ci_high
    assert 0 <= r2.ci_low < 1e-3 < r2.ci_high  # squared replicates: an interval spanning 0 starts near 0
    assert r2.value == pytest.approx(r.value ** 2)
