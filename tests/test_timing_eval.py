"""Timestamp accuracy: head sets, summaries with bootstrap intervals, and head discovery on a planted toy head."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xattn_utils.analysis.timestamps import (
    Word,
    alignment_matrix,
    timestamp_errors,
    token_times,
    words_from_token_times,
)
from xattn_utils.analysis.timing_eval import (
    accuracy_summary,
    discover_heads,
    head_grid,
    head_overlap,
    head_sets,
    passes_errors,
    set_word_times,
)

from toy_models import PlantedAlignerToy


def _toys():
    return [PlantedAlignerToy([3, 20, 31, 52, 60], n_frames=75, seed=0),
            PlantedAlignerToy([0, 14, 40, 47, 70, 82], n_frames=90, seed=1),
            PlantedAlignerToy([0, 25, 33, 60], n_frames=70, seed=2)]  # DTW starts at frame 0: so does word 0


def test_set_word_times_equals_the_single_set_recipe():
    toy = _toys()[0]
    sets = head_sets(3, 4, alignment_heads=[(2, 1), (0, 3)])
    assert len(sets) == 12 + 3 + 1 + 1 and sets["layer1"] == [(1, h) for h in range(4)]
    words = set_word_times(toy.attention, toy.rows, toy.pieces(), sets)
    for name in ("alignment", "L0H2", "all"):  # batched sets == alignment_matrix + token_times of that set alone
        ws = toy.attention[[l for l, _ in sets[name]], [h for _, h in sets[name]]]
        s, e = token_times(alignment_matrix(ws, rows=toy.rows), n_tokens=toy.n_words)
        assert words[name] == words_from_token_times(toy.pieces(), s, e)


def test_planted_head_times_words_exactly_and_ranks_first():
    toys = _toys()
    found = discover_heads([t.as_pass(f"u{i}") for i, t in enumerate(toys[:2])], k_max=6)
    assert found["ranking"][0] == (2, 1)
    assert found["heads"] == [(2, 1)] and found["k"] == 1  # adding random heads only blurs it
    errs = passes_errors([toys[2].as_pass("test")], {"planted": [(2, 1)], "all": head_sets(3, 4)["all"]})
    s = accuracy_summary(errs, n_boot=50).set_index("source")
    # the planted head's boundaries are within one 20 ms frame of the truth (median filter edges aside)
    assert s.loc["planted", "within_20ms"] >= 0.8 and s.loc["planted", "start_mae_ms"] < 20
    assert s.loc["planted", "within_50ms"] > s.loc["all", "within_50ms"]
    assert head_overlap(found["heads"], [(2, 1), (0, 0)]) == {"shared": [(2, 1)], "n_shared": 1, "jaccard": 0.5}


def test_accuracy_summary_known_values_and_intervals():
    ref = [Word(" a", 0.0, 0.5), Word(" b", 0.5, 1.0)]
    e1 = timestamp_errors([Word(" a", 0.01, 0.56), Word(" b", 0.6, 1.0)], ref)  # errors 10, 60 / 100, 0 ms
    e2 = timestamp_errors([Word(" a", 0.0, 0.5), Word(" b", 0.5, 1.2)], ref)  # errors 0, 0 / 0, 200 ms
    errs = pd.concat([e1.assign(utterance="u1"), e2.assign(utterance="u2")]).assign(source="x")
    s = accuracy_summary(errs, n_boot=200, seed=1).iloc[0]
    assert s.n_words == 4 and s.n_utterances == 2
    assert s.start_mae_ms == pytest.approx(110 / 4) and s.end_mae_ms == pytest.approx(260 / 4)
    # boundaries within 50 ms: starts 1,0,1,1 and ends 0,1,1,0 -> 5 / 8
    assert s.within_50ms == pytest.approx(5 / 8) and s.within_20ms == pytest.approx(5 / 8)
    assert s.within_100ms == pytest.approx(7 / 8)
    # resampling whole utterances: the interval spans the two utterances' own values
    assert s.start_mae_ms_lo == pytest.approx(0.0) and s.start_mae_ms_hi == pytest.approx(55.0)
    assert s.within_50ms_lo <= s.within_50ms <= s.within_50ms_hi


def test_head_grid_layout():
    toy = _toys()[0]
    errs = passes_errors([toy.as_pass("u")], head_sets(3, 4))
    grid = head_grid(accuracy_summary(errs, n_boot=10))
    assert grid.shape == (3, 4) and grid.loc[2, 1] == np.nanmax(grid.to_numpy())


def test_store_maps_through_the_same_dtw(tmp_path):
    """A store whose attention holds the planted toy and whose SMH is the planted head's map: both time the words."""
    import xarray as xr

    from xattn_utils.analysis.aligner import format_words
    from xattn_utils.analysis.timing_eval import store_errors, store_word_rows
    from xattn_utils.extraction.extract import attention_dataset
    from xattn_utils.extraction.forced import ForcedPass
    from xattn_utils.store import ResultStore

    toy = _toys()[2]
    ca = toy.attention[:, :, toy.rows].numpy()  # (L, H, I, T'): the scored rows, end-of-text last
    n_t = ca.shape[-1]
    fp = ForcedPass(prompt_ids=np.array([1, 2]), token_ids=np.arange(toy.n_words + 1), tokens=toy.pieces() + ["<|e|>"],
                    log_probs=np.log(np.full(toy.n_words + 1, 0.5)), cross_attention=ca,
                    value_norms=np.ones(ca.shape[:2] + (n_t,)), features=np.zeros((4, 2 * n_t)),
                    n_audio_frames=2 * n_t, n_encoder_frames=n_t)
    store = ResultStore(tmp_path / "store")
    store.write("u0", "attention", attention_dataset(
        fp, 2, attrs={"provenance": {"model": {"alignment_heads": [[2, 1]]}}}), key="k")
    smh = xr.Dataset({"saliency": (("token", "enc_frame"), ca[2, 1] * 7.0)})
    store.write("u0", "spes_h", smh, key="k")
    items = pd.DataFrame([{"id": "u0", "word_times_path": str(tmp_path / "u0.json")}])
    (tmp_path / "u0.json").write_text(__import__("json").dumps({"words": toy.ref_words()}))
    s = accuracy_summary(store_errors(store, items), n_boot=10).set_index("source")
    assert set(s.index) == {"attention", "all_heads", "smh"}
    # a second utterance with attention but no map: attention and SMH must still be scored on the same words
    store.write("u1", "attention", attention_dataset(
        fp, 2, attrs={"provenance": {"model": {"alignment_heads": [[0, 0]]}}}), key="k")
    both = pd.concat([items, items.assign(id="u1")], ignore_index=True)
    same = accuracy_summary(store_errors(store, both), n_boot=10).set_index("source")
    assert same.n_words.nunique() == 1 and same.loc["attention", "n_words"] == s.loc["attention", "n_words"]
    ragged = accuracy_summary(store_errors(store, both, same_utterances=False), n_boot=10).set_index("source")
    assert ragged.loc["attention", "n_words"] == 2 * ragged.loc["smh", "n_words"]
    assert s.loc["attention", "within_20ms"] >= 0.8 and s.loc["smh", "within_20ms"] >= 0.8
    rows = store_word_rows(store)
    assert {r["source"] for r in rows} == {"attention", "all_heads", "smh"}
    assert rows[0]["words"][0]["probability"] == pytest.approx(0.5)
    assert format_words(rows, "csv").splitlines()[0] == "file,source,word,start,end,probability"


