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


class StoreError(XattnError):
    """A result store that is missing, or a stored group that is missing, damaged or cannot be written."""


class MissingResultError(StoreError, KeyError):
    """A store lacks the result asked for (also a ``KeyError``, as ``store.load`` always raised)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingStoreError(StoreError, FileNotFoundError):
    """No result store at the path given (also a ``FileNotFoundError``, as ``open_store`` always raised)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DamagedResultError(StoreError):
    """A stored group fails its checksums (a chunk deleted, truncated or changed since it was written)."""


class DiskFullError(StoreError):
    """No space left while writing: the run stops; everything finished before is kept."""


class SweepError(XattnError, ValueError):
    """A sweep file that cannot be expanded into runs (also a ``ValueError``, as it always was)."""
