"""Encoder context mixing: how much encoder output frame i draws on encoder input position j, and CA carried back.

Cross-attention points at encoder *output* frames, and each output frame already mixes the whole utterance. A mixing
map ``M ∈ R^{T'×T'}`` (rows: frames after the layer(s), columns: positions before; every row sums to 1) undoes that:
``CA ∘ M = CA @ M`` is each token's attention carried back to the encoder's input positions (the convolutional
front end's frames, 2 input frames each for Whisper), the grid SMX is pooled to.

Methods, per encoder layer, for Whisper's pre-LN layer ``y = x + Attn(LN1(x)); z = y + FFN(LN2(y))``
(``α^h`` the head's attention, ``u^h_j = W_O^h (W_V^h LN1(x_j) + b_V^h)`` its transformed value vectors, and the
contribution of position j to frame i ``C_ij = Σ_h α^h_ij u^h_j + [i = j] x_i``, so ``y_i = Σ_j C_ij + b_O``):

* ``rollout`` — attention rollout with the residual (Abnar & Zuidema 2020): ``r·I + (1 − r)·mean_h α^h``, r = 0.5.
* ``normmix`` — norm-based mixing with residual and layer norm (Kobayashi et al. 2021, "ATTN+RES+LN"): the L2 norm
  of each contribution after the layer norm that reads the residual sum, decomposed linearly with the sum's own
  scale, ``‖γ ⊙ (C_ij − mean(C_ij)) / s_i‖`` with ``s_i = std(y_i)``. Whisper is pre-LN, so that norm is ``LN2``
  (the FFN's input); Kobayashi et al. analysed post-LN BERT, where it is the layer's output norm. Biases (``b_O``,
  ``β``) are not attributed to any position, as in the paper. Computed through per-frame Gram matrices of the heads'
  vectors, so no (T', T', D) tensor is built.
* ``alti`` — ALTI (Ferrando et al. 2022): ``max(0, ‖y_i‖₁ − ‖y_i − C_ij‖₁)`` on the residual stream ``y``
  (pre-LN: the residual sum is not normalized, so no layer norm is decomposed; Ferrando et al. 2023 do the same for
  pre-LN models). Rows are processed in blocks of ``chunk`` frames to bound memory.
* ``vzero`` — value zeroing (Mohebbi et al. 2023): zero the value vector of position j in every head, recompute the
  whole layer (attention output, residual, FFN) for every frame i, score the cosine distance between the original
  and the new output of i. Batched over the zeroed positions: removing ``v_j`` subtracts exactly ``Σ_h α^h_ij u^h_j``
  from the attention output, so a block of ``chunk`` zeroed positions is one (chunk, T', D) FFN pass, never a
  forward per position (:func:`tests.test_mixing` checks it equals the per-position loop through the real layer).

Every per-layer map is row-normalized (rows sum to 1) and composed over layers by matrix products ("rollout" of
each method's maps, as in the papers). ``undone[k-1] = M_L ⋯ M_{L-k+1}``: the top k layers undone, so
``CA @ undone[k-1]`` is attention on the input of layer L−k (``k = L``: on the encoder's input positions).

Shapes: ``B`` batch, ``L`` encoder layers, ``H`` heads, ``T'`` encoder frames (all frames the encoder ran on,
padding included), ``D`` width, ``I`` scored tokens.

This module computes and stores the maps; composing them with the stored cross-attention's aggregates, comparing
and summarizing the answer is analysis: :mod:`xattn_utils.analysis.composed`.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..errors import ModelError, XattnError
from ..provenance import stable_hash
from .per_utterance import Planned, explain_store

METHODS = ("rollout", "normmix", "alti", "vzero")
KIND = "mixing"


@dataclass(frozen=True)
class MixingConfig:
    """Which mixing maps to compute and how (recorded in provenance and in the store's cache key).

    Attributes:
        methods: any of :data:`METHODS`.
        residual: weight of the identity in rollout (Abnar & Zuidema: 0.5).
        chunk: frames per block in ALTI (rows) and value zeroing (zeroed positions); bounds memory
            (about ``chunk · T' · max(D, FFN width)`` floats), does not change the result.
        dtype: computation dtype ("float32" or "float64").
    """

    methods: tuple[str, ...] = METHODS
    residual: float = 0.5
    chunk: int = 32
    dtype: str = "float32"

    def __post_init__(self):
        if not self.methods:
            raise XattnError(f"choose at least one mixing method of {', '.join(METHODS)}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise XattnError(f"unknown mixing method(s) {bad}; choose from {', '.join(METHODS)}")
        if not 0.0 <= self.residual <= 1.0:
            raise XattnError(f"residual weight {self.residual} must lie in [0, 1] (Abnar & Zuidema use 0.5)")
        if self.chunk < 1:
            raise XattnError(f"chunk must be at least 1, not {self.chunk}")


@dataclass
class LayerTrace:
    """What one pre-LN encoder layer computed.

    Attributes:
        x: (B, T', D) the layer's input (residual stream).
        attention: (B, H, T', T') self-attention weights.
        transformed: (B, H, T', D) ``u^h_j = W_O^h (W_V^h LN1(x_j) + b_V^h)``.
        y: (B, T', D) residual stream after the attention block (``x + Σ_j α u + b_O``).
        z: (B, T', D) the layer's output.
        layer: the layer module (its LN2 and FFN are reused by value zeroing and norm-based mixing).
    """

    x: torch.Tensor
    attention: torch.Tensor
    transformed: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    layer: nn.Module


@dataclass
class EncoderTrace:
    """Every layer's :class:`LayerTrace` and the encoder output (B, T', D) after its final layer norm."""

    layers: list[LayerTrace]
    output: torch.Tensor


def _check_whisper_encoder(encoder: nn.Module) -> None:
    needed = ("conv1", "conv2", "embed_positions", "layers", "layer_norm")
    if not all(hasattr(encoder, n) for n in needed):
        raise ModelError(f"mixing maps need a Whisper-style encoder (conv front end, pre-LN layers); got "
                         f"{type(encoder).__name__}. Other families are not supported yet: use a Whisper model")


def _ffn(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """(…, D) residual stream -> (…, D) the layer's FFN branch ``fc2(act(fc1(LN2(y))))``."""
    return layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(y))))


@torch.no_grad()
def trace_encoder(encoder: nn.Module, features: torch.Tensor, dtype: torch.dtype = torch.float32) -> EncoderTrace:
    """Run a Whisper encoder on (B, F, T) features, keeping what the mixing methods need per layer.

    The encoder must take ``T`` input frames (use :meth:`LoadedModel.encoder_for` for trimmed inputs); the result's
    ``output`` equals the encoder's ``last_hidden_state`` up to float rounding.
    """
    _check_whisper_encoder(encoder)
    x = features.to(dtype)
    enc = encoder
    h = nn.functional.gelu(nn.functional.conv1d(x, enc.conv1.weight.to(dtype), enc.conv1.bias.to(dtype),
                                                stride=enc.conv1.stride, padding=enc.conv1.padding))
    h = nn.functional.gelu(nn.functional.conv1d(h, enc.conv2.weight.to(dtype), enc.conv2.bias.to(dtype),
                                                stride=enc.conv2.stride, padding=enc.conv2.padding))
    h = h.permute(0, 2, 1)
    t = h.shape[1]
    if t > enc.embed_positions.weight.shape[0]:
        raise XattnError(f"{t} encoder frames but the encoder has {enc.embed_positions.weight.shape[0]} positions; "
                         "pass the encoder for this input length (LoadedModel.encoder_for)")
    h = h + enc.embed_positions.weight[:t].to(dtype)
    layers = []
    for layer in enc.layers:
        layers.append(_trace_layer(layer, h, dtype))
        h = layers[-1].z
    ln = enc.layer_norm
    out = nn.functional.layer_norm(h, ln.normalized_shape, ln.weight.to(dtype), ln.bias.to(dtype), ln.eps)
    return EncoderTrace(layers, out)


def _trace_layer(layer: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> LayerTrace:
    """(B, T', D) -> one pre-LN layer's :class:`LayerTrace` (Whisper's ``WhisperEncoderLayer``)."""
    if next(layer.parameters()).dtype != dtype:
        layer = _cast(layer, dtype)
    att = layer.self_attn
    n_h, d_h = att.num_heads, att.head_dim
    ln1 = layer.self_attn_layer_norm(x)
    q = (att.q_proj(ln1) * att.scaling).unflatten(-1, (n_h, d_h))  # (B, T', H, d)
    k = att.k_proj(ln1).unflatten(-1, (n_h, d_h))
    v = att.v_proj(ln1).unflatten(-1, (n_h, d_h))
    alpha = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k), dim=-1)  # (B, H, T', T')
    w_o = att.out_proj.weight.unflatten(1, (n_h, d_h))  # (D, H, d)
    u = torch.einsum("bjhd,ehd->bhje", v, w_o)  # (B, H, T', D)
    y = x + torch.einsum("bhij,bhje->bie", alpha, u)
    if att.out_proj.bias is not None:
        y = y + att.out_proj.bias
    z = y + _ffn(layer, y)
    return LayerTrace(x=x, attention=alpha, transformed=u, y=y, z=z, layer=layer)


def _cast(layer: nn.Module, dtype: torch.dtype) -> nn.Module:
    return copy.deepcopy(layer).to(dtype)


# ------------------------------------------------------------------------------------------------ per-layer maps


def row_normalize(m: torch.Tensor) -> torch.Tensor:
    """(…, T', T') nonnegative scores -> rows summing to 1 (an all-zero row becomes the identity row)."""
    tot = m.sum(-1, keepdim=True)
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device).expand_as(m)
    return torch.where(tot > 0, m / tot.clamp_min(torch.finfo(m.dtype).tiny), eye)


