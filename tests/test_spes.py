"""SPES on the block toy model: known answers, GEMM == per-mask reference, determinism, sharding, padding."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from xattn_utils.attribution.segmentation import (
    n_segments_for,
    slic_segments,
    time_segments,
)
from xattn_utils.attribution.spes import (
    CHUNK,
    MaskBits,
    PartialSums,
    SMHConfig,
    SPESConfig,
    accumulate,
    build_occlusion,
    checkpoints,
    kl_scores,
    map_from_partials,
    mask_halves,
    partial_sums,
    plan_smh,
    plan_smx,
    reference_accumulate,
    relevance,
    relevance_halves,
    run_plan,
    shard_ranges,
    spes_smh,
    spes_smx,
)
from xattn_utils.errors import XattnError

from tolerances import f32, f64
from toy_models import BlockToyScorer

SMX = SPESConfig(n_masks=512, n_segments=(20, 40), reference_duration=None, batch_size=64)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


@pytest.fixture(scope="module")
def toy() -> BlockToyScorer:
    return BlockToyScorer(n_features=8, pad_frames=6)


def _fwd_ops(toy: BlockToyScorer) -> int:
    """float32 roundings of one toy log-prob: its reductions (frame pair, features, block mean, W1, W2, log-softmax)."""
    return 2 + toy.A.shape[1] + toy.block + 2 * toy.W1.shape[0] + toy.W2.shape[0]


def _kl_tol(toy: BlockToyScorer, base: torch.Tensor, logp: torch.Tensor, recomputed: bool = True) -> float:
    """Absolute float32 rounding of a KL score or of a mean of them: the V-term sum Σ p·(b − q) on Σ p·|b − q|, and,
    when the perturbed log-probs were recomputed in another batch shape, their rounding (_fwd_ops on |q|)."""
    terms = float((base.exp() * (base - logp).abs()).sum(-1).max())
    return f32(n_ops=toy.W2.shape[0], scale=terms) + (f32(n_ops=_fwd_ops(toy), scale=float(logp.abs().max()))
                                                      if recomputed else 0.0)


def _blocks(m: torch.Tensor, width: int, n_blocks: int) -> torch.Tensor:
    """(I, T) -> (I, n_blocks) mean over each token's block of frames."""
    return m[:, : width * n_blocks].reshape(m.shape[0], n_blocks, width).mean(-1)


# ---------------------------------------------------------------- known answers


def test_smx_finds_each_tokens_block(toy):
    res = spes_smx(toy, SMX, progress=False)
    assert res.map.shape == (toy.n_tokens, toy.features.shape[1], toy.features.shape[0])
    per_frame = res.map.sum(-1)  # (I, T)
    blocks = _blocks(per_frame, 2 * toy.block, toy.n_tokens)
    r = _pearson(blocks, torch.eye(toy.n_tokens))
    assert bool((r > 0.9).all()), r
    # outside its block a token's relevance is flat (its mean score), inside it stands out
    na = toy.n_audio_frames
    outside = per_frame[:, :na][toy.true_map_x()[:, :na] == 0].reshape(toy.n_tokens, -1)
    inside = per_frame[:, :na][toy.true_map_x()[:, :na] == 1].reshape(toy.n_tokens, -1)
    assert bool((outside.std(-1) < 0.5 * (inside - outside.mean(-1, keepdim=True)).abs().mean(-1)).all())


