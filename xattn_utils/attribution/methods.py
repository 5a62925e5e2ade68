"""The compute functions of the saliency methods in :data:`xattn_utils.maps.REGISTRY`, and how an entry's is found.

Each function computes one map kind for one utterance as a labeled Dataset, with the signature every registry entry's
``compute`` has: ``f(scorer, kind, cfg, attention, progress)``, ``scorer`` the utterance's forced scorer
(:class:`~xattn_utils.extraction.forced.Seq2SeqScorer`), ``kind`` the :class:`~xattn_utils.maps.MapKind` to write,
``cfg`` the :class:`~xattn_utils.attribution.saliency.SaliencyConfig`, ``attention`` the stored ``attention`` group
whose hypothesis is explained (its token coordinates label the map).

Why here and not in :mod:`xattn_utils.maps`: the registry is a foundation module that the CLI's parser and every
step read without loading torch; the functions need the attribution step (SPES, captum). The registry names them,
:func:`compute_function` resolves the name when the method runs.

``I`` scored tokens, ``T`` input frames (cut to the audio), ``F`` features, ``T'`` encoder frames holding audio.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np
import xarray as xr

from ..errors import XattnError
from ..maps import MapKind, Method
from .gradients import attribute_gradients
from .spes import spes_smh, spes_smx


def compute_function(entry: Method) -> Callable:
    """The callable of a registry entry's ``compute`` (a dotted ``module.function`` name is imported)."""
    if callable(entry.compute):
        return entry.compute
    module, _, name = str(entry.compute).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise XattnError(f"saliency method {entry.name!r}: its compute function {entry.compute!r} does not resolve "
                         f"({e}); fix the entry in xattn_utils.maps.REGISTRY") from None


def map_coords(attention: xr.Dataset) -> dict:
    """The token coordinates (``token``, ``token_id``, ``token_str``) of a stored ``attention`` group."""
    return {k: attention.coords[k] for k in ("token", "token_id", "token_str")}


def spes_map(scorer, kind: MapKind, cfg, attention: xr.Dataset, progress: bool) -> xr.Dataset:
    """SPES on X (``cfg.spes``: ``saliency`` (I, T, F)) or on H (``cfg.smh``: ``saliency`` (I, T')), with the two
    half maps ``saliency_half`` (2, ...), the split-half curve ``split_half_r`` when tracked, ``n_masks_done``."""
    coords = map_coords(attention)
    if kind.space == "x":
        res = spes_smx(scorer, cfg.spes, progress=progress)
        dims, cut = ("token", "frame", "mel"), scorer.n_audio_frames
    else:
        res = spes_smh(scorer, cfg.smh, progress=progress)
        dims, cut = ("token", "enc_frame"), int(attention.sizes["enc_frame"])
    data = {"saliency": (dims, res.map[:, :cut].cpu().numpy()),
            "saliency_half": (("half", *dims), res.halves[:, :, :cut].cpu().numpy())}
    if res.convergence is not None:
        ks, rs = zip(*res.convergence) if res.convergence else ((), ())
        data["split_half_r"] = (("checkpoint",), np.asarray(rs, dtype=np.float32))
        coords = {**coords, "checkpoint_masks": ("checkpoint", np.asarray(ks, dtype=np.int64))}
    return xr.Dataset(data, coords=coords, attrs={"n_masks_done": int(res.n_masks_done)})


def gradient_map(scorer, kind: MapKind, cfg, attention: xr.Dataset, progress: bool) -> xr.Dataset:
    """The gradient method ``kind.method`` in ``kind.space`` (``cfg.ig_steps``, ``cfg.token_batch``): ``signed`` and
    ``absolute`` (I, T, F) or (I, T'), ``log_probs`` (I,), IG's ``convergence_delta`` (I,)."""
    on = kind.space
    g = attribute_gradients(scorer, kind.method, on=on, ig_steps=cfg.ig_steps, token_batch=cfg.token_batch)
    dims = ("token", "frame", "mel") if on == "x" else ("token", "enc_frame")
    cut = scorer.n_audio_frames if on == "x" else int(attention.sizes["enc_frame"])
    data = {"signed": (dims, g.signed[:, :cut].cpu().numpy()), "absolute": (dims, g.absolute[:, :cut].cpu().numpy()),
            "log_probs": (("token",), g.log_probs.detach().cpu().numpy())}
    if g.convergence_delta is not None:
        data["convergence_delta"] = (("token",), g.convergence_delta.cpu().numpy())
    return xr.Dataset(data, coords=map_coords(attention))