def rollout_layer(attention: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention with the residual (Abnar & Zuidema 2020): (B, H, T', T') -> (B, T', T') ``r·I + (1−r)·mean_h α``."""
    a = attention.mean(1)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return row_normalize(residual * eye + (1.0 - residual) * a)


def _diagonal_contribution(tr: LayerTrace) -> torch.Tensor:
    """(B, T', D) ``C_ii = Σ_h α^h_ii u^h_i + x_i``."""
    diag = torch.diagonal(tr.attention, dim1=-2, dim2=-1)  # (B, H, T')
    return torch.einsum("bhi,bhie->bie", diag, tr.transformed) + tr.x


def normmix_layer(tr: LayerTrace) -> torch.Tensor:
    """Norm-based mixing with residual and layer norm (Kobayashi et al. 2021): LayerTrace -> (B, T', T').

    ``N_ij = ‖γ ⊙ (C_ij − mean C_ij)‖ / s_i`` with LN2's gain γ and ``s_i = sqrt(var(y_i) + eps)``; rows normalized.
    Off-diagonal norms come from the Gram matrix of each position's per-head vectors (no (T', T', D) tensor).
    """
    ln = tr.layer.final_layer_norm
    gamma = ln.weight
    s = torch.sqrt(tr.y.var(-1, unbiased=False) + ln.eps)  # (B, T')

    def project(v: torch.Tensor) -> torch.Tensor:
        return gamma * (v - v.mean(-1, keepdim=True))

    w = project(tr.transformed)  # (B, H, T', D)
    gram = torch.einsum("bhjd,bkjd->bjhk", w, w)  # (B, T', H, H)
    sq = torch.einsum("bhij,bjhk,bkij->bij", tr.attention, gram, tr.attention)
    norms = sq.clamp_min(0).sqrt() / s[:, :, None]
    diag = project(_diagonal_contribution(tr)).norm(dim=-1) / s  # (B, T')
    norms = torch.diagonal_scatter(norms, diag, dim1=-2, dim2=-1)
    return row_normalize(norms)


def alti_layer(tr: LayerTrace, chunk: int = 32) -> torch.Tensor:
    """ALTI (Ferrando et al. 2022): LayerTrace -> (B, T', T') ``max(0, ‖y_i‖₁ − ‖y_i − C_ij‖₁)``, rows normalized.

    Rows are computed in blocks of ``chunk`` frames, each one batched (chunk, T', D) tensor.
    """
    b, t, _ = tr.y.shape
    y_norm = tr.y.abs().sum(-1)  # (B, T')
    diag = _diagonal_contribution(tr)
    out = tr.y.new_empty(b, t, t)
    for lo in range(0, t, chunk):  # blocks of rows (memory), not single frames
        hi = min(t, lo + chunk)
        c = torch.einsum("bhij,bhje->bije", tr.attention[:, :, lo:hi], tr.transformed)  # (B, c, T', D)
        rows = torch.arange(lo, hi, device=c.device)
        c[:, rows - lo, rows] = diag[:, lo:hi]
        dist = (tr.y[:, lo:hi, None, :] - c).abs().sum(-1)  # (B, c, T')
        out[:, lo:hi] = (y_norm[:, lo:hi, None] - dist).clamp_min(0)
    return row_normalize(out)


def value_zeroing_layer(tr: LayerTrace, chunk: int = 32) -> torch.Tensor:
    """Value zeroing (Mohebbi et al. 2023): LayerTrace -> (B, T', T') cosine distance of frame i's layer output when
    position j's value vector is zeroed in every head; rows normalized.

    Zeroing ``v_j`` removes ``Σ_h α^h_ij u^h_j`` from every frame's attention output, so a block of ``chunk`` zeroed
    positions is one batched (B, chunk, T', D) pass through the residual and the FFN.
    """
    b, t, _ = tr.y.shape
    out = tr.y.new_empty(b, t, t)
    for lo in range(0, t, chunk):  # blocks of zeroed positions (memory), not single frames
        hi = min(t, lo + chunk)
        removed = torch.einsum("bhij,bhje->bjie", tr.attention[..., lo:hi], tr.transformed[:, :, lo:hi])
        y_neg = tr.y[:, None] - removed  # (B, c, T', D): row [., j - lo] has v_j zeroed
        z_neg = y_neg + _ffn(tr.layer, y_neg)
        cos = nn.functional.cosine_similarity(z_neg, tr.z[:, None], dim=-1)  # (B, c, T')
        out[:, :, lo:hi] = (1.0 - cos).clamp_min(0).transpose(1, 2)
    return row_normalize(out)


@torch.no_grad()
def layer_maps(trace: EncoderTrace, method: str, cfg: MixingConfig | None = None) -> torch.Tensor:
    """One method's per-layer mixing maps: (B, L, T', T'), rows summing to 1."""
    cfg = cfg or MixingConfig()
    if method == "rollout":
        maps = [rollout_layer(tr.attention, cfg.residual) for tr in trace.layers]
    elif method == "normmix":
        maps = [normmix_layer(tr) for tr in trace.layers]
    elif method == "alti":
        maps = [alti_layer(tr, cfg.chunk) for tr in trace.layers]
    elif method == "vzero":
        maps = [value_zeroing_layer(tr, cfg.chunk) for tr in trace.layers]
    else:
        raise XattnError(f"unknown mixing method {method!r}; choose from {', '.join(METHODS)}")
    return torch.stack(maps, dim=1)


def compose_layers(maps: torch.Tensor) -> torch.Tensor:
    """(…, L, T', T') per-layer maps -> (…, L, T', T') top-down products: entry k-1 is ``M_L ⋯ M_{L-k+1}``.

    Entry ``L - 1`` maps encoder output frames onto the encoder's input positions.
    """
    out = [maps[..., -1, :, :]]
    for layer in range(maps.shape[-3] - 2, -1, -1):  # over layers (few), not frames
        out.append(out[-1] @ maps[..., layer, :, :])
    return torch.stack(out, dim=-3)


def compose_attention(attention, mixing):
    """CA∘M: ``(…, I, T')`` attention (any aggregate) and a ``(T', T')`` mixing map -> ``(…, I, T')`` = CA @ M.

    Works on numpy arrays and torch tensors. The identity map leaves CA unchanged; a row of M holding position j
    moves the attention a token gave to frame i onto j.
    """
    if mixing.shape[-1] != mixing.shape[-2] or attention.shape[-1] != mixing.shape[-2]:
        raise XattnError(f"cannot compose attention of shape {tuple(attention.shape)} with a mixing map of shape "
                         f"{tuple(mixing.shape)}: both must cover the same encoder frames")
    return attention @ mixing


# ------------------------------------------------------------------------------------------------ models and stores


@dataclass
class MixingResult:
    """Mixing maps of one batch.

    Attributes:
        layers: method -> (B, L, T', T') per-layer maps.
        undone: method -> (B, L, T', T') top-down compositions (:func:`compose_layers`).
        seconds: method -> wall seconds to compute it (the shared trace's time is under ``"trace"``).
    """

    layers: dict[str, torch.Tensor]
    undone: dict[str, torch.Tensor]
    seconds: dict[str, float]


def encoder_mixing(encoder: nn.Module, features: torch.Tensor, cfg: MixingConfig | None = None) -> MixingResult:
    """Every configured method's mixing maps for (B, F, T) features through a Whisper encoder (any device)."""
    cfg = cfg or MixingConfig()
    dtype = getattr(torch, cfg.dtype)
    t0 = time.perf_counter()
    trace = trace_encoder(encoder, features, dtype)
    seconds = {"trace": time.perf_counter() - t0}
    layers, undone = {}, {}
    with torch.no_grad():
        for method in cfg.methods:
            t0 = time.perf_counter()
            layers[method] = layer_maps(trace, method, cfg)
            undone[method] = compose_layers(layers[method])
            if layers[method].device.type == "cuda":
                torch.cuda.synchronize()
            seconds[method] = time.perf_counter() - t0
    return MixingResult(layers, undone, seconds)


def loaded_mixing(loaded, features: torch.Tensor, cfg: MixingConfig | None = None) -> MixingResult:
    """:func:`encoder_mixing` for a :class:`~xattn_utils.models.loader.LoadedModel` on (B, F, T) features of its
    input mode."""
    if not loaded.is_whisper:
        raise ModelError(f"model {loaded.model_id!r} ({loaded.family}): mixing maps are implemented for Whisper "
                         "encoders only; use a Whisper model")
    return encoder_mixing(loaded.encoder_for(features.shape[-1]), features.to(loaded.device), cfg)


def mixing_dataset(result: MixingResult, n_frames: int, index: int = 0, attrs: dict | None = None) -> xr.Dataset:
    """One utterance of a :class:`MixingResult` as a labeled Dataset, cut to its ``n_frames`` audio frames.

    Variables ``layer_map`` (method, layer, enc_frame, source) and ``undone`` (method, depth, enc_frame, source),
    depth k = number of top encoder layers undone (1..L). Maps are composed on every frame the encoder ran on, then
    cut, so rows of the cut maps may sum to slightly less than 1 (mass on padding frames).
    """
    methods = list(result.layers)
    lay = np.stack([result.layers[m][index, :, :n_frames, :n_frames].float().cpu().numpy() for m in methods])
    und = np.stack([result.undone[m][index, :, :n_frames, :n_frames].float().cpu().numpy() for m in methods])
    n_l = lay.shape[1]
    ds = xr.Dataset(
        {"layer_map": (("method", "layer", "enc_frame", "source"), lay),
         "undone": (("method", "depth", "enc_frame", "source"), und),
         "seconds": (("method",), np.array([result.seconds[m] for m in methods], dtype=np.float64))},
        coords={"method": np.array(methods, dtype=object), "layer": np.arange(n_l), "depth": np.arange(1, n_l + 1),
                "enc_frame": np.arange(n_frames), "source": np.arange(n_frames)},
        attrs={"trace_seconds": float(result.seconds.get("trace", 0.0)), **(attrs or {})})
    return ds


def compute_mixing(loaded, data, out, cfg: MixingConfig | None = None, decoding=None, progress: bool = True):
    """Mixing maps for every item, stored as kind ``mixing`` beside its cross-attention.

    Items without an ``attention`` group are extracted first, with ``decoding`` (a
    :class:`~xattn_utils.extraction.extract.DecodeConfig`) or, when None, the store's decoding options; a stored
    hypothesis is never replaced (see :func:`~xattn_utils.attribution.per_utterance.explain_store`). The cache key
    hashes the model, the input mode, the audio and ``cfg``; finished groups are skipped. A failing item is recorded
    in the store's ``errors.json`` and the run goes on.
    Returns a :class:`~xattn_utils.extraction.extract.RunReport`.
    """
    cfg = cfg or MixingConfig()

    def compute(audio, attention) -> xr.Dataset:
        feats = loaded.features(audio)
        res = loaded_mixing(loaded, feats.values[None], cfg)
        return mixing_dataset(res, int(attention.sizes["enc_frame"]),
                              attrs={"n_encoder_frames_run": feats.values.shape[-1] // loaded.frames_per_encoder_frame})

    def plan(uid, audio, digest, attention):
        key = stable_hash(KIND, loaded.weights_sha256, loaded.input_mode, loaded.trim_quantum, digest, asdict(cfg))
        yield Planned(KIND, key, {"mixing": cfg}, lambda: compute(audio, attention))

    return explain_store(loaded, data, out, plan, KIND, decoding, desc="mixing", progress=progress)


__all__ = ["METHODS", "KIND", "MixingConfig", "LayerTrace", "EncoderTrace", "MixingResult", "trace_encoder",
           "row_normalize", "rollout_layer", "normmix_layer", "alti_layer", "value_zeroing_layer", "layer_maps",
           "compose_layers", "compose_attention", "encoder_mixing", "loaded_mixing", "mixing_dataset",
           "compute_mixing"]