def test_alignment_vs_agreement_and_calibration_split():
    from xattn_utils.analysis.timing_eval import (
        alignment_vs_agreement,
        split_calibration,
    )
    from xattn_utils.errors import XattnError

    heads = [f"L{l}H{h}" for l in range(2) for h in range(3)]
    summary = pd.DataFrame({"source": heads + ["all"], "within_50ms": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9]})
    agree = pd.DataFrame({
        "level": "dataset", "measure": "pearson",
        "attention": heads * 2 + ["all", "L0H0"], "reference": ["smx"] * 6 + ["smh"] * 6 + ["smx", "smx"],
        "value": [0.1, 0.3, 0.2, 0.4, 0.6, 0.5] + [0.6, 0.5, 0.4, 0.3, 0.2, 0.1] + [0.9, 0.0]})
    agree.loc[13, "level"] = "utterance"  # only dataset rows count
    out = alignment_vs_agreement(summary, agree).set_index("reference")
    assert out.loc["smh", "rho"] == pytest.approx(-1.0) and out.loc["smh", "n_heads"] == 6
    assert out.loc["smx", "rho"] == pytest.approx(1 - 6 * 4 / (6 * 35))  # ranks differ by 1 in two pairs: d² = 4
    # heads are read from the table's columns: norm-based and mixing-composed heads are other entries
    other = pd.DataFrame({"level": "dataset", "measure": "pearson", "reference": "smh",
                          "attention": ["norm:L0H0", "rollout∘L0H1", "rollout[1]∘L1H2"], "value": [0.9, -0.5, 0.7]})
    again = alignment_vs_agreement(summary, pd.concat([agree, other], ignore_index=True)).set_index("reference")
    assert again.loc["smh", "rho"] == pytest.approx(-1.0) and again.loc["smh", "n_heads"] == 6
    items = pd.DataFrame({"id": [f"u{i}" for i in (3, 1, 2, 0)]})
    cal, test = split_calibration(items)
    assert list(cal.id) == ["u0", "u1"] and list(test.id) == ["u2", "u3"]
    with pytest.raises(XattnError, match="both calibration and test"):
        split_calibration(items, calibration=items.head(1))


def test_unseen_items_are_scored_with_the_heads_chosen_on_calibration(bundled_trimmed):
    from xattn_utils.analysis.timing_eval import split_calibration, timestamp_study
    from xattn_utils.data.corpus import study_data

    items = study_data(None, split="test", limit=4)
    _, test = split_calibration(items)
    plain = timestamp_study(bundled_trimmed, items, k_max=3, n_boot=20)
    study = timestamp_study(bundled_trimmed, items, k_max=3, n_boot=20, unseen=test)
    assert study["discovered"] == plain["discovered"]  # held-out items never steer the choice of heads
    assert study["unseen_ids"] == list(test.id)
    # the same items scored as "unseen" give the test split's table: one path, one set of heads
    pd.testing.assert_frame_equal(study["unseen_summary"], study["summary"])
    n_words = sum(len(t.split()) for t in test.transcript)
    assert study["unseen_summary"].set_index("source").loc["all", "n_words"] == n_words
