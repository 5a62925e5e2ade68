"""SPES occlusion saliency (Fucci et al. 2024), batched: SM^X (I, T, F) on the input and SM^H (I, T') on the encoder.

Each mask occludes a random half (``p``) of the segments of one granularity; the scorer forced-decodes the
hypothesis under the perturbed input and each token scores KL(original ‖ perturbed) over the full vocabulary.
The relevance of a cell is the mean score of the masks that occluded it::

    map[i, c] = Σ_m score[m, i] · occluded[m, c]  ÷  Σ_m occluded[m, c]          (0 where never occluded)

Accumulation is one GEMM per batch, ``numerator (I, N) += scores (I, B) @ occluded (B, N)``, so memory does not
grow with ``n_masks`` and no (B, I, N) heatmap is ever built (:func:`reference_accumulate` is the explicit
per-mask form, kept to prove the two equal).

Reliability: masks are dealt into two halves, ``half(m) = (m // G) % 2`` (``G`` granularities), so each half holds
every granularity equally and draws its masks independently of the other. The sums are kept per half; the full map
is their merge (no extra forward pass), and the correlation between the two half maps is the split-half reliability
of the full map (:func:`relevance_halves`; Spearman–Brown and disattenuation in :mod:`xattn_utils.analysis.agreement`).

Reproducibility: mask ``m`` uses granularity ``m % G`` and its keep/occlude bits come from a CPU generator seeded by
``(seed, m // CHUNK)``, so a map depends on the seed alone, not on the batch size, the device or the sharding
(:func:`partial_sums` over any split of ``[0, n_masks)``, merged by :func:`merge_partials`, equals one run up to
float summation order). The reference code instead gives the first ``n/G`` masks to granularity 0 and so on;
interleaving gives the same set of masks per granularity (when G divides ``n_masks``) and keeps every running
map (convergence trace, early stop) a mix of all granularities.

Occlusion: SM^X cells take ``scorer.occlusion_value`` (0 in SPES's zero-mean filterbanks; Whisper's log-mel
silence floor); padding frames are never segmented nor occluded and get relevance 0. SM^H sets occluded encoder
frames to 0 (no information), frames past the audio are never occluded.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import XattnError
from .grids import pool_to_encoder_frames
from .heap import reuse_freed_memory
from .scorer import ForcedScorer
from .segmentation import slic_segments, time_segments

CHUNK = 256  # masks per generator seed; fixed so the bits of mask m never depend on how masks are batched
PRECISIONS = ("fp32", "bf16")
# "auto": bf16 where the device multiplies bf16 matrices in hardware (per-token map r >= 0.997 vs fp32 on
# default-corpus utterances of tiny.en and base), fp32 elsewhere (emulated bf16 GEMMs run 4.5x slower than fp32 on an
# AVX512 CPU without BF16: benchmarks/RESULTS.md)
DEFAULT_PRECISION = "auto"


@dataclass(frozen=True)
class SPESConfig:
    """SM^X settings (defaults: the published ``slic_fbank_dynamic_segments`` explanation config).

    Attributes:
        n_masks: masks per utterance (stops earlier with ``tolerance``).
        p: probability that a segment is occluded in a mask.
        n_segments: SLIC target segment counts at ``reference_duration`` frames, one per granularity.
        reference_duration: frames at which ``n_segments`` apply (None: fixed counts).
        threshold_duration: frames above which the count stops growing (None: no cap, as the reference code).
        compactness, sigma: SLIC parameters.
        batch_size: masks per forward pass (changes the map only at float rounding; 16 by measurement,
            benchmarks/RESULTS.md).
        seed: seeds the masks; same seed, same map.
        tolerance: stop early at a checkpoint when the map's split-half reliability (Spearman–Brown of the mean
            per-token Pearson between the two half maps on the comparison grid) reaches ``1 - tolerance``.
        autocast: bfloat16 autocast of the forward passes on CUDA (ignored on CPU).
        convergence: keep the convergence trace (split-half agreement at each checkpoint).
        precision: ``fp32``, or ``bf16``: weights and activations of the encoder and decoder body in bfloat16,
            vocabulary projection, log-softmax and KL in float32 (a scorer with ``at_precision``, as
            :class:`~xattn_utils.extraction.forced.Seq2SeqScorer`; others run as they are); or ``auto`` (default):
            bf16 where the device has bf16 matrix hardware (:func:`native_bf16`), else fp32. bf16 keeps per-token
            map r >= 0.997 against fp32 at equal masks on default-corpus utterances of tiny.en and base. Stores
            record and are keyed by the resolved value (:func:`resolved`).
    """

    n_masks: int = 20000
    p: float = 0.5
    n_segments: tuple[int, ...] = (2000, 2500, 3000)
    reference_duration: int | None = 500
    threshold_duration: int | None = 750
    compactness: float = 0.1
    sigma: float = 1.0
    batch_size: int = 16
    seed: int = 0
    tolerance: float | None = None
    autocast: bool = False
    convergence: bool = True
    precision: str = DEFAULT_PRECISION

    @classmethod
    def published(cls) -> SPESConfig:
        """The paper's settings: 20k masks over SLIC at 2000/2500/3000 segments."""
        return cls()

    @classmethod
    def cpu(cls) -> SPESConfig:
        """Study defaults sized for a CPU: 512 masks over coarser segments (maps converge in fewer masks)."""
        return cls(n_masks=512, n_segments=(250, 500, 1000))


