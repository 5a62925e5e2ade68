"""SLIC superpixels of a spectrogram at several granularities: the segments SPES occludes.

Follows SPES (Fucci et al. 2024; FBK-fairseq ``slic_fbank_dynamic_segments``): the spectrogram of the frames that
hold audio is min–max normalized to [0, 1] and segmented with ``skimage.segmentation.slic`` (one channel,
``compactness`` ~0.1, Gaussian ``sigma`` ~1) once per requested number of segments. With dynamic segments the
requested number scales with duration, as in the reference code::

    n = max(1, round(n_segments * min(n_frames, threshold_duration) / reference_duration))

The reference code has no cap (``threshold_duration=None`` here reproduces it exactly); the cap keeps segments of
long utterances from becoming tiny. SLIC treats the number as a target: the label count it returns may differ.
Padding frames are never segmented: callers pass only the audio frames.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.segmentation import slic

from ..errors import InputError


def n_segments_for(n_frames: int, n_segments: int, reference_duration: int | None = 500,
                   threshold_duration: int | None = 750) -> int:
    """Target number of SLIC segments for an utterance of ``n_frames`` frames (at least 1).

    ``reference_duration=None`` gives a fixed count (``slic_fbank_fixed_segments``).
    """
    if reference_duration is None:
        return max(1, int(n_segments))
    frames = n_frames if threshold_duration is None else min(n_frames, threshold_duration)
    return max(1, round(n_segments * frames / reference_duration))


def slic_segments(spectrogram: np.ndarray | torch.Tensor, n_segments: tuple[int, ...] = (2000, 2500, 3000),
                  compactness: float = 0.1, sigma: float = 1.0, reference_duration: int | None = 500,
                  threshold_duration: int | None = 750) -> np.ndarray:
    """Superpixel label maps of one spectrogram, one per granularity.

    Args:
        spectrogram: (T, F) the frames that hold audio (no padding), any scale.
        n_segments: target segment counts at the reference duration, one per granularity.
    Returns:
        (G, T, F) int64 labels; in each granularity they are contiguous, 0 .. L_g - 1.
    """
    x = spectrogram.detach().float().cpu().numpy() if isinstance(spectrogram, torch.Tensor) else \
        np.asarray(spectrogram, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"cannot segment a spectrogram of shape {x.shape}: expected (frames, features) with "
                         "at least one audio frame; check the utterance is not empty")
    lo, hi = float(x.min()), float(x.max())
    norm = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    maps = []
    for n in n_segments:
        target = n_segments_for(x.shape[0], n, reference_duration, threshold_duration)
        raw = slic(norm, n_segments=target, compactness=compactness, sigma=sigma, channel_axis=None)
        maps.append(np.unique(raw, return_inverse=True)[1].reshape(x.shape))
    return np.stack(maps).astype(np.int64)


def time_segments(n_frames: int, widths: tuple[int, ...] = (1, 2, 4, 8)) -> np.ndarray:
    """Runs of ``k`` consecutive frames as segments, one granularity per width: (G, n_frames) int64 labels."""
    if n_frames <= 0:
        raise InputError(f"cannot segment {n_frames} frames: the utterance holds no audio")
    if any(int(k) < 1 for k in widths):
        raise InputError(f"time segment widths must be >= 1, got {tuple(widths)}")
    t = np.arange(n_frames)
    return np.stack([t // int(k) for k in widths]).astype(np.int64)
