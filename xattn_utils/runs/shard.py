"""SPES of one utterance spread over Dask workers: each worker scores a share of the masks, the driver adds the sums.

The SPES map is a ratio of two sums over masks (:mod:`xattn_utils.attribution.spes`), and the bits of mask ``m``
depend on the seed and ``m`` alone, so the masks of one utterance can be split into shards, scored anywhere and
merged::

    from dask.distributed import Client, LocalCluster
    recipe = recipe_from_store(store, "utt1", "bundled:whisper-tiny.en", "trimmed", "data/utt1.wav")
    cfg = SPESConfig.cpu()
    with LocalCluster(n_workers=4, threads_per_worker=1) as cluster, Client(cluster) as client:
        res = spes_sharded(recipe, cfg, client)          # res.map equals spes_smx(recipe(), cfg).map

Each task rebuilds the scorer from a picklable zero-argument recipe (:class:`ScorerRecipe`, or any picklable callable
returning a :class:`~xattn_utils.attribution.scorer.ForcedScorer`), rebuilds the occlusion plan (deterministic given the
scorer and config), runs :func:`~xattn_utils.attribution.spes.partial_sums` over its masks and returns numerators and
counts as CPU tensors; the driver merges them with :func:`~xattn_utils.attribution.spes.merge_partials`. The driver
never loads the model.

Identical maps: shards are cut on the batch grid of :func:`~xattn_utils.attribution.spes.run_plan` (its checkpoints,
then steps of ``batch_size``), so every forward pass sees exactly the batch it sees in
:func:`~xattn_utils.attribution.spes.spes_smx` / :func:`~xattn_utils.attribution.spes.spes_smh`, and every per-batch
float32 GEMM is the same. Only the order in which the float64 per-batch sums are added changes with the number of
shards; these sums are exact unless a cell's contributions span more than roughly 29 binary orders of magnitude, and any
residue is ~1e-16 relative, far below the float32 of the map. So the map equals the single-process one bit for bit on a
given machine and build (a BLAS whose float32 results depend on its thread count could differ at float32 rounding level
between processes).

Per-process caches (the only module state; safe to share between worker threads): :func:`cached_model` keeps up
to 4 loaded models (``_load_cached``, keyed by ``(name, input_mode, device, trim_quantum)``), so several shards or
utterances on one worker load the model once; ``_cached_plan`` keeps the last 2 occlusion plans, keyed by
``(recipe, space, config)``, so a worker scoring several shards of one utterance segments and encodes it once.
Clear them with ``_load_cached.cache_clear()`` / ``_cached_plan.cache_clear()``.

Without Dask, :func:`spes_processes` runs the same shards as N one-thread processes on this machine (a long
map, e.g. the paper's 20 000 masks, on a loaded multi-core machine) and merges them the same way.

Not supported here: early stopping (``tolerance``) and the convergence trace, which need the checkpoints in
sequence; the result has ``convergence=None`` and always scores all ``n_masks`` masks.
"""
from __future__ import annotations

import functools
import hashlib
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..attribution.scorer import ForcedScorer
from ..attribution.spes import (
    OcclusionPlan,
    PartialSums,
    SMHConfig,
    SPESConfig,
    SPESResult,
    checkpoints,
    halves_from_partials,
    map_from_partials,
    merge_partials,
    partial_sums,
    plan_smh,
    plan_smx,
)
from ..data.audio import load_utterance_audio
from ..errors import XattnError
from ..extraction.extract import KIND as ATTENTION
from ..extraction.forced import Seq2SeqScorer
from ..models.loader import LoadedModel, load_model
from ..store import ResultStore

SPACES = ("x", "h")


# ---------------------------------------------------------------- recipes (what a worker rebuilds)


def cached_model(name: str, input_mode: str, device: str = "cpu", trim_quantum: int = 100) -> LoadedModel:
    """:func:`~xattn_utils.models.loader.load_model`, once per process and key (per-process cache, see module docs)."""
    return _load_cached(str(name), str(input_mode), str(device), int(trim_quantum))


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, input_mode: str, device: str, trim_quantum: int) -> LoadedModel:
    return load_model(name, input_mode=input_mode, device=device, trim_quantum=trim_quantum)


