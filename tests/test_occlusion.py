"""One SPES mask rebuilt for listening: the same cells SPES occludes, the same input it scores, and a waveform."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from tolerances import f64


@pytest.fixture(scope="module")
def smx_plan(bundled_trimmed, speech_dir):
    from xattn_utils.attribution.spes import SPESConfig, plan_smx
    from xattn_utils.extraction.forced import Seq2SeqScorer

    audio, _ = sf.read(speech_dir / "utt1.wav", dtype="float32")
    tok = bundled_trimmed.processor.tokenizer
    hyp = tok(" seven small birds", add_special_tokens=False).input_ids
    scorer = Seq2SeqScorer(bundled_trimmed, bundled_trimmed.features(audio), bundled_trimmed.prompt_ids(), hyp)
    cfg = dataclasses.replace(SPESConfig.cpu(), seed=3, precision="fp32")  # bit-equal to a plain forward pass
    return audio, scorer, plan_smx(scorer, cfg)


@pytest.mark.parametrize("index", [0, 1, 5])
def test_the_rebuilt_mask_is_the_input_spes_scores(smx_plan, index):
    from xattn_utils.attribution.occlusion import occlude_features, smx_mask
    from xattn_utils.attribution.spes import MaskBits, build_occlusion

    _, scorer, plan = smx_plan
    occ = smx_mask(plan, index)
    assert occ.shape == plan.cell_shape and 0 < occ.float().mean() < 1  # a random share of the cells
    # the bits partial_sums draws for a batch starting at 0 hold this mask at row `index`
    batch = build_occlusion(plan.labels, MaskBits(plan.seed, max(plan.n_labels), plan.p).rows(0, 8), 0)
    assert torch.equal(batch[index].view(plan.cell_shape), occ)
    with torch.inference_mode():
        scored = plan.perturb(occ.reshape(1, -1))[0]
        rebuilt = scorer.log_probs(occlude_features(scorer.features, occ, scorer.occlusion_value)[None])[0]
    assert torch.equal(scored, rebuilt)  # the same input through the same kernels: the same bits


def test_waveform_round_trip_and_silence(smx_plan, bundled_trimmed):
    from xattn_utils.attribution.occlusion import occluded_waveform

    audio, scorer, plan = smx_plan
    fe = bundled_trimmed.processor.feature_extractor
    t_a, n_mels = plan.cell_shape
    keep = occluded_waveform(audio, np.zeros((t_a, n_mels), bool), fe.mel_filters)
    # STFT and inverse STFT in float64 (n_fft = 400 point FFTs each way, a window sum per sample), then float32
    assert np.abs(keep - audio).max() <= 2 ** -24 * np.abs(audio).max() + f64(4 * 400, np.abs(audio).max())
    occ = np.zeros((t_a, n_mels), bool)
    occ[20:60] = True  # frames 20..59 fully occluded: samples only those frames' windows cover become silence
    gone = occluded_waveform(audio, occ, fe.mel_filters)
    hop, half = 160, 200
    inside = slice(20 * hop + half, 59 * hop - half)
    assert np.abs(gone[inside]).max() <= f64(4 * 400, np.abs(audio).max())  # rounding of zeroed frames only
    outside = slice(60 * hop + half, None)
    assert np.abs(gone[outside] - audio[outside]).max() <= 2 ** -24 * np.abs(audio).max() + f64(
        4 * 400, np.abs(audio).max())  # untouched frames: the round trip above
