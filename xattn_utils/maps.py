"""The saliency methods and the maps they write: one registry, one entry per method, every name each map goes by.

A map is computed by a *method* (as ``xattn saliency --method`` and ``SaliencyConfig.methods`` spell it), stored in
a group of the store (its *kind*) and named in the analysis (agreement tables, faithfulness, timestamps) by its
*name*. :data:`REGISTRY` holds one :class:`Method` per method: its CLI help, the maps it writes (:class:`MapKind`),
the function that computes them and the configuration it is keyed by. Every other module looks methods, kinds and
names up here, at call time (the functions below), so an entry added to the registry is a choice of the CLI, a
method :func:`~xattn_utils.attribution.saliency.compute_saliency` runs and a reference of the agreement table.

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

A foundation module: it imports no subpackage, so every stage (attribution, analysis, runs) and the CLI's parser
may import it without loading torch. That is why an entry names its compute function by its dotted name (a
function of :mod:`xattn_utils.attribution.methods` for the built-in methods) rather than holding it: the
attribution step resolves the name (:func:`xattn_utils.attribution.methods.compute_function`) when it runs the
method. A callable is accepted too (a method defined outside the package, e.g. in a test).
"""
from __future__ import annotations

from collections.abc import Callable
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


@dataclass(frozen=True)
class Method:
    """One saliency method: everything the CLI, the saliency run and the analysis need to know about it.

    Attributes:
        name: as ``--method`` and ``SaliencyConfig.methods`` spell it.
        help: one line for ``xattn saliency --help``.
        kinds: the maps it writes, one per space it attributes in (a method with one space writes that one map
            whatever ``SaliencyConfig.gradient_spaces`` says).
        compute: ``f(scorer, kind, cfg, attention, progress) -> xarray.Dataset``, the map of one kind for one
            utterance (dims ``(token, frame, mel)`` in space x, ``(token, enc_frame)`` in space h, holding the
            kind's ``variable``), as the dotted name of a function or the function itself.
        params: the :class:`~xattn_utils.attribution.saliency.SaliencyConfig` fields it is keyed by (recorded in
            provenance and hashed into the cache key): a dataclass field contributes its fields, any other its value;
            ``SaliencyConfig.options[name]`` (a new method's own parameters) is added when given.
        format: a version of the stored layout, hashed into the key (raise it to recompute stored groups).
    """

    name: str
    help: str
    kinds: tuple[MapKind, ...]
    compute: str | Callable
    params: tuple[str, ...] = ()
    format: int | None = None


def spes_kind(space: str) -> MapKind:
    """The map SPES writes in ``space``: method ``spes-x`` / ``spes-h``, analysis name ``smx`` / ``smh``."""
    return MapKind(f"spes-{space}", f"spes_{space}", f"sm{space}", space, sampled=True, additive=False,
                   variable="saliency")


def gradient_kind(method: str, space: str) -> MapKind:
    """The map a gradient method writes in ``space``: kind and name ``{method}_{space}``, variable ``absolute``."""
    return MapKind(method, f"{method}_{space}", f"{method}_{space}", space, sampled=False, additive=True,
                   variable="absolute")


def _gradient(name: str, help: str, params: tuple[str, ...] = ()) -> Method:
    return Method(name, help, tuple(gradient_kind(name, s) for s in SPACES),
                  "xattn_utils.attribution.methods.gradient_map", params)


REGISTRY: tuple[Method, ...] = (
    Method("spes-x", "SPES occlusion saliency on the log-mel input X (SMX, token x frame x mel)", (spes_kind("x"),),
           "xattn_utils.attribution.methods.spes_map", ("spes",), format=2),
    Method("spes-h", "SPES occlusion saliency on the encoder output H (SMH, token x encoder frame)", (spes_kind("h"),),
           "xattn_utils.attribution.methods.spes_map", ("smh",), format=2),
    _gradient("saliency", "gradient saliency |d log p / dx| on X and H"),
    _gradient("ixg", "input x gradient on X and H"),
    _gradient("ig", "integrated gradients (--ig-steps) on X and H", ("ig_steps",)),
)


def methods() -> tuple[str, ...]:
    """Every method's name, in the registry's order."""
    return tuple(m.name for m in REGISTRY)


def method(name: str) -> Method:
    """The registry entry of method ``name``."""
    for m in REGISTRY:
        if m.name == name:
            return m
    raise XattnError(f"unknown saliency method {name!r}; choose from {', '.join(methods())}")


def map_kinds() -> tuple[MapKind, ...]:
    """Every map kind, in the order the analysis lists references: sampled (SPES) maps first, then the others on X,
    then on H (each group in the registry's order)."""
    every = [k for m in REGISTRY for k in m.kinds]
    return tuple(sorted(every, key=lambda k: (not k.sampled, 0 if k.sampled else SPACES.index(k.space))))


def kinds() -> tuple[str, ...]:
    """Every store kind a saliency method writes."""
    return tuple(k.kind for k in map_kinds())


def names() -> tuple[str, ...]:
    """Every map's analysis name."""
    return tuple(k.name for k in map_kinds())


def by_kind(kind: str) -> MapKind:
    """The map stored in group ``kind`` (``spes_x``, ``ig_h``, ...)."""
    for k in map_kinds():
        if k.kind == kind:
            return k
    raise XattnError(f"{kind!r} is not a saliency map kind; the store's map kinds are {', '.join(kinds())}")


def by_name(name: str) -> MapKind:
    """The map the analysis calls ``name`` (``smx``, ``ig_x``, ...)."""
    for k in map_kinds():
        if k.name == name:
            return k
    raise XattnError(f"{name!r} is not a saliency map name; the analysis names maps {', '.join(names())}")


def by_method(name: str, spaces=SPACES) -> tuple[MapKind, ...]:
    """The maps method ``name`` writes when it attributes in ``spaces`` (in that order).

    A method with a single space (SPES: ``spes-x``, ``spes-h``) writes its one map whatever ``spaces`` says.
    """
    own = method(name).kinds
    bad = [s for s in spaces if s not in SPACES]
    if bad:
        raise XattnError(f"unknown space(s) {bad}: use 'x' (input) and/or 'h' (encoder output)")
    if len({m.space for m in own}) == 1:
        return tuple(own)
    return tuple(m for s in spaces for m in own if m.space == s)


def methods_help() -> str:
    """One line per method, ``name: help``, for the CLI's ``--method``."""
    return "; ".join(f"{m.name}: {m.help}" for m in REGISTRY)