@dataclass(frozen=True)
class ScorerRecipe:
    """How to rebuild the forced scorer of one stored hypothesis in any process (picklable, hashable).

    Attributes:
        model: model name for :func:`~xattn_utils.models.loader.load_model` (e.g. ``bundled:whisper-tiny.en``).
        input_mode: ``padded`` or ``trimmed``.
        audio_path: the utterance's audio file, readable from every worker.
        prompt_ids: (P,) forced prompt ids.
        hypothesis_ids: (N,) hypothesis ids, without end-of-text (the scorer appends it: I = N + 1 positions).
        audio_sha256: when given, every worker checks the file it reads against it.
        device: torch device the worker scores on (results come back on the CPU either way).
        trim_quantum: as :func:`~xattn_utils.models.loader.load_model`.
    """

    model: str
    input_mode: str
    audio_path: str
    prompt_ids: tuple[int, ...]
    hypothesis_ids: tuple[int, ...]
    audio_sha256: str | None = None
    device: str = "cpu"
    trim_quantum: int = 100

    def __call__(self) -> Seq2SeqScorer:

        audio, _ = load_utterance_audio({"id": Path(self.audio_path).stem, "audio_path": self.audio_path,
                                         "sha256": self.audio_sha256})  # the audio that was explained, checked
        loaded = cached_model(self.model, self.input_mode, self.device, self.trim_quantum)
        return Seq2SeqScorer(loaded, loaded.features(audio), list(self.prompt_ids), list(self.hypothesis_ids))


def recipe_from_store(store, uid: str, model: str, input_mode: str, audio_path: str | Path,
                      device: str = "cpu") -> ScorerRecipe:
    """The recipe of the hypothesis stored in ``uid``'s ``attention`` group (as :func:`saliency.scorer_for`).

    Args:
        store: a :class:`~xattn_utils.store.ResultStore` or its folder.
        audio_path: made absolute, so workers with another working directory find it.
    The audio checksum and trim quantum recorded in the group's provenance, when present, go into the recipe.
    """

    store = store if isinstance(store, ResultStore) else ResultStore(store)
    attention = store.load(uid, ATTENTION)
    prov = attention.attrs.get("provenance")
    prov = prov if isinstance(prov, dict) else {}
    digest = (prov.get("data") or {}).get("sha256")
    quantum = (prov.get("model") or {}).get("trim_quantum", 100)
    return ScorerRecipe(model=model, input_mode=input_mode, audio_path=str(Path(audio_path).resolve()),
                        prompt_ids=tuple(int(t) for t in attention.prompt_ids.values),
                        hypothesis_ids=tuple(int(t) for t in attention.token_id.values[:-1]),  # drop end-of-text
                        audio_sha256=digest if isinstance(digest, str) else None, device=device,
                        trim_quantum=int(quantum))


# ---------------------------------------------------------------- shards on the batch grid


def batch_grid(n_masks: int, batch_size: int) -> list[tuple[int, int]]:
    """The batches :func:`~xattn_utils.attribution.spes.run_plan` scores, in order: each checkpoint span in steps of
    ``batch_size``. Returns [(start, stop)] covering ``[0, n_masks)``."""
    out, done = [], 0
    for k in checkpoints(n_masks):
        out += [(a, min(k, a + batch_size)) for a in range(done, k, batch_size)]
        done = k
    return out


def _runs(batches: list[tuple[int, int]], batch_size: int) -> list[tuple[int, int]]:
    """Join consecutive batches into ranges that :func:`partial_sums` re-batches identically (a range may only
    continue past a batch that was full, i.e. not past a checkpoint that cut one short)."""
    runs: list[list[int]] = []
    for a, b in batches:
        if runs and runs[-1][1] == a and (a - runs[-1][0]) % batch_size == 0:
            runs[-1][1] = b
        else:
            runs.append([a, b])
    return [(a, b) for a, b in runs]


