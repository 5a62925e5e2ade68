"""Saliency over a store on the real bundled Whisper tiny.en: every method, labels, reproducibility, resume, sanity."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from xattn_utils import open_store
from xattn_utils.attribution.saliency import (
    SaliencyConfig,
    compute_saliency,
    scorer_for,
)
from xattn_utils.attribution.spes import SMHConfig, SPESConfig

from tolerances import measured

pytestmark = pytest.mark.slow


def _cfg(methods=("spes-x", "spes-h", "saliency", "ixg", "ig"), n=32, seed=0):
    return SaliencyConfig(methods=methods,
                          spes=dataclasses.replace(SPESConfig.cpu(), n_masks=n, batch_size=16, seed=seed),
                          smh=dataclasses.replace(SMHConfig(), n_masks=n, batch_size=16, seed=seed), ig_steps=4)


@pytest.fixture(scope="module")
def one_item(speech_dir):
    return pd.DataFrame({"id": ["utt1"], "audio_path": [str(speech_dir / "utt1.wav")]})


@pytest.fixture(scope="module")
def filled_store(bundled_trimmed, one_item, tmp_path_factory):
    out = tmp_path_factory.mktemp("sal")
    report = compute_saliency(bundled_trimmed, one_item, out, _cfg(), progress=False)
    assert report.done == ["utt1"] and not report.failed
    return out


def test_every_method_stored_with_labels(filled_store):
    st = open_store(filled_store)
    assert set(st.kinds("utt1")) == {"attention", "spes_x", "spes_h", "saliency_x", "saliency_h", "ixg_x", "ixg_h",
                                     "ig_x", "ig_h"}
    att = st.load("utt1", "attention")
    n_i, t_enc = att.sizes["token"], att.sizes["enc_frame"]
    smx = st.load("utt1", "spes_x")
    assert smx.saliency.dims == ("token", "frame", "mel")
    assert smx.saliency.shape == (n_i, att.attrs["n_audio_frames"], 80)
    assert list(smx.token_str.values) == list(att.token_str.values)
    assert (smx.saliency.values >= 0).all() and smx.saliency.values.max() > 0
    assert st.load("utt1", "spes_h").saliency.shape == (n_i, t_enc)
    for kind in ("saliency_x", "ixg_x", "ig_x"):
        assert st.load("utt1", kind).signed.shape == (n_i, att.attrs["n_audio_frames"], 80)
    prov = smx.attrs["provenance"]
    assert prov["params"]["n_masks"] == 32 and prov["seed"] == 0 and prov["model"]["input_mode"] == "trimmed"


def test_same_seed_same_maps_and_resume(bundled_trimmed, one_item, filled_store, tmp_path):
    again = compute_saliency(bundled_trimmed, one_item, filled_store, _cfg(), progress=False)
    assert again.skipped == ["utt1"] and again.done == []
    fresh = compute_saliency(bundled_trimmed, one_item, tmp_path, _cfg(("spes-x", "spes-h")), progress=False)
    assert fresh.done == ["utt1"]
    for kind in ("spes_x", "spes_h"):
        np.testing.assert_array_equal(open_store(tmp_path).load("utt1", kind).saliency.values,
                                      open_store(filled_store).load("utt1", kind).saliency.values)
    other = compute_saliency(bundled_trimmed, one_item, tmp_path, _cfg(("spes-h",), seed=1), progress=False)
    assert other.done == ["utt1"]  # a new seed is a new cache key
    assert not np.array_equal(open_store(tmp_path).load("utt1", "spes_h").saliency.values,
                              open_store(filled_store).load("utt1", "spes_h").saliency.values)


def test_integrated_gradients_completeness_on_whisper(filled_store):
    ig = open_store(filled_store).load("utt1", "ig_x")
    # 4 steps is coarse; the gap is still small relative to the log-prob change it explains
    assert np.isfinite(ig.convergence_delta.values).all()


def test_sanity_check_gradients_decorrelate(bundled_trimmed, filled_store, speech_dir):
    from xattn_utils.analysis.sanity import sanity_check
    from xattn_utils.attribution.gradients import attribute_gradients

    audio, _ = sf.read(speech_dir / "utt1.wav", dtype="float32")
    scorer = scorer_for(bundled_trimmed, audio, open_store(filled_store).load("utt1", "attention"))
    explain = lambda s, seed: attribute_gradients(s, "saliency", on="x", token_batch=4).absolute
    same = sanity_check(scorer, explain, parts_list=())
    assert list(same.check) == ["trained"] and same.r.item() == pytest.approx(1.0)  # deterministic: no noise floor
    result = sanity_check(scorer, explain, parts_list=(("encoder", "decoder"),)).set_index("check")
    assert abs(result.loc["encoder+decoder", "ratio"]) < 0.3
    # and the trained model agrees with itself exactly
    with torch.no_grad():
        a, b = explain(scorer, 0), explain(scorer, 1)
    assert torch.allclose(a, b)


def test_removing_encoder_frames_equals_deleting_them(bundled_trimmed, filled_store, speech_dir):
    """SMH's ``remove`` occlusion masks frames out of every cross-attention softmax: the same as cutting them out of
    the encoder output (Whisper's decoder sees encoder positions only through the states themselves)."""
    from xattn_utils.attribution.spes import SMHConfig, spes_smh

    audio, _ = sf.read(speech_dir / "utt1.wav", dtype="float32")
    scorer = scorer_for(bundled_trimmed, audio, open_store(filled_store).load("utt1", "attention"))
    with torch.inference_mode():
        hidden = scorer.encode(scorer.features[None])  # (1, T', D)
        t = hidden.shape[1]
        removed = torch.zeros(2, t, dtype=torch.bool)
        removed[0, 3:9] = True
        removed[1, ::2] = True
        masked = scorer.log_probs_from_encoder(hidden.expand(2, -1, -1), removed=removed)
        # masked softmaxes vs shorter ones through tiny.en's float32 decoder (other kernels and reduction lengths):
        # log-prob differences measured at most 2.3e-5 (1 and 2 threads); ×10
        tol = measured(2.3e-5, margin=10)
        for b in range(2):
            cut = scorer.log_probs_from_encoder(hidden[:, ~removed[b]])
            assert torch.allclose(masked[b], cut[0], rtol=0, atol=tol), (masked[b] - cut[0]).abs().max()
        # an all-False mask may still take the masked kernels: at most the same difference (measured 0)
        assert torch.allclose(scorer.log_probs_from_encoder(hidden, removed=torch.zeros(1, t, dtype=torch.bool)),
                              scorer.log_probs_from_encoder(hidden), rtol=0, atol=tol)
        zeroed = scorer.log_probs_from_encoder(hidden.masked_fill(removed[:1, :, None], 0.0))
        # zeroing is not removing: a difference far above any rounding bound (measured 0.43)
        assert not torch.allclose(zeroed[0], masked[0], atol=1e-3)
    res = spes_smh(scorer, SMHConfig(n_masks=16, batch_size=8, occlusion="remove"), progress=False)
    assert res.map.shape[0] == scorer.n_tokens and torch.isfinite(res.map).all() and res.map.max() > 0


def _cheap():
    return SaliencyConfig(methods=("saliency",), gradient_spaces=("h",))


def test_saliency_explains_the_stored_beam_hypothesis(bundled_trimmed, one_item, tmp_path):
    """``xattn extract --beams 2`` then saliency with default arguments: the beam hypothesis and the attention
    group stay as they were (no greedy re-decode replaces them), and the maps explain that hypothesis."""
    from xattn_utils import DecodeConfig, ExtractConfig, extract_cross_attention

    extract_cross_attention(bundled_trimmed, one_item, tmp_path, ExtractConfig(DecodeConfig(num_beams=2)),
                            progress=False)
    st = open_store(tmp_path)
    before = st.load("utt1", "attention")
    report = compute_saliency(bundled_trimmed, one_item, tmp_path, _cheap(), progress=False)
    after = st.load("utt1", "attention")
    assert report.done == ["utt1"] and not report.failed
    assert after.attrs["cache_key"] == before.attrs["cache_key"]
    assert after.attrs["decoding"]["num_beams"] == 2
    assert list(after.token_id.values) == list(before.token_id.values)
    np.testing.assert_array_equal(after.cross_attention.values, before.cross_attention.values)
    assert list(st.load("utt1", "saliency_h").token_id.values) == list(before.token_id.values)
    # the same options, given explicitly, are fine; a new utterance is extracted with the store's options
    two = pd.DataFrame({"id": ["utt1", "utt2"], "audio_path": [one_item.audio_path[0],
                                                               one_item.audio_path[0].replace("utt1", "utt2")]})
    again = compute_saliency(bundled_trimmed, two, tmp_path, _cheap(), DecodeConfig(num_beams=2), progress=False)
    assert again.skipped == ["utt1"] and again.done == ["utt2"]
    assert st.load("utt2", "attention").attrs["decoding"]["num_beams"] == 2
    assert st.load("utt1", "attention").attrs["cache_key"] == before.attrs["cache_key"]


def test_other_decoding_options_on_a_stored_hypothesis_are_refused(bundled_trimmed, one_item, tmp_path):
    from xattn_utils import (
        DecodeConfig,
        ExtractConfig,
        InputError,
        extract_cross_attention,
    )
    from xattn_utils.attribution.mixing import MixingConfig, compute_mixing

    extract_cross_attention(bundled_trimmed, one_item, tmp_path, ExtractConfig(DecodeConfig(num_beams=2)),
                            progress=False)
    key = open_store(tmp_path).key("utt1", "attention")
    with pytest.raises(InputError, match=r"^utt1: .*num_beams=2.*num_beams=1.*new store") as err:
        compute_saliency(bundled_trimmed, one_item, tmp_path, _cheap(), DecodeConfig(), progress=False)
    assert "pass the same options" in str(err.value)
    with pytest.raises(InputError, match=r"^utt1: .*max_new_tokens=16"):
        compute_mixing(bundled_trimmed, one_item, tmp_path, MixingConfig(methods=("rollout",)),
                       DecodeConfig(num_beams=2, max_new_tokens=16), progress=False)
    st = open_store(tmp_path)
    assert st.key("utt1", "attention") == key and st.kinds("utt1") == ["attention"]  # nothing replaced or added


# ------------------------------------------------------------------------------ a method added in one place
def _head_mean_map(scorer, kind, cfg, attention, progress):
    """A toy method with a known answer: every layer's and head's cross-attention averaged, times ``scale`` (its
    option), on encoder frames — the CA aggregate ``all`` itself, so Pearson(all, toy) is 1."""
    import xarray as xr

    from xattn_utils.attribution.methods import map_coords

    ca = attention.cross_attention.values.astype(np.float64).mean((0, 1))  # (I, T')
    return xr.Dataset({kind.variable: (("token", "enc_frame"), cfg.options["toy"]["scale"] * ca)},
                      coords=map_coords(attention))


def test_a_method_added_to_the_registry_reaches_the_cli_the_run_and_the_table(bundled_trimmed, one_item, tmp_path,
                                                                               monkeypatch, capsys):
    from xattn_utils import maps
    from xattn_utils.analysis.compare import CompareConfig, compare_store
    from xattn_utils.cli import build_parser, main

    toy = maps.Method("toy", "the head-mean attention as a map (a test's toy)", (maps.gradient_kind("toy", "h"),),
                      _head_mean_map, format=1)
    monkeypatch.setattr(maps, "REGISTRY", (*maps.REGISTRY, toy))  # the one place a method is added

    # the command line: a choice, with its help line
    args = build_parser().parse_args(["saliency", "x.wav", "--out", str(tmp_path), "--method", "toy", "ig"])
    assert args.method == ["toy", "ig"]
    with pytest.raises(SystemExit):
        main(["saliency", "--help"])
    assert "toy: the head-mean attention as a map" in " ".join(capsys.readouterr().out.split())

    # the saliency run: stored under its kind, keyed by its option and format
    cfg = SaliencyConfig(methods=("toy",), options={"toy": {"scale": 3.0}})
    report = compute_saliency(bundled_trimmed, one_item, tmp_path, cfg, progress=False)
    assert report.done == ["utt1"] and not report.failed
    st = open_store(tmp_path)
    assert set(st.kinds("utt1")) == {"attention", "toy_h"}
    toy_map, att = st.load("utt1", "toy_h"), st.load("utt1", "attention")
    assert toy_map.attrs["provenance"]["params"] == {"method": "toy", "kind": "toy_h", "scale": 3.0, "format": 1}
    want = 3.0 * att.cross_attention.values.astype(np.float64).mean((0, 1))
    np.testing.assert_array_equal(toy_map.absolute.values, want)
    again = compute_saliency(bundled_trimmed, one_item, tmp_path, cfg, progress=False)
    assert again.skipped == ["utt1"]

    # the agreement table: a reference named by the registry, agreeing perfectly with the CA it is made of
    table = compare_store(st, None, CompareConfig(per_head=False, n_boot=10, measures=("pearson",)), progress=False)
    assert set(table.reference) >= {"toy_h"}
    r = table[(table.level == "utterance") & (table.attention == "all") & (table.reference == "toy_h")]
    # the same head mean in float32 (the analysis) and float64 (the toy) over L·H terms: 1 − r is second order
    assert float(r.value.iloc[0]) == pytest.approx(1.0, abs=1e-6)


def test_items_with_saliency_keeps_the_stored_and_computes_only_when_none_is(bundled_trimmed, one_item, tmp_path):
    from xattn_utils.attribution.saliency import items_with_saliency
    from xattn_utils.store import ResultStore

    items = pd.concat([one_item, pd.DataFrame({"id": ["other"], "audio_path": ["absent.wav"]})], ignore_index=True)
    st = ResultStore(tmp_path)
    st.write("other", "spes_x", xr_stand_in(), key="stand-in")  # stored for one item: nothing is computed
    kept = items_with_saliency(bundled_trimmed, items, tmp_path, _cfg(("spes-x",)), n_missing=1, progress=False)
    assert list(kept.id) == ["other"] and set(st.kinds("other")) == {"spes_x"} and "utt1" not in st.utterances()
    fresh = tmp_path / "fresh"  # stored for none: the first n_missing items get it
    got = items_with_saliency(bundled_trimmed, items, fresh, _cfg(("spes-x",), n=8), n_missing=1, progress=False)
    assert list(got.id) == ["utt1"] and "spes_x" in ResultStore(fresh).kinds("utt1")


def xr_stand_in():
    import xarray as xr

    return xr.Dataset({"saliency": (("token", "frame", "mel"), np.ones((1, 2, 3)))})


def test_auto_precision_is_stored_as_what_was_computed(bundled_trimmed, one_item, filled_store, tmp_path):
    """The default precision ``auto`` never reaches a store: provenance names fp32 or bf16 (bf16 only where this CPU
    has bf16 matrix hardware), and the same config with that precision written out is the same cache key."""
    from xattn_utils.attribution.spes import native_bf16

    assert SPESConfig().precision == SMHConfig().precision == "auto"
    st = open_store(filled_store)
    want = "bf16" if native_bf16("cpu") else "fp32"
    for kind in ("spes_x", "spes_h"):
        assert st.load("utt1", kind).attrs["provenance"]["params"]["precision"] == want
    cfg = _cfg(("spes-x", "spes-h"))
    explicit = dataclasses.replace(cfg, spes=dataclasses.replace(cfg.spes, precision=want),
                                   smh=dataclasses.replace(cfg.smh, precision=want))
    again = compute_saliency(bundled_trimmed, one_item, filled_store, explicit, progress=False)
    assert again.skipped == ["utt1"] and again.done == []
    other = "fp32" if want == "bf16" else "bf16"
    changed = dataclasses.replace(cfg, methods=("spes-h",), smh=dataclasses.replace(cfg.smh, precision=other))
    assert compute_saliency(bundled_trimmed, one_item, tmp_path, changed, progress=False).done == ["utt1"]
    assert open_store(tmp_path).load("utt1", "spes_h").attrs["provenance"]["params"]["precision"] == other
