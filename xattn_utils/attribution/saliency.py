"""Saliency over a data set: SPES on X and H, gradient maps on X and H, stored beside the cross-attention.

``compute_saliency(model, items, store, SaliencyConfig(methods=("spes-x", "spes-h", "ig")))`` explains, for every
utterance, the hypothesis stored in its ``attention`` group (extracting it first when absent, with the store's
decoding options; a stored hypothesis is never re-decoded or replaced), and writes one group
per method and space into the same :class:`~xattn_utils.store.ResultStore`:

=============  ==========================  ===========================================
method         store kinds                 map variable(s)
=============  ==========================  ===========================================
``spes-x``     ``spes_x``                  ``saliency`` (token, frame, mel), ``saliency_half`` (half, ...)
``spes-h``     ``spes_h``                  ``saliency`` (token, enc_frame), ``saliency_half`` (half, ...)
``saliency``   ``saliency_x``, ``saliency_h``  ``signed``, ``absolute``
``ixg``        ``ixg_x``, ``ixg_h``        ``signed``, ``absolute``
``ig``         ``ig_x``, ``ig_h``          ``signed``, ``absolute``
=============  ==========================  ===========================================

Methods, store kinds and the names the analysis gives the maps are paired once, in :mod:`xattn_utils.maps`.

Input-space maps cover the frames holding audio only (padding is never occluded and carries no relevance).
Each group's cache key hashes the model, the audio, the hypothesis and the method's parameters; a re-run skips
finished groups. A failing utterance is recorded in the store's ``errors.json`` and the run goes on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import XattnError
from ..extraction.extract import DecodeConfig, RunReport
from ..extraction.forced import Seq2SeqScorer
from ..maps import METHODS, by_method
from ..models.loader import LoadedModel
from ..provenance import stable_hash
from ..store import ResultStore
from .gradients import attribute_gradients, canonical_method
from .per_utterance import Planned, explain_store
from .spes import SMHConfig, SPESConfig, spes_smh, spes_smx


@dataclass
class SaliencyConfig:
    """Which maps to compute, with what parameters (all recorded in provenance).

    Attributes:
        methods: any of :data:`METHODS`.
        spes: SPES settings for SMX (``SPESConfig.published()`` for the paper's 20k masks).
        smh: SPES settings for SMH.
        ig_steps: integration steps for integrated gradients.
        gradient_spaces: where gradient methods attribute: "x" (input), "h" (encoder output), or both.
        token_batch: gradient rows per backward pass (memory bound on long padded inputs).
    """

    methods: tuple[str, ...] = ("spes-x", "spes-h")
    spes: SPESConfig = field(default_factory=SPESConfig.cpu)
    smh: SMHConfig = field(default_factory=SMHConfig)
    ig_steps: int = 32
    gradient_spaces: tuple[str, ...] = ("x", "h")
    token_batch: int | None = 8

    def __post_init__(self):
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise XattnError(f"unknown saliency method(s) {bad}; choose from {', '.join(METHODS)}")


def kinds_for(method: str, spaces=("x", "h")) -> list[str]:
    """Store kinds a method writes (see :mod:`xattn_utils.maps`)."""
    return [m.kind for m in by_method(method, spaces)]


def scorer_for(loaded: LoadedModel, audio: np.ndarray, attention: xr.Dataset) -> Seq2SeqScorer:
    """The forced scorer of a stored hypothesis (prompt and tokens from its ``attention`` group)."""
    hyp = [int(t) for t in attention.token_id.values[:-1]]
    prompt = [int(t) for t in attention.prompt_ids.values]
    return Seq2SeqScorer(loaded, loaded.features(audio), prompt, hyp)


def _coords(attention: xr.Dataset) -> dict:
    return {k: attention.coords[k] for k in ("token", "token_id", "token_str")}


def _method_params(method: str, cfg: SaliencyConfig) -> dict:
    # format 2: SPES groups hold the two half maps (split-half reliability); older groups are recomputed
    if method == "spes-x":
        return {**dataclasses.asdict(cfg.spes), "format": 2}
    if method == "spes-h":
        return {**dataclasses.asdict(cfg.smh), "format": 2}
    return {"ig_steps": cfg.ig_steps} if canonical_method(method) == "integrated_gradients" else {}


def _explain(scorer: Seq2SeqScorer, method: str, kind: str, cfg: SaliencyConfig, attention: xr.Dataset,
             progress: bool) -> xr.Dataset:
    """Compute one kind's map for one utterance as a labeled Dataset."""
    n_audio = scorer.n_audio_frames
    t_enc = int(attention.sizes["enc_frame"])
    coords = _coords(attention)
    if method in ("spes-x", "spes-h"):
        res = (spes_smx(scorer, cfg.spes, progress=progress) if method == "spes-x"
               else spes_smh(scorer, cfg.smh, progress=progress))
        dims, cut = ((("token", "frame", "mel"), n_audio) if method == "spes-x" else (("token", "enc_frame"), t_enc))
        data = {"saliency": (dims, res.map[:, :cut].cpu().numpy()),
                "saliency_half": (("half", *dims), res.halves[:, :, :cut].cpu().numpy())}
        if res.convergence is not None:
            ks, rs = zip(*res.convergence) if res.convergence else ((), ())
            data["split_half_r"] = (("checkpoint",), np.asarray(rs, dtype=np.float32))
            coords = {**coords, "checkpoint_masks": ("checkpoint", np.asarray(ks, dtype=np.int64))}
        return xr.Dataset(data, coords=coords, attrs={"n_masks_done": int(res.n_masks_done)})
    on = kind[-1]
    g = attribute_gradients(scorer, method, on=on, ig_steps=cfg.ig_steps, token_batch=cfg.token_batch)
    dims = ("token", "frame", "mel") if on == "x" else ("token", "enc_frame")
    cut = (slice(None), slice(0, n_audio)) if on == "x" else (slice(None), slice(0, t_enc))
    data = {"signed": (dims, g.signed[cut].cpu().numpy()), "absolute": (dims, g.absolute[cut].cpu().numpy()),
            "log_probs": (("token",), g.log_probs.detach().cpu().numpy())}
    if g.convergence_delta is not None:
        data["convergence_delta"] = (("token",), g.convergence_delta.cpu().numpy())
    return xr.Dataset(data, coords=coords)


def compute_saliency(loaded: LoadedModel, data, out: str | Path | ResultStore, cfg: SaliencyConfig | None = None,
                     decoding: DecodeConfig | None = None, progress: bool = True) -> RunReport:
    """Compute every configured map for every item, explaining the hypothesis stored in its ``attention`` group.

    Items without one are extracted first, with ``decoding`` or (None) the decoding options the store was made
    with; a stored hypothesis is never replaced: one decoded with other options than ``decoding`` is an
    :class:`~xattn_utils.errors.InputError` naming the utterance (see
    :func:`~xattn_utils.extraction.extract.ensure_attention`).
    """
    cfg = cfg or SaliencyConfig()

    def plan(uid: str, audio: np.ndarray, digest: str, attention: xr.Dataset):
        scorer = []  # made once, by the first group not stored

        def compute(method: str, kind: str) -> xr.Dataset:
            if not scorer:
                scorer.append(scorer_for(loaded, audio, attention))
            ds = _explain(scorer[0], method, kind, cfg, attention, progress)
            return ds.assign_attrs(n_audio_frames=int(scorer[0].n_audio_frames),
                                   frames_per_encoder_frame=int(scorer[0].frames_per_encoder_frame))

        for method in cfg.methods:
            params = _method_params(method, cfg)
            for kind in kinds_for(method, cfg.gradient_spaces):
                key = stable_hash(kind, loaded.weights_sha256, loaded.input_mode, digest,
                                  attention.attrs.get("cache_key"), params)
                yield Planned(kind, key, {"method": method, "kind": kind, **params},
                              lambda method=method, kind=kind: compute(method, kind), seed=params.get("seed"))

    return explain_store(loaded, data, out, plan, "saliency", decoding, desc="saliency", progress=progress)
