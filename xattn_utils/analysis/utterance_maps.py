"""One utterance's maps from a result store, on one grid: cross-attention selections and saliency references.

``UtteranceMaps.from_store(store, uid, cfg)`` reads the utterance's ``attention`` group and every saliency group
stored for it (kinds and names from :mod:`xattn_utils.maps`), keeps the scored rows, and holds the maps as
stored: CA selections ``(I, T')``, input-space references ``(I, T, F)``, encoder-space references ``(I, T')``, and
the two halves of sampled (SPES) references. Then

* ``.on_encoder_grid()`` pools input-space maps to encoder frames (``mean`` for SPES, ``sum`` for gradient amounts,
  as the registry says, unless the config chose otherwise) and cuts every map to the ``T'`` encoder frames holding
  audio;
* ``.at_resolution(ms)`` pools every ``(I, T')`` map (CA, references, halves) to frames of ``ms`` milliseconds, a
  multiple of the encoder frame (Whisper: 20 ms; the paper's Conformer: 40 ms);
* ``.normalized(how)`` normalizes each token row (:func:`xattn_utils.attribution.grids.normalize_rows`);
* ``.plot()`` draws CA against the references, one token × time panel per map;
* ``.as_dict()`` is the entry :func:`xattn_utils.analysis.agreement.agreement_table` takes.

``I`` scored tokens, ``T`` input frames, ``F`` features, ``T'`` encoder frames, ``k`` input frames per encoder frame.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from ..attribution.grids import encoder_grid, normalize_rows, pool_to_encoder_frames
from ..errors import XattnError
from ..extraction.extract import KIND as ATTENTION
from ..maps import HALVES_VARIABLE, by_name, map_kinds
from .agreement import NORM_PREFIX, ca_selections
from .composed import store_composed
from .plots import plot_token_map


@dataclass
class MapsConfig:
    """Which maps of an utterance to build and how to put them on the grid (recorded in provenance).

    Attributes:
        per_head: one CA entry per (layer, head) (``L{l}H{h}``) besides the aggregates.
        norm_based: also every CA entry weighted by its value vectors' norms (``norm:`` prefix; Kobayashi et al.
            2020).
        special: ``exclude`` or ``include`` the end-of-text row.
        normalize: per token row: ``zscore`` | ``minmax`` | ``sum`` | ``none``.
        pool: SPES (mean) maps on X to encoder frames: ``mean`` over the cells present | ``max`` (2-D) | ``sum``.
        gradient_pool: gradient (additive) maps on X to encoder frames: ``sum`` | ``mean`` | ``max``.
        mixing: compose these methods' stored encoder ``mixing`` maps with ``mixing_aggregates`` into extra CA
            entries ``method∘aggregate`` (``method[k]∘aggregate``: the top k layers, with ``mixing_depths``;
            ``method-blur∘aggregate`` with ``mixing_control``); see :mod:`xattn_utils.analysis.composed`.
    """

    per_head: bool = True
    norm_based: bool = True
    special: str = "exclude"
    normalize: str = "zscore"
    pool: str = "mean"  # the registry's pooling of SPES maps
    gradient_pool: str = "sum"  # the registry's pooling of gradient maps
    mixing: tuple[str, ...] = ()
    mixing_aggregates: tuple[str, ...] = ("all", "last_layer", "alignment_heads", "norm:all", "smh")
    mixing_depths: bool = False
    mixing_control: bool = False

    def pool_for(self, name: str) -> str:
        """How reference ``name`` is pooled to encoder frames: ``gradient_pool`` for additive maps, else ``pool``."""
        return self.gradient_pool if by_name(name).additive else self.pool


def alignment_heads(attention: xr.Dataset) -> list[tuple[int, int]] | None:
    """The model's alignment heads ``[(layer, head), ...]`` recorded with a stored ``attention`` group, or None when
    the model has none (only Whisper checkpoints name them)."""
    heads = attention.attrs.get("provenance", {}).get("model", {}).get("alignment_heads")
    return [(int(l), int(h)) for l, h in heads] if heads else None


@dataclass
class UtteranceMaps:
    """The maps of one utterance.

    Attributes:
        uid: the utterance id.
        attention: CA entry name -> ``(I, T')`` (aggregates, heads, ``norm:`` and composed entries).
        references: saliency map name (``smx``, ``ixg_x``, ...) -> ``(I, T, F)`` on input cells or ``(I, T')``.
        halves: sampled reference name -> its two independent half maps, shaped like the reference.
        tokens: the I token strings.
        n_audio_frames: input frames holding audio (``T``).
        frames_per_encoder_frame: ``k``.
        n_frames: encoder frames holding audio (``T'``, the grid's width).
        encoder_frame_s: seconds per encoder frame.
        pools: reference name -> pooling to encoder frames (default: the registry's).
        normalization: the per-row normalization applied (``none`` as stored).
    """

    uid: str
    attention: dict[str, np.ndarray]
    references: dict[str, np.ndarray]
    halves: dict[str, tuple[np.ndarray, np.ndarray]]
    tokens: list[str]
    n_audio_frames: int
    frames_per_encoder_frame: int
    n_frames: int
    encoder_frame_s: float
    pools: dict[str, str] = field(default_factory=dict)
    normalization: str = "none"

    @classmethod
    def from_store(cls, store, uid: str, cfg: MapsConfig | None = None) -> UtteranceMaps:
        """Every map stored for ``uid`` (needs its ``attention`` group), rows as ``cfg.special`` says."""
        cfg = cfg or MapsConfig()
        att = store.load(uid, ATTENTION)
        kinds = set(store.kinds(uid))
        rows = slice(0, att.sizes["token"] - 1) if cfg.special == "exclude" else slice(None)
        n_frames = int(att.sizes["enc_frame"])
        attention = _ca_entries(att, cfg)
        references, halves = {}, {}
        for mk in map_kinds():
            if mk.kind not in kinds:
                continue
            ds = store.load(uid, mk.kind)
            references[mk.name] = ds[mk.variable].values
            if mk.sampled and HALVES_VARIABLE in ds:
                halves[mk.name] = tuple(ds[HALVES_VARIABLE].values)
        if cfg.mixing:  # CA∘M (and SMH∘M): raw maps carried back through the encoder's mixing
            raw = {n: np.asarray(m)[:, :n_frames] for n, m in attention.items()}
            if "smh" in references:
                raw["smh"] = references["smh"][:, :n_frames]
            attention.update(store_composed(store, uid, raw, cfg.mixing, cfg.mixing_aggregates, cfg.mixing_depths,
                                            cfg.mixing_control))
        enc_time = att.enc_time.values
        return cls(uid=uid, attention={n: np.asarray(m)[rows] for n, m in attention.items()},
                   references={n: m[rows] for n, m in references.items()},
                   halves={n: (a[rows], b[rows]) for n, (a, b) in halves.items()},
                   tokens=[str(t) for t in att.token_str.values[rows]],
                   n_audio_frames=int(att.attrs["n_audio_frames"]),
                   frames_per_encoder_frame=int(att.attrs["frames_per_encoder_frame"]), n_frames=n_frames,
                   encoder_frame_s=float(enc_time[1] - enc_time[0]) if len(enc_time) > 1 else float("nan"),
                   pools={n: cfg.pool_for(n) for n in references})

    def pool_of(self, name: str) -> str:
        """The pooling of reference ``name`` (``pools``, else the registry's)."""
        return self.pools.get(name) or by_name(name).pool

    def on_encoder_grid(self) -> UtteranceMaps:
        """Every map as ``(I, T')`` float64, ``T' = n_frames``: input-space references (and halves) pooled by
        :meth:`pool_of`, every map cut to the encoder frames holding audio. Maps on the grid stay as they are."""
        def grid(m, pool="mean"):
            return encoder_grid(m, self.frames_per_encoder_frame, self.n_frames, pool=pool, normalize="none")

        return dataclasses.replace(
            self, attention={n: grid(m) for n, m in self.attention.items()},
            references={n: grid(m, self.pool_of(n)) for n, m in self.references.items()},
            halves={n: tuple(grid(h, self.pool_of(n)) for h in pair) for n, pair in self.halves.items()})

    def at_resolution(self, resolution_ms: float | None) -> UtteranceMaps:
        """Every map on frames of ``resolution_ms`` (None: the encoder's own), a whole multiple ``k`` of the encoder
        frame: each row's consecutive groups of ``k`` encoder frames pooled (a ragged last group over the frames it
        has). CA and mean/sum references by their ``mean`` over the group (a density, so a ragged group is not
        under-weighted; after per-row z-scoring a sum over full groups gives the same map), ``max``-pooled
        references by ``max`` (2-D max pooling at the coarser frame). Pools input-space maps first."""
        if resolution_ms is None:
            return self
        frame_ms = 1000.0 * self.encoder_frame_s
        k = round(resolution_ms / frame_ms) if np.isfinite(frame_ms) and frame_ms > 0 else 0
        if k < 1 or abs(k * frame_ms - resolution_ms) > 1e-6 * resolution_ms:
            raise XattnError(f"{self.uid}: resolution_ms={resolution_ms} is not a whole multiple of the encoder "
                             f"frame ({frame_ms:g} ms); use a multiple of it or None")
        maps = self.on_encoder_grid()
        if k == 1:
            return maps

        def pool(m, how="mean"):
            return pool_to_encoder_frames(np.asarray(m, dtype=np.float64), k, "max" if how == "max" else "mean")

        return dataclasses.replace(
            maps, attention={n: pool(m) for n, m in maps.attention.items()},
            references={n: pool(m, maps.pool_of(n)) for n, m in maps.references.items()},
            halves={n: tuple(pool(h, maps.pool_of(n)) for h in pair) for n, pair in maps.halves.items()},
            n_frames=-(-maps.n_frames // k), encoder_frame_s=maps.encoder_frame_s * k)

    def normalized(self, how: str = "zscore") -> UtteranceMaps:
        """Every map (and half) with each token row normalized (``zscore`` | ``minmax`` | ``sum`` | ``none``)."""
        return dataclasses.replace(
            self, attention={n: normalize_rows(m, how) for n, m in self.attention.items()},
            references={n: normalize_rows(m, how) for n, m in self.references.items()},
            halves={n: tuple(normalize_rows(h, how) for h in pair) for n, pair in self.halves.items()},
            normalization=how if how != "none" else self.normalization)

    def as_dict(self) -> dict:
        """``{name: map}`` of every CA entry and reference, plus ``n_frames``, ``tokens`` and ``halves``: an
        utterance's entry of :func:`~xattn_utils.analysis.agreement.agreement_table`."""
        return {**self.attention, **self.references, "n_frames": self.n_frames, "tokens": list(self.tokens),
                "halves": dict(self.halves)}

    def plot(self, attention: Sequence[str] = ("all",), references: Sequence[str] | None = None):
        """Figure: one token × time panel per CA entry in ``attention``, then per reference (default: all), on the
        encoder grid (pooled here if not yet). Returns the figure."""
        import matplotlib.pyplot as plt

        on_grid = self.on_encoder_grid()
        refs = list(on_grid.references) if references is None else list(references)
        missing = [n for n in attention if n not in on_grid.attention] + [r for r in refs
                                                                            if r not in on_grid.references]
        if missing:
            raise XattnError(f"{self.uid}: no map named {missing}; CA entries: {sorted(on_grid.attention)}, "
                             f"references: {sorted(on_grid.references)}")
        panels = [(f"CA {n}", on_grid.attention[n]) for n in attention]
        panels += [(r.upper() if by_name(r).sampled else r, on_grid.references[r]) for r in refs]
        label = "weight" if self.normalization == "none" else f"{self.normalization} per token"
        fig, axes = plt.subplots(len(panels), 1, figsize=(10, 0.3 * len(self.tokens) * len(panels) + 1.5),
                                 squeeze=False)
        for ax, (title, m) in zip(axes[:, 0], panels):
            plot_token_map(ax, m, self.tokens, self.encoder_frame_s, title, cbar_label=label)
        fig.suptitle(self.uid)
        fig.tight_layout()
        return fig


def _ca_entries(att: xr.Dataset, cfg: MapsConfig) -> dict[str, np.ndarray]:
    """Named ``(I, T')`` CA selections of a stored ``attention`` group (every row), and their norm-based twins."""
    ca = att.cross_attention.values
    heads = alignment_heads(att)
    out = dict(ca_selections(ca, per_head=cfg.per_head, alignment_heads=heads))
    if cfg.norm_based:
        weighted = ca * att.value_norms.values[:, :, None, :]
        out.update({f"{NORM_PREFIX}{n}": m for n, m in ca_selections(weighted, per_head=cfg.per_head,
                                                                      alignment_heads=heads).items()})
    return out
