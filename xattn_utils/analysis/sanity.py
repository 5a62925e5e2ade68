"""Model-randomization sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

An explanation that survives randomizing the model's weights explains the input, not the model. We re-draw the
weights of the encoder and/or decoder of a copy of the model (Gaussian with each tensor's own mean and standard
deviation, seeded), force the *same* hypothesis, recompute the map and correlate it with the trained model's map.

A sampled map (SPES) is noisy: two seeds of the *trained* model do not agree perfectly either. So the check is done
on the study's grid (audio cells only, pooled to encoder frames, z-scored rows — padding zeros would make any two
maps look alike) and reads as a ratio: r(randomized at seed B, trained at seed A) / r(trained at seed B, trained at
seed A). A method passes when the ratio is near 0.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from ..attribution.grids import encoder_grid
from ..extraction.forced import Seq2SeqScorer
from ..models.loader import Features, LoadedModel
from .agreement import row_agreement

PARTS = ("encoder", "decoder")


def randomized_copy(loaded: LoadedModel, parts: tuple[str, ...] = PARTS, seed: int = 0) -> LoadedModel:
    """A copy of ``loaded`` whose ``parts`` ("encoder", "decoder") have re-drawn weights; the original is untouched."""
    model = copy.deepcopy(loaded.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in parts:
            module = model.get_encoder() if part == "encoder" else model.get_decoder()
            for p in module.parameters():
                noise = torch.randn(p.shape, generator=g).to(p.device, p.dtype)
                std = p.float().std() if p.numel() > 1 else torch.tensor(1.0)
                p.copy_(noise * std.to(p.dtype) + p.float().mean().to(p.dtype))
    return dataclasses.replace(loaded, model=model, model_id=f"{loaded.model_id}#randomized-{'+'.join(parts)}",
                               weights_sha256=f"randomized({loaded.weights_sha256},{'+'.join(parts)},{seed})",
                               _trimmed_encoders={})


def comparison_grid(scorer: Seq2SeqScorer, pool: str = "mean", normalize: str = "zscore",
                    magnitude: bool = False) -> Callable[[torch.Tensor], np.ndarray]:
    """The study's grid for one scorer's maps: ``(I, T, F)`` input maps cut to the audio frames and pooled to encoder
    frames (``pool``), ``(I, T')`` encoder maps cut to the audio's encoder frames; end-of-text row dropped; rows
    normalized. Returns map -> ``(I - 1, T'_audio)`` float64."""
    k = int(scorer.frames_per_encoder_frame)
    n_audio = int(scorer.n_audio_frames)
    n_enc = -(-n_audio // k)

    def grid(m) -> np.ndarray:
        m = m.detach().float().cpu() if isinstance(m, torch.Tensor) else torch.as_tensor(m)
        m = m[:, :n_audio] if m.ndim == 3 else m[:, :n_enc]
        return encoder_grid(m, k, n_enc, pool=pool, normalize=normalize, magnitude=magnitude, rows=slice(0, -1))

    return grid


def sanity_check(scorer: Seq2SeqScorer, explain: Callable[[Seq2SeqScorer, int], torch.Tensor],
                 grid: Callable[[torch.Tensor], np.ndarray] | None = None,
                 parts_list: tuple[tuple[str, ...], ...] = (("decoder",), ("encoder", "decoder")),
                 seeds: tuple[int, int] = (0, 1), weights_seed: int = 0,
                 randomize: Callable[[Seq2SeqScorer, tuple[str, ...], int], Seq2SeqScorer] | None = None
                 ) -> pd.DataFrame:
    """The cascading randomization check on the study's grid, against the method's own noise floor.

    Args:
        scorer: the trained model's scorer for one utterance and hypothesis.
        explain: ``(scorer, seed) -> map`` with the token axis first, e.g.
            ``lambda s, seed: spes_smx(s, replace(cfg, seed=seed)).map`` (deterministic methods ignore the seed).
        grid: map -> comparison grid (default :func:`comparison_grid`: audio cells only, pooled, z-scored rows).
        parts_list: the cascade (decoder, then encoder and decoder).
        seeds: seed A (the trained reference) and seed B (every other map).
        weights_seed: seeds the re-drawn weights.
        randomize: ``(scorer, parts, seed) -> scorer`` of a randomized model (default :func:`randomized_scorer`).
    Returns: one row per check — ``trained`` (seed B vs seed A: the noise floor; 1 for deterministic methods), then
        each randomization (randomized model at seed B vs trained at seed A) — with ``r`` (mean per-token Pearson
        on the grid) and ``ratio`` = r / r(trained). A method passes when the ratio is near 0.
    """
    grid = grid or comparison_grid(scorer)
    seed_a, seed_b = seeds
    ref = grid(explain(scorer, seed_a))
    rows = [("trained", _mean_token_pearson(ref, grid(explain(scorer, seed_b))))]
    for parts in parts_list:
        other = (randomize or randomized_scorer)(scorer, parts, weights_seed)
        rows.append(("+".join(parts), _mean_token_pearson(ref, grid(explain(other, seed_b)))))
    floor = rows[0][1]
    return pd.DataFrame([{"check": c, "r": r, "ratio": r / floor if floor > 0 else float("nan")} for c, r in rows])


def randomized_scorer(scorer: Seq2SeqScorer, parts: tuple[str, ...], seed: int = 0) -> Seq2SeqScorer:
    """The scorer of the same input and hypothesis on a copy of the model with ``parts`` re-drawn."""
    rnd = randomized_copy(scorer.loaded, parts, seed)
    return Seq2SeqScorer(rnd, _features_of(scorer), scorer.prompt, scorer.hypothesis)


def _mean_token_pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.nanmean(row_agreement(a, b, "pearson")))


def _features_of(scorer: Seq2SeqScorer) -> Features:
    return Features(scorer.features.detach().cpu(), scorer.n_audio_frames, scorer.occlusion_value)