@dataclass(frozen=True)
class SMHConfig:
    """SM^H settings: masks over encoder frames, segments are runs of ``k`` consecutive frames per width ``k``.

    Attributes as :class:`SPESConfig`; ``widths`` replaces the SLIC parameters; ``occlusion``: ``zero`` sets an
    occluded frame's encoder output to 0 (it still takes part in the cross-attention softmax, with a zero key),
    ``remove`` masks it out of every cross-attention softmax (as if deleted; needs a scorer whose
    ``log_probs_from_encoder`` takes ``removed``, as :class:`~xattn_utils.extraction.forced.Seq2SeqScorer` does);
    ``kv_once``: the decoder's cross-attention keys and values of the encoder output are computed once and only
    occluded frames' rows replaced, where the scorer offers ``cross_kv_decoder`` (Whisper; same map to float
    rounding; other scorers run the plain path).
    """

    n_masks: int = 1024
    p: float = 0.5
    widths: tuple[int, ...] = (1, 2, 4, 8)
    occlusion: str = "zero"
    batch_size: int = 64
    seed: int = 0
    tolerance: float | None = None
    autocast: bool = False
    convergence: bool = True
    precision: str = DEFAULT_PRECISION
    kv_once: bool = True

    @classmethod
    def published(cls) -> SMHConfig:
        return cls(n_masks=20000)


@dataclass
class SPESResult:
    """A SPES map.

    Attributes:
        map: (I, T, F) for SM^X or (I, T') for SM^H, zero on padding and on cells no mask occluded.
        n_masks_done: masks accumulated (< n_masks after an early stop).
        convergence: [(k, r)] at k = n/64, n/32, ..., n_done: r = split-half agreement after k masks (mean over
            tokens of the Pearson correlation between the two half maps on the comparison grid); None if off.
        n_labels: segments per granularity.
        halves: (2, *map.shape) the maps of the two halves of the masks (see the module docstring).
    """

    map: torch.Tensor
    n_masks_done: int
    convergence: list[tuple[int, float]] | None
    n_labels: tuple[int, ...]
    halves: torch.Tensor | None = None


