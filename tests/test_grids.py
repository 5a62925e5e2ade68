"""The comparison grid: a planted signal survives pooling and normalization; known pooling answers; and the noise
correction recovers the correlation with a noiseless map."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xattn_utils.analysis.agreement import (
    agreement_table,
    dataset_corrected,
    disattenuate,
    smx_to_encoder_frames,
    spearman_brown,
    token_agreement,
    utterance_agreement,
)
from xattn_utils.analysis.compare import CompareConfig
from xattn_utils.attribution.grids import (
    encoder_grid,
    normalize_rows,
    pool_to_encoder_frames,
)
from xattn_utils.errors import XattnError

from tolerances import f64

K = 2


def _smooth(rng, n_rows, n_cols, width=6):
    x = rng.normal(size=(n_rows, n_cols + width))
    kern = np.ones(width) / width
    return np.stack([np.convolve(r, kern, mode="valid")[:n_cols] for r in x])


def _pearson(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _spes_like(rng, n_tok=10, n_frames=229, n_mel=80, signal_std=0.04, cell_noise=0.01):
    """A SPES map as measured on a default-corpus utterance: a large per-token offset (≈3.3, the token's mean KL)
    plus a small spatial signal, constant over each encoder frame's input frames. Returns the (I, T, F) map and the
    signal on the encoder grid (I, T')."""
    t_enc = -(-n_frames // K)
    signal = _smooth(rng, n_tok, t_enc)
    signal *= signal_std / signal.std()
    per_frame = np.repeat(signal, K, axis=1)[:, :n_frames]
    offset = 3.3 + rng.normal(0, 0.5, size=(n_tok, 1, 1))
    smx = offset + per_frame[:, :, None] + rng.normal(0, cell_noise, size=(n_tok, n_frames, n_mel))
    return smx, signal


@pytest.mark.parametrize("n_frames", [229, 230])
def test_planted_signal_survives_the_study_grid_with_odd_and_even_frames(n_frames):
    rng = np.random.default_rng(0)
    smx, signal = _spes_like(rng, n_frames=n_frames)
    cfg = CompareConfig()
    t_enc = signal.shape[1]
    on_grid = encoder_grid(smx, K, t_enc, pool=cfg.pool, normalize=cfg.normalize)
    assert on_grid.shape == signal.shape
    assert _pearson(on_grid, normalize_rows(signal)) > 0.95
    assert np.mean(token_agreement(on_grid, signal, "pearson")) > 0.95


def test_the_old_sum_and_minmax_grid_measured_the_ragged_column():
    """The defect this grid replaces: sums over a ragged last group + per-row min-max put one outlier column at 0
    and everything else near 1 when the frame count is odd."""
    rng = np.random.default_rng(0)
    smx, signal = _spes_like(rng, n_frames=229)
    old = normalize_rows(smx_to_encoder_frames(smx, K), "minmax")
    assert np.allclose(old[:, -1], 0) and old[:, :-1].min() > 0.8
    assert _pearson(old, normalize_rows(signal)) < 0.5


def test_gradient_amounts_pool_by_sums_and_keep_a_planted_signal():
    rng = np.random.default_rng(1)
    t, t_enc = 229, 115
    signal = np.abs(_smooth(rng, 6, t_enc)) + 0.1
    amounts = np.repeat(signal / K, K, axis=1)[:, :t, None].repeat(80, 2) / 80  # an amount spread over its cells
    pooled = pool_to_encoder_frames(amounts, K, "sum")
    # float64 sums of K·80 positive cells (each signal / K / 80, 2 roundings): relative error ≤ (K·80 + 2) eps
    np.testing.assert_allclose(pooled[:, :-1], signal[:, :-1], rtol=f64(n_ops=K * 80 + 2))
    np.testing.assert_allclose(pooled.sum(1), amounts.sum((1, 2)))  # sums conserve each token's total
    grid = encoder_grid(amounts, K, t_enc, pool="sum", normalize="zscore")
    assert _pearson(grid, normalize_rows(signal)) > 0.95


def test_pooling_known_answers_numpy_and_torch():
    m = np.arange(2 * 5 * 3, dtype=np.float64).reshape(2, 5, 3)  # T = 5: ragged last group of one frame
    mean = pool_to_encoder_frames(m, 2, "mean")
    np.testing.assert_allclose(mean[0], [m[0, :2].mean(), m[0, 2:4].mean(), m[0, 4].mean()])
    mx = pool_to_encoder_frames(torch.from_numpy(m), 2, "max")
    assert isinstance(mx, torch.Tensor)
    np.testing.assert_allclose(mx[1].numpy(), [m[1, :2].max(), m[1, 2:4].max(), m[1, 4].max()])
    s = pool_to_encoder_frames(-m, 2, "sum", magnitude=True)
    np.testing.assert_allclose(s[0], [m[0, :2].sum(), m[0, 2:4].sum(), m[0, 4].sum()])
    np.testing.assert_allclose(pool_to_encoder_frames(m[:, :, 0], 2, "mean")[0], [0.5 * (0 + 3), 0.5 * (6 + 9), 12])
    with pytest.raises(XattnError, match="pool"):
        pool_to_encoder_frames(m, 2, "median")


def test_zscore_makes_the_flattened_pearson_the_mean_token_pearson():
    rng = np.random.default_rng(2)
    a, b = rng.random((7, 30)), rng.random((7, 30)) + 5 * np.arange(7)[:, None]
    za, zb = normalize_rows(a), normalize_rows(b)
    # float64 row mean and its subtraction (30 terms each) on values ≤ 1, over the smallest row std
    np.testing.assert_allclose(za.mean(1), 0, rtol=0, atol=f64(n_ops=2 * 30, scale=1 / float(a.std(1).min())))
    np.testing.assert_allclose(za.std(1), 1)
    assert utterance_agreement(za, zb, "pearson") == pytest.approx(token_agreement(a, b, "pearson").mean())
    assert not normalize_rows(np.full((1, 4), 3.0)).any()  # a constant row carries no "where"


# ---------------------------------------------------------------- reliability and the noise correction


def test_spearman_brown_and_disattenuation_known_values():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(1.0) == pytest.approx(1.0)
    assert float(disattenuate(0.4, 0.5)) == pytest.approx(0.4 / np.sqrt(2 / 3))
    assert np.isnan(disattenuate(0.4, -0.2))  # no shared signal between the halves: nothing to correct towards


def _noisy_study(rng, n_utt=40, n_tok=8, t_enc=60, ca_noise=1.0, half_noise=2.5):
    """Utterances where CA = clean + noise and a sampled reference = clean + sampling noise, built from two
    independent halves (the full map is their mean, as SPES's merge is for equal mask counts)."""
    data, clean_data = {}, {}
    for u in range(n_utt):
        clean = _smooth(rng, n_tok, t_enc)
        clean /= clean.std()
        ca = clean + ca_noise * rng.normal(size=clean.shape)
        half_a = clean + half_noise * rng.normal(size=clean.shape)
        half_b = clean + half_noise * rng.normal(size=clean.shape)
        full = (half_a + half_b) / 2
        data[f"u{u}"] = {"ca": normalize_rows(ca), "smx": normalize_rows(full),
                         "halves": {"smx": (normalize_rows(half_a), normalize_rows(half_b))}}
        clean_data[f"u{u}"] = {"ca": normalize_rows(ca), "smx": normalize_rows(clean)}
    return data, clean_data


def test_noise_corrected_correlation_recovers_the_noiseless_one():
    data, clean_data = _noisy_study(np.random.default_rng(3))
    kw = dict(references=["smx"], attention=["ca"], measures=("pearson",), levels=("utterance", "dataset"),
              n_boot=400, seed=0)
    table = agreement_table(data, **kw)
    noiseless = agreement_table(clean_data, **kw)
    ds = table[table.level == "dataset"].set_index(["attention", "measure"])
    truth = noiseless[(noiseless.level == "dataset")].value.item()
    raw = ds.loc[("ca", "pearson")]
    corrected = ds.loc[("ca", "pearson_corrected")]
    reliability = ds.loc[("", "reliability")]
    assert raw.value < truth - 0.1  # sampling noise attenuates the observed correlation...
    assert corrected.ci_low <= truth <= corrected.ci_high  # ...and the correction recovers it within its interval
    assert abs(corrected.value - truth) < 0.05
    # a reference from (clean + e) with e of std 2.5/sqrt(2) per full map has reliability 1 / (1 + 2.5**2 / 2)
    # before z-scoring and smoothing; the estimate must be in that neighbourhood and well below 1
    assert 0.1 < reliability.value < 0.6
    utt = table[(table.level == "utterance") & (table.measure == "split_half")]
    assert len(utt) == 40 and (utt.attention == "").all()


def test_dataset_corrected_pairs_the_bootstrap_and_skips_missing():
    obs = [np.array([0.3]), np.array([np.nan]), np.array([0.5])]
    halves = [np.array([0.5]), np.array([0.4]), np.array([np.nan])]
    out = dataset_corrected(obs, halves, n_boot=50)
    assert out["pearson_corrected"]["n_utterances"] == 1  # only the utterance with both parts
    assert out["pearson_corrected"]["value"] == pytest.approx(0.3 / np.sqrt(spearman_brown(0.5)))
    rel_only = dataset_corrected(None, halves, n_boot=50)
    assert rel_only["pearson_corrected"] is None and rel_only["split_half"]["n_utterances"] == 2


def test_zscore_map_normalizes_the_whole_map_and_keeps_token_offsets():
    m = np.array([[1.0, 2.0], [3.0, 4.0]])
    z = normalize_rows(m, "zscore_map")
    sd = np.sqrt(1.25)  # population std of 1, 2, 3, 4 around 2.5
    # mean, std (sum of 4 squares, sqrt), subtract, divide: ~10 float64 roundings on values of magnitude ~2
    np.testing.assert_allclose(z, (m - 2.5) / sd, rtol=0, atol=f64(10, scale=2))
    assert z[1].mean() - z[0].mean() == pytest.approx(2 / sd)  # the second token's offset survives
    assert not normalize_rows(np.full((2, 3), 7.0), "zscore_map").any()  # a constant map carries no "where"
