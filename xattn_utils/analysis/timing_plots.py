"""Figures for word timestamps: true vs predicted boundaries on the spectrogram, the head-accuracy grid, sources
side by side with their bootstrap intervals."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .plots import plot_spectrogram
from .timing_eval import head_grid


def plot_word_boundaries(ax, features: np.ndarray, frame_s: float, true_words: Sequence[dict],
                         predicted: Mapping[str, Sequence], title: str = "") -> None:
    """(F, T) spectrogram with the true words marked (white) and each source's predicted word starts as ticks.

    ``predicted``: source -> words (``Word`` or dicts with ``start``); one colour and one row of ticks per source.
    """
    import matplotlib.pyplot as plt

    plot_spectrogram(ax, features, frame_s, [dict(w) for w in true_words], title or "true (white) vs predicted starts")
    f = features.shape[0]
    colours = plt.get_cmap("tab10")
    for k, (name, words) in enumerate(predicted.items()):
        starts = [w["start"] if isinstance(w, dict) else w.start for w in words]
        y0, y1 = f * (0.02 + 0.12 * k), f * (0.12 + 0.12 * k)
        ax.vlines(starts, y0, y1, colors=[colours(k)], lw=2.0, label=name)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.7)


def plot_head_accuracy_grid(ax, summary: pd.DataFrame, metric: str = "within_50ms", official=None,
                            discovered=None) -> None:
    """Layer x head heatmap of ``metric``; official heads marked ``o``, discovered heads ``x``."""
    import seaborn as sns

    grid = head_grid(summary, metric)
    sns.heatmap(grid, ax=ax, annot=True, fmt=".2f", cmap="viridis", vmin=0, vmax=1,
                cbar_kws={"label": metric.replace("_", " ")}, annot_kws={"fontsize": 7})
    for marks, sym, colour in ((official or [], "o", "white"), (discovered or [], "x", "red")):
        for layer, head in marks:
            ax.plot(head + 0.5, layer + 0.2, marker=sym, color=colour, ms=6, mfc="none" if sym == "o" else colour)
    ax.set_xlabel("head")
    ax.set_ylabel("decoder layer")
    ax.set_title("word-boundary accuracy per head (o official, x discovered)")


def plot_source_accuracy(ax, summary: pd.DataFrame, sources: Sequence[str], metric: str = "within_50ms") -> None:
    """Bars of ``metric`` for the named sources (those present), with their bootstrap intervals."""
    s = summary.set_index("source").reindex([x for x in sources if x in set(summary.source)])
    y = s[metric].to_numpy()
    err = np.stack([y - s[f"{metric}_lo"].to_numpy(), s[f"{metric}_hi"].to_numpy() - y])
    ax.bar(range(len(s)), y, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(s)))
    ax.set_xticklabels(s.index, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(metric.replace("_", " "))
