"""The loop every explanation run shares: per utterance, its stored hypothesis, its audio, its groups, resumably.

``explain_store(loaded, items, store, plan)`` first makes sure every item has its ``attention`` group
(:func:`~xattn_utils.extraction.extract.ensure_attention`: stored hypotheses are used as is, missing ones extracted
with the store's decoding options), then for each utterance asks ``plan`` which groups it wants, skips those stored
with the same cache key, computes and writes the others with provenance. A failing utterance is recorded in the
store's ``errors.json`` and the run goes on; a full disk stops it (finished groups are kept).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from ..data.audio import load_utterance_audio
from ..errors import DiskFullError, XattnError
from ..extraction.extract import KIND as ATTENTION
from ..extraction.extract import (
    DecodeConfig,
    RunReport,
    ensure_attention,
    items_from,
)
from ..models.loader import LoadedModel
from ..provenance import provenance
from ..store import ResultStore


@dataclass
class Planned:
    """One group an utterance wants.

    Attributes:
        kind: store kind to write.
        key: its cache key (a stored group with this key is kept).
        params: its parameters, recorded in provenance.
        compute: makes the group's Dataset (called only when the group is not stored).
        seed: recorded in provenance.
    """

    kind: str
    key: str
    params: dict
    compute: Callable[[], xr.Dataset]
    seed: int | None = None


# plan(uid, audio, audio sha256, attention group) -> the groups this utterance wants
Plan = Callable[[str, np.ndarray, str, xr.Dataset], Iterable[Planned]]


def explain_store(loaded: LoadedModel, data, out: str | Path | ResultStore, plan: Plan, error_kind: str,
                  decoding: DecodeConfig | None = None, desc: str = "explain", progress: bool = True) -> RunReport:
    """Run ``plan`` over every item with its stored hypothesis (see module docstring).

    Args:
        decoding: decoding options for items without an ``attention`` group (None: the store's); a stored
            hypothesis decoded otherwise is an InputError (:func:`ensure_attention`).
        error_kind: the kind failures are recorded under in ``errors.json``.
    Returns: the run's report (done: an utterance wrote at least one group; skipped: all were stored).
    """
    store = out if isinstance(out, ResultStore) else ResultStore(out)
    items = items_from(data)
    store.clean_orphans()  # every run start: temporaries of killed writers (extract's own start cleans too)
    pre = ensure_attention(loaded, items, store, decoding)
    report = RunReport(failed=dict(pre.failed), flagged=dict(pre.flagged), redone=dict(pre.redone))
    for _, row in tqdm(items.iterrows(), total=len(items), desc=desc, unit="utt", disable=not progress):
        uid = str(row["id"])
        if uid in report.failed:
            continue
        try:
            attention = store.load(uid, ATTENTION)
            audio, digest = load_utterance_audio(row)
            did = False
            for group in plan(uid, audio, digest, attention):
                if store.has(uid, group.kind, group.key):
                    continue
                damage = store.damage(uid, group.kind)
                if damage is not None:
                    report.redone[f"{uid}/{group.kind}"] = f"{uid} {group.kind} damaged ({damage})"
                ds = group.compute()
                ds.attrs["provenance"] = provenance(model=loaded.provenance(), data={"id": uid, "sha256": digest},
                                                    params=group.params, seed=group.seed)
                store.write(uid, group.kind, ds, group.key)
                did = True
            (report.done if did else report.skipped).append(uid)
        except DiskFullError:
            raise  # the run stops; finished groups are kept
        except XattnError as err:
            msg = str(err) if str(err).startswith(uid) else f"{uid}: {err}"
            report.failed[uid] = msg
            store.record_error(uid, error_kind, msg)
    return report
