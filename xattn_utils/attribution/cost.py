"""What SPES costs: measured masks per second, and the seconds a set of maps should take (the time estimates the
command line and sweeps print before long work).

Rates are one-thread process rates of the bundled Whisper tiny.en on a ~4 s utterance with trimmed input, 20 000
masks at the published segments, measured on a quiet 2-core AVX512 CPU without bf16 hardware (float32, the ``auto``
precision there) while a second worker scored another map (benchmarks/RESULTS.md: SMX 18.8, SMH 104-129 masks/s);
Whisper base costs :data:`MODEL_COST` times as much (``bench_spes.py --throughput``). Padded input
(Whisper's 30 s) is the older measured rate of both maps. Estimates, not promises: a loaded machine is slower.
"""
from __future__ import annotations

# masks per second per one-thread process: (input mode, space) -> rate, Whisper tiny.en
SPES_MASKS_PER_SECOND = {("trimmed", "x"): 19.0, ("trimmed", "h"): 104.0, ("padded", "x"): 1.3, ("padded", "h"): 1.3}
# cost relative to tiny.en per space (the same table: base SMX 7.6 vs 19.3 masks/s, SMH 45 vs 76)
MODEL_COST = {"bundled:whisper-base": {"x": 2.5, "h": 1.7}}


def spes_seconds(n_utterances: int, n_masks: int, n_masks_h: int, methods=("spes-x", "spes-h"),
                 input_mode: str = "trimmed", model: str = "bundled:whisper-tiny.en", processes: int = 1) -> float:
    """Seconds the SPES maps of ``n_utterances`` should take: SMX (``n_masks``) where ``spes-x`` is in ``methods``,
    SMH (``n_masks_h``) where ``spes-h`` is, at :data:`SPES_MASKS_PER_SECOND` times :data:`MODEL_COST`, spread over
    ``processes`` one-thread processes."""
    seconds = 0.0
    for space, method, masks in (("x", "spes-x", n_masks), ("h", "spes-h", n_masks_h)):
        if method in methods:
            rate = SPES_MASKS_PER_SECOND[(input_mode, space)] / MODEL_COST.get(model, {}).get(space, 1.0)
            seconds += n_utterances * masks / rate
    return seconds / max(1, int(processes))


__all__ = ["MODEL_COST", "SPES_MASKS_PER_SECOND", "spes_seconds"]