def test_smh_finds_each_tokens_block(toy):
    res = spes_smh(toy, SMHConfig(n_masks=512, widths=(1, 5)), progress=False)  # segments within blocks
    assert res.map.shape == (toy.n_tokens, toy.features.shape[1] // 2)
    r = _pearson(_blocks(res.map, toy.block, toy.n_tokens), torch.eye(toy.n_tokens))
    assert bool((r > 0.9).all()), r


def test_smh_converges_to_exact_expectation(toy):
    """Token i reads only its 5-frame block, so E[KL_i | frame t occluded] is exact over the 2^5 patterns."""
    res = spes_smh(toy, SMHConfig(n_masks=4096, widths=(1,), batch_size=512), progress=False)
    hidden = toy.encode(toy.features[None])
    base = toy.log_probs_from_encoder(hidden)[0]
    pats = torch.tensor(list(itertools.product([False, True], repeat=toy.block)))  # (32, block)
    n_enc = toy.n_audio_frames // 2
    for i in range(toy.n_tokens):
        span = slice(i * toy.block, (i + 1) * toy.block)
        h = hidden.repeat(len(pats), 1, 1)
        h[:, span] = h[:, span].masked_fill(pats[:, :, None], 0.0)
        kl = kl_scores(base, toy.log_probs_from_encoder(h))[:, i]
        exact = torch.full((n_enc,), float(kl.mean()))
        exact[span] = (kl[:, None] * pats).sum(0) / pats.sum(0)
        assert torch.allclose(res.map[i, :n_enc], exact, atol=0.03), (i, res.map[i, :n_enc], exact)
        assert _pearson(res.map[i, :n_enc], exact) > 0.95


# ---------------------------------------------------------------- exactness of the fast path


@pytest.mark.parametrize("which", ["smx", "smh"])
def test_gemm_accumulation_equals_reference(toy, which):
    plan = plan_smx(toy, SMX) if which == "smx" else plan_smh(toy, SMHConfig())
    bits = MaskBits(plan.seed, max(plan.n_labels), plan.p).rows(0, 50)
    occ = build_occlusion(plan.labels, bits, 0)
    logp = plan.perturb(occ)
    half = mask_halves(0, 50, plan.labels.shape[0])
    fast = accumulate(PartialSums.zeros(toy.n_tokens, plan.n_cells), kl_scores(plan.base, logp), occ, half)
    ref = reference_accumulate(plan.base, logp, occ, half)
    assert (ref.count[0] > 0).any() and (ref.count[1] > 0).any()
    assert torch.equal(fast.count, ref.count) and fast.n_masks == ref.n_masks == 50
    # the same float32 scores summed over 50 masks: the GEMM accumulates nonnegative terms in float32 (50 roundings,
    # relative), each score's V-term sum may round in another order (absolute, 50 of them)
    kl_tol = _kl_tol(toy, plan.base, logp, recomputed=False)
    assert torch.allclose(fast.numerator, ref.numerator, rtol=f32(n_ops=50), atol=50 * kl_tol)
    # relevance: those sums over counts ≥ 1, one more rounding
    assert torch.allclose(relevance(fast), relevance(ref), rtol=f32(n_ops=50 + 2), atol=50 * kl_tol)


@pytest.mark.parametrize("which", ["smx", "smh"])
def test_halves_are_independent_maps_that_merge_into_the_full_map(toy, which):
    cfg = SMX if which == "smx" else SMHConfig()
    plan = plan_smx(toy, cfg) if which == "smx" else plan_smh(toy, cfg)
    n_gran = plan.labels.shape[0]
    assert mask_halves(0, 4 * n_gran, n_gran).tolist() == ([0] * n_gran + [1] * n_gran) * 2
    res = run_plan(plan, 96, 32, convergence=False, progress=False)
    bits = MaskBits(plan.seed, max(plan.n_labels), plan.p).rows(0, 96)
    occ = build_occlusion(plan.labels, bits, 0)
    half = mask_halves(0, 96, n_gran)
    ref = reference_accumulate(plan.base, plan.perturb(occ), occ, half)
    # means of KL scores recomputed in other batch shapes (_kl_tol), accumulated over 96 masks in float32
    kl_tol = _kl_tol(toy, plan.base, plan.perturb(occ))
    for h in (0, 1):  # each half map is the SPES map of exactly its own masks
        own = reference_accumulate(plan.base, plan.perturb(occ[half == h]), occ[half == h])
        assert torch.allclose(res.halves[h][:, : plan.cell_shape[0]].reshape(toy.n_tokens, -1), relevance(own),
                              rtol=f32(n_ops=96), atol=kl_tol)
    assert torch.allclose(relevance_halves(ref), relevance_halves(ref), rtol=0)
    # the full map is the merge of the halves' sums (not the mean of the two half maps)
    full = ref.numerator.sum(0) / ref.count.sum(0).clamp_min(1)
    assert torch.allclose(res.map[:, : plan.cell_shape[0]].reshape(toy.n_tokens, -1), full.float(),
                          rtol=f32(n_ops=96 + 2), atol=kl_tol)  # as the halves, one more rounding (float32 cast)


def test_mask_build_matches_per_mask_gather(toy):
    plan = plan_smx(toy, SMX)
    bits = MaskBits(plan.seed, max(plan.n_labels), plan.p).rows(5, 17)
    occ = build_occlusion(plan.labels, bits, 5)
    for j in range(12):
        g = (5 + j) % plan.labels.shape[0]
        assert torch.equal(occ[j], bits[j][plan.labels[g]])


def test_kl_fast_path_equals_kl_div(toy):
    plan = plan_smh(toy, SMHConfig())
    occ = build_occlusion(plan.labels, MaskBits(1, max(plan.n_labels), 0.5).rows(0, 9), 0)
    logp = plan.perturb(occ)
    ref = torch.nn.functional.kl_div(logp, plan.base.expand_as(logp), reduction="none", log_target=True).sum(-1)
    # the same V-term float32 sum in two orders (kl_div's exp(b)·(b − q) rounds once more per term)
    assert torch.allclose(kl_scores(plan.base, logp), ref, rtol=0, atol=2 * _kl_tol(toy, plan.base, logp, False))
    # b − b is exactly 0: a sum of zeros
    assert torch.allclose(kl_scores(plan.base, plan.base[None]), torch.zeros(1, toy.n_tokens), rtol=0,
                          atol=_kl_tol(toy, plan.base, plan.base[None], False))


def test_kl_is_accurate_over_a_large_vocabulary():
    g = torch.Generator().manual_seed(0)
    base = torch.log_softmax(4 * torch.randn(6, 50000, generator=g), -1)
    pert = torch.log_softmax(base[None] + torch.randn(3, 6, 50000, generator=g), -1)
    exact = (base.double().exp() * (base.double() - pert.double())).sum(-1)
    # float32 against float64 on the same float32 log-probs: exp, subtraction and product (3 roundings), torch's
    # cascade sum within each 4096-entry block (≤ 12 levels) and 13 block additions, on Σ p·|b − q|
    terms = float((base.double().exp() * (base.double() - pert.double()).abs()).sum(-1).max())
    assert torch.allclose(kl_scores(base, pert).double(), exact, rtol=0, atol=f32(n_ops=3 + 12 + 13, scale=terms))


# ---------------------------------------------------------------- determinism and sharding


def _map_tol(toy: BlockToyScorer) -> float:
    """Absolute tolerance of a SPES map of the toy computed in other batches: a mean of KL scores whose perturbed
    log-probs were recomputed in another batch shape (see _kl_tol); the float32 accumulation of a batch's masks
    is the relative part (rtol, batch size + 2)."""
    base = toy.log_probs(toy.features[None])[0]
    return _kl_tol(toy, base, toy.log_probs(torch.full_like(toy.features, toy.occlusion_value)[None]))


def test_same_seed_same_map_other_seed_differs(toy):
    cfg = dataclasses.replace(SMX, n_masks=128)
    a = spes_smx(toy, cfg, progress=False).map
    b = spes_smx(toy, cfg, progress=False).map
    c = spes_smx(toy, dataclasses.replace(cfg, seed=1), progress=False).map
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("which", ["smx", "smh"])
def test_batch_size_does_not_change_the_map(toy, which):
    n = CHUNK + 44  # crosses a generator chunk
    if which == "smx":
        a, b = (spes_smx(toy, dataclasses.replace(SMX, n_masks=n, batch_size=bs), progress=False) for bs in (7, 64))
    else:
        a, b = (spes_smh(toy, SMHConfig(n_masks=n, batch_size=bs), progress=False) for bs in (7, 64))
    assert a.n_masks_done == b.n_masks_done == n
    assert torch.allclose(a.map, b.map, rtol=f32(n_ops=64 + 2), atol=_map_tol(toy))  # batches of 7 vs 64 masks


def test_mask_bits_do_not_depend_on_how_they_are_read():
    whole = MaskBits(3, 40, 0.5).rows(0, 3 * CHUNK)
    src = MaskBits(3, 40, 0.5)
    pieces = torch.cat([src.rows(a, min(a + 7, 3 * CHUNK)) for a in range(0, 3 * CHUNK, 7)])
    assert torch.equal(whole, pieces)
    assert torch.equal(MaskBits(3, 40, 0.5).rows(300, 310), whole[300:310])
    assert abs(whole.float().mean().item() - 0.5) < 0.02
    assert abs(MaskBits(3, 40, 0.2).rows(0, CHUNK).float().mean().item() - 0.2) < 0.02


@pytest.mark.parametrize("n_shards", [2, 3])
def test_shards_merged_equal_single_run(toy, n_shards):
    cfg = dataclasses.replace(SMX, n_masks=300)
    single = spes_smx(toy, cfg, progress=False)
    plan = plan_smx(toy, cfg)  # each worker rebuilds the same plan
    parts = [partial_sums(plan, a, b, batch_size=32) for a, b in shard_ranges(cfg.n_masks, n_shards)]
    assert sum(p.n_masks for p in parts) == cfg.n_masks
    assert torch.allclose(map_from_partials(plan, parts[::-1]), single.map, rtol=f32(n_ops=64 + 2),
                          atol=_map_tol(toy))  # batches of 32 vs 64 masks, float64 merges


# ---------------------------------------------------------------- padding, convergence, configs


class _Recording(BlockToyScorer):
    seen: list[torch.Tensor] | None = None

    def log_probs(self, features):
        if self.seen is not None:
            self.seen.append(features.clone())
        return super().log_probs(features)


def test_padding_is_never_occluded_and_has_zero_relevance():
    toy = _Recording(n_features=8, pad_frames=6)
    toy._features[:, toy.n_audio_frames:] = 1.5  # distinct from the occlusion value
    toy.seen = []
    res = spes_smx(toy, dataclasses.replace(SMX, n_masks=64), progress=False)
    na = toy.n_audio_frames
    assert res.map[:, na:].abs().sum() == 0 and res.map[:, :na].abs().sum() > 0
    batches = torch.cat(toy.seen)
    assert torch.equal(batches[:, :, na:], toy.features[None, :, na:].expand(len(batches), -1, -1))
    assert bool((batches[:, :, :na] == toy.occlusion_value).any())
    h = spes_smh(toy, SMHConfig(n_masks=64), progress=False)
    assert h.map[:, na // 2:].abs().sum() == 0 and h.map[:, : na // 2].abs().sum() > 0


def test_split_half_trace_and_early_stop(toy):
    res = spes_smx(toy, dataclasses.replace(SMX, n_masks=256), progress=False)
    ks, rs = zip(*res.convergence)
    assert list(ks) == checkpoints(256) == [4, 8, 16, 32, 64, 128, 256]
    # independent halves agree more as masks accumulate; the toy's block signal is strong
    assert rs[-1] > 0.8 and rs[-1] > rs[2] > rs[0] and np.isfinite(rs).all()
    target = 2 * rs[3] / (1 + rs[3])  # Spearman-Brown reliability reached at 32 masks
    # the run recomputes this r bit for bit; 1 − (1 − target) rounds twice in float64 (values ≤ 1)
    stopped = spes_smx(toy, dataclasses.replace(SMX, n_masks=256, tolerance=1 - target + f64(n_ops=4)),
                       progress=False)
    assert stopped.n_masks_done <= 32 and len(stopped.convergence) <= 4
    assert torch.allclose(stopped.map, spes_smx(toy, dataclasses.replace(SMX, n_masks=stopped.n_masks_done),
                                                progress=False).map, rtol=f32(n_ops=64 + 2), atol=_map_tol(toy))
    off = spes_smx(toy, dataclasses.replace(SMX, n_masks=64, convergence=False), progress=False)
    assert off.convergence is None


def test_configs():
    pub = SPESConfig.published()
    assert (pub.n_masks, pub.p, pub.n_segments, pub.threshold_duration) == (20000, 0.5, (2000, 2500, 3000), 750)
    assert SPESConfig.cpu().n_masks <= 512 and SMHConfig.published().n_masks == 20000
    assert dataclasses.asdict(SPESConfig.cpu())  # serializable into provenance
    with pytest.raises(XattnError, match="n_masks"):
        run_plan(plan_smh(BlockToyScorer(), SMHConfig()), 0, 8, progress=False)


# ---------------------------------------------------------------- segmentation


def test_n_segments_scales_with_duration_and_is_capped():
    assert n_segments_for(500, 2000, 500, 750) == 2000
    assert n_segments_for(250, 2000, 500, 750) == 1000
    assert n_segments_for(3000, 2000, 500, 750) == 3000  # capped at 750 frames
    assert n_segments_for(3000, 2000, 500, None) == 12000  # reference code: no cap
    assert n_segments_for(1, 100, 500, 750) == 1
    assert n_segments_for(123, 40, None) == 40


def test_slic_segments_granularities():
    rng = np.random.default_rng(0)
    spec = np.cumsum(rng.normal(size=(120, 16)), axis=0) * 3.0 + 7.0
    seg = slic_segments(spec, (20, 80), reference_duration=None)
    assert seg.shape == (2, 120, 16) and seg.dtype == np.int64
    for g in seg:
        assert np.array_equal(np.unique(g), np.arange(g.max() + 1))  # contiguous labels
    n0, n1 = (int(g.max()) + 1 for g in seg)
    assert 5 <= n0 < n1 <= 160
    half = slic_segments(spec[:60], (80,), reference_duration=120, threshold_duration=None)
    assert int(half.max()) + 1 < n1  # a shorter utterance gets fewer segments
    assert torch.equal(torch.from_numpy(slic_segments(torch.tensor(spec), (20,), reference_duration=None)[0]),
                       torch.from_numpy(seg[0]))


def test_time_segments():
    seg = time_segments(10, (1, 4))
    assert seg.tolist() == [list(range(10)), [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]]
    with pytest.raises(XattnError):
        time_segments(0)


# ---------------------------------------------------------------- sanity check on the grid


class _RewiredToy(BlockToyScorer):
    """The block toy with its decoder reading a fixed random permutation of the encoder frames: another model, same
    input and hypothesis (a "randomized" model whose true relevance is elsewhere)."""

    def __init__(self, perm: torch.Tensor, **kw):
        self.perm = perm
        super().__init__(**kw)

    def log_probs_from_encoder(self, hidden):
        return super().log_probs_from_encoder(hidden[:, self.perm])


def test_sanity_ratio_passes_spes_and_fails_an_input_only_explanation():
    from xattn_utils.analysis.sanity import sanity_check

    toy = BlockToyScorer(n_tokens=5, block=6, n_features=8, seed=3)

    def rewire(scorer, parts, seed):
        t_enc = scorer.features.shape[1] // 2
        return _RewiredToy(torch.randperm(t_enc, generator=torch.Generator().manual_seed(seed)), n_tokens=5, block=6,
                           n_features=8, seed=3)

    spes = lambda s, seed: spes_smx(s, dataclasses.replace(SMX, n_masks=512, seed=seed), progress=False).map
    energy = lambda s, seed: s.features.abs().T[None].expand(s.n_tokens, -1, -1)  # explains the input only
    grid_rows = slice(None)  # the toy has no end-of-text row

    def grid(m):
        from xattn_utils.attribution.grids import encoder_grid

        return encoder_grid(m, 2, toy.n_audio_frames // 2, rows=grid_rows)

    res = sanity_check(toy, spes, grid=grid, parts_list=(("decoder",),), randomize=rewire).set_index("check")
    assert res.loc["trained", "r"] > 0.5  # two seeds of the trained model agree: the noise floor
    assert abs(res.loc["decoder", "ratio"]) < 0.3  # SPES follows the model
    res_e = sanity_check(toy, energy, grid=grid, parts_list=(("decoder",),), randomize=rewire).set_index("check")
    assert res_e.loc["trained", "r"] == pytest.approx(1.0) and res_e.loc["decoder", "ratio"] == pytest.approx(1.0)


# ---------------------------------------------------------------- fast paths on the real model (bundled tiny.en)


@pytest.fixture(scope="module")
def real_scorer(bundled_trimmed, speech_dir):
    """The forced scorer of the bundled tiny.en's own hypothesis of a real (espeak-ng) utterance, trimmed input."""
    import soundfile as sf

    from xattn_utils.extraction.forced import Seq2SeqScorer, decode

    audio, _ = sf.read(speech_dir / "utt0.wav", dtype="float32")
    prompt = bundled_trimmed.prompt_ids()
    hyp = decode(bundled_trimmed, bundled_trimmed.features(audio, "padded").values[None], prompt)[0]
    return Seq2SeqScorer(bundled_trimmed, bundled_trimmed.features(audio), prompt, hyp)


def _token_r(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(I,) Pearson r of each token's row of two maps (flattened over time and features)."""
    return _pearson(a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double())


def _decoder_tol(scorer, scale: float) -> float:
    """float32 rounding of a forced log-prob: per decoder layer the D-long projections (q, k, v, out, both
    attentions), the 4D-long feed-forward sums and the T'- and S-long attention sums, then the D-long vocabulary
    projection, on values of magnitude ``scale``."""
    cfg = scorer.loaded.model.config
    d, t_enc = cfg.d_model, scorer.features.shape[1] // scorer.frames_per_encoder_frame
    per_layer = 6 * d + 2 * cfg.decoder_ffn_dim + t_enc + len(scorer.prompt) + scorer.n_tokens
    return f32(n_ops=cfg.decoder_layers * per_layer + d, scale=scale)


def test_bf16_map_matches_fp32_per_token_on_a_real_utterance(real_scorer):
    # the paper's segments (SMX) and SMH widths, equal masks and seed: only the precision differs
    smx = SPESConfig(n_masks=64, batch_size=32, convergence=False)
    smh = SMHConfig(n_masks=128, convergence=False)
    for run, cfg in ((spes_smx, smx), (spes_smh, smh)):
        maps = {p: run(real_scorer, dataclasses.replace(cfg, precision=p), progress=False).map
                for p in ("fp32", "bf16")}
        r = _token_r(maps["fp32"], maps["bf16"])
        assert len(r) == real_scorer.n_tokens and float(r.min()) >= 0.99, (type(cfg).__name__, r)
    # the precision is a recorded parameter: it is in the dict that keys the store and fills provenance
    assert dataclasses.asdict(smx)["precision"] == SPESConfig().precision
    assert {"precision", "kv_once"} <= set(dataclasses.asdict(smh))
    assert real_scorer.at_precision("bf16") is real_scorer.at_precision("bf16")  # one cast copy per scorer
    with pytest.raises(XattnError, match="precision"):
        spes_smh(real_scorer, dataclasses.replace(smh, precision="fp16"), progress=False)
    # auto: bf16 only on bf16 matrix hardware (this CPU's own answer), fp32 on a device without it
    from xattn_utils.attribution.spes import native_bf16, resolve_precision, resolved
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert resolve_precision("auto", "meta") == "fp32" and resolve_precision("bf16", "meta") == "bf16"
    assert resolved(smx, "meta").precision == "fp32" and resolved(smx, "meta").n_masks == smx.n_masks


def test_kv_once_smh_equals_plain_smh(real_scorer):
    with torch.inference_mode():
        hidden = real_scorer.encode(real_scorer.features[None])
        occ = torch.rand(6, hidden.shape[1], generator=torch.Generator().manual_seed(0)) < 0.5
        fast = real_scorer.cross_kv_decoder(hidden)
        plain = {"zero": real_scorer.log_probs_from_encoder(hidden.masked_fill(occ[:, :, None], 0.0)),
                 "remove": real_scorer.log_probs_from_encoder(hidden.expand(6, -1, -1), removed=occ)}
        for occlusion, want in plain.items():
            got = fast.log_probs(occ, remove=occlusion == "remove")
            torch.testing.assert_close(got, want, rtol=0, atol=_decoder_tol(real_scorer, float(want.abs().max())))
    for occlusion in ("zero", "remove"):
        cfg = SMHConfig(n_masks=64, occlusion=occlusion, convergence=False, precision="fp32")
        a = spes_smh(real_scorer, dataclasses.replace(cfg, kv_once=True), progress=False).map
        b = spes_smh(real_scorer, dataclasses.replace(cfg, kv_once=False), progress=False).map
        # a KL score Σ p (log p − log q) moves by at most max |δ log q| (Σ p = 1); a map value is a mean of them
        tol = _decoder_tol(real_scorer, float(plain["zero"].abs().max()))
        torch.testing.assert_close(a, b, rtol=0, atol=tol)
        assert float(_token_r(a, b).min()) > 0.9999