@dataclass
class OcclusionPlan:
    """Everything a shard needs to score masks of one utterance (deterministic from scorer and config).

    Attributes:
        labels: (G, N) long segment label of each occludable cell per granularity (N = T_audio·F or T'_audio).
        n_labels: (G,) segments per granularity.
        base: (I, V) log-probs of the unperturbed input.
        perturb: (B, N) bool occlusion -> (B, I, V) log-probs of the perturbed input.
        cell_shape: shape of the occludable cells, (T_audio, F) or (T'_audio,).
        full_len: frames of the full map along its time axis (T or T'), padding included.
    """

    labels: torch.Tensor
    n_labels: tuple[int, ...]
    base: torch.Tensor
    perturb: Callable[[torch.Tensor], torch.Tensor]
    cell_shape: tuple[int, ...]
    full_len: int
    p: float
    seed: int

    @property
    def n_cells(self) -> int:
        return self.labels.shape[1]


@dataclass
class PartialSums:
    """Sums over a set of masks, kept per half: numerator (2, I, N) float64, count (2, N) int64, how many masks."""

    numerator: torch.Tensor
    count: torch.Tensor
    n_masks: int = 0

    @classmethod
    def zeros(cls, n_tokens: int, n_cells: int, device: torch.device | str = "cpu") -> PartialSums:
        return cls(torch.zeros(2, n_tokens, n_cells, dtype=torch.float64, device=device),
                   torch.zeros(2, n_cells, dtype=torch.int64, device=device), 0)

    def add_(self, other: PartialSums) -> PartialSums:
        self.numerator += other.numerator.to(self.numerator.device)
        self.count += other.count.to(self.count.device)
        self.n_masks += other.n_masks
        return self


def merge_partials(parts: list[PartialSums]) -> PartialSums:
    """Sum of shards' partial sums (any order)."""
    if not parts:
        raise XattnError("no partial sums to merge: pass the shards' results of partial_sums")
    out = PartialSums(parts[0].numerator.clone(), parts[0].count.clone(), parts[0].n_masks)
    for part in parts[1:]:
        out.add_(part)
    return out


# ---------------------------------------------------------------- masks


def _chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(chunk)]).generate_state(1, dtype=np.uint64)[0] >> 1)


