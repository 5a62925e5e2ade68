"""Putting maps on one grid: pooling input-frame maps to encoder frames and per-token normalization.

``I`` tokens, ``T`` input frames, ``F`` features, ``T'`` encoder frames, ``k`` input frames per encoder frame
(Whisper's convolutional front end: 2), ``T' = ceil(T / k)``.

What a pooled cell should be depends on what a map's cells are:

* a SPES cell is a **mean** KL (the mean score of the masks that occluded it): relevance is not additive, so an
  encoder frame gets the **mean** over the input cells it covers that are present (``pool="mean"``). Summing SPES
  cells instead makes a ragged last group (odd ``T``: one input frame instead of two) half the size of every other
  column, and per-token min-max scaling then turns that single column into the whole signal.
* a gradient attribution cell is an **amount** (Input×Gradient and IG sum to the output change): ``pool="sum"``
  adds the cells present in each group.
* ``pool="max"``: 2-D max pooling over each ``k × F`` block (a summary of Papi et al. 2025 reports its best with
  max pooling).

Normalization per token row (``normalize_rows``): ``zscore`` (zero mean, unit population std) is robust to one
outlier column and makes the flattened (utterance-level) Pearson equal to the mean per-token Pearson; ``minmax`` to
[0, 1]; ``sum`` to unit mass; ``none``. Constant rows become zeros.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import XattnError

POOLS = ("mean", "sum", "max")
NORMALIZATIONS = ("zscore", "zscore_map", "minmax", "sum", "none")


def pool_to_encoder_frames(m, k: int, pool: str = "mean", magnitude: bool = False):
    """Input-frame map ``(I, T, F)`` (or ``(I, T)``) -> encoder-frame map ``(I, T')``, ``T' = ceil(T / k)``.

    Args:
        m: numpy array or torch tensor (any device); the result is of the same kind.
        k: input frames per encoder frame.
        pool: ``mean`` over the cells present in each group (SPES), ``sum`` of them (additive attributions) or
            ``max`` (2-D max pooling over each ``k × F`` block). A ragged last group pools only its present cells.
        magnitude: pool ``|m|`` (signed gradient maps, whose signs would otherwise cancel).
    """
    if pool not in POOLS:
        raise XattnError(f"pool={pool!r}: use one of {', '.join(POOLS)}")
    k = int(k)
    if k < 1 or m.ndim not in (2, 3):
        raise XattnError(f"pooling expects an (I, T, F) or (I, T) map and k >= 1, got shape {tuple(m.shape)} and "
                         f"k={k}")
    is_np = not isinstance(m, torch.Tensor)
    x = torch.from_numpy(np.asarray(m, dtype=np.float64)) if is_np else m
    x = x.abs() if magnitude else x
    if x.ndim == 2:
        x = x[..., None]
    n_i, t, f = x.shape
    pad = (-t) % k
    groups = (t + pad) // k
    if pool == "max":
        x = torch.nn.functional.pad(x, (0, 0, 0, pad), value=float("-inf"))
        out = x.reshape(n_i, groups, k * f).amax(-1)
    else:
        total = torch.nn.functional.pad(x, (0, 0, 0, pad)).reshape(n_i, groups, k * f).sum(-1)
        if pool == "sum":
            out = total
        else:
            present = torch.full((groups,), float(k * f), dtype=x.dtype, device=x.device)
            if pad:
                present[-1] = float((k - pad) * f)
            out = total / present
    return out.numpy() if is_np else out


def normalize_rows(m, how: str = "zscore"):
    """Per-token normalization of an ``(I, ...)`` map (numpy float64 result).

    ``zscore``: zero mean and unit population std per row; ``zscore_map``: the same over the whole map (one mean
    and std: the paper's mean-variance normalization of a map, which keeps each token's offset); ``minmax``: [0, 1]
    per row; ``sum``: unit mass per row (of magnitudes); ``none``: unchanged. A constant row (map) becomes zeros.
    """
    x = (m.detach().to("cpu", torch.float64).numpy() if isinstance(m, torch.Tensor)
         else np.asarray(m, dtype=np.float64))
    if how == "none":
        return x
    flat = x.reshape(x.shape[0], -1)
    if how == "zscore_map":
        mu, sd = flat.mean(), flat.std()
        out = (flat - mu) / sd if sd > 1e-12 * max(1.0, abs(mu)) else np.zeros_like(flat)
    elif how == "zscore":
        mu, sd = flat.mean(1, keepdims=True), flat.std(1, keepdims=True)
        ok = sd > 1e-12 * np.maximum(1.0, np.abs(mu))
        out = np.divide(flat - mu, sd, out=np.zeros_like(flat), where=ok)
    elif how == "minmax":
        lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
        out = np.divide(flat - lo, hi - lo, out=np.zeros_like(flat), where=(hi - lo) > 0)
    elif how == "sum":
        tot = np.abs(flat).sum(1, keepdims=True)
        out = np.divide(flat, tot, out=np.zeros_like(flat), where=tot > 0)
    else:
        raise XattnError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, not {how!r}")
    return out.reshape(x.shape)


def encoder_grid(m, k: int, n_frames: int, pool: str = "mean", normalize: str = "zscore", magnitude: bool = False,
                 rows: slice = slice(None)) -> np.ndarray:
    """The comparison grid in one call: pool (when ``m`` is on input frames) -> cut to ``n_frames`` audio encoder
    frames -> keep ``rows`` -> normalize per row. ``m``: ``(I, T, F)`` input map or ``(I, T')`` encoder map;
    returns ``(I_rows, n_frames)`` float64."""
    x = pool_to_encoder_frames(m, k, pool, magnitude) if m.ndim == 3 else (abs(m) if magnitude else m)
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.shape[1] < n_frames:
        raise XattnError(f"map has {x.shape[1]} encoder frames, fewer than the {n_frames} holding audio")
    return normalize_rows(x[rows, :n_frames], normalize)
