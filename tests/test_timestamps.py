"""Word timestamps from attention: DTW, the Whisper recipe on synthetic attention, word merging, error tables."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xattn_utils.analysis.timestamps import (
    Word,
    alignment_matrix,
    decode_token_pieces,
    dtw_entry_frames,
    dtw_path,
    median_filter,
    standardize_tokens,
    timestamp_errors,
    timestamp_summary,
    timestamps_from_saliency,
    token_times,
    word_timestamps,
    words_from_token_times,
)
from xattn_utils.errors import XattnError

from tolerances import f32


def _brute_force_dtw(cost: np.ndarray) -> float:
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
    return acc[n, m]


def test_dtw_recovers_known_monotone_path():
    # cheap cells along a staircase: row r owns frames [bounds[r], bounds[r+1])
    bounds = [0, 3, 4, 9, 12]
    cost = np.ones((4, 12))
    for r in range(4):
        cost[r, bounds[r]:bounds[r + 1]] = 0.0
    text, time = dtw_path(cost)
    expected_rows = np.concatenate([[r] * (bounds[r + 1] - bounds[r]) for r in range(4)])
    np.testing.assert_array_equal(time, np.arange(12))
    np.testing.assert_array_equal(text, expected_rows)


def test_dtw_is_optimal_and_monotone():
    rng = np.random.default_rng(0)
    for shape in [(5, 17), (9, 9), (1, 6), (6, 1), (12, 40)]:
        cost = rng.random(shape)
        text, time = dtw_path(torch.from_numpy(cost))
        assert (text[0], time[0]) == (0, 0) and (text[-1], time[-1]) == (shape[0] - 1, shape[1] - 1)
        steps = np.stack([np.diff(text), np.diff(time)], 1)
        assert set(map(tuple, steps)) <= {(1, 1), (1, 0), (0, 1)}
        assert cost[text, time].sum() == pytest.approx(_brute_force_dtw(cost))


def test_median_filter_and_standardize():
    x = torch.tensor([[0.0, 0, 9, 0, 0, 5, 5, 5, 0, 1]])
    y = median_filter(x, 3)
    assert y.shape == x.shape
    np.testing.assert_allclose(y[0].numpy(), [0, 0, 0, 0, 0, 5, 5, 5, 1, 0])  # reflect: last window (0, 1, 0)
    big = torch.randn(3, 4, 20)
    assert median_filter(big, 7).shape == big.shape
    assert torch.equal(median_filter(big[..., :3], 7), big[..., :3])  # too short to filter
    z = standardize_tokens(big)
    assert z.shape == big.shape
    # float32 over 4 tokens: four 4-term reductions (mean and std there and here) on values up to max|x| / std of
    # the column in z units (the draw is not seeded: a column may have a small std)
    col = float((big.abs().amax(-2) / big.std(-2, unbiased=False)).max())
    torch.testing.assert_close(z.mean(-2), torch.zeros(3, 20), rtol=0, atol=f32(n_ops=4 * 4, scale=col))
    torch.testing.assert_close(z.std(-2, unbiased=False), torch.ones(3, 20), rtol=0, atol=f32(n_ops=4 * 4, scale=col))
    with pytest.raises(XattnError, match="odd"):
        median_filter(big, 4)


def test_alignment_matrix_cuts_and_renormalizes():
    w = torch.rand(2, 5, 30)
    m = alignment_matrix(w, n_frames=20, standardize=False, medfilt_width=1)
    assert m.shape == (5, 20)
    torch.testing.assert_close(m.sum(-1), torch.ones(5))
    assert alignment_matrix(w, n_frames=20).shape == (5, 20)
    with pytest.raises(XattnError, match="n_frames"):
        alignment_matrix(w, n_frames=31)


def _diagonal_attention(bounds, n_frames, n_heads=3, pad=10, noise=0.0, seed=0):
    """(K, R, T') softmax-like attention: row r attends frames [bounds[r], bounds[r+1]); padding gets mass too."""
    rng = np.random.default_rng(seed)
    n_rows = len(bounds) - 1
    w = np.full((n_heads, n_rows, n_frames + pad), 1e-3) + noise * rng.random((n_heads, n_rows, n_frames + pad))
    for r in range(n_rows):
        w[:, r, bounds[r]:bounds[r + 1]] += 1.0
    w[:, :, n_frames:] += 0.5  # attention sink on padding, cut away
    return w / w.sum(-1, keepdims=True)


def test_diagonal_attention_gives_exact_word_boundaries():
    # tokens: " Hello" "," " wor" "ld" "." <|endoftext|> ; frames at 50/s (20 ms)
    tokens = [" Hello", ",", " wor", "ld", ".", "<|endoftext|>"]
    bounds = [5, 30, 32, 50, 70, 72, 80]  # row r (incl. EOT row) spans [bounds[r], bounds[r+1])
    w = _diagonal_attention([0] + bounds[1:], n_frames=80, noise=0.05)
    words = word_timestamps(w, tokens, n_frames=80)
    assert [wd.text for wd in words] == [" Hello,", " world."]
    assert words[0].start == pytest.approx(0.0) and words[0].end == pytest.approx(30 / 50)
    assert words[1].start == pytest.approx(32 / 50) and words[1].end == pytest.approx(70 / 50)
    assert words[1].tokens == (2, 3, 4)
    # HF-style (no renormalization) finds the same boundaries here
    assert word_timestamps(w, tokens, n_frames=80, renormalize=False) == words


def test_token_times_with_and_without_eot_row():
    bounds = [0, 10, 25, 40]
    m = torch.from_numpy(_diagonal_attention(bounds, 40, n_heads=1, pad=0)[0])
    s, e = token_times(m, frames_per_second=100.0)
    np.testing.assert_allclose(s, [0, 0.10, 0.25])
    np.testing.assert_allclose(e, [0.10, 0.25, 0.40])
    s2, e2 = token_times(m, frames_per_second=100.0, n_tokens=2)
    np.testing.assert_allclose(s2, [0, 0.10])
    np.testing.assert_allclose(e2, [0.10, 0.25])


def test_saliency_timestamps_same_recipe():
    bounds = [0, 12, 30, 44, 50]
    sal = _diagonal_attention(bounds, 50, n_heads=1, pad=0)[0] * -3.0  # signed map, magnitude carries the timing
    words = timestamps_from_saliency(sal, [" one", " two", " three", "<|endoftext|>"], n_frames=50)
    assert [(w.text, w.start, w.end) for w in words] == [(" one", 0.0, 0.24), (" two", 0.24, 0.6),
                                                        (" three", 0.6, 0.88)]


def test_word_merging_spaces_and_punctuation():
    toks = [" \"", "Hel", "lo", ",\"", " (", "big", ")", " world", "!", "<|endoftext|>"]
    starts = np.arange(len(toks), dtype=float)
    ends = starts + 1
    words = words_from_token_times(toks, starts, ends)
    assert [w.text for w in words] == [" \"Hello,\"", " (big)", " world!"]
    # times from the word's non-punctuation tokens
    assert (words[0].start, words[0].end) == (1.0, 3.0)
    assert (words[1].start, words[1].end) == (5.0, 6.0)
    assert words[2].tokens == (7, 8)
    # first token without a space still starts a word; hyphen inside a word attaches
    w2 = words_from_token_times(["well", "-", "known", " fact"], [0, 1, 2, 3], [1, 2, 3, 4])
    assert [w.text for w in w2] == ["well-known", " fact"]


def test_decode_token_pieces_multibyte():
    class ByteTok:  # each id is one byte of UTF-8
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    ids = list(" né".encode())  # ' ', 'n', 0xC3, 0xA9
    assert decode_token_pieces(ByteTok(), ids) == [" ", "n", "", "é"]


def test_timestamp_errors_and_summary():
    ref = [Word(" a", 0.0, 0.5), Word(" b", 0.5, 1.0), Word(" c", 1.0, 1.6)]
    pred = [(" a", 0.01, 0.56), {"word": " b", "start": 0.6, "end": 1.0}, Word(" c", 1.3, 1.6)]
    df = timestamp_errors(pred, ref)
    np.testing.assert_allclose(df.start_error, [0.01, 0.1, 0.3])
    np.testing.assert_allclose(df.end_error, [0.06, 0.0, 0.0])
    assert list(df.start_within_20ms) == [True, False, False] and list(df.start_within_100ms) == [True, True, False]
    assert list(df.end_within_50ms) == [False, True, True]
    s = timestamp_summary(df)
    assert s.start_within_200ms.iloc[0] == pytest.approx(2 / 3) and s.n_words.iloc[0] == 3
    assert s.start_error_mean.iloc[0] == pytest.approx(0.41 / 3)
    # a missing predicted word: matched by text, the gap is NaN and never "within"
    df2 = timestamp_errors([pred[0], pred[2]], ref)
    assert np.isnan(df2.start_error[1]) and not df2.start_within_200ms[1] and df2.start_error[2] == pytest.approx(0.3)
    df["source"] = "ca"
    df2["source"] = "sal"
    g = timestamp_summary(__import__("pandas").concat([df, df2]), by="source")
    assert list(g.source) == ["ca", "sal"] and list(g.n_words) == [3, 3]


def test_rows_standardize_over_all_then_keep_text_rows():
    w = torch.rand(2, 7, 25)
    full = alignment_matrix(w, rows=slice(2, -1))
    assert full.shape == (4, 25)
    torch.testing.assert_close(full, alignment_matrix(w)[2:-1])
    assert not torch.allclose(full, alignment_matrix(w[:, 2:-1]))  # statistics include the extra rows


def _whisper_rule_dtw(cost: np.ndarray) -> np.ndarray:
    """openai-whisper / CTranslate2 DTW written as their plain loops (float32, strict comparisons): row entries."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = np.full((n + 1, m + 1), -1)
    acc[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            acc[i, j] = np.float32(cost[i - 1, j - 1]) + c
            trace[i, j] = t
    entry = np.full(n, m)
    i, j = n, m
    while i > 0 and j > 0:
        entry[i - 1] = min(entry[i - 1], j - 1)
        t = trace[i, j]
        i, j = (i - 1, j - 1) if t == 0 else (i - 1, j) if t == 1 else (i, j - 1)
    return entry


def test_dtw_tie_breaking_diagonal_vs_whisper_time():
    # a flat cost: every path costs the same, only the tie rule decides
    flat = np.zeros((3, 6))
    text, time = dtw_path(flat)  # ours: diagonal first -> the last rows take the last frames
    assert list(zip(text, time)) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 4), (2, 5)]
    text, time = dtw_path(flat, ties="time")  # Whisper: down the first column, then along time in the last row
    assert list(zip(text, time)) == [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (2, 5)]
    np.testing.assert_array_equal(dtw_entry_frames(flat[None], ties="time")[0], [0, 0, 0])
    np.testing.assert_array_equal(dtw_entry_frames(flat[None])[0], [0, 4, 5])
    # token_times passes the rule through
    s, _ = token_times(-torch.zeros(3, 6), frames_per_second=1.0, ties="time")
    np.testing.assert_array_equal(s, [0, 0, 0])
    with pytest.raises(XattnError, match="ties"):
        dtw_path(flat, ties="up")


def test_dtw_time_ties_match_whisper_loops_and_batch_matches_single():
    rng = np.random.default_rng(3)
    costs = [rng.integers(0, 3, (7, 15)).astype(float) for _ in range(20)]  # small integers: many exact ties
    costs += [rng.random((7, 15)) for _ in range(5)]
    batch = np.stack(costs)
    for ties in ("time", "diagonal"):
        entries = dtw_entry_frames(batch, ties=ties)
        for c, e in zip(costs, entries):
            text, time = dtw_path(c, ties=ties)
            first = np.array([time[text == r].min() for r in range(c.shape[0])])
            np.testing.assert_array_equal(e, first)
            if ties == "time":
                np.testing.assert_array_equal(e, _whisper_rule_dtw(c))
    differ = sum((dtw_entry_frames(c[None], "time") != dtw_entry_frames(c[None], "diagonal")).any() for c in costs)
    assert differ > 0  # the rules do disagree on tied costs