class MaskBits:
    """Occlusion bits of masks by index: row m is (L,) bool, drawn from the generator of chunk ``m // CHUNK``."""

    def __init__(self, seed: int, n_labels: int, p: float):
        self.seed, self.n_labels, self.p = seed, n_labels, p
        self._chunk: tuple[int, torch.Tensor] | None = None

    def _draw(self, c: int) -> torch.Tensor:
        if self._chunk is None or self._chunk[0] != c:
            g = torch.Generator().manual_seed(_chunk_seed(self.seed, c))
            self._chunk = (c, torch.rand(CHUNK, self.n_labels, generator=g) < self.p)
        return self._chunk[1]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start, L) bool, True = segment occluded."""
        out = []
        for c in range(start // CHUNK, (stop - 1) // CHUNK + 1):
            lo, hi = max(start, c * CHUNK), min(stop, (c + 1) * CHUNK)
            out.append(self._draw(c)[lo - c * CHUNK: hi - c * CHUNK])
        return out[0] if len(out) == 1 else torch.cat(out)


def build_occlusion(labels: torch.Tensor, bits: torch.Tensor, start: int) -> torch.Tensor:
    """Gather segment bits through the label maps.

    Args:
        labels: (G, N) long label maps on the target device.
        bits: (B, L) bool bits of masks ``start .. start + B - 1`` (mask m uses granularity m % G).
    Returns:
        (B, N) bool, True where the cell is occluded.
    """
    g_count, n = labels.shape
    b = bits.shape[0]
    bits = bits.to(labels.device, non_blocking=True)
    occ = torch.empty(b, n, dtype=torch.bool, device=labels.device)
    for g in range(g_count):
        first = (g - start) % g_count
        if first < b:
            occ[first::g_count] = bits[first::g_count][:, labels[g]]
    return occ


# ---------------------------------------------------------------- scoring and accumulation


def kl_scores(base: torch.Tensor, log_probs: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """KL(original ‖ perturbed) per token over the full vocabulary.

    The vocabulary is processed in blocks of ``chunk`` entries so the (B, I, chunk) temporaries stay in cache on a
    CPU (one (B, I, V) temporary is ~40 MB for Whisper at B = 16); the sum is the same to float rounding.

    Args:
        base: (I, V) original log-probs; log_probs: (B, I, V) perturbed log-probs.
    Returns:
        (B, I) float32.
    """
    base = base.float()
    if not bool(torch.isfinite(base).all()):
        return torch.nn.functional.kl_div(log_probs.float(), base.expand_as(log_probs), reduction="none",
                                          log_target=True).sum(-1)
    p = base.exp()
    out = log_probs.new_zeros(log_probs.shape[:2], dtype=torch.float32)
    for v in range(0, base.shape[-1], chunk):  # blocks of the vocabulary, not masks or tokens
        q = log_probs[..., v:v + chunk].float()
        out += (base[:, v:v + chunk] - q).mul_(p[:, v:v + chunk]).sum(-1)
    return out


def mask_halves(start: int, stop: int, n_granularities: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(stop - start,) long: the half (0 or 1) of masks ``start .. stop - 1``, ``(m // G) % 2``."""
    return (torch.arange(start, stop, device=device) // max(1, int(n_granularities))) % 2


def accumulate(sums: PartialSums, scores: torch.Tensor, occluded: torch.Tensor,
               half: torch.Tensor | None = None) -> PartialSums:
    """Add a batch: numerator[h] += scores[half == h]^T @ occluded[half == h], count[h] likewise.

    Args:
        scores: (B, I); occluded: (B, N) bool; half: (B,) 0/1 half of each mask (None: all in half 0).
    """
    n_b, n_i = scores.shape
    half = torch.zeros(n_b, dtype=torch.long, device=scores.device) if half is None else half.to(scores.device)
    sel = torch.stack([half == 0, half == 1], 1).float()  # (B, 2)
    weights = torch.cat([(scores.float()[:, None, :] * sel[:, :, None]).reshape(n_b, 2 * n_i), sel], 1)
    both = weights.T @ occluded.float()  # (2I + 2, N): both halves' numerators, then both counts, in one GEMM
    sums.numerator += both[:2 * n_i].reshape(2, n_i, -1).double()
    sums.count += both[2 * n_i:].round().long()  # exact: integers below 2^24
    sums.n_masks += n_b
    return sums


def reference_accumulate(base: torch.Tensor, log_probs: torch.Tensor, occluded: torch.Tensor,
                         half: torch.Tensor | None = None) -> PartialSums:
    """The FBK accumulator's structure, one mask at a time: an explicit (I, N) heatmap per mask, summed.

    Args:
        base: (I, V); log_probs: (n, I, V); occluded: (n, N) bool; half: (n,) as in :func:`accumulate`.
    """
    sums = PartialSums.zeros(base.shape[0], occluded.shape[1], occluded.device)
    for m in range(occluded.shape[0]):
        h = 0 if half is None else int(half[m])
        q = log_probs[m].float()
        score = (base.float().exp() * (base.float() - q)).sum(-1)  # (I,)
        heat = score[:, None].double() * occluded[m][None, :].double()  # (I, N)
        sums.numerator[h] += heat
        sums.count[h] += occluded[m].long()
        sums.n_masks += 1
    return sums


def _mean_score(numerator: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    count = count.to(torch.float64)
    return torch.where(count > 0, numerator / count.clamp_min(1), 0.0).float()


def relevance(sums: PartialSums) -> torch.Tensor:
    """(I, N) float32 mean score of the masks occluding each cell (both halves); 0 where no mask occluded it."""
    return _mean_score(sums.numerator.sum(0), sums.count.sum(0))


def relevance_halves(sums: PartialSums) -> torch.Tensor:
    """(2, I, N) float32: the map of each half of the masks (each a SPES map from independent masks)."""
    return _mean_score(sums.numerator, sums.count[:, None, :])


def _full_map(plan: OcclusionPlan, flat: torch.Tensor) -> torch.Tensor:
    """(I, N) -> (I, full_len, *rest) with zeros on padding."""
    cells = flat.reshape(flat.shape[0], *plan.cell_shape)
    pad = plan.full_len - plan.cell_shape[0]
    if pad == 0:
        return cells
    return torch.cat([cells, cells.new_zeros(cells.shape[0], pad, *plan.cell_shape[1:])], dim=1)


# ---------------------------------------------------------------- plans


def _autocast(enabled: bool, device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU with bf16 support, or a CPU with
    AVX512-BF16 or AMX (PyTorch's own CPU checks). Elsewhere bf16 GEMMs are emulated and slower than fp32."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(bool(check()) for check in checks if check is not None)
    return False


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``fp32`` or ``bf16``: ``precision`` itself, or for ``auto`` bf16 where :func:`native_bf16` holds."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in PRECISIONS:
        raise XattnError(f"precision {precision!r} is not one of {('auto', *PRECISIONS)}")
    return precision


def resolved(cfg: SPESConfig | SMHConfig, device: str | torch.device) -> SPESConfig | SMHConfig:
    """``cfg`` with its precision resolved on ``device`` (what a store records and is keyed by)."""
    return dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))


def at_precision(scorer: ForcedScorer, precision: str) -> ForcedScorer:
    """``scorer`` in ``precision`` (``auto`` resolved on the scorer's device) through its ``at_precision``; a scorer
    without one (the toy models of the tests) runs in its own precision."""
    precision = resolve_precision(precision, getattr(scorer, "device", "cpu"))
    cast = getattr(scorer, "at_precision", None)
    return scorer if cast is None else cast(precision)


def plan_smx(scorer: ForcedScorer, cfg: SPESConfig) -> OcclusionPlan:
    """SLIC-segment the audio frames and bind the input-space perturbation of ``scorer``."""
    scorer = at_precision(scorer, cfg.precision)
    x = scorer.features  # (F, T)
    n_audio = int(scorer.n_audio_frames)
    dev = x.device
    seg = slic_segments(x[:, :n_audio].T, tuple(cfg.n_segments), cfg.compactness, cfg.sigma,
                        cfg.reference_duration, cfg.threshold_duration)  # (G, T_a, F)
    n_labels = tuple(int(s.max()) + 1 for s in seg)
    labels = torch.from_numpy(seg.reshape(seg.shape[0], -1)).to(dev)
    f_dim, t_full = x.shape
    value = float(scorer.occlusion_value)

    def perturb(occ: torch.Tensor) -> torch.Tensor:
        b = occ.shape[0]
        occ_ft = occ.view(b, n_audio, f_dim).transpose(1, 2)  # (B, F, T_a)
        audio = torch.where(occ_ft, torch.as_tensor(value, dtype=x.dtype, device=dev), x[None, :, :n_audio])
        inputs = audio if n_audio == t_full else torch.cat([audio, x[None, :, n_audio:].expand(b, -1, -1)], -1)
        with _autocast(cfg.autocast, dev):
            return scorer.log_probs(inputs).float()

    with torch.inference_mode():
        base = perturb(torch.zeros(1, labels.shape[1], dtype=torch.bool, device=dev))[0]
    return OcclusionPlan(labels, n_labels, base, perturb, (n_audio, f_dim), t_full, cfg.p, cfg.seed)


def plan_smh(scorer: ForcedScorer, cfg: SMHConfig) -> OcclusionPlan:
    """Encode once and bind the encoder-output perturbation of ``scorer`` (occluded frames set to 0)."""
    scorer = at_precision(scorer, cfg.precision)
    dev = scorer.device
    with torch.inference_mode(), _autocast(cfg.autocast, dev):
        hidden = scorer.encode(scorer.features[None])  # (1, T', D)
    t_enc = hidden.shape[1]
    n_audio = min(t_enc, -(-int(scorer.n_audio_frames) // int(scorer.frames_per_encoder_frame)))
    seg = time_segments(n_audio, tuple(cfg.widths))
    n_labels = tuple(int(s.max()) + 1 for s in seg)
    labels = torch.from_numpy(seg).to(dev)

    if cfg.occlusion not in ("zero", "remove"):
        raise XattnError(f"SMHConfig.occlusion={cfg.occlusion!r}: use 'zero' or 'remove'")
    fast = None
    if cfg.kv_once and hasattr(scorer, "cross_kv_decoder"):
        with torch.inference_mode():
            fast = scorer.cross_kv_decoder(hidden)  # None where the scorer's model has no such path

    def perturb(occ: torch.Tensor) -> torch.Tensor:
        b = occ.shape[0]
        if n_audio < t_enc:
            occ = torch.cat([occ, occ.new_zeros(b, t_enc - n_audio)], 1)
        if fast is not None:
            return fast.log_probs(occ, remove=cfg.occlusion == "remove")
        with _autocast(cfg.autocast, dev):
            if cfg.occlusion == "remove":
                return scorer.log_probs_from_encoder(hidden.expand(b, -1, -1), removed=occ).float()
            return scorer.log_probs_from_encoder(hidden.masked_fill(occ[:, :, None], 0.0)).float()  # (B, T', D)

    with torch.inference_mode():
        base = perturb(torch.zeros(1, n_audio, dtype=torch.bool, device=dev))[0]
    return OcclusionPlan(labels, n_labels, base, perturb, (n_audio,), t_enc, cfg.p, cfg.seed)


# ---------------------------------------------------------------- running


@torch.inference_mode()
def partial_sums(plan: OcclusionPlan, start: int, stop: int, batch_size: int = 64,
                 bar: tqdm | None = None, bits: MaskBits | None = None) -> PartialSums:
    """Sums over masks ``start .. stop - 1``: the shardable unit (merge shards with :func:`merge_partials`).

    The batches reuse freed memory (:func:`~xattn_utils.attribution.heap.reuse_freed_memory`) instead of mapping
    their large tensors afresh each pass."""
    if batch_size < 1:
        raise XattnError(f"batch_size must be >= 1, got {batch_size}")
    bits = bits or MaskBits(plan.seed, max(plan.n_labels), plan.p)
    sums = PartialSums.zeros(plan.base.shape[0], plan.n_cells, plan.base.device)
    n_gran = plan.labels.shape[0]
    with reuse_freed_memory(plan.base.device):
        for a in range(start, stop, batch_size):
            b = min(stop, a + batch_size)
            occ = build_occlusion(plan.labels, bits.rows(a, b), a)
            accumulate(sums, kl_scores(plan.base, plan.perturb(occ)), occ, mask_halves(a, b, n_gran, occ.device))
            if bar is not None:
                bar.update(b - a)
    return sums


def checkpoints(n_masks: int, levels: int = 6) -> list[int]:
    """Mask counts at which the running map is snapshot: n/64, n/32, ..., n (distinct, positive)."""
    return sorted({max(1, n_masks >> j) for j in range(levels, -1, -1)})


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over tokens of the Pearson correlation of two (I, N) maps' rows (token score scales differ a lot,
    so a flattened correlation would mostly measure them and look converged after a few masks)."""
    a = a.double() - a.double().mean(-1, keepdim=True)
    b = b.double() - b.double().mean(-1, keepdim=True)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    r = (a * b).sum(-1) / den
    r = r[den > 0]
    return float(r.mean()) if len(r) else float("nan")


def split_half_r(sums: PartialSums, grid: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Mean per-token Pearson between the two half maps, after ``grid`` ((I, N) -> (I, N'), e.g. pooling to
    encoder frames); NaN while a half is empty."""
    a, b = relevance_halves(sums)
    if grid is not None:
        a, b = grid(a), grid(b)
    return _pearson(a, b)


def run_plan(plan: OcclusionPlan, n_masks: int, batch_size: int, tolerance: float | None = None,
             convergence: bool = True, progress: bool = True, desc: str = "SPES",
             grid: Callable[[torch.Tensor], torch.Tensor] | None = None) -> SPESResult:
    """Accumulate ``n_masks`` masks of a plan checkpoint by checkpoint; optional early stop.

    ``grid`` maps an (I, N) map to the grid the study compares on (SMX: pooled to encoder frames); the convergence
    trace and the early stop measure split-half agreement there.
    """
    if n_masks < 1:
        raise XattnError(f"n_masks must be >= 1, got {n_masks}")
    bits = MaskBits(plan.seed, max(plan.n_labels), plan.p)
    sums = PartialSums.zeros(plan.base.shape[0], plan.n_cells, plan.base.device)
    trace: list[tuple[int, float]] = []
    with tqdm(total=n_masks, desc=desc, unit="mask", disable=not progress) as bar:
        done = 0
        for k in checkpoints(n_masks):
            sums.add_(partial_sums(plan, done, k, batch_size, bar, bits))
            done = k
            if not (convergence or tolerance):
                continue
            r = split_half_r(sums, grid)
            trace.append((k, r))
            if tolerance is not None and np.isfinite(r) and 2 * r / (1 + r) >= 1 - tolerance:
                break
    halves = relevance_halves(sums)
    return SPESResult(_full_map(plan, relevance(sums)), sums.n_masks, trace if convergence else None,
                      plan.n_labels, torch.stack([_full_map(plan, h) for h in halves]))


def spes_smx(scorer: ForcedScorer, cfg: SPESConfig | None = None, progress: bool = True) -> SPESResult:
    """SPES saliency of the input features: map (I, T, F), zeros on padding frames."""
    cfg = cfg or SPESConfig.cpu()
    plan = plan_smx(scorer, cfg)
    k = int(getattr(scorer, "frames_per_encoder_frame", 1))

    def grid(m: torch.Tensor) -> torch.Tensor:  # (I, T_a * F) -> (I, T'_a): the comparison grid
        return pool_to_encoder_frames(m.reshape(m.shape[0], *plan.cell_shape), k, "mean")

    return run_plan(plan, cfg.n_masks, cfg.batch_size, cfg.tolerance, cfg.convergence, progress, "SPES SMX", grid)


def spes_smh(scorer: ForcedScorer, cfg: SMHConfig | None = None, progress: bool = True) -> SPESResult:
    """SPES saliency of the encoder output: map (I, T'), zeros past the audio."""
    cfg = cfg or SMHConfig()
    plan = plan_smh(scorer, cfg)
    return run_plan(plan, cfg.n_masks, cfg.batch_size, cfg.tolerance, cfg.convergence, progress, "SPES SMH")


def shard_ranges(n_masks: int, n_shards: int) -> list[tuple[int, int]]:
    """Split ``[0, n_masks)`` into ``n_shards`` contiguous ranges for :func:`partial_sums`."""
    edges = [round(i * n_masks / n_shards) for i in range(n_shards + 1)]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def map_from_partials(plan: OcclusionPlan, parts: list[PartialSums]) -> torch.Tensor:
    """The full map (as :attr:`SPESResult.map`) from merged shard sums."""
    return _full_map(plan, relevance(merge_partials(parts)))


def halves_from_partials(plan: OcclusionPlan, parts: list[PartialSums]) -> torch.Tensor:
    """The two half maps (as :attr:`SPESResult.halves`) from merged shard sums."""
    return torch.stack([_full_map(plan, h) for h in relevance_halves(merge_partials(parts))])


__all__ = [
    "CHUNK",
    "MaskBits",
    "OcclusionPlan",
    "PartialSums",
    "SMHConfig",
    "SPESConfig",
    "SPESResult",
    "PRECISIONS",
    "accumulate",
    "at_precision",
    "native_bf16",
    "resolve_precision",
    "resolved",
    "build_occlusion",
    "checkpoints",
    "kl_scores",
    "halves_from_partials",
    "map_from_partials",
    "mask_halves",
    "merge_partials",
    "partial_sums",
    "plan_smh",
    "plan_smx",
    "reference_accumulate",
    "relevance",
    "relevance_halves",
    "run_plan",
    "shard_ranges",
    "spes_smh",
    "spes_smx",
    "split_half_r",
]
