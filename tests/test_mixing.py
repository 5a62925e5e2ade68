"""Encoder mixing maps: known answers on hand-built encoders, loop references through the real layers, tiny.en."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from xattn_utils.attribution.mixing import (
    METHODS,
    MixingConfig,
    compose_attention,
    compose_layers,
    composed_maps,
    encoder_mixing,
    layer_maps,
    mixing_dataset,
    row_normalize,
    trace_encoder,
)
from xattn_utils.errors import XattnError


def _whisper_encoder(t_enc=12, d=16, heads=2, layers=2, mels=4, seed=0, scale=0.4):
    """A tiny random Whisper encoder (real `transformers` modules), weights drawn larger than the default init."""
    cfg = WhisperConfig(num_mel_bins=mels, d_model=d, encoder_layers=layers, encoder_attention_heads=heads,
                        encoder_ffn_dim=2 * d, decoder_layers=1, decoder_attention_heads=heads, decoder_ffn_dim=2 * d,
                        max_source_positions=t_enc, max_target_positions=8, vocab_size=40, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(cfg).eval()
    model.config._attn_implementation = "eager"
    enc = model.get_encoder()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif name != "embed_positions.weight":
                p.normal_(0, scale)
    return enc


def _routing_encoder(perm, d=8):
    """One-layer, one-head Whisper encoder whose frame i attends (one-hot) to frame perm[i].

    Convolutions are zero, so frame t's input is its position vector e_t; LN1 maps e_t to a·e_t − c·1, so with
    ``W_Q = s·P`` (P e_i = e_perm[i]) and ``W_K = s·I`` the score of (i, j) is s²a²·[j = perm[i]] + a row constant.
    """
    t = len(perm)
    enc = _whisper_encoder(t_enc=t, d=d, heads=1, layers=1, mels=2, seed=1)
    p = torch.zeros(d, d)
    p[torch.as_tensor(perm), torch.arange(t)] = 1.0
    with torch.no_grad():
        enc.conv1.weight.zero_(), enc.conv1.bias.zero_(), enc.conv2.weight.zero_(), enc.conv2.bias.zero_()
        enc.embed_positions.weight.copy_(torch.eye(t, d))
        layer = enc.layers[0]
        layer.self_attn_layer_norm.weight.fill_(1.0), layer.self_attn_layer_norm.bias.zero_()
        layer.self_attn.q_proj.weight.copy_(10 * p), layer.self_attn.q_proj.bias.zero_()
        layer.self_attn.k_proj.weight.copy_(10 * torch.eye(d))
    return enc


def _features(enc, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, enc.conv1.in_channels, 2 * enc.embed_positions.weight.shape[0], generator=g)


# ---------------------------------------------------------------------------------------- parity with transformers


def test_trace_matches_the_encoder():
    enc = _whisper_encoder()
    x = _features(enc)
    tr = trace_encoder(enc, x)
    with torch.no_grad():
        ref = enc(x, output_attentions=True)
    torch.testing.assert_close(tr.output, ref.last_hidden_state, atol=1e-5, rtol=1e-4)
    assert ref.attentions is not None and len(ref.attentions) == 2
    for layer, att in zip(tr.layers, ref.attentions):
        torch.testing.assert_close(layer.attention, att, atol=1e-6, rtol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(layer.z, layer.layer(layer.x, None), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------- known answers


def test_identity_attention_gives_identity_mixing_and_leaves_ca_unchanged():
    perm = list(range(6))
    enc = _routing_encoder(perm)
    res = encoder_mixing(enc, _features(enc), MixingConfig(chunk=4))
    eye = torch.eye(6)
    for m in METHODS:
        torch.testing.assert_close(res.layers[m][0, 0], eye, atol=1e-6, rtol=0)
        torch.testing.assert_close(res.undone[m][0, -1], eye, atol=1e-6, rtol=0)
    ca = np.random.default_rng(0).dirichlet(np.ones(6), size=3)  # (I, T')
    np.testing.assert_allclose(compose_attention(ca, res.undone["rollout"][0, -1].double().numpy()), ca, atol=1e-6)
    torch.testing.assert_close(compose_attention(torch.as_tensor(ca), torch.eye(6, dtype=torch.float64)),
                               torch.as_tensor(ca))


def test_routing_encoder_moves_ca_mass_under_rollout():
    perm = [3, 0, 5, 1, 2, 4]  # frame i reads frame perm[i]
    enc = _routing_encoder(perm)
    tr = trace_encoder(enc, _features(enc))
    a = tr.layers[0].attention[0, 0]
    assert bool((a[torch.arange(6), torch.as_tensor(perm)] > 0.999).all())
    res = encoder_mixing(enc, _features(enc), MixingConfig(chunk=4))
    m = res.undone["rollout"][0, -1].double().numpy()
    want = 0.5 * np.eye(6)
    want[np.arange(6), perm] += 0.5
    np.testing.assert_allclose(m, want, atol=1e-6)
    # a token attending only to frame 0 (which holds frame 3's content) gets half its mass moved to frame 3
    ca = np.zeros((1, 6))
    ca[0, 0] = 1.0
    np.testing.assert_allclose(compose_attention(ca, m)[0], [0.5, 0, 0, 0.5, 0, 0], atol=1e-6)
    # every method puts its off-diagonal mass only on the routed frame
    allowed = np.eye(6, dtype=bool)
    allowed[np.arange(6), perm] = True
    for method in METHODS:
        mm = res.layers[method][0, 0].double().numpy()
        assert np.abs(mm[~allowed]).max() < 1e-6, method
        assert mm[np.arange(6), perm].min() > 0 or method == "alti", (method, mm)
        np.testing.assert_allclose(mm.sum(-1), 1.0, atol=1e-6)


def test_compose_layers_order():
    rng = np.random.default_rng(0)
    maps = rng.dirichlet(np.ones(5), size=(3, 5))  # (L, T', T'), rows sum to 1
    out = compose_layers(torch.as_tensor(maps)).numpy()
    np.testing.assert_allclose(out[0], maps[2])
    np.testing.assert_allclose(out[1], maps[2] @ maps[1])
    np.testing.assert_allclose(out[2], maps[2] @ maps[1] @ maps[0])
    np.testing.assert_allclose(out.sum(-1), 1.0)
    with pytest.raises(XattnError, match="same encoder frames"):
        compose_attention(np.ones((2, 4)), np.eye(5))
    with pytest.raises(XattnError, match="unknown mixing method"):
        MixingConfig(methods=("rollout", "grad"))
    zero = row_normalize(torch.zeros(1, 3, 3))
    torch.testing.assert_close(zero[0], torch.eye(3))


# ---------------------------------------------------------------------------------------- loop references


def _zeroed_value_outputs(layer, x, j):
    """The real layer's attention-block sum y and output z with position j's value vector zeroed (every head)."""
    def hook(_module, _inp, out):
        out = out.clone()
        out[:, j] = 0.0
        return out

    handle = layer.self_attn.v_proj.register_forward_hook(hook)
    try:
        with torch.no_grad():
            y = x + layer.self_attn(layer.self_attn_layer_norm(x))[0]
            z = layer(x, None)
    finally:
        handle.remove()
    return y, z


def test_batched_methods_equal_per_position_loops():
    enc = _whisper_encoder().double()  # float64: 1 - cos of nearly equal vectors loses digits in float32
    tr = trace_encoder(enc, _features(enc).double(), torch.float64)
    t = tr.output.shape[1]
    for lt, got_vz, got_alti, got_norm in zip(tr.layers, layer_maps(tr, "vzero", MixingConfig(chunk=5))[0],
                                              layer_maps(tr, "alti", MixingConfig(chunk=5))[0],
                                              layer_maps(tr, "normmix")[0]):
        x, y, z = lt.x, lt.y[0], lt.z[0]
        ln2 = lt.layer.final_layer_norm
        s = torch.sqrt(y.var(-1, unbiased=False) + ln2.eps)
        vz, alti, norm = (torch.zeros(t, t, dtype=torch.float64) for _ in range(3))
        for j in range(t):  # the reference loop: one real forward per zeroed position
            y_neg, z_neg = _zeroed_value_outputs(lt.layer, x, j)
            vz[:, j] = 1 - torch.nn.functional.cosine_similarity(z, z_neg[0], dim=-1)
            for i in range(t):
                c = y[i] - y_neg[0, i] + (x[0, i] if i == j else 0.0)  # contribution of j to frame i
                alti[i, j] = torch.clamp(y[i].abs().sum() - (y[i] - c).abs().sum(), min=0)
                norm[i, j] = (ln2.weight * (c - c.mean())).norm() / s[i]
        torch.testing.assert_close(got_vz, vz / vz.sum(-1, keepdim=True), atol=1e-9, rtol=1e-7)
        torch.testing.assert_close(got_alti, alti / alti.sum(-1, keepdim=True), atol=1e-9, rtol=1e-7)
        torch.testing.assert_close(got_norm, norm / norm.sum(-1, keepdim=True), atol=1e-9, rtol=1e-7)
        assert float((vz / vz.sum(-1, keepdim=True)).diagonal().mean()) < 0.9  # real mixing, not a near-identity
    # the block size never changes the maps
    torch.testing.assert_close(layer_maps(tr, "vzero", MixingConfig(chunk=1)), layer_maps(tr, "vzero"),
                               atol=1e-12, rtol=1e-10)


# ---------------------------------------------------------------------------------------- store and comparison


def test_composed_maps_from_a_dataset():
    enc = _whisper_encoder()
    res = encoder_mixing(enc, _features(enc), MixingConfig(methods=("rollout", "alti")))
    ds = mixing_dataset(res, n_frames=10)
    assert ds.undone.shape == (2, 2, 10, 10) and list(ds.depth.values) == [1, 2]
    rng = np.random.default_rng(0)
    maps = {"all": rng.random((4, 10)), "smh": rng.random((4, 10))}
    out = composed_maps(maps, ds, aggregates=("all", "smh", "absent"), depths=True)
    assert set(out) == {"rollout∘all", "alti∘all", "rollout∘smh", "alti∘smh", "rollout[1]∘all", "alti[1]∘all",
                        "rollout[1]∘smh", "alti[1]∘smh"}
    full = res.undone["rollout"][0, -1, :10, :10].double().numpy()
    np.testing.assert_allclose(out["rollout∘all"], maps["all"] @ full, rtol=1e-5)
    with pytest.raises(XattnError, match="not in the store"):
        composed_maps(maps, ds, methods=("vzero",))


# ---------------------------------------------------------------------------------------- bundled Whisper tiny.en


def test_bundled_tiny_en_store_and_compare(bundled_trimmed, speech_dir, tmp_path):
    from xattn_utils.analysis.agreement import ca_all, normalize_rows
    from xattn_utils.analysis.compare import CompareConfig, utterance_maps
    from xattn_utils.attribution.mixing import compute_mixing, loaded_mixing
    from xattn_utils.store import ResultStore

    loaded = bundled_trimmed
    wav = speech_dir / "utt1.wav"
    from xattn_utils.data.audio import load_audio

    feats = loaded.features(load_audio(wav)).values[None]
    tr = trace_encoder(loaded.encoder_for(feats.shape[-1]), feats)
    with torch.no_grad():
        ref = loaded.encode(feats)
    assert float((tr.output - ref).abs().max()) < 1e-3 * float(ref.abs().max())  # parity with the model's encoder

    cfg = MixingConfig(methods=("rollout", "normmix", "alti"))
    store = ResultStore(tmp_path / "store")
    report = compute_mixing(loaded, [wav], store, cfg, progress=False)
    assert report.done == ["utt1"] and not report.failed
    assert compute_mixing(loaded, [wav], store, cfg, progress=False).skipped == ["utt1"]
    mix = store.load("utt1", "mixing")
    att = store.load("utt1", "attention")
    t_a = int(att.sizes["enc_frame"])
    assert mix.undone.shape == (3, 4, t_a, t_a) and (mix.seconds.values > 0).all()
    full = loaded_mixing(loaded, feats, cfg).undone
    for method in cfg.methods:  # stored maps: composed on every frame the encoder ran on, then cut to the audio
        np.testing.assert_allclose(mix.undone.sel({"method": method}).values,
                                   full[method][0, :, :t_a, :t_a].numpy(), atol=1e-6)
        rows = full[method][0].sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-4, rtol=0)
    # encoder mixing is real on tiny.en: the composed maps are far from the identity
    assert float(mix.undone.sel({"method": "rollout"}).values[-1].diagonal().mean()) < 0.5

    maps = utterance_maps(store, "utt1", CompareConfig(per_head=False, mixing=("rollout", "alti"), mixing_depths=True))
    assert {"rollout∘all", "alti∘last_layer", "rollout[2]∘all", "alti∘alignment_heads"} <= set(maps)
    ca = ca_all(att.cross_attention.values)[:-1]
    want = normalize_rows(ca @ mix.undone.sel({"method": "rollout"}).values[-1])
    np.testing.assert_allclose(maps["rollout∘all"], want, atol=1e-5)  # z-scores: values up to ~5
    with pytest.raises(XattnError, match="not in the store"):
        utterance_maps(store, "utt1", CompareConfig(mixing=("vzero",)))

    # the command line: `xattn mixing` stores the maps, `xattn compare --mixing` adds the composed entries
    import pandas as pd
    import xarray as xr

    from xattn_utils.cli import main

    assert main(["mixing", "--input-mode", "trimmed", "--out", str(store.path), "--method", "rollout", "--quiet",
                 str(wav)]) == 0
    assert [str(m) for m in store.load("utt1", "mixing").method.values] == ["rollout"]
    smh = xr.Dataset({"saliency": (("token", "enc_frame"), att.cross_attention.values[-1].mean(0))})
    store.write("utt1", "spes_h", smh, key="stand-in")  # a reference map, so that compare has something to compare
    assert main(["compare", "--store", str(store.path), "--out", str(tmp_path / "tables"), "--no-per-head",
                 "--n-boot", "10", "--mixing", "rollout", "--quiet"]) == 0
    table = pd.read_parquet(tmp_path / "tables" / "agreement.parquet")
    d = table[(table.level == "utterance") & (table.measure == "pearson")].set_index(["attention", "reference"])
    assert d.loc[("last_layer", "smh"), "value"] == pytest.approx(1.0, abs=1e-6)
    assert d.loc[("rollout∘last_layer", "smh"), "value"] < 0.999  # composing moved the attention


def test_mixing_gain_is_paired():
    """A composed map that is better by the same amount on every utterance has a gain with a tight interval."""
    import pandas as pd

    from xattn_utils.attribution.mixing import mixing_gain

    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 0.6, 20)  # utterances differ a lot; the composition adds 0.05 in z to each
    comp = np.tanh(np.arctanh(base) + 0.05)
    rows = [{"level": "utterance", "measure": "pearson", "reference": "smx", "utterance": f"u{i}", "attention": a,
             "value": v} for i in range(20) for a, v in (("all", base[i]), ("rollout∘all", comp[i]),
                                                         ("rollout[1]∘all", base[i]))]
    g = mixing_gain(pd.DataFrame(rows), n_boot=200).set_index(["attention", "method"])
    assert list(g.index) == [("all", "rollout")]
    r = g.loc[("all", "rollout")]
    assert r.gain > 0 and r.ci_low > 0 and r.ci_high - r.ci_low < 0.02 and r.n_utterances == 20
    assert r.ca == pytest.approx(np.tanh(np.arctanh(base).mean()))


def test_diagonal_average_control():
    from xattn_utils.attribution.mixing import diagonal_average

    np.testing.assert_allclose(diagonal_average(np.eye(5)), np.eye(5))
    band = np.eye(5) + 0.5 * np.eye(5, k=1) + 0.25 * np.eye(5, k=-1)  # constant along its diagonals already
    np.testing.assert_allclose(diagonal_average(band), band / band.sum(1, keepdims=True), atol=1e-12)
    spike = np.eye(4)
    spike[0] = [0, 0, 1, 0]  # one row reads two frames ahead; the control spreads that offset over every row
    ctrl = diagonal_average(spike)
    np.testing.assert_allclose(ctrl.sum(1), 1.0)
    assert ctrl[1, 3] > 0 and ctrl[0, 0] > 0 and ctrl[3, 0] == 0
    enc = _whisper_encoder()
    ds = mixing_dataset(encoder_mixing(enc, _features(enc), MixingConfig(methods=("rollout",))), n_frames=12)
    out = composed_maps({"all": np.eye(12)[:3]}, ds, control=True)
    assert set(out) == {"rollout∘all", "rollout-blur∘all"}
    np.testing.assert_allclose(out["rollout-blur∘all"], diagonal_average(ds.undone.values[0, -1])[:3])
