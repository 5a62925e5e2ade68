"""Model-randomization sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

An explanation that survives randomizing the model's weights explains the input, not the model. We re-draw the
weights of the encoder and/or decoder of a copy of the model (Gaussian with each tensor's own mean and standard
deviation, seeded), force the *same* hypothesis, recompute the map and correlate it with the trained model's map.
A method passes when the correlation collapses (near 0, well below the trained-vs-trained agreement).
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from .forced import Seq2SeqScorer
from .models import LoadedModel

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


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1) - a.reshape(a.shape[0], -1).mean(1, keepdims=True)
    b = b.reshape(b.shape[0], -1) - b.reshape(b.shape[0], -1).mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / den, np.nan)


def sanity_check(scorer: Seq2SeqScorer, explain: Callable[[Seq2SeqScorer], torch.Tensor],
                 parts_list: tuple[tuple[str, ...], ...] = (("decoder",), ("encoder", "decoder")),
                 seed: int = 0) -> dict[str, float]:
    """Correlation of a method's map on the trained model with its map on randomized copies.

    Args:
        scorer: the trained model's scorer for one utterance and hypothesis.
        explain: scorer -> map with the token axis first, e.g. ``lambda s: spes_smx(s, cfg).map``.
        parts_list: which parts to randomize, one check each (cascading: decoder, then encoder and decoder).
    Returns: {"decoder": mean per-token Pearson, "encoder+decoder": ...}; near 0 means the method passes.
    """
    trained = explain(scorer).detach().float().cpu().numpy()
    out = {}
    for parts in parts_list:
        rnd = randomized_copy(scorer.loaded, parts, seed)
        other = Seq2SeqScorer(rnd, _features_of(scorer), scorer.prompt, scorer.hypothesis)
        m = explain(other).detach().float().cpu().numpy()
        out["+".join(parts)] = float(np.nanmean(_row_pearson(trained, m)))
    return out


def _features_of(scorer: Seq2SeqScorer):
    from .models import Features

    return Features(scorer.features.detach().cpu(), scorer.n_audio_frames, scorer.occlusion_value)
