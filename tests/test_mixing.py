"""Encoder mixing maps: known answers on hand-built encoders, loop references through the real layers, tiny.en."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from xattn_utils.analysis.composed import composed_maps
from xattn_utils.attribution.mixing import (
    METHODS,
    MixingConfig,
    compose_attention,
    compose_layers,
    encoder_mixing,
    layer_maps,
    mixing_dataset,
    row_normalize,
    trace_encoder,
)
from xattn_utils.errors import XattnError

from tolerances import f32, f64

# _whisper_encoder's defaults: T' = 12 frames, width D = 16, 2 heads of d_h = 8, FFN 2D, 4 mel bins
T_ENC, D, D_H, MELS = 12, 16, 8, 4


def layer_ops(d: int, ffn: int, d_h: int, t_enc: int) -> int:
    """Reductions one residual-stream value passes through in a pre-LN encoder layer: LN1, the q/k/v and output
    projections, LN2 and fc1 (length D each), fc2 (FFN width), the scores (d_h), the softmax normalizer and the
    attention mixing (T' each)."""
    return 5 * d + ffn + d_h + 2 * t_enc


LAYER_OPS = layer_ops(D, 2 * D, D_H, T_ENC)
FRONT_OPS = 3 * MELS + 3 * D  # the two kernel-3 convolutions


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
    # float32 in two summation orders: front end, 2 layers and the final LN; outputs of magnitude max|output|
    torch.testing.assert_close(tr.output, ref.last_hidden_state, rtol=0,
                               atol=f32(n_ops=FRONT_OPS + 2 * LAYER_OPS + D, scale=float(tr.output.abs().max())))
    assert ref.attentions is not None and len(ref.attentions) == 2
    for k, (layer, att) in enumerate(zip(tr.layers, ref.attentions)):
        # softmax: δα ≤ α·2·max|δscore| + normalizer (T'); scores (|s| ≤ 13 in this seeded encoder) inherit the
        # rounding of the front end, k layers, LN1, the q/k projections and the d_h-long dot product
        score_ops = FRONT_OPS + k * LAYER_OPS + 2 * D + D_H
        torch.testing.assert_close(layer.attention, att, atol=f32(n_ops=T_ENC),
                                   rtol=2 * f32(n_ops=score_ops, scale=13.0))
        with torch.no_grad():
            # one layer, same input, two summation orders; residual-stream values ≤ max(|y|, |z|)
            scale = float(torch.maximum(layer.y.abs().max(), layer.z.abs().max()))
            torch.testing.assert_close(layer.z, layer.layer(layer.x, None), rtol=0,
                                       atol=f32(n_ops=LAYER_OPS, scale=scale))


# ---------------------------------------------------------------------------------------- known answers


def test_identity_attention_gives_identity_mixing_and_leaves_ca_unchanged():
    perm = list(range(6))
    enc = _routing_encoder(perm)
    res = encoder_mixing(enc, _features(enc), MixingConfig(chunk=4))
    eye = torch.eye(6)
    # off-diagonal scores are 0 in exact arithmetic; in float32 value zeroing's 1 − cos of two equal width-8
    # vectors rounds in 2 length-8 reductions (ALTI's ‖y‖₁ − ‖y‖₁ in 1, on ‖y‖₁ ≤ 1.8 × its diagonal score).
    # Row normalization puts the 5 off-diagonal errors, over the diagonal score (≥ 0.40 here, vzero), on the diagonal.
    # One layer: undone[-1] is that layer's map, no product.
    tol = f32(n_ops=(6 - 1) * 2 * 8, scale=1 / 0.40)
    for m in METHODS:
        torch.testing.assert_close(res.layers[m][0, 0], eye, atol=tol, rtol=0)
        torch.testing.assert_close(res.undone[m][0, -1], eye, atol=tol, rtol=0)
    ca = np.random.default_rng(0).dirichlet(np.ones(6), size=3)  # (I, T')
    # float32 rollout map: softmax normalizer and row normalization (length-6 sums) on entries ≤ 1; CA rows sum to 1
    np.testing.assert_allclose(compose_attention(ca, res.undone["rollout"][0, -1].double().numpy()), ca,
                               rtol=0, atol=f32(n_ops=2 * 6))
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
    # score gap s²a²/√d ≈ 320: the other α are e^-320, 0 in float32; what rounds is the softmax normalizer and the
    # row normalization (length-6 sums) on entries ≤ 1
    np.testing.assert_allclose(m, want, rtol=0, atol=f32(n_ops=2 * 6))
    # a token attending only to frame 0 (which holds frame 3's content) gets half its mass moved to frame 3
    ca = np.zeros((1, 6))
    ca[0, 0] = 1.0
    np.testing.assert_allclose(compose_attention(ca, m)[0], [0.5, 0, 0, 0.5, 0, 0], rtol=0,
                               atol=f32(n_ops=2 * 6))  # as m
    # every method puts its off-diagonal mass only on the routed frame
    allowed = np.eye(6, dtype=bool)
    allowed[np.arange(6), perm] = True
    for method in METHODS:
        mm = res.layers[method][0, 0].double().numpy()
        # a score that is 0 in exact arithmetic: vzero's 1 − cos of equal width-8 vectors (2 length-8 reductions),
        # over its row's total score (≥ 0.30 here); ALTI's ‖y‖₁ − ‖y‖₁ (1 reduction, ‖y‖₁ ≤ 2.6 × the row total)
        assert np.abs(mm[~allowed]).max() < f32(n_ops=2 * 8, scale=1 / 0.30), method
        assert mm[np.arange(6), perm].min() > 0 or method == "alti", (method, mm)
        # row normalizer (6 terms) and the division
        np.testing.assert_allclose(mm.sum(-1), 1.0, rtol=0, atol=f32(n_ops=6 + 1))


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
        # float64, batched vs per-position forward: each raw score carries a layer's roundings (LAYER_OPS) on its
        # scale (vz: 1 − cos, scale 1; ALTI: ‖y‖₁; norm: the largest norm), divided by its row's total score
        torch.testing.assert_close(got_vz, vz / vz.sum(-1, keepdim=True), rtol=0,
                                   atol=f64(n_ops=LAYER_OPS, scale=1 / float(vz.sum(-1).min())))
        torch.testing.assert_close(got_alti, alti / alti.sum(-1, keepdim=True), rtol=0,
                                   atol=f64(n_ops=LAYER_OPS, scale=float(y.abs().sum(-1).max() / alti.sum(-1).min())))
        torch.testing.assert_close(got_norm, norm / norm.sum(-1, keepdim=True), rtol=0,
                                   atol=f64(n_ops=LAYER_OPS, scale=float((norm.max() / norm.sum(-1).min()).detach())))
        assert float((vz / vz.sum(-1, keepdim=True)).diagonal().mean()) < 0.9  # real mixing, not a near-identity
    # the block size never changes the maps
    # float64, same arithmetic in other batch shapes: the FFN pass and cosine (LAYER_OPS) over the smallest row total
    torch.testing.assert_close(layer_maps(tr, "vzero", MixingConfig(chunk=1)), layer_maps(tr, "vzero"), rtol=0,
                               atol=f64(n_ops=LAYER_OPS, scale=1 / 0.01))  # row totals of raw vzero ≥ 0.011 here


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
    # the same float64 product of the same values: nonnegative length-10 sums, each within 10 eps relative
    np.testing.assert_allclose(out["rollout∘all"], maps["all"] @ full, rtol=f64(n_ops=10))
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
    # parity with the model's encoder: float32 in two summation orders through the front end, every layer and the
    # final LN, on outputs of magnitude max|ref|
    cfg = loaded.model.config
    t_enc, d = tr.output.shape[1], cfg.d_model
    enc_ops = (3 * cfg.num_mel_bins + 3 * d + d + cfg.encoder_layers
               * layer_ops(d, cfg.encoder_ffn_dim, d // cfg.encoder_attention_heads, t_enc))
    assert float((tr.output - ref).abs().max()) < f32(n_ops=enc_ops, scale=float(ref.abs().max()))

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
        # float32, L layers: each map's row normalizer (T' terms) and each product's length-T' sums, entries ≤ 1
        n_l, t_full = full[method].shape[1], full[method].shape[-1]
        np.testing.assert_allclose(mix.undone.sel({"method": method}).values,
                                   full[method][0, :, :t_a, :t_a].numpy(), rtol=0, atol=f32(n_ops=2 * n_l * t_full))
        rows = full[method][0].sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=f32(n_ops=2 * n_l * t_full), rtol=0)
    # encoder mixing is real on tiny.en: the composed maps are far from the identity
    assert float(mix.undone.sel({"method": "rollout"}).values[-1].diagonal().mean()) < 0.5

    maps = utterance_maps(store, "utt1", CompareConfig(per_head=False, mixing=("rollout", "alti"), mixing_depths=True))
    assert {"rollout∘all", "alti∘last_layer", "rollout[2]∘all", "alti∘alignment_heads"} <= set(maps)
    ca = ca_all(att.cross_attention.values)[:-1]
    x = ca @ mix.undone.sel({"method": "rollout"}).values[-1]
    want = normalize_rows(x)
    # float32 here (head mean over L·H, product over T') against the library's float64: nonnegative sums, so
    # |δx| ≤ n·eps·x; through the z-score |δz| ≤ n·eps·(max x + mean x + |z|·rms x) / σ, per row
    z_scale = float(((x.max(1) + x.mean(1) + np.abs(want).max(1) * np.sqrt((x ** 2).mean(1))) / x.std(1)).max())
    np.testing.assert_allclose(maps["rollout∘all"], want,
                               rtol=0, atol=f32(n_ops=att.sizes["layer"] * att.sizes["head"] + t_a, scale=z_scale))
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
    # Pearson of a map with its float32 head mean (6 terms): 1 − r ≈ ½(δ/σ)² with δ that rounding and σ the smallest
    # row std; plus the 1 − 1e-12 clip before Fisher's z
    s = smh.saliency.values
    tol = 0.5 * (f32(n_ops=6, scale=float(np.abs(s).max())) / float(s.std(1).min())) ** 2 + 1e-12
    assert d.loc[("last_layer", "smh"), "value"] == pytest.approx(1.0, abs=tol)
    assert d.loc[("rollout∘last_layer", "smh"), "value"] < 0.999  # composing moved the attention


def test_mixing_gain_is_paired():
    """A composed map that is better by the same amount on every utterance has a gain with a tight interval."""
    import pandas as pd

    from xattn_utils.analysis.composed import mixing_gain

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
    from xattn_utils.analysis.composed import diagonal_average

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


def test_answer_read_from_a_known_table():
    """mixing_answer and the sentences and heuristic built on it, on a dataset table whose values are set by hand."""
    import pandas as pd

    from xattn_utils.analysis.composed import (
        answer_lines,
        best_composed,
        mixing_answer,
        mixing_headline,
        through_mixing_lines,
    )

    values = {"all": 0.30, "rollout[1]∘all": 0.35, "rollout∘all": 0.40, "rollout-blur∘all": 0.32, "alti∘all": 0.50,
              "alti-blur∘all": 0.45, "last_layer": 0.25, "rollout∘last_layer": 0.28, "smh": 0.60, "rollout∘smh": 0.70}
    rows = [{"level": "dataset", "measure": "pearson", "reference": "smx", "attention": a, "value": v,
             "ci_low": v - 0.1, "ci_high": v + 0.1, "n": 5} for a, v in values.items()]
    rows.append({**rows[0], "measure": "spearman", "value": 0.9})  # another measure: not read
    answer = mixing_answer(pd.DataFrame(rows), n_layers=2)
    curve = answer[(answer.attention == "all") & (answer.method == "rollout")]
    assert list(curve.depth) == [0, 1, 2] and curve.value.tolist() == pytest.approx([0.30, 0.35, 0.40])
    assert set(answer.method) == {"rollout", "rollout-blur", "alti", "alti-blur"}
    head = mixing_headline(answer).set_index("attention")
    assert head.loc["all", "CA"] == "0.300 [0.200, 0.400]" and head.loc["all", "alti∘"] == "0.500 [0.400, 0.600]"
    assert answer_lines(answer, ["all"])[:2] == ["Pearson(CA[all], SMX) = 0.300 [0.200, 0.400]",
                                                 "  Pearson(alti∘all, SMX) = 0.500 [0.400, 0.600]"]
    assert through_mixing_lines(answer) == ["Pearson(SMH, SMX) = 0.600 [0.500, 0.700]",
                                            "Pearson(rollout∘SMH, SMX) = 0.700 [0.600, 0.800]"]
    cost = pd.DataFrame({"explanation": ["CA (forced pass)", "CA∘rollout", "CA∘alti", "SPES-X (256 masks)"],
                         "seconds": [0.1, 0.2, 0.5, 10.0]})
    cost["ratio_to_spes"] = cost.seconds / 10.0
    best = best_composed(answer, cost)  # smh∘M (0.70) is not a CA aggregate: left out
    assert (best["best"].method, best["best"].attention, best["best_ca"].attention) == ("alti", "all", "all")
    assert best["ratio_to_spes"] == pytest.approx(0.05) and best["control"].value == pytest.approx(0.45)
    assert "0.0500 x the cost of SPES-X (256 masks)" in best["line"]
