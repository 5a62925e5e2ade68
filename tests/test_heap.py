"""Freed memory reused across SPES passes (glibc, Linux): the real tiny.en's SMX batches stop faulting their pages in,
and the map is the same bit for bit. Page faults are counted in fresh processes: glibc's state outlives a test."""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import resource

import pytest
import torch

from xattn_utils.attribution import heap

pytestmark = [pytest.mark.slow, pytest.mark.skipif(heap._mallopt() is None, reason="glibc's mallopt only")]


def _in_fresh_process(wav: str, keep_heap: bool):
    """(bytes of one batch's log-probabilities, page faults of 4 SMX batches after a warm-up one, their sums)."""
    from xattn_utils.attribution.spes import SPESConfig, partial_sums, plan_smx
    from xattn_utils.extraction.forced import Seq2SeqScorer, decode
    from xattn_utils.models.loader import load_model

    torch.set_num_threads(1)
    if not keep_heap:
        heap._mallopt = lambda: None
    import soundfile as sf

    loaded = load_model("bundled:whisper-tiny.en", "trimmed")
    audio, _ = sf.read(wav, dtype="float32")
    prompt = loaded.prompt_ids()
    hyp = decode(loaded, loaded.features(audio, "padded").values[None], prompt)[0]
    plan = plan_smx(Seq2SeqScorer(loaded, loaded.features(audio), prompt, hyp),
                    SPESConfig(n_masks=64, batch_size=64, precision="fp32", convergence=False))
    partial_sums(plan, 0, 64, 64)  # warm-up batch
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    sums = partial_sums(plan, 64, 320, 64)  # 4 batches
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return plan.base.numel() * 64 * 4, faults, sums.numerator, sums.count


def test_smx_batches_reuse_freed_memory_and_keep_the_map(bundled_trimmed, speech_dir):
    ctx = multiprocessing.get_context("spawn")
    out = {}
    for keep in (False, True):
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            out[keep] = pool.submit(_in_fresh_process, str(speech_dir / "utt0.wav"), keep).result()
    big, plain, num_plain, count_plain = out[False]
    _, reused, num_kept, count_kept = out[True]
    assert big > 32 << 20, big  # over glibc's ceiling for keeping freed memory by default
    assert plain > 4 * (big // 4096) // 2, plain  # every batch faults its log-probabilities' pages in again
    assert reused < plain / 4, (reused, plain)
    # only where the memory comes from changes: the same sums bit for bit
    assert torch.equal(num_plain, num_kept) and torch.equal(count_plain, count_kept)
