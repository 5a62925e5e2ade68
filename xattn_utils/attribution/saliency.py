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

Methods, store kinds, the names the analysis gives the maps, each method's compute function and the configuration
it is keyed by are one entry each in :data:`xattn_utils.maps.REGISTRY`; ``compute_saliency`` runs whatever it
holds (the functions: :mod:`xattn_utils.attribution.methods`).

Input-space maps cover the frames holding audio only (padding is never occluded and carries no relevance).
Each group's cache key hashes the model, the audio, the hypothesis and the method's parameters; a re-run skips
finished groups. A failing utterance is recorded in the store's ``errors.json`` and the run goes on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .. import maps
from ..errors import XattnError
from ..extraction.extract import DecodeConfig, RunReport
from ..extraction.forced import Seq2SeqScorer
from ..models.loader import LoadedModel
from ..provenance import stable_hash
from ..store import ResultStore
from .methods import compute_function
from .per_utterance import Planned, explain_store
from .spes import SMHConfig, SPESConfig, resolved


@dataclass
class SaliencyConfig:
    """Which maps to compute, with what parameters (all recorded in provenance).

    Attributes:
        methods: any of the registry's methods (:func:`xattn_utils.maps.methods`).
        spes: SPES settings for SMX (``SPESConfig.published()`` for the paper's 20k masks).
        smh: SPES settings for SMH.
        ig_steps: integration steps for integrated gradients.
        gradient_spaces: where gradient methods attribute: "x" (input), "h" (encoder output), or both.
        token_batch: gradient rows per backward pass (memory bound on long padded inputs).
        options: method name -> its own parameters, for a method whose settings are not fields here (added to
            its provenance and cache key).
    """

    methods: tuple[str, ...] = ("spes-x", "spes-h")
    spes: SPESConfig = field(default_factory=SPESConfig.cpu)
    smh: SMHConfig = field(default_factory=SMHConfig)
    ig_steps: int = 32
    gradient_spaces: tuple[str, ...] = ("x", "h")
    token_batch: int | None = 8
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        known = maps.methods()
        bad = [m for m in (*self.methods, *self.options) if m not in known]
        if bad:
            raise XattnError(f"unknown saliency method(s) {bad}; choose from {', '.join(known)}")


def kinds_for(method: str, spaces=("x", "h")) -> list[str]:
    """Store kinds a method writes (see :mod:`xattn_utils.maps`)."""
    return [m.kind for m in maps.by_method(method, spaces)]


def scorer_for(loaded: LoadedModel, audio: np.ndarray, attention: xr.Dataset) -> Seq2SeqScorer:
    """The forced scorer of a stored hypothesis (prompt and tokens from its ``attention`` group)."""
    hyp = [int(t) for t in attention.token_id.values[:-1]]
    prompt = [int(t) for t in attention.prompt_ids.values]
    return Seq2SeqScorer(loaded, loaded.features(audio), prompt, hyp)


def _method_params(method: str, cfg: SaliencyConfig) -> dict:
    """What keys a method's maps: the config fields its registry entry names, its options, its format."""
    entry = maps.method(method)
    out: dict[str, Any] = {}
    for name in entry.params:
        value = getattr(cfg, name)
        out.update(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else {name: value})
    out.update(cfg.options.get(method, {}))
    return out if entry.format is None else {**out, "format": entry.format}


def _explain(scorer: Seq2SeqScorer, method: str, kind: str, cfg: SaliencyConfig, attention: xr.Dataset,
             progress: bool) -> xr.Dataset:
    """Compute one kind's map for one utterance as a labeled Dataset, by the method's registry entry."""
    entry = maps.method(method)
    return compute_function(entry)(scorer, maps.by_kind(kind), cfg, attention, progress)


def compute_saliency(loaded: LoadedModel, data, out: str | Path | ResultStore, cfg: SaliencyConfig | None = None,
                     decoding: DecodeConfig | None = None, progress: bool = True) -> RunReport:
    """Compute every configured map for every item, explaining the hypothesis stored in its ``attention`` group.

    Items without one are extracted first, with ``decoding`` or (None) the decoding options the store was made
    with; a stored hypothesis is never replaced: one decoded with other options than ``decoding`` is an
    :class:`~xattn_utils.errors.InputError` naming the utterance (see
    :func:`~xattn_utils.extraction.extract.ensure_attention`).
    """
    cfg = cfg or SaliencyConfig()
    # "auto" precision resolved on the model's device: provenance and cache keys name what was computed
    cfg = dataclasses.replace(cfg, spes=resolved(cfg.spes, loaded.device), smh=resolved(cfg.smh, loaded.device))

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


def items_with_saliency(loaded: LoadedModel, items, out: str | Path | ResultStore, cfg: SaliencyConfig | None = None,
                        n_missing: int = 2, progress: bool = True):
    """The ``items`` (a manifest DataFrame) whose first configured map is stored in ``out``, in their order.

    A store that holds that map for none of them (a notebook run on its own, without the study's saliency step)
    gets it first: ``cfg`` is computed on the first ``n_missing`` items. A store holding it for some keeps those
    and computes nothing.
    """
    cfg = cfg or SaliencyConfig()
    kind = kinds_for(cfg.methods[0], cfg.gradient_spaces)[0]

    def stored() -> set[str]:
        st = out if isinstance(out, ResultStore) else ResultStore(out)
        return {u for u in st.utterances() if kind in st.kinds(u)}

    have = stored()
    if not have & set(items["id"]):
        compute_saliency(loaded, items.head(n_missing), out, cfg, progress=progress)
        have = stored()
    return items[items["id"].isin(have)].reset_index(drop=True)
