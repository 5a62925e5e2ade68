"""SPES sharded over Dask workers equals the single-process map: toy model and the real bundled Whisper tiny.en.

Two clusters for the whole module: one in-process worker (threads) and two worker processes (recipes are pickled,
the model is rebuilt in each process). Maps are compared with torch.equal: shards follow the single run's batch grid
(see xattn_utils.runs.shard), so nothing but the order of exact float64 additions differs.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from xattn_utils.attribution.saliency import scorer_for
from xattn_utils.attribution.spes import (
    SMHConfig,
    SPESConfig,
    checkpoints,
    spes_smh,
    spes_smx,
)
from xattn_utils.errors import XattnError
from xattn_utils.runs import shard
from xattn_utils.runs.shard import (
    ScorerRecipe,
    batch_grid,
    grid_shards,
    merge_shards,
    recipe_from_store,
    score_shard,
    spes_processes,
    spes_sharded,
)

from toy_models import ToyRecipe

distributed = pytest.importorskip("dask.distributed")

TOY_X = SPESConfig(n_masks=300, n_segments=(20, 40), reference_duration=None, batch_size=32)
TOY_H = SMHConfig(n_masks=300, widths=(1, 5), batch_size=32)
WHISPER_X = SPESConfig(n_masks=16, n_segments=(60, 120), batch_size=4)
WHISPER_H = SMHConfig(n_masks=16, widths=(1, 4), batch_size=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every GEMM of this module on one thread, as in each worker (cached plans included): this CPU's float32 BLAS
    rounds differently with two threads than with one (about 6e-6 on a SMH map), so bit-equality holds for equal
    thread counts."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _single(make_scorer, cfg, space):
    return (spes_smx if space == "x" else spes_smh)(make_scorer(), cfg, progress=False)


@pytest.fixture(scope="module")
def one_worker():
    """One worker in this process (threads): nothing is pickled across processes."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as c, \
            distributed.Client(c) as client:
        yield client


