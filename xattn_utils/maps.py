"""The saliency maps a result store can hold: each kind once, with every name it goes by.

A map is computed by a *method* (as ``xattn saliency --method`` and ``SaliencyConfig.methods`` spell it), stored in
a group of the store (its *kind*) and named in the analysis (agreement tables, faithfulness, timestamps) by its
*name*. This module is the one place that pairs them; every other module looks names up here.

==============  ==============  ==============  =====  =======  ========  ===============================
method          kind            name            space  sampled  additive  variable read by the analysis
==============  ==============  ==============  =====  =======  ========  ===============================
``spes-x``      ``spes_x``      ``smx``         x      yes      no        ``saliency`` (token, frame, mel)
``spes-h``      ``spes_h``      ``smh``         h      yes      no        ``saliency`` (token, enc_frame)
``saliency``    ``saliency_x``  ``saliency_x``  x      no       yes       ``absolute`` (token, frame, mel)
``ixg``         ``ixg_x``       ``ixg_x``       x      no       yes       ``absolute``
``ig``          ``ig_x``        ``ig_x``        x      no       yes       ``absolute``
``saliency``    ``saliency_h``  ``saliency_h``  h      no       yes       ``absolute`` (token, enc_frame)
``ixg``         ``ixg_h``       ``ixg_h``       h      no       yes       ``absolute``
``ig``          ``ig_h``        ``ig_h``        h      no       yes       ``absolute``
==============  ==============  ==============  =====  =======  ========  ===============================

*space*: ``x`` maps cover input cells ``(I, T, F)`` and are pooled to encoder frames before comparing; ``h`` maps
are on encoder frames ``(I, T')`` already. *sampled*: SPES maps are estimates from a budget of random masks and are
stored with two independent halves (``saliency_half``). *additive*: a gradient cell is an amount (pooled by
``sum``); a SPES cell is a mean KL (pooled by ``mean``); see :mod:`xattn_utils.attribution.grids`.

A foundation module: it imports no subpackage, so every stage (attribution, analysis, runs) may import it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import XattnError

SPACES = ("x", "h")
HALVES_VARIABLE = "saliency_half"  # (half, ...) the two independent halves of a sampled map, beside its variable


@dataclass(frozen=True)
class MapKind:
    """One kind of saliency map and its names.

    Attributes:
        method: the saliency method that computes it (``spes-x``, ``ixg``, ...).
        kind: its store group (``spes_x``, ``ixg_x``, ...).
        name: its name in the analysis (``smx``, ``ixg_x``, ...).
        space: ``x`` (input cells ``(I, T, F)``) or ``h`` (encoder frames ``(I, T')``).
        sampled: estimated from a sampling budget, stored with two independent halves (``saliency_half``).
        additive: its cells are amounts (gradients: pooled by sum), not means (SPES: pooled by mean).
        variable: the data variable of the store group the analysis reads.
    """

    method: str
    kind: str
    name: str
    space: str
    sampled: bool
    additive: bool
    variable: str

    @property
    def pool(self) -> str:
        """Default pooling of an input-space map to encoder frames: ``sum`` (amounts) or ``mean`` (means)."""
        return "sum" if self.additive else "mean"


def _spes(space: str) -> MapKind:
    return MapKind(f"spes-{space}", f"spes_{space}", f"sm{space}", space, sampled=True, additive=False,
                   variable="saliency")


def _gradient(method: str, space: str) -> MapKind:
    return MapKind(method, f"{method}_{space}", f"{method}_{space}", space, sampled=False, additive=True,
                   variable="absolute")


# in the order the analysis lists references: SPES first, then gradients on X, then gradients on H
MAP_KINDS: tuple[MapKind, ...] = (
    _spes("x"), _spes("h"),
    *(_gradient(m, "x") for m in ("saliency", "ixg", "ig")),
    *(_gradient(m, "h") for m in ("saliency", "ixg", "ig")),
)
METHODS: tuple[str, ...] = tuple(dict.fromkeys(m.method for m in MAP_KINDS))
KINDS: tuple[str, ...] = tuple(m.kind for m in MAP_KINDS)
NAMES: tuple[str, ...] = tuple(m.name for m in MAP_KINDS)

_BY_KIND = {m.kind: m for m in MAP_KINDS}
_BY_NAME = {m.name: m for m in MAP_KINDS}


def by_kind(kind: str) -> MapKind:
    """The map stored in group ``kind`` (``spes_x``, ``ig_h``, ...)."""
    if kind not in _BY_KIND:
        raise XattnError(f"{kind!r} is not a saliency map kind; the store's map kinds are {', '.join(KINDS)}")
    return _BY_KIND[kind]


def by_name(name: str) -> MapKind:
    """The map the analysis calls ``name`` (``smx``, ``ig_x``, ...)."""
    if name not in _BY_NAME:
        raise XattnError(f"{name!r} is not a saliency map name; the analysis names maps {', '.join(NAMES)}")
    return _BY_NAME[name]


def by_method(method: str, spaces=SPACES) -> tuple[MapKind, ...]:
    """The maps ``method`` writes when gradient methods attribute in ``spaces`` (in that order).

    A method with a single space (SPES: ``spes-x``, ``spes-h``) writes its one map whatever ``spaces`` says.
    """
    own = [m for m in MAP_KINDS if m.method == method]
    if not own:
        raise XattnError(f"unknown saliency method {method!r}; choose from {', '.join(METHODS)}")
    bad = [s for s in spaces if s not in SPACES]
    if bad:
        raise XattnError(f"unknown space(s) {bad}: use 'x' (input) and/or 'h' (encoder output)")
    if len({m.space for m in own}) == 1:
        return tuple(own)
    return tuple(m for s in spaces for m in own if m.space == s)
