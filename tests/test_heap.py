"""Freed memory reused across SPES passes (glibc, Linux): the real tiny.en's SMX batches stop faulting their pages in,
and the map is the same bit for bit."""
from __future__ import annotations

import resource

import pytest
import torch

from xattn_utils.attribution import heap
from xattn_utils.attribution.spes import MaskBits, SPESConfig, build_occlusion, kl_scores, partial_sums, plan_smx

pytestmark = [pytest.mark.slow, pytest.mark.skipif(heap._mallopt() is None, reason="glibc's mallopt only")]


@pytest.fixture(scope="module")
def plan(bundled_trimmed, speech_dir):
    import soundfile as sf

    from xattn_utils.extraction.forced import Seq2SeqScorer, decode

    audio, _ = sf.read(speech_dir / "utt0.wav", dtype="float32")
    prompt = bundled_trimmed.prompt_ids()
    hyp = decode(bundled_trimmed, bundled_trimmed.features(audio, "padded").values[None], prompt)[0]
    scorer = Seq2SeqScorer(bundled_trimmed, bundled_trimmed.features(audio), prompt, hyp)
    return plan_smx(scorer, SPESConfig(n_masks=64, batch_size=64, precision="fp32", convergence=False))


def _faults(fn) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@torch.inference_mode()
def _plain_passes(plan, start: int, stop: int, batch: int) -> None:
    """The passes of :func:`partial_sums` with glibc's defaults (its log-probabilities alone are over 32 MB)."""
    bits = MaskBits(plan.seed, max(plan.n_labels), plan.p)
    for a in range(start, stop, batch):
        kl_scores(plan.base, plan.perturb(build_occlusion(plan.labels, bits.rows(a, a + batch), a)))


def test_smx_batches_reuse_freed_memory_and_keep_the_map(plan, monkeypatch):
    big = plan.base.numel() * 64 * 4  # bytes of one batch's log-probabilities
    assert big > 32 << 20, big  # over glibc's ceiling for keeping freed memory by default
    partial_sums(plan, 0, 64, 64)  # warm: the heap has grown to a batch's size
    reused = _faults(lambda: partial_sums(plan, 64, 320, 64))  # 4 batches
    plain = _faults(lambda: _plain_passes(plan, 64, 320, 64))
    assert plain > 4 * (big // 4096) // 2, plain  # every batch faults its log-probabilities' pages in again
    assert reused < plain / 4, (reused, plain)
    # only where the memory comes from changes: the same sums bit for bit without the context
    with_heap = partial_sums(plan, 0, 128, 64)
    monkeypatch.setattr(heap, "_mallopt", lambda: None)
    without = partial_sums(plan, 0, 128, 64)
    assert torch.equal(with_heap.numerator, without.numerator) and torch.equal(with_heap.count, without.count)
