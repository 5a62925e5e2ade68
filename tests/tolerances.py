"""Float tolerances derived from the arithmetic a test checks, not from the machine it was first run on.

A computation of ``n_ops`` accumulated roundings on values of magnitude ``scale`` is within about
``n_ops · eps · scale`` of the exact result (first-order bound; a length-n sum or dot product counts n roundings,
a product of L matrices one per layer on top of its sums). Each rounding is counted at the full machine epsilon,
twice the unit roundoff eps/2 of the textbook bound (Higham, *Accuracy and Stability of Numerical Algorithms*, §3),
so the helpers carry a factor-2 margin and do not depend on summation order, SIMD width or thread count.
Every call site says in a comment what it counts.
"""
from __future__ import annotations

EPS32 = 2.0 ** -23  # float32 machine epsilon, torch.finfo(torch.float32).eps ≈ 1.19e-7
EPS64 = 2.0 ** -52  # float64 machine epsilon, np.finfo(np.float64).eps ≈ 2.22e-16


def f32(n_ops: float, scale: float = 1.0) -> float:
    """Tolerance of ``n_ops`` float32 roundings on values of magnitude ``scale``: ``n_ops · 2⁻²³ · scale``."""
    return n_ops * EPS32 * scale


def f64(n_ops: float, scale: float = 1.0) -> float:
    """Tolerance of ``n_ops`` float64 roundings on values of magnitude ``scale``: ``n_ops · 2⁻⁵² · scale``."""
    return n_ops * EPS64 * scale


def printed(decimals: int) -> float:
    """Largest gap between a number and its text printed with ``decimals`` decimals (half a unit in the last place),
    plus the float64 rounding of parsing that text back."""
    return 0.5 * 10.0 ** -decimals + f64(1)


def measured(value: float, margin: float) -> float:
    """A bound measured on the computation (say where, how often and on what in a comment), times ``margin``."""
    return value * margin
