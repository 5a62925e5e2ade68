"""Agreement measures: known answers, NaN accounting, pooling conservation, bootstrap coverage."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from xattn_utils.analysis.agreement import (
    ATTENTION_COLUMNS,
    MEASURES,
    agreement_table,
    attention_columns,
    ca_aggregate,
    ca_alignment_heads,
    ca_all,
    ca_last_layer,
    ca_layer_means,
    ca_selections,
    dataset_aggregate,
    dataset_corrected,
    fisher_mean,
    row_agreement,
    smx_to_encoder_frames,
    token_agreement,
    utterance_agreement,
    with_attention_columns,
)
from xattn_utils.errors import XattnError

from tolerances import f64

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


# ------------------------------------------------------------------------------------------------ pinned numbers
# Values computed before the bootstrap helper was shared and agreement_table was split into small functions
# (same seeds, same synthetic input): the refactor must reproduce them, up to float64 rounding in another order.
# Fisher z, sums over ≤ 14 values, tanh and percentile interpolation: ≤ 64 roundings (a transcendental counted as 4),
# amplified ≤ 2× (measured: outputs move ≤ 1.1 × a relative input perturbation)
PINNED_REL = f64(n_ops=64, scale=2)
def _fixed_groups():
    rng = np.random.default_rng(123)
    obs = [np.tanh(rng.normal(0.4, 0.3, size=n)) for n in (1, 3, 2, 1, 4)]
    obs[2][1] = np.nan
    halves = [np.tanh(rng.normal(0.6, 0.2, size=n)) for n in (1, 3, 2, 1, 4)]
    halves[3][0] = np.nan  # an utterance without a finite split-half value is left out of the corrected values
    return obs, halves


def _summary(d):
    return d["value"], d["ci_low"], d["ci_high"], d["n"], d["n_nan"], d["n_utterances"]


def test_bootstraps_reproduce_the_values_before_they_shared_one_helper():
    obs, halves = _fixed_groups()
    pinned = {
        "pearson": (0.39039571292579067, 0.25423056309403186, 0.4747991936954569, 10, 1, 5),
        "spearman": (0.376943068017725, 0.24133186892220296, 0.46240247573308846, 10, 1, 5),
    }
    for measure, want in pinned.items():
        assert _summary(dataset_aggregate(obs, measure, n_boot=200, seed=7)) == pytest.approx(want, rel=PINNED_REL)
    cor = dataset_corrected(obs, halves, n_boot=200, seed=7)
    assert _summary(cor["split_half"]) == pytest.approx(
        (0.5414493979569744, 0.4491400702826696, 0.6218521922979326, 10, 1, 4), rel=PINNED_REL)
    assert _summary(cor["reliability"]) == pytest.approx(
        (0.7025198474560468, 0.6198711628960205, 0.7668407304206795, 10, 1, 4), rel=PINNED_REL)
    assert _summary(cor["pearson_corrected"]) == pytest.approx(
        (0.4884035934508093, 0.3068551195973121, 0.5746276402168524, 9, 1, 4), rel=PINNED_REL)
    only = dataset_corrected(None, halves, n_boot=200, seed=3, ci=0.9)
    assert only["pearson_corrected"] is None
    assert _summary(only["reliability"]) == pytest.approx(
        (0.7025198474560468, 0.6207802916876568, 0.7666407119202637, 10, 1, 4), rel=PINNED_REL)


def _named_maps():
    rng = np.random.default_rng(5)
    data = {}
    for u in range(4):
        i, t = 3 + u % 2, 7 + u
        base = rng.random((i, t))
        data[f"u{u}"] = {"ca:L0H1": base + 0.3 * rng.random((i, t)), "norm:layer1": base + rng.random((i, t)),
                         "all": rng.random((i, t)), "smx": base, "smh": base + 0.5 * rng.random((i, t)),
                         "tokens": [f"t{j}" for j in range(i)], "n_frames": t - 1,
                         "halves": {"smx": (base + 0.2 * rng.random((i, t)), base + 0.2 * rng.random((i, t)))}}
    return data


def test_agreement_table_reproduces_the_values_before_its_refactor():
    df = agreement_table(_named_maps(), ["smx", "smh"], levels=("token", "utterance", "dataset", "dataset_token"),
                         n_boot=50, seed=1, model="m")
    assert len(df) == 700
    assert df.level.value_counts().to_dict() == {"token": 490, "utterance": 140, "dataset": 35, "dataset_token": 35}
    assert list(df.measure[:12]) == ["split_half"] * 4 + ["reliability"] * 4 + ["pearson"] * 4
    pinned = {
        ("dataset", "ca:L0H1", "smx", "pearson"): (0.9575539361017051, 0.9540184436566275, 0.9606408889788971, 4),
        ("dataset", "ca:L0H1", "smx", "pearson_corrected"): (0.9661688314312787, 0.9632559952207762,
                                                             0.9691488566319508, 4),
        ("dataset", "", "smx", "split_half"): (0.9651121832752025, 0.9543545902421622, 0.9733690019341462, 4),
        ("dataset_token", "", "smx", "reliability"): (0.9856001013951585, 0.9775321085959483, 0.9908783474484395,
                                                      14),
        ("dataset_token", "norm:layer1", "smh", "spearman"): (0.5306122448979591, 0.4709375, 0.5907844932844932, 14),
        ("dataset", "all", "smh", "pearson_r2"): (2.8374783528153494e-05, 3.9787831657689456e-06,
                                                  0.007830360068903053, 4),
        ("dataset_token", "all", "smx", "pearson_corrected"): (0.04321141280145421, -0.1405156272089411,
                                                               0.18909619018669105, 14),
    }
    for (level, att, ref, measure), want in pinned.items():
        row = df[(df.level == level) & (df.attention == att) & (df.reference == ref) & (df.measure == measure)]
        assert len(row) == 1
        r = row.iloc[0]
        # float64 per-row correlations (≤ 4 length-10 reductions) and the dataset steps: ≤ 64 roundings; measured
        # amplification ≤ 6, except ρ² = 2.8e-5, the square of a mean of opposite-sign values (≤ 470): ×2 margin
        rel = f64(n_ops=64, scale=1000 if measure == "pearson_r2" else 12)
        assert (r.value, r.ci_low, r.ci_high, r.n) == pytest.approx(want, rel=rel)


# ------------------------------------------------------------------------------------------------ attention columns
def test_attention_names_parse_into_columns():
    cases = {
        "L3H2": ("head", 3, 2, "attention", None),
        "norm:L0H11": ("head", 0, 11, "norm", None),
        "layer3": ("layer", 3, None, "attention", None),
        "norm:layer10": ("layer", 10, None, "norm", None),
        "all": ("all", None, None, "attention", None),
        "norm:last_layer": ("last_layer", None, None, "norm", None),
        "alignment_heads": ("alignment_heads", None, None, "attention", None),
        "my_heads": ("my_heads", None, None, "attention", None),  # a user-named set of heads
        "rollout∘L1H0": ("head", 1, 0, "attention", "rollout"),
        "alti[2]∘norm:all": ("all", None, None, "norm", "alti[2]"),
        "vzero-blur∘layer2": ("layer", 2, None, "attention", "vzero-blur"),
        "": (None, None, None, None, None),  # split-half and reliability rows
        "smh": (None, None, None, None, None),  # a saliency map compared as attention
        "rollout∘smh": (None, None, None, None, "rollout"),
    }
    for name, want in cases.items():
        got = attention_columns(name)
        assert tuple(got[c] for c in ATTENTION_COLUMNS) == want, name
    assert attention_columns("ref_a", references=["ref_a"])["aggregate"] is None


def test_agreement_table_has_the_attention_columns_beside_attention():
    rng = np.random.default_rng(2)
    data = [{n: rng.random((3, 9)) for n in ("L3H2", "norm:layer1", "rollout[1]∘all", "smx", "smh")}
            for _ in range(3)]
    df = agreement_table(data, references=["smx"], attention=["L3H2", "norm:layer1", "rollout[1]∘all", "smh"],
                         measures=["pearson"], levels=["utterance", "dataset"], n_boot=20)
    cols = list(df.columns)
    assert cols[cols.index("attention") + 1:cols.index("reference")] == list(ATTENTION_COLUMNS)
    by = df.drop_duplicates("attention").set_index("attention")
    assert (by.loc["L3H2", "aggregate"], by.loc["L3H2", "layer"], by.loc["L3H2", "head"],
            by.loc["L3H2", "weighting"]) == ("head", 3, 2, "attention")
    assert (by.loc["norm:layer1", "aggregate"], by.loc["norm:layer1", "layer"]) == ("layer", 1)
    assert pd.isna(by.loc["norm:layer1", "head"]) and by.loc["norm:layer1", "weighting"] == "norm"
    assert by.loc["rollout[1]∘all", "mixing"] == "rollout[1]" and by.loc["rollout[1]∘all", "aggregate"] == "all"
    assert pd.isna(by.loc["smh", "aggregate"]) and pd.isna(by.loc["smh", "layer"])
    assert str(df.layer.dtype) == "Int64" and str(df["head"].dtype) == "Int64"
    # a table written before the columns existed gets the same columns back
    old = df.drop(columns=list(ATTENTION_COLUMNS))
    pd.testing.assert_frame_equal(with_attention_columns(old), df)


def test_layer_head_grid_reads_the_columns_and_skips_composed_and_norm_rows():
    import matplotlib.pyplot as plt

    from xattn_utils.analysis.plots import plot_layer_curves, plot_layer_head_grid

    rows = []
    for l in range(2):
        for h in range(3):
            rows.append((f"L{l}H{h}", 0.1 * l + 0.01 * h))
            rows.append((f"norm:L{l}H{h}", 0.9))  # higher, but another weighting
            rows.append((f"rollout∘L{l}H{h}", 0.95))  # higher, but composed with encoder mixing
        rows.append((f"layer{l}", 0.2 + l))
        rows.append((f"norm:layer{l}", 0.3))
    table = pd.DataFrame({"level": "dataset", "measure": "pearson", "reference": "smx",
                          "attention": [a for a, _ in rows], "value": [v for _, v in rows]})
    table["ci_low"], table["ci_high"] = table.value - 0.05, table.value + 0.05
    fig, ax = plt.subplots()
    assert plot_layer_head_grid(ax, table, "smx") == (1, 2, pytest.approx(0.12))
    assert plot_layer_head_grid(ax, table, "smx", weighting="norm")[2] == pytest.approx(0.9)
    fig2, ax2 = plt.subplots()
    plot_layer_curves(ax2, table, references=("smx",))
    assert [t.get_text() for t in ax2.get_legend().get_texts()] == ["raw CA vs SMX", "norm:CA vs SMX"]
    raw, norm = (c.lines[0] for c in ax2.containers)
    assert list(raw.get_xdata()) == [0, 1] and list(raw.get_ydata()) == pytest.approx([0.2, 1.2])
    assert list(norm.get_ydata()) == pytest.approx([0.3, 0.3])
    plt.close(fig)
    plt.close(fig2)


def test_interval_needs_two_utterances_and_a_defined_point():
    """One utterance has no interval over utterances (every resample repeats it), and an undefined corrected value
    has no interval either; the points themselves are kept."""
    one = dataset_aggregate([np.array([0.2, 0.6, 0.4])], "pearson", n_boot=200, seed=0)
    assert np.isfinite(one["value"]) and one["n_utterances"] == 1
    assert np.isnan(one["ci_low"]) and np.isnan(one["ci_high"])
    two = dataset_aggregate([np.array([0.2, 0.6]), np.array([0.5])], "pearson", n_boot=200, seed=0)
    assert two["ci_low"] < two["value"] < two["ci_high"]
    # reliability of halves correlating at 0.05 is 0.095 < the floor: the corrected value is undefined, its
    # interval too, while the reliability keeps its own interval
    obs = [np.array([0.3]), np.array([0.4]), np.array([0.35])]
    halves = [np.array([0.04]), np.array([0.06]), np.array([0.05])]
    cor = dataset_corrected(obs, halves, n_boot=200, seed=0)
    c = cor["pearson_corrected"]
    assert np.isnan(c["value"]) and np.isnan(c["ci_low"]) and np.isnan(c["ci_high"])
    r = cor["reliability"]
    assert r["ci_low"] < r["value"] < r["ci_high"]
    single = dataset_corrected(obs[:1], [np.array([0.8])], n_boot=200, seed=0)["pearson_corrected"]
    assert np.isfinite(single["value"]) and np.isnan(single["ci_low"])