@pytest.fixture(scope="module")
def two_workers():
    """Two worker processes, one thread each: the recipe is pickled and the model rebuilt in each process."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c, \
            distributed.Client(c) as client:
        yield client


# ---------------------------------------------------------------- shards on the batch grid


@pytest.mark.parametrize("n_masks,batch_size", [(16, 4), (300, 32), (1000, 64), (5, 8)])
@pytest.mark.parametrize("n_shards", [1, 2, 3, 7])
def test_grid_shards_rebatch_exactly_as_the_single_run(n_masks, batch_size, n_shards):
    grid = batch_grid(n_masks, batch_size)
    assert grid[0][0] == 0 and grid[-1][1] == n_masks
    assert all(b == c for (_, b), (c, _) in zip(grid, grid[1:]))
    assert {b for _, b in grid} >= set(checkpoints(n_masks))
    shards = grid_shards(n_masks, batch_size, n_shards)
    assert 1 <= len(shards) <= n_shards
    # partial_sums(plan, a, b, batch_size) steps from a by batch_size: the shards' batches are the grid's
    rebatched = [(s, min(b, s + batch_size)) for ranges in shards for a, b in ranges for s in range(a, b, batch_size)]
    assert rebatched == grid
    sizes = [sum(b - a for a, b in ranges) for ranges in shards]
    assert sum(sizes) == n_masks


def test_default_shard_count_is_the_worker_count(two_workers):
    res = spes_sharded(ToyRecipe(pad_frames=6), dataclasses.replace(TOY_X, n_masks=64), two_workers)
    assert res.n_masks_done == 64 and res.convergence is None
    assert len(grid_shards(64, TOY_X.batch_size, len(two_workers.nthreads()))) == 2


# ---------------------------------------------------------------- toy model: 1 worker == 2 workers == single run


@pytest.mark.parametrize("space,cfg", [("x", TOY_X), ("h", TOY_H)])
def test_toy_sharded_equals_single_run(one_worker, two_workers, space, cfg):
    recipe = ToyRecipe(pad_frames=6)
    single = _single(recipe, cfg, space)
    one = spes_sharded(recipe, cfg, one_worker, space=space)
    two = spes_sharded(recipe, cfg, two_workers, space=space)
    three = spes_sharded(recipe, cfg, two_workers, n_shards=3, space=space)  # more shards than workers
    assert one.map.device.type == "cpu" and one.map.shape == single.map.shape
    assert torch.equal(one.map, two.map)
    assert torch.equal(one.map, single.map)
    assert torch.equal(three.map, single.map)
    assert one.n_masks_done == two.n_masks_done == cfg.n_masks
    assert one.n_labels == two.n_labels == single.n_labels
    other = spes_sharded(recipe, dataclasses.replace(cfg, seed=1), two_workers, space=space)
    assert not torch.equal(other.map, single.map)


# ---------------------------------------------------------------- the real bundled Whisper, trimmed input


@pytest.fixture(scope="module")
def stored(bundled_trimmed, tmp_path_factory):
    """One default-corpus utterance with its hypothesis extracted into a fresh store: (store, id, audio path)."""
    from xattn_utils.data.corpus import study_data
    from xattn_utils.extraction.extract import extract_cross_attention
    from xattn_utils.store import ResultStore

    items = study_data(limit=1)
    store = ResultStore(tmp_path_factory.mktemp("shard_store"))
    report = extract_cross_attention(bundled_trimmed, items, store, progress=False)
    assert not report.failed, report.failed
    return store, str(items.id.iloc[0]), str(items.audio_path.iloc[0])


@pytest.fixture(scope="module")
def whisper_recipe(stored) -> ScorerRecipe:
    store, uid, path = stored
    return recipe_from_store(store, uid, "bundled:whisper-tiny.en", "trimmed", path)


def test_recipe_rebuilds_the_stored_hypothesis_scorer(stored, whisper_recipe, bundled_trimmed):
    from xattn_utils.data.audio import load_audio

    store, uid, path = stored
    assert whisper_recipe.audio_sha256 is not None and whisper_recipe.hypothesis_ids
    assert hash(ScorerRecipe(**dataclasses.asdict(whisper_recipe))) == hash(whisper_recipe)
    rebuilt = whisper_recipe()
    reference = scorer_for(bundled_trimmed, load_audio(path), store.load(uid, "attention"))
    assert rebuilt.prompt == reference.prompt and rebuilt.hypothesis == reference.hypothesis
    assert torch.equal(rebuilt.target_ids, reference.target_ids)
    assert torch.equal(rebuilt.features, reference.features)
    assert rebuilt.n_audio_frames == reference.n_audio_frames
    with pytest.raises(XattnError, match="checksum"):
        dataclasses.replace(whisper_recipe, audio_sha256="0" * 64)()


@pytest.mark.parametrize("space,cfg", [("x", WHISPER_X), ("h", WHISPER_H)])
def test_whisper_sharded_equals_single_run(whisper_recipe, one_worker, two_workers, space, cfg):
    single = _single(whisper_recipe, cfg, space)
    one = spes_sharded(whisper_recipe, cfg, one_worker, space=space)
    two = spes_sharded(whisper_recipe, cfg, two_workers, space=space)
    n_tokens = len(whisper_recipe.hypothesis_ids) + 1
    assert single.map.shape[0] == n_tokens and float(single.map.abs().sum()) > 0
    assert torch.equal(one.map, two.map)
    assert torch.equal(one.map, single.map)


def test_each_worker_process_loads_the_model_once(whisper_recipe, two_workers):
    # after the Whisper tests (x and h) and 4 more shards, every worker process loaded the model at most once
    spes_sharded(whisper_recipe, WHISPER_H, two_workers, n_shards=4, space="h")
    infos = two_workers.run(shard._load_cached.cache_info)
    assert len(infos) == 2
    assert all(info.misses <= 1 for info in infos.values()), infos
    assert sum(info.hits for info in infos.values()) >= 1, infos


# ---------------------------------------------------------------- errors


def test_mismatched_plans_and_bad_configs_are_refused(one_worker):
    a = score_shard(ToyRecipe(pad_frames=6), "x", TOY_X, [(0, 32)])
    b = score_shard(ToyRecipe(pad_frames=6, seed=1), "x", TOY_X, [(32, 64)])
    with pytest.raises(XattnError, match="different occlusion plans"):
        merge_shards([a, b])
    recipe = ToyRecipe()
    with pytest.raises(XattnError, match="tolerance"):
        spes_sharded(recipe, dataclasses.replace(TOY_X, tolerance=0.01), one_worker)
    with pytest.raises(XattnError, match="SMHConfig"):
        spes_sharded(recipe, TOY_X, one_worker, space="h")
    with pytest.raises(XattnError, match="space"):
        spes_sharded(recipe, TOY_X, one_worker, space="z")
    with pytest.raises(XattnError):
        grid_shards(10, 4, 0)


# ---------------------------------------------------------------- N one-thread processes, no Dask


@pytest.mark.parametrize("space,cfg", [("x", TOY_X), ("h", TOY_H)])
def test_toy_processes_equal_one_process_bit_for_bit(space, cfg):
    recipe = ToyRecipe(pad_frames=6)
    single = _single(recipe, cfg, space)
    procs = spes_processes(recipe, cfg, n_processes=2, space=space, n_shards=3)
    assert torch.equal(procs.map, single.map) and torch.equal(procs.halves, single.halves)
    assert procs.n_masks_done == cfg.n_masks and procs.n_labels == single.n_labels


def test_whisper_processes_equal_one_process_bit_for_bit(whisper_recipe):
    # SM^H with the defaults' fast paths (K/V once, the default precision) and SM^X, two one-thread processes
    for space, cfg in (("h", WHISPER_H), ("x", WHISPER_X)):
        single = _single(whisper_recipe, cfg, space)
        procs = spes_processes(whisper_recipe, cfg, n_processes=2, space=space)
        assert float(single.map.abs().sum()) > 0
        assert torch.equal(procs.map, single.map), space
    with pytest.raises(XattnError, match="n_processes"):
        spes_processes(whisper_recipe, WHISPER_H, n_processes=0, space="h")