def grid_shards(n_masks: int, batch_size: int, n_shards: int) -> list[list[tuple[int, int]]]:
    """Split the batch grid into at most ``n_shards`` contiguous, balanced shards (empty ones dropped).

    Returns one list of mask ranges per shard, each range a ``partial_sums(plan, a, b, batch_size)`` call that
    reproduces the single run's batches.
    """
    if n_masks < 1 or batch_size < 1 or n_shards < 1:
        raise XattnError(f"n_masks, batch_size and n_shards must be >= 1, got {n_masks}, {batch_size}, {n_shards}")
    grid = batch_grid(n_masks, batch_size)
    owner = [min(n_shards - 1, (a + b) * n_shards // (2 * n_masks)) for a, b in grid]  # by each batch's middle
    shards = [[ab for ab, s in zip(grid, owner) if s == i] for i in range(n_shards)]
    return [_runs(s, batch_size) for s in shards if s]


# ---------------------------------------------------------------- worker side


@dataclass
class ShardResult:
    """What a worker sends back (all on the CPU).

    Attributes:
        sums: numerator (2, I, N) float64, count (2, N) int64 over the shard's masks, per half.
        cell_shape, full_len, n_labels: the plan's geometry (to build the full map without the model).
        plan_digest: sha256 of the plan's labels and base log-probs: equal on every worker, or the plans differ.
    """

    sums: PartialSums
    cell_shape: tuple[int, ...]
    full_len: int
    n_labels: tuple[int, ...]
    plan_digest: str


def _digest(plan: OcclusionPlan) -> str:
    h = hashlib.sha256()
    for t in (plan.labels, plan.base):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def build_plan(make_scorer: Callable[[], ForcedScorer], space: str, cfg: SPESConfig | SMHConfig) -> OcclusionPlan:
    """The occlusion plan of a freshly built scorer in ``space`` (x: input features, h: encoder output)."""
    scorer = make_scorer()
    return plan_smx(scorer, cfg) if space == "x" else plan_smh(scorer, cfg)


@functools.lru_cache(maxsize=2)
def _cached_plan(make_scorer, space: str, cfg) -> OcclusionPlan:
    """:func:`build_plan` once per process and (recipe, space, config) (per-process cache, see module docs)."""
    return build_plan(make_scorer, space, cfg)


def _plan_for(make_scorer, space: str, cfg) -> OcclusionPlan:
    try:
        hash(make_scorer)
    except TypeError:  # an unhashable recipe still works, uncached
        return build_plan(make_scorer, space, cfg)
    return _cached_plan(make_scorer, space, cfg)


def score_shard(make_scorer: Callable[[], ForcedScorer], space: str, cfg: SPESConfig | SMHConfig,
                ranges: list[tuple[int, int]]) -> ShardResult:
    """One task: the sums over the masks of ``ranges`` (see :func:`grid_shards`), moved to the CPU."""
    plan = _plan_for(make_scorer, space, cfg)
    sums = merge_partials([partial_sums(plan, a, b, cfg.batch_size) for a, b in ranges])
    cpu = PartialSums(sums.numerator.cpu(), sums.count.cpu(), sums.n_masks)
    return ShardResult(cpu, tuple(plan.cell_shape), int(plan.full_len), tuple(plan.n_labels), _digest(plan))


# ---------------------------------------------------------------- driver side


@dataclass(frozen=True)
class _Geometry:
    """The part of an :class:`OcclusionPlan` that :func:`map_from_partials` reads."""

    cell_shape: tuple[int, ...]
    full_len: int


def merge_shards(results: list[ShardResult]) -> tuple[torch.Tensor, PartialSums]:
    """Check the shards scored the same plan and merge them. Returns the full map (as ``SPESResult.map``, on the
    CPU) and the merged sums."""
    if not results:
        raise XattnError("no shard results to merge")
    first = results[0]
    for r in results[1:]:
        if (r.plan_digest, r.cell_shape, r.full_len) != (first.plan_digest, first.cell_shape, first.full_len):
            raise XattnError("shards were scored with different occlusion plans (labels or base log-probs differ): "
                             "every worker must rebuild the same scorer (same model, audio, hypothesis and device)")
    parts = [r.sums for r in results]
    return map_from_partials(_Geometry(first.cell_shape, first.full_len), parts), merge_partials(parts)


def _check_config(space: str, cfg):
    if space not in SPACES:
        raise XattnError(f"space must be 'x' (SM^X) or 'h' (SM^H), not {space!r}")
    cfg = cfg if cfg is not None else (SPESConfig.cpu() if space == "x" else SMHConfig())
    want = SPESConfig if space == "x" else SMHConfig
    if not isinstance(cfg, want):
        raise XattnError(f"space {space!r} takes a {want.__name__}, got {type(cfg).__name__}")
    if cfg.tolerance is not None:
        raise XattnError("early stopping (tolerance) needs the checkpoints in sequence and is not supported when "
                         "sharding; set tolerance=None (all n_masks masks are scored)")
    return cfg


def spes_sharded(make_scorer: Callable[[], ForcedScorer], cfg: SPESConfig | SMHConfig | None, client,
                 n_shards: int | None = None, space: str = "x") -> SPESResult:
    """SPES of one utterance with its masks spread over the workers of a Dask ``client``.

    Args:
        make_scorer: picklable zero-argument callable building the scorer on a worker (e.g. :class:`ScorerRecipe`).
        cfg: :class:`SPESConfig` for ``space="x"``, :class:`SMHConfig` for ``"h"`` (None: the defaults of
            :func:`spes_smx` / :func:`spes_smh`); ``tolerance`` must be None.
        client: a ``dask.distributed.Client``.
        n_shards: tasks to split the masks into (default: the number of workers); fewer when there are fewer
            batches than shards.
    Returns:
        :class:`SPESResult` on the CPU: map (I, T, F) or (I, T') equal to the single-process one for the same seed,
        ``n_masks_done = n_masks``, ``convergence = None``.
    """
    cfg = _check_config(space, cfg)
    if n_shards is None:
        n_shards = len(client.nthreads())
        if n_shards < 1:
            raise XattnError("the Dask client has no workers; start a cluster first or pass n_shards")
    shards = grid_shards(cfg.n_masks, cfg.batch_size, n_shards)
    futures = [client.submit(score_shard, make_scorer, space, cfg, ranges, pure=False) for ranges in shards]
    results = client.gather(futures)
    full, sums = merge_shards(results)
    if sums.n_masks != cfg.n_masks:
        raise XattnError(f"shards scored {sums.n_masks} masks, expected {cfg.n_masks}")
    halves = halves_from_partials(_Geometry(results[0].cell_shape, results[0].full_len), [sums])
    return SPESResult(full, sums.n_masks, None, results[0].n_labels, halves)


# ---------------------------------------------------------------- N one-thread processes on this machine


def _one_thread() -> None:
    """Worker initializer: one torch thread (two threads per op run slower than one on a loaded machine)."""
    torch.set_num_threads(1)


def spes_processes(make_scorer: Callable[[], ForcedScorer], cfg: SPESConfig | SMHConfig | None,
                   n_processes: int = 2, space: str = "x", n_shards: int | None = None) -> SPESResult:
    """SPES of one utterance as ``n_processes`` one-thread processes on this machine (no Dask), merged.

    The same shards and merge as :func:`spes_sharded` (the batch grid of the single run, float64 sums), so the map
    equals the single-process one bit for bit. Each process loads the model and builds the plan once
    (``spawn`` start: no torch thread pool is inherited).

    Args:
        make_scorer: picklable zero-argument callable building the scorer (e.g. :class:`ScorerRecipe`).
        cfg: as :func:`spes_sharded` (``tolerance`` must be None).
        n_processes: worker processes, one torch thread each.
        n_shards: tasks (default ``n_processes``; more shards balance unequal workers).
    """
    cfg = _check_config(space, cfg)
    if n_processes < 1:
        raise XattnError(f"n_processes must be >= 1, got {n_processes}")
    shards = grid_shards(cfg.n_masks, cfg.batch_size, n_shards or n_processes)
    with ProcessPoolExecutor(min(n_processes, len(shards)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread) as pool:
        results = list(pool.map(score_shard, *zip(*[(make_scorer, space, cfg, r) for r in shards])))
    full, sums = merge_shards(results)
    if sums.n_masks != cfg.n_masks:
        raise XattnError(f"shards scored {sums.n_masks} masks, expected {cfg.n_masks}")
    halves = halves_from_partials(_Geometry(results[0].cell_shape, results[0].full_len), [sums])
    return SPESResult(full, sums.n_masks, None, results[0].n_labels, halves)


__all__ = [
    "ScorerRecipe",
    "ShardResult",
    "batch_grid",
    "build_plan",
    "cached_model",
    "grid_shards",
    "merge_shards",
    "recipe_from_store",
    "score_shard",
    "spes_processes",
    "spes_sharded",
]
