"""Map names and one utterance's maps: the registry's names round-trip for every kind the saliency pipeline writes,
and UtteranceMaps keeps a planted signal through pooling and normalization on an odd frame count."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr

from xattn_utils import maps as registry
from xattn_utils.analysis.compare import CompareConfig, utterance_maps
from xattn_utils.analysis.faithfulness import explanation_available
from xattn_utils.analysis.utterance_maps import (
    MapsConfig,
    UtteranceMaps,
    alignment_heads,
)
from xattn_utils.attribution.grids import normalize_rows
from xattn_utils.attribution.methods import compute_function
from xattn_utils.attribution.saliency import SaliencyConfig, kinds_for
from xattn_utils.errors import XattnError
from xattn_utils.extraction.extract import attention_dataset
from xattn_utils.extraction.forced import ForcedPass
from xattn_utils.store import ResultStore

from tolerances import f32, f64

# what compute_saliency writes (tests/test_saliency.py checks the store holds exactly these after a run)
WRITTEN = {"spes-x": ["spes_x"], "spes-h": ["spes_h"], "saliency": ["saliency_x", "saliency_h"],
           "ixg": ["ixg_x", "ixg_h"], "ig": ["ig_x", "ig_h"]}
ANALYSIS_NAME = {"spes_x": "smx", "spes_h": "smh", "saliency_x": "saliency_x", "saliency_h": "saliency_h",
                 "ixg_x": "ixg_x", "ixg_h": "ixg_h", "ig_x": "ig_x", "ig_h": "ig_h"}


# ------------------------------------------------------------------------------------------------ the registry
def test_every_written_kind_round_trips_method_kind_name():
    assert registry.methods() == tuple(WRITTEN)
    for method, kinds in WRITTEN.items():
        assert kinds_for(method) == kinds
        for kind in kinds:
            mk = registry.by_kind(kind)
            assert mk.name == ANALYSIS_NAME[kind]
            back = registry.by_name(mk.name)
            assert back is mk and back.method == method and back.kind == kind
            assert kind in [m.kind for m in registry.by_method(back.method)]
    assert set(registry.kinds()) == set(ANALYSIS_NAME) and len(set(registry.names())) == len(registry.names())
    # the analysis lists references SPES first, then gradients on X, then on H
    assert registry.names() == ("smx", "smh", "saliency_x", "ixg_x", "ig_x", "saliency_h", "ixg_h", "ig_h")


def test_every_entry_names_a_compute_function_that_resolves():
    for entry in registry.REGISTRY:
        assert callable(compute_function(entry)) and entry.compute.startswith("xattn_utils.attribution.methods.")
    broken = registry.Method("broken", "", (), "xattn_utils.attribution.methods.no_such_function")
    with pytest.raises(XattnError, match="broken.*xattn_utils.maps.REGISTRY"):
        compute_function(broken)


def test_registry_properties_say_how_each_map_is_pooled():
    smx, smh, ig_x, ixg_h = (registry.by_name(n) for n in ("smx", "smh", "ig_x", "ixg_h"))
    assert (smx.space, smx.sampled, smx.additive, smx.pool, smx.variable) == ("x", True, False, "mean", "saliency")
    assert (smh.space, smh.sampled, smh.pool) == ("h", True, "mean")
    assert (ig_x.space, ig_x.sampled, ig_x.additive, ig_x.pool, ig_x.variable) == ("x", False, True, "sum",
                                                                                     "absolute")
    assert (ixg_h.space, ixg_h.pool) == ("h", "sum")
    # the compare defaults are the registry's pools
    cfg = MapsConfig()
    assert all(cfg.pool_for(m.name) == m.pool for m in registry.map_kinds())


def test_gradient_spaces_choose_kinds_and_spes_ignores_them():
    assert kinds_for("ig", ("h",)) == ["ig_h"]
    assert kinds_for("ixg", ("h", "x")) == ["ixg_h", "ixg_x"]
    assert kinds_for("spes-x", ("h",)) == ["spes_x"]
    assert kinds_for("spes-h", ("x",)) == ["spes_h"]


def test_unknown_names_raise_and_list_the_choices():
    with pytest.raises(XattnError, match="spes-x"):
        kinds_for("lrp")
    with pytest.raises(XattnError, match="smx"):
        registry.by_name("spes_x")  # a store kind is not an analysis name
    with pytest.raises(XattnError, match="spes_x"):
        registry.by_kind("smx")
    with pytest.raises(XattnError, match="space"):
        kinds_for("ig", ("z",))
    with pytest.raises(XattnError, match="unknown saliency method"):
        SaliencyConfig(methods=("spes_x",))
    with pytest.raises(XattnError, match="unknown saliency method"):
        SaliencyConfig(options={"lrp": {"epsilon": 0.1}})  # options of a method the registry does not hold


# ------------------------------------------------------------------------------------------------ UtteranceMaps
L, H, K, N_TOK, N_MEL = 2, 3, 2, 6, 8
T_AUDIO = 45  # odd: the last encoder frame covers one input frame
T_ENC = -(-T_AUDIO // K)


def _smooth(rng, n_rows, n_cols, width=5):
    x = rng.normal(size=(n_rows, n_cols + width))
    return np.stack([np.convolve(r, np.ones(width) / width, mode="valid")[:n_cols] for r in x])


@pytest.fixture
def planted(tmp_path):
    """A toy store whose every map carries one planted (I, T') signal: SMX as SPES maps are (a per-token offset plus
    the signal, constant over each encoder frame's input cells), IG on X as amounts (the signal's mass spread
    over the cells present), SMH the signal itself. The end-of-text row is pure noise."""
    rng = np.random.default_rng(3)
    signal = _smooth(rng, N_TOK, T_ENC)  # (I, T') incl. the end-of-text row
    ca = rng.random((L, H, N_TOK, T_ENC)).astype(np.float32)
    ca /= ca.sum(-1, keepdims=True)
    fp = ForcedPass(prompt_ids=np.array([1, 2]), token_ids=np.arange(N_TOK),
                    tokens=[f" w{i}" for i in range(N_TOK - 1)] + ["<|endoftext|>"],
                    log_probs=np.zeros(N_TOK, np.float32), cross_attention=ca,
                    value_norms=np.ones((L, H, T_ENC), np.float32), features=np.zeros((N_MEL, T_AUDIO), np.float32),
                    n_audio_frames=T_AUDIO, n_encoder_frames=T_ENC)
    att = attention_dataset(fp, K, attrs={"provenance": {"model": {"model_id": "toy",
                                                                   "alignment_heads": [[1, 2], [0, 1]]}}})
    st = ResultStore(tmp_path / "store")
    st.write("u", "attention", att, key="a")
    coords = {c: att.coords[c] for c in ("token", "token_id", "token_str")}
    per_cell = np.repeat(signal, K, axis=1)[:, :T_AUDIO]  # (I, T): each input frame holds its encoder frame's value
    offset = 4.0 + np.arange(N_TOK)[:, None, None]
    smx = (offset + per_cell[:, :, None]).repeat(N_MEL, axis=2)
    halves = np.stack([smx + 0.01, smx - 0.01])
    st.write("u", "spes_x", xr.Dataset({"saliency": (("token", "frame", "mel"), smx),
                                        "saliency_half": (("half", "token", "frame", "mel"), halves)}, coords=coords),
             key="x")
    present = np.full(T_ENC, K * N_MEL, dtype=float)
    present[-1] = (T_AUDIO - K * (T_ENC - 1)) * N_MEL  # the ragged group's cells
    mass = 2.0 + signal  # positive amounts per encoder frame
    ig = (np.repeat(mass / present, K, axis=1)[:, :T_AUDIO, None]).repeat(N_MEL, axis=2)
    cells = ("token", "frame", "mel")
    st.write("u", "ig_x", xr.Dataset({"signed": (cells, ig), "absolute": (cells, ig)}, coords=coords), key="g")
    st.write("u", "spes_h", xr.Dataset({"saliency": (("token", "enc_frame"), signal.astype(np.float32))},
                                       coords=coords), key="h")
    return st, signal, mass, ca


def test_from_store_reads_every_map_with_its_frames_and_tokens(planted):
    st, signal, _, ca = planted
    m = UtteranceMaps.from_store(st, "u")
    assert m.tokens == [f" w{i}" for i in range(N_TOK - 1)]  # end-of-text excluded by default
    assert (m.n_audio_frames, m.frames_per_encoder_frame, m.n_frames) == (T_AUDIO, K, T_ENC)
    assert m.encoder_frame_s == pytest.approx(0.02)
    assert list(m.references) == ["smx", "smh", "ig_x"]  # the registry's order
    assert m.references["smx"].shape == (N_TOK - 1, T_AUDIO, N_MEL) and m.references["smh"].shape == (N_TOK - 1, T_ENC)
    assert set(m.halves) == {"smx"}
    # float32 means of nonnegative terms in two orders: L·H terms, then 2 (relative error ≤ n eps on each side)
    np.testing.assert_allclose(m.attention["all"], ca.mean((0, 1))[:-1], rtol=f32(n_ops=2 * L * H))
    np.testing.assert_allclose(m.attention["alignment_heads"], (ca[1, 2] + ca[0, 1])[:-1] / 2, rtol=f32(n_ops=2 * 2))
    assert "L1H2" in m.attention and "norm:all" in m.attention
    assert m.pools == {"smx": "mean", "smh": "mean", "ig_x": "sum"}
    everything = UtteranceMaps.from_store(st, "u", MapsConfig(special="include", per_head=False))
    assert len(everything.tokens) == N_TOK and "L1H2" not in everything.attention


def test_planted_signal_survives_the_grid_and_normalization_with_an_odd_frame_count(planted):
    st, signal, mass, _ = planted
    grid = UtteranceMaps.from_store(st, "u").on_encoder_grid()
    rows = signal[:-1]
    smx_max = 4.0 + N_TOK + float(np.abs(rows).max())  # largest SMX cell
    # SPES cells are means: mean pooling gives offset + signal, the ragged last column included
    # (float64: the cell sums, a mean over K·N_MEL cells and this addition)
    np.testing.assert_allclose(grid.references["smx"], 4.0 + np.arange(N_TOK - 1)[:, None] + rows,
                               rtol=0, atol=f64(n_ops=K * N_MEL + 2, scale=smx_max))
    for half, sign in zip(grid.halves["smx"], (1, -1)):  # ± 0.01 and both grids' means
        np.testing.assert_allclose(half, grid.references["smx"] + sign * 0.01,
                                   rtol=0, atol=f64(n_ops=2 * K * N_MEL + 4, scale=smx_max))
    # gradient cells are amounts: sum pooling gives back each encoder frame's mass, the ragged one too
    # (float64: mass / cells present, then a sum of up to K·N_MEL positive cells)
    np.testing.assert_allclose(grid.references["ig_x"], mass[:-1], rtol=0,
                               atol=f64(n_ops=K * N_MEL + 1, scale=float(mass.max())))
    # SMH was stored in float32: one rounding
    np.testing.assert_allclose(grid.references["smh"], rows, rtol=0, atol=f32(n_ops=1, scale=float(np.abs(rows).max())))
    assert all(a.shape == (N_TOK - 1, T_ENC) for a in (*grid.attention.values(), *grid.references.values()))
    z = grid.normalized()
    assert z.normalization == "zscore"
    # the z-score of x + δ moves by ≤ (|δx| + mean|δx| + |z|·rms δx) / σ per row; the float32 SMH (|δx| ≤ eps·|x|)
    # bounds it, the float64 grids are far below
    want = normalize_rows(rows)
    z_scale = float(((np.abs(rows).max(1) + np.abs(rows).mean(1) + np.abs(want).max(1) * np.sqrt((rows ** 2).mean(1)))
                     / rows.std(1)).max())
    for name in ("smx", "smh", "ig_x"):
        np.testing.assert_allclose(z.references[name], want, rtol=0, atol=f32(n_ops=1, scale=z_scale))
        # float64 row mean and its subtraction (T' terms each) on values ≤ smx_max over the smallest row std
        np.testing.assert_allclose(z.references[name].mean(1), 0,
                                   rtol=0, atol=f64(n_ops=2 * T_ENC, scale=smx_max / float(rows.std(1).min())))
    # the old grid (sum pooling of SPES cells) loses the planted signal in the ragged column
    summed = UtteranceMaps.from_store(st, "u", MapsConfig(pool="sum")).on_encoder_grid().normalized()
    assert np.abs(summed.references["smx"][:, -1] - normalize_rows(rows)[:, -1]).max() > 1.0


def test_utterance_maps_is_the_normalized_grid_as_a_dict(planted):
    st, *_ = planted
    cfg = CompareConfig(normalize="minmax", per_head=False)
    d = utterance_maps(st, "u", cfg)
    m = UtteranceMaps.from_store(st, "u", cfg).on_encoder_grid().normalized("minmax")
    assert list(d) == [*m.attention, *m.references, "n_frames", "tokens", "halves"]
    for name in (*m.attention, *m.references):
        np.testing.assert_array_equal(d[name], (m.attention | m.references)[name])
    assert d["n_frames"] == T_ENC and d["tokens"] == m.tokens and set(d["halves"]) == {"smx"}


def test_alignment_heads_of_a_stored_attention_group(planted):
    st, *_ = planted
    att = st.load("u", "attention")
    assert alignment_heads(att) == [(1, 2), (0, 1)]
    att.attrs["provenance"] = {"model": {"alignment_heads": []}}
    assert alignment_heads(att) is None
    att.attrs.pop("provenance")
    assert alignment_heads(att) is None


def test_faithfulness_names_are_the_registry_names(planted):
    st, *_ = planted
    assert explanation_available(st, "u", "smx") and explanation_available(st, "u", "ig_x")
    assert not explanation_available(st, "u", "ixg_h")
    assert explanation_available(st, "u", "ca:all") and explanation_available(st, "u", "random")
    with pytest.raises(XattnError, match="saliency map name"):
        explanation_available(st, "u", "spes_x")


def test_plot_draws_ca_and_every_reference_per_token(planted):
    st, *_ = planted
    m = UtteranceMaps.from_store(st, "u").on_encoder_grid().normalized()
    fig = m.plot(attention=("all", "last_layer"))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["CA all", "CA last_layer", "SMX", "SMH", "ig_x"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [repr(f"w{i}") for i in range(N_TOK - 1)]
    plt.close(fig)
    fig = UtteranceMaps.from_store(st, "u").plot(references=["smx"])  # pooled for the figure when not yet
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["CA all", "SMX"]
    plt.close(fig)
    with pytest.raises(XattnError, match="no map named"):
        m.plot(references=["ixg_h"])
