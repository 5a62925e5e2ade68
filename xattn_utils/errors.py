"""Errors that name the item at fault and say what to do.

Every user-facing failure in xattn raises a subclass of :class:`XattnError`; the command line prints its message on
one line and exits non-zero, and sweeps record it against the item and go on with the rest.
"""
from __future__ import annotations


class XattnError(Exception):
    """Base class: a problem with an input the user can fix (the message says how)."""


class InputError(XattnError):
    """Bad audio or manifest row: missing, corrupt, empty, wrong sample rate, too long, checksum mismatch."""


class ModelError(XattnError):
    """Unknown model id, unreachable hub, or a model that is not an encoder-decoder speech model."""


class HypothesisError(XattnError):
    """The model produced an empty hypothesis, so there is nothing to explain."""
