"""Hearing one SPES occlusion: the cells a mask silences, the input the model then reads, and a waveform like it.

SPES (:mod:`xattn_utils.attribution.spes`) scores thousands of masks without keeping any occluded input. These
functions rebuild mask ``index`` of an SMX plan exactly as :func:`~xattn_utils.attribution.spes.partial_sums` draws
it (same bits, same granularity ``index % G``), so a notebook can show and play what the model heard.

``T_a`` input frames holding audio, ``F`` mel bins, ``T`` input frames of the (possibly padded) features.

The model reads log-mel features, not audio; a log-mel spectrogram has no phase, so no waveform is *exactly* the
occluded input. :func:`occluded_waveform` masks the audio's short-time Fourier transform instead (Whisper's window:
``n_fft`` 400, hop 160, Hann): each FFT bin of a frame is attenuated by the share of its mel-filter weight that falls
on occluded mel bins, and the original phase is kept. Its log-mel is close to the occluded input: fully occluded
frames become silence, occluded bands lose their energy.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import XattnError
from .spes import MaskBits, OcclusionPlan, build_occlusion


def smx_mask(plan: OcclusionPlan, index: int = 0) -> torch.Tensor:
    """``(T_a, F)`` bool: the input cells mask ``index`` of an SMX plan (:func:`~.spes.plan_smx`) occludes."""
    if len(plan.cell_shape) != 2:
        raise XattnError(f"smx_mask needs an SMX plan (cells (T_a, F)), got cells {plan.cell_shape}: use plan_smx")
    if index < 0:
        raise XattnError(f"mask index must be >= 0, got {index}")
    bits = MaskBits(plan.seed, max(plan.n_labels), plan.p).rows(index, index + 1)
    return build_occlusion(plan.labels, bits, index)[0].view(plan.cell_shape).cpu()


def occlude_features(features: torch.Tensor, occluded: torch.Tensor, value: float) -> torch.Tensor:
    """``(F, T)`` features with the ``(T_a, F)`` occluded cells set to ``value`` (frames past ``T_a`` unchanged):
    the input SPES scores for that mask (``value``: the scorer's ``occlusion_value``, the silence floor)."""
    t_a, f = occluded.shape
    if features.shape[0] != f or features.shape[1] < t_a:
        raise XattnError(f"features {tuple(features.shape)} do not hold the mask's {t_a} frames × {f} bins")
    out = features.clone()
    out[:, :t_a] = torch.where(occluded.T.to(features.device), torch.as_tensor(value, dtype=features.dtype),
                               features[:, :t_a])
    return out


def occluded_waveform(audio: np.ndarray, occluded, mel_filters: np.ndarray, hop_length: int = 160,
                      n_fft: int = 400) -> np.ndarray:
    """The audio with the ``(T_a, F)`` occluded log-mel cells removed from its STFT (original phase kept).

    Args:
        audio: ``(S,)`` mono waveform at the model's sample rate.
        occluded: ``(T_a, F)`` bool (or weights in [0, 1]), input frame ``t`` = STFT frame ``t`` (centered at
            ``t · hop_length``, as Whisper's log-mel).
        mel_filters: ``(n_fft // 2 + 1, F)`` the model's mel filterbank (``processor.feature_extractor.mel_filters``).
    Returns: ``(S,)`` float32. Bins no mel filter covers follow the share of the frame's mel bins occluded.
    """
    x = torch.as_tensor(np.asarray(audio, dtype=np.float64))
    fb = torch.as_tensor(np.asarray(mel_filters, dtype=np.float64))  # (n_freq, F)
    occ = torch.as_tensor(np.asarray(occluded, dtype=np.float64))  # (T_a, F)
    if fb.shape != (n_fft // 2 + 1, occ.shape[1]):
        raise XattnError(f"mel filters {tuple(fb.shape)} do not match n_fft={n_fft} and the mask's {occ.shape[1]} "
                         "mel bins: pass the model's processor.feature_extractor.mel_filters")
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    spec = torch.stft(x, n_fft, hop_length, window=window, center=True, pad_mode="reflect", return_complex=True)
    cover = fb.sum(1)  # (n_freq,)
    share = torch.where(cover > 0, (occ @ fb.T) / torch.where(cover > 0, cover, 1.0), occ.mean(1, keepdim=True))
    n = min(occ.shape[0], spec.shape[1])
    gain = torch.ones(spec.shape, dtype=torch.float64)
    gain[:, :n] = 1.0 - share[:n].T
    out = torch.istft(spec * gain, n_fft, hop_length, window=window, center=True, length=x.shape[0])
    return out.numpy().astype(np.float32)
