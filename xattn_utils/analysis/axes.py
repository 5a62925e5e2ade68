"""The paper's axes across runs: does agreement change with the language, the task, the model's scale?

A sweep's collected agreement table (one run per point: model, language, task) holds per-utterance Pearson values
of each cross-attention aggregate with each saliency map, and each sampled map's per-utterance split-half
agreement. An :class:`Axis` names the run parameter that changes between two levels and the ones held fixed; the
axis table gives, per level, the Fisher-mean Pearson with a bootstrap interval over utterances, the map's
reliability and the noise-corrected value, and the difference between the two levels with its interval. When the
levels share utterances (the task axis on the same Italian audio; the scale axis on the English utterances both
models explained), both levels are reported on the shared ones and the difference is a paired bootstrap; otherwise
(the language axis) each level uses all its utterances and the resamples are independent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import XattnError
from .agreement import bootstrap_interval, dataset_aggregate, dataset_corrected


@dataclass(frozen=True)
class Axis:
    """Two levels of one run parameter, the others fixed; the difference reported is ``levels[1] - levels[0]``."""

    name: str
    vary: str
    levels: tuple[str, str]
    fixed: dict = field(default_factory=dict)
    note: str = ""


PAPER_AXES = (
    Axis("language", "language", ("en", "it"), {"model": "bundled:whisper-base", "task": "transcribe"},
         "Whisper base transcribing English vs Italian speech (different utterances)"),
    Axis("task", "task", ("transcribe", "translate"), {"model": "bundled:whisper-base", "language": "it"},
         "Whisper base on the same Italian audio: transcription (ASR) vs translation into English (ST)"),
    Axis("scale", "model", ("bundled:whisper-tiny.en", "bundled:whisper-base"),
         {"language": "en", "task": "transcribe"},
         "tiny.en (39M, English only) vs base (74M, multilingual) on English: scale and multilinguality change "
         "together"),
)


def _select(collected: pd.DataFrame, axis: Axis, level: str) -> pd.DataFrame:
    """Utterance-level rows of the runs at one level of the axis."""
    keep = (collected["level"] == "utterance") & (collected[axis.vary].astype(str) == str(level))
    for k, v in axis.fixed.items():
        keep &= collected[k].astype(str) == str(v)
    return collected[keep]


def _per_utterance(rows: pd.DataFrame, reference: str, attention: str) -> tuple[pd.Series, pd.Series]:
    """(Pearson of ``attention`` with ``reference``, the reference's split-half r), each indexed by utterance."""
    obs = rows[(rows["reference"] == reference) & (rows["measure"] == "pearson") & (rows["attention"] == attention)]
    half = rows[(rows["reference"] == reference) & (rows["measure"] == "split_half")]
    return (obs.groupby("utterance")["value"].mean(), half.groupby("utterance")["value"].mean())


def axis_table(collected: pd.DataFrame, axes: tuple[Axis, ...] = PAPER_AXES, references=("smx", "smh"),
               attention: str = "all", n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Per axis, reference and level: n utterances, Pearson [CI], reliability, corrected [CI]; then one row per
    axis and reference for the difference between the levels (``level`` = "b − a", Pearson column and CI).

    Axes whose parameters the table lacks, or with a level without runs, are left out.
    """
    rows = []
    for axis in axes:
        if any(k not in collected.columns for k in (axis.vary, *axis.fixed)):
            continue
        for ref in references:
            per_level = [_per_utterance(_select(collected, axis, lv), ref, attention) for lv in axis.levels]
            if any(len(obs) == 0 for obs, _ in per_level):
                continue
            common = sorted(set(per_level[0][0].index) & set(per_level[1][0].index))
            paired = bool(common)  # both levels on the same utterances (those they share): like for like
            boots = []
            for lv, (obs, half) in zip(axis.levels, per_level):
                ids = common if paired else sorted(obs.index)
                raw = dataset_aggregate([obs[ids].to_numpy()[i:i + 1] for i in range(len(ids))], "pearson",
                                        n_boot=n_boot, seed=seed if paired else seed + len(boots), ci=ci)
                boots.append(raw.get("boot"))
                row = {"axis": axis.name, "reference": ref, "level": lv, "n_utterances": raw["n_utterances"],
                       "pearson": raw["value"], "ci_low": raw["ci_low"], "ci_high": raw["ci_high"],
                       "reliability": np.nan, "corrected": np.nan, "corrected_low": np.nan, "corrected_high": np.nan,
                       "paired": paired, "note": axis.note}
                halves = [u for u in ids if u in half.index]
                if halves:
                    cor = dataset_corrected([obs[halves].to_numpy()[i:i + 1] for i in range(len(halves))],
                                            [half[halves].to_numpy()[i:i + 1] for i in range(len(halves))],
                                            n_boot=n_boot, seed=seed, ci=ci)
                    c = cor["pearson_corrected"]
                    row.update(reliability=cor["reliability"]["value"], corrected=c["value"],
                               corrected_low=c["ci_low"], corrected_high=c["ci_high"])
                rows.append(row)
            if all(b is not None for b in boots):
                n = min(len(o) for o, _ in per_level)
                lo, hi = bootstrap_interval(boots[1] - boots[0], ci, n)
                rows.append({"axis": axis.name, "reference": ref, "level": f"{axis.levels[1]} − {axis.levels[0]}",
                             "n_utterances": n, "pearson": rows[-1]["pearson"] - rows[-2]["pearson"],
                             "ci_low": lo, "ci_high": hi, "paired": paired, "note": axis.note})
    if not rows:
        raise XattnError("no axis could be formed from this table: it needs runs that differ in one of "
                         + ", ".join(a.vary for a in axes) + " with the others fixed (e.g. sweeps/real_models.yaml)")
    return pd.DataFrame(rows)
