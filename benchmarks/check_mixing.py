"""Independent recomputation of notebook 06's headline: Pearson(CA[all], SMX) and Pearson(rollout∘all, SMX).

Re-derives everything from the stored arrays and `transformers`' own attention modules with numpy/scipy only
(no xattn_utils.attribution.mixing, no xattn_utils.analysis.agreement, no xattn_utils.attribution.grids): rollout
from each WhisperAttention's weights, SMX averaged over mel and the frames of each encoder frame that are present
(a SPES cell is a mean KL), per-token z-score, flattened per-utterance Pearson (scipy), Fisher-z mean.

    python benchmarks/check_mixing.py RUN_DIR [MODEL]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import pearsonr

from xattn_utils import load_model, open_store
from xattn_utils.data.audio import load_audio
from xattn_utils.data.corpus import study_data


def toeplitz_control(m):
    """The same map averaged along its diagonals (mean weight per offset j - i), rows renormalized: the smoothing
    of M without its dependence on the input (a control for "composing only blurs CA")."""
    n = m.shape[0]
    off = np.subtract.outer(np.arange(n), np.arange(n)) + n - 1
    prof = np.bincount(off.ravel(), m.ravel()) / np.bincount(off.ravel())
    t = prof[off]
    return t / t.sum(1, keepdims=True)


def zscore(m):
    sd = m.std(1, keepdims=True)
    return np.where(sd > 0, (m - m.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1), 0.0)


@torch.no_grad()
def layer_attentions(enc, x):
    """Each layer's attention weights as `transformers`' own WhisperAttention returns them, layer by layer.

    (Not ``enc(x, output_attentions=True)``: on the trimmed encoders, shallow copies sharing their layers, it returned
    stale weights for layers 1-3 once another input length had been run — measured while writing this check.)
    """
    h = torch.nn.functional.gelu(enc.conv2(torch.nn.functional.gelu(enc.conv1(x)))).permute(0, 2, 1)
    h = h + enc.embed_positions.weight[: h.shape[1]]
    out = []
    for layer in enc.layers:
        out.append(layer.self_attn(layer.self_attn_layer_norm(h), output_attentions=True)[1])
        h = layer(h, None)
    assert torch.allclose(enc.layer_norm(h), enc(x).last_hidden_state, atol=1e-4)
    return out


def main(run_dir: str, model: str = "bundled:whisper-tiny.en") -> None:
    run = Path(run_dir)
    st = open_store(run / "store")
    loaded = load_model(model, input_mode="trimmed")
    items = study_data(None, split="test").set_index("id")
    r_ca, r_ro, r_ctrl = [], [], []
    for uid in st.utterances():
        if "mixing" not in st.kinds(uid) or "spes_x" not in st.kinds(uid):
            continue
        att = st.load(uid, "attention")
        t_a = int(att.sizes["enc_frame"])
        x = loaded.features(load_audio(items.loc[uid, "audio_path"])).values[None]
        m = np.eye(x.shape[-1] // 2)
        for a in layer_attentions(loaded.encoder_for(x.shape[-1]), x):  # bottom-up: M = R_L ... R_1
            r = 0.5 * np.eye(m.shape[0]) + 0.5 * a[0].mean(0).double().numpy()
            m = (r / r.sum(1, keepdims=True)) @ m
        m = m[:t_a, :t_a]
        ca = att.cross_attention.values.astype(np.float64).mean((0, 1))[:-1]
        smx = st.load(uid, "spes_x").saliency.values.astype(np.float64).mean(-1)[:-1]
        smx = np.pad(smx, ((0, 0), (0, 2 * t_a - smx.shape[1])), constant_values=np.nan)
        smx = np.nanmean(smx.reshape(smx.shape[0], t_a, 2), -1)  # a ragged last pair: its one frame
        r_ca.append(pearsonr(zscore(ca).ravel(), zscore(smx).ravel())[0])
        r_ro.append(pearsonr(zscore(ca @ m).ravel(), zscore(smx).ravel())[0])
        r_ctrl.append(pearsonr(zscore(ca @ toeplitz_control(m)).ravel(), zscore(smx).ravel())[0])
    fisher = lambda r: float(np.tanh(np.mean(np.arctanh(r))))  # noqa: E731
    print(f"{len(r_ca)} utterances")
    print(f"independent: Pearson(CA[all], SMX) = {fisher(r_ca):.4f}; Pearson(rollout∘all, SMX) = {fisher(r_ro):.4f}")
    gain = np.arctanh(r_ro) - np.arctanh(r_ca)
    print(f"control: Pearson(CA∘Toeplitz(rollout), SMX) = {fisher(r_ctrl):.4f}; utterances where rollout∘all beats CA: "
          f"{int((gain > 0).sum())}/{len(gain)}")
    ans = pd.read_csv(run / "tables" / "06_mixing_answer.csv")
    a = ans[ans.attention == "all"]
    print(f"notebook 06:  Pearson(CA[all], SMX) = {a[a.depth == 0].value.iloc[0]:.4f}; Pearson(rollout∘all, SMX) = "
          f"{a[(a.method == 'rollout') & (a.depth == a.depth.max())].value.iloc[0]:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
