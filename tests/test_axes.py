"""The paper's axes across runs: known per-utterance agreement in, the level values and their difference out."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xattn_utils.analysis.axes import PAPER_AXES, Axis, axis_table
from xattn_utils.errors import XattnError


def _rows(model, language, task, utterances, r, half, rng):
    out = []
    for u in utterances:
        out.append({"model": model, "language": language, "task": task, "level": "utterance", "utterance": u,
                    "attention": "all", "reference": "smx", "measure": "pearson",
                    "value": float(np.tanh(np.arctanh(r) + rng.normal(0, 0.05)))})
        out.append({"model": model, "language": language, "task": task, "level": "utterance", "utterance": u,
                    "attention": "", "reference": "smx", "measure": "split_half", "value": half})
        # rows the axis must ignore: another aggregate, another measure, token level
        out.append({"model": model, "language": language, "task": task, "level": "utterance", "utterance": u,
                    "attention": "last_layer", "reference": "smx", "measure": "pearson", "value": -0.9})
        out.append({"model": model, "language": language, "task": task, "level": "token", "utterance": u,
                    "attention": "all", "reference": "smx", "measure": "pearson", "value": -0.9})
    return out


def _collected(seed=0):
    rng = np.random.default_rng(seed)
    it = [f"it-{i}" for i in range(10)]
    rows = (_rows("bundled:whisper-base", "it", "transcribe", it, 0.30, 0.5, rng)
            + _rows("bundled:whisper-base", "it", "translate", it, 0.60, 0.5, rng)
            + _rows("bundled:whisper-base", "en", "transcribe", [f"en-{i}" for i in range(8)], 0.45, 0.6, rng)
            + _rows("bundled:whisper-tiny.en", "en", "transcribe", [f"en-{i}" for i in range(8)], 0.40, 0.4, rng))
    return pd.DataFrame(rows)


def test_axis_levels_difference_and_correction():
    t = axis_table(_collected(), n_boot=2000)
    task = t[(t.axis == "task") & (t.reference == "smx")].set_index("level")
    assert task.loc["transcribe", "pearson"] == pytest.approx(0.30, abs=0.03)
    assert task.loc["translate", "pearson"] == pytest.approx(0.60, abs=0.03)
    diff = task.loc["translate − transcribe"]
    assert bool(diff["paired"]) and diff["ci_low"] > 0.2 and diff["ci_high"] < 0.4  # the planted 0.3, away from 0
    # reliability = Spearman-Brown of the split half; corrected = raw / sqrt(reliability)
    rel = 2 * 0.5 / 1.5
    assert task.loc["transcribe", "reliability"] == pytest.approx(rel)
    assert task.loc["transcribe", "corrected"] == pytest.approx(task.loc["transcribe", "pearson"] / np.sqrt(rel))
    lang = t[t.axis == "language"].set_index("level")
    assert not bool(lang.loc["it − en", "paired"])  # different utterances: independent resamples
    assert lang.loc["en", "n_utterances"] == 8 and lang.loc["it", "n_utterances"] == 10
    scale = t[t.axis == "scale"].set_index("level")
    assert scale.loc["bundled:whisper-base", "pearson"] > scale.loc["bundled:whisper-tiny.en", "pearson"]
    assert set(t.axis) == {a.name for a in PAPER_AXES}


def test_no_axis_is_a_clear_error():
    only_tiny = _collected()
    only_tiny = only_tiny[only_tiny.model == "bundled:whisper-tiny.en"]
    with pytest.raises(XattnError, match="no axis"):
        axis_table(only_tiny)
    # a custom axis on other parameters works the same way
    t = axis_table(_collected(), axes=(Axis("task", "task", ("transcribe", "translate"), {"language": "it"}),))
    assert list(t.level) == ["transcribe", "translate", "translate − transcribe"]


def test_report_section_writes_table_and_figure(tmp_path):
    from xattn_utils.runs.report import axes_section

    _collected().to_parquet(tmp_path / "collected.parquet")
    lines = "".join(axes_section(tmp_path))
    assert "## The paper's axes" in lines and "translate − transcribe" in lines
    assert (tmp_path / "axes.csv").exists() and (tmp_path / "figures" / "axes.png").exists()
    assert axes_section(tmp_path / "nothing-here") == []


def test_levels_sharing_some_utterances_are_compared_on_those_paired():
    # scale axis as in the default study: tiny.en explained 12 English utterances, base the first 6 of them.
    # A strong utterance effect shared by both models hides a 0.1 difference from independent resamples only.
    rng = np.random.default_rng(3)
    effect = rng.normal(0, 0.25, 12)
    rows = []
    for model, shift, n in (("bundled:whisper-tiny.en", 0.3, 12), ("bundled:whisper-base", 0.4, 6)):
        for i in range(n):
            extra = -0.8 if i >= 6 else 0.0  # tiny.en's other utterances must not enter the comparison
            rows.append({"model": model, "language": "en", "task": "transcribe", "level": "utterance",
                         "utterance": f"en-{i}", "attention": "all", "reference": "smx", "measure": "pearson",
                         "value": float(np.tanh(shift + effect[i] + extra + rng.normal(0, 0.01)))})
    t = axis_table(pd.DataFrame(rows), n_boot=2000).set_index("level")
    assert t.loc["bundled:whisper-tiny.en", "n_utterances"] == 6 and t.loc["bundled:whisper-base", "n_utterances"] == 6
    assert t.loc["bundled:whisper-tiny.en", "pearson"] == pytest.approx(np.tanh(0.3 + effect[:6].mean()), abs=0.03)
    diff = t.loc["bundled:whisper-base − bundled:whisper-tiny.en"]
    assert bool(diff["paired"]) and 0.04 < diff["ci_low"] and diff["ci_high"] < 0.16


def test_a_level_below_the_reliability_floor_has_no_corrected_value_nor_interval():
    rng = np.random.default_rng(3)
    it = [f"it-{i}" for i in range(10)]
    # split half 0.05 -> reliability 2·0.05/1.05 = 0.095, below the floor (0.2): the correction is undefined
    rows = (_rows("bundled:whisper-base", "it", "transcribe", it, 0.30, 0.5, rng)
            + _rows("bundled:whisper-base", "it", "translate", it, 0.10, 0.05, rng))
    task = axis_table(pd.DataFrame(rows), axes=(PAPER_AXES[1],), n_boot=500).set_index("level")
    low = task.loc["translate"]
    assert low["reliability"] == pytest.approx(2 * 0.05 / 1.05)
    assert np.isnan(low["corrected"]) and np.isnan(low["corrected_low"]) and np.isnan(low["corrected_high"])
    assert np.isfinite(task.loc["transcribe", "corrected_low"])  # the level above the floor keeps its interval
