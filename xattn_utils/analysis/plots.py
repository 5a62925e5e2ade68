"""Figures: spectrograms with word times, token-by-time maps (attention or saliency), saving as PNG + SVG.

Axes are in seconds and token strings; colour bars are labelled. Functions take plain arrays so notebooks pass
whatever map they compare (cross-attention aggregates, SMX reduced to frames, SMH, gradient maps).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .agreement import with_attention_columns


def save_figure(fig, folder: str | Path, name: str) -> list[Path]:
    """Save ``fig`` as ``folder/name.png`` and ``.svg``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def _time_ticks(ax, n: int, dt: float, step_s: float = 0.5) -> None:
    step = max(1, int(round(step_s / dt)))
    ticks = np.arange(0, n, step)
    ax.set_xticks(ticks + 0.5)
    ax.set_xticklabels([f"{t * dt:.1f}" for t in ticks], rotation=0)
    ax.set_xlabel("time (s)")


def plot_spectrogram(ax, features: np.ndarray, frame_s: float = 0.01, words: list[dict] | None = None,
                     title: str = "log-mel input") -> None:
    """(F, T) features on a seconds axis, with word spans ({"word", "start", "end"} in s) marked above."""
    import matplotlib.pyplot as plt

    f, t = features.shape
    im = ax.imshow(features, origin="lower", aspect="auto", cmap="magma", extent=(0, t * frame_s, 0, f))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    ax.set_title(title, pad=24 if words else 6)
    plt.colorbar(im, ax=ax, label="normalized log-mel")
    for w in words or []:
        ax.axvline(w["start"], color="white", lw=0.6, alpha=0.8)
        ax.axvline(w["end"], color="cyan", lw=0.6, alpha=0.5, ls="--")
        ax.text((w["start"] + w["end"]) / 2, f * 1.01, w["word"], ha="center", va="bottom", fontsize=7,
                rotation=45, clip_on=False)


def plot_token_map(ax, values: np.ndarray, tokens: list[str], frame_s: float, title: str = "",
                   cbar_label: str = "weight", cmap: str = "viridis", center: float | None = None) -> None:
    """(I, T') token-by-frame map as a seaborn heatmap: rows = tokens, columns = seconds."""
    import seaborn as sns

    sns.heatmap(values, ax=ax, cmap=cmap, center=center, cbar_kws={"label": cbar_label},
                yticklabels=[repr(t.strip()) if t.strip() else repr(t) for t in tokens])
    _time_ticks(ax, values.shape[1], frame_s)
    ax.set_ylabel("token")
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=7, rotation=0)


def plot_attention_grid(cross_attention: np.ndarray, tokens: list[str], frame_s: float,
                        title: str = "cross-attention per decoder layer (rows) and head (columns)"):
    """(L, H, I, T') one small heatmap per (layer, head); returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    n_l, n_h = cross_attention.shape[:2]
    fig, axes = plt.subplots(n_l, n_h, figsize=(2.6 * n_h, 2.0 * n_l), squeeze=False, sharex=True, sharey=True)
    vmax = float(np.quantile(cross_attention, 0.995))
    for l in range(n_l):
        for h in range(n_h):
            ax = axes[l, h]
            sns.heatmap(cross_attention[l, h], ax=ax, cmap="viridis", vmin=0, vmax=vmax, cbar=False,
                        xticklabels=False, yticklabels=False)
            ax.set_title(f"L{l} H{h}", fontsize=8)
            if h == 0:
                ax.set_ylabel("token", fontsize=7)
            if l == n_l - 1:
                ax.set_xlabel(f"0–{cross_attention.shape[-1] * frame_s:.1f} s", fontsize=7)
    fig.suptitle(title)
    cax = fig.add_axes([0.92, 0.15, 0.01, 0.7])
    fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(0, vmax), cmap="viridis"), cax=cax,
                 label="attention weight")
    fig.subplots_adjust(right=0.9, hspace=0.35)
    return fig


def _dataset(table, measure: str, reference: str):
    """Dataset rows of ``measure`` against ``reference``, with the attention columns (older tables get them here)."""
    table = with_attention_columns(table)
    return table[(table.level == "dataset") & (table.measure == measure) & (table.reference == reference)]


def _plain(d, aggregate: str, weighting: str):
    """Rows of one kind of CA aggregate (``head``, ``layer``) and weighting, not composed with encoder mixing
    (``aggregate`` and ``head`` are also DataFrame methods: columns by name)."""
    return d[(d["aggregate"] == aggregate) & (d["weighting"] == weighting) & d["mixing"].isna()]


_WEIGHTING_LABEL = {"attention": "raw ", "norm": "norm:"}


def plot_layer_head_grid(ax, table, reference: str = "smx", measure: str = "pearson",
                         weighting: str = "attention") -> tuple:
    """Layer x head heatmap of the dataset-level ``measure`` of each head's CA against ``reference``; best cell boxed.

    ``weighting``: ``attention`` (raw weights) or ``norm`` (norm-based). Returns (best layer, best head, value).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    d = _plain(_dataset(table, measure, reference), "head", weighting)
    layer, head = d["layer"].to_numpy(int), d["head"].to_numpy(int)
    grid = np.full((layer.max() + 1, head.max() + 1), np.nan)
    grid[layer, head] = d.value.to_numpy()
    sns.heatmap(grid, ax=ax, annot=True, fmt=".2f", cmap="mako", cbar_kws={"label": f"{measure} (dataset)"})
    best = np.unravel_index(np.nanargmax(grid), grid.shape)
    ax.add_patch(plt.Rectangle((best[1], best[0]), 1, 1, fill=False, edgecolor="red", lw=2.5))
    ax.set_xlabel("head")
    ax.set_ylabel("decoder layer")
    ax.set_title(f"{_WEIGHTING_LABEL[weighting]}CA vs {reference.upper()}: {measure}")
    return int(best[0]), int(best[1]), float(grid[best])


def plot_layer_curves(ax, table, references=("smx", "smh"), measure: str = "pearson") -> None:
    """Dataset-level ``measure`` per decoder layer (head mean), raw and norm-based, with 95% intervals."""
    import matplotlib.ticker

    for ref in references:
        d = _dataset(table, measure, ref)
        for weighting, ls in (("attention", "-"), ("norm", "--")):
            sub = _plain(d, "layer", weighting).sort_values("layer")
            if sub.empty:
                continue
            ax.errorbar(sub.layer.to_numpy(int), sub.value, yerr=[sub.value - sub.ci_low, sub.ci_high - sub.value],
                        ls=ls, marker="o", capsize=3, label=f"{_WEIGHTING_LABEL[weighting]}CA vs {ref.upper()}")
    ax.set_xlabel("decoder layer")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(f"{measure} (dataset, 95% CI)")
    ax.legend(fontsize=8)
    ax.set_title("agreement by layer")


def plot_utterance_distribution(ax, table, aggregates, reference: str = "smx", measure: str = "pearson") -> None:
    """Box + strip plot of utterance-level values for some CA aggregates against ``reference``."""
    import seaborn as sns

    d = table[(table.level == "utterance") & (table.measure == measure) & (table.reference == reference)
              & table.attention.isin(list(aggregates))]
    sns.boxplot(data=d, x="attention", y="value", ax=ax, order=list(aggregates), color="lightgray")
    sns.stripplot(data=d, x="attention", y="value", ax=ax, order=list(aggregates), size=3, color="k")
    ax.set_xlabel("cross-attention aggregate")
    ax.set_ylabel(f"{measure} per utterance vs {reference.upper()}")
    ax.tick_params(axis="x", rotation=30)


def plot_faithfulness_curves(ax, curves, mode: str = "deletion", column: str = "wer", aucs=None) -> None:
    """Mean curve per explanation (x: % of cells removed/restored) with the AUC in the legend."""
    d = curves[curves["mode"] == mode]
    for name, g in d.groupby("explanation"):
        mean = g.groupby("percent")[column].mean()
        label = name
        if aucs is not None:
            a = aucs[(aucs.explanation == name) & (aucs["mode"] == mode)]["auc_wer"].mean()
            label = f"{name} (AUC {a:.1f})"
        ax.plot(mean.index, mean.values, marker="o", label=label, ls="--" if name == "random" else "-")
    ax.set_xlabel(f"% of input cells {'removed' if mode == 'deletion' else 'restored'} (most relevant first)")
    ax.set_ylabel({"wer": "WER vs original hypothesis (%)", "mean_log_prob": "mean log-prob of original tokens"}
                  .get(column, column))
    ax.set_title(mode)
    ax.legend(fontsize=8)


def plot_token_scatter(ax, maps: dict, attention: str = "all", reference: str = "smx", max_tokens: int = 12) -> None:
    """Cell-by-cell scatter of one utterance's CA aggregate against a saliency map, one colour per token.

    ``maps``: :func:`xattn_utils.analysis.compare.utterance_maps` output (rows already normalized).
    """
    a, r = np.asarray(maps[attention]), np.asarray(maps[reference])
    for i in range(min(len(a), max_tokens)):
        ax.scatter(a[i], r[i], s=6, alpha=0.6, label=repr(maps["tokens"][i].strip()))
    ax.set_xlabel(f"CA {attention} (row-normalized)")
    ax.set_ylabel(f"{reference.upper()} (row-normalized)")
    ax.legend(fontsize=6, ncol=2, markerscale=2)


def plot_training_curves(ax, curves, smooth: int = 25) -> None:
    """Training loss per step of each model (``training.training_curves`` table), running mean over ``smooth``."""
    for model, part in curves.groupby("model", sort=True):
        loss = part["loss"].rolling(smooth, min_periods=1).mean()
        ax.plot(part["step"], loss, label=model, lw=1.2)
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel=f"training loss (mean of {smooth} steps)")
    ax.legend(fontsize=7, ncol=3)


def plot_scale_scores(ax, table, metric: str = "wer", targets: dict | None = None) -> None:
    """A score against model size, one line per (kind, language, task, split); dashed lines mark ``targets``."""
    part = table.dropna(subset=[metric])
    for key, g in part.groupby(["kind", "language", "task", "split"], sort=True):
        g = g.sort_values("parameters")
        ax.plot(g["parameters"] / 1e6, g[metric], marker="o", label=" ".join(key))
    for name, value in (targets or {}).items():
        ax.axhline(value, ls="--", c="grey", lw=0.8)
        ax.text(ax.get_xlim()[1], value, f" {name}", va="center", fontsize=7, color="grey")
    ax.set(xlabel="parameters (M)", ylabel=metric.upper(), xscale="log")
    ax.legend(fontsize=7)


def plot_headline(ax, headline: pd.DataFrame) -> None:
    """Raw and noise-corrected Pearson per reference and aggregate
    (:func:`xattn_utils.analysis.compare.study_headline`), with 95% intervals; the corrected bar is the correlation
    with the SPES map at infinite masks."""
    h = headline.reset_index(drop=True)
    short = {"fixed": "fixed", "in-sample best (biased up)": "in-sample best"}
    labels = [f"{r.reference.upper()}\n{r.aggregate}\n({short.get(r.selection, 'calibrated best')})"
              for r in h.itertuples()]
    x = np.arange(len(h))
    for off, col, name, color in ((-0.2, "pearson", "raw", "tab:blue"), (0.2, "corrected", "noise-corrected",
                                                                          "tab:orange")):
        if col not in h or h[col].isna().all():
            continue
        v = h[col].to_numpy(float)
        err = np.abs(np.vstack([v - h[f"{col}_low"].to_numpy(float), h[f"{col}_high"].to_numpy(float) - v]))
        ax.bar(x + off, v, width=0.4, yerr=np.nan_to_num(err), capsize=3, label=name, color=color)
        for xi in x[np.isnan(v)] if col == "corrected" else ():  # reliability below the floor, or beyond ±1
            ax.text(xi + off, 0.02, "undefined", rotation=90, ha="center", va="bottom", fontsize=6, color=color)
    ax.axhline(0.58, color="grey", ls="--", lw=0.8, label="paper: best CA–SMX ≈ 0.58")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("Pearson (dataset, 95% CI)")
    ax.legend(fontsize=7)


def plot_mixing_bars(ax, answer, aggregates=("all",), reference: str = "SMX") -> None:
    """CA vs CA∘M (every encoder layer undone) per mixing method, with the intervals (from
    :func:`xattn_utils.analysis.composed.mixing_answer`)."""
    full = answer[(answer.depth == answer.depth.max()) | (answer.depth == 0)]
    methods = sorted(set(answer.method))
    width = 0.8 / (len(methods) + 1)
    for a, agg in enumerate(aggregates):
        sub = full[full.attention == agg]
        ca = sub[sub.depth == 0].iloc[0]
        bars = [("CA", ca)] + [(m, sub[(sub.method == m) & (sub.depth > 0)].iloc[0]) for m in methods
                               if len(sub[(sub.method == m) & (sub.depth > 0)])]
        for k, (name, r) in enumerate(bars):
            x = a + (k - len(bars) / 2) * width
            ax.bar(x, r.value, width, color=f"C{k}", label=name if a == 0 else None)
            ax.errorbar(x, r.value, yerr=[[r.value - r.ci_low], [r.ci_high - r.value]], color="k", capsize=3)
    ax.set_xticks(range(len(aggregates)), list(aggregates))
    ax.set_ylabel(f"Pearson with {reference}")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.legend(fontsize=8)


def plot_mixing_depth(ax, answer, aggregate: str = "all", reference: str = "SMX") -> None:
    """Pearson(CA∘M_k, reference) against k, the number of top encoder layers undone (k = 0: CA itself)."""
    sub = answer[answer.attention == aggregate]
    for i, (method, g) in enumerate(sub.groupby("method")):
        g = g.sort_values("depth")
        ax.plot(g.depth, g.value, "o-", color=f"C{i + 1}", label=method)
        ax.fill_between(g.depth, g.ci_low, g.ci_high, color=f"C{i + 1}", alpha=0.15)
    ax.set_xlabel("encoder layers undone (from the top)")
    ax.set_ylabel(f"Pearson(CA[{aggregate}]∘M, {reference})")
    ax.set_xticks(sorted(set(sub.depth)))
    ax.legend(fontsize=8)


def plot_axis(ax, table: pd.DataFrame, axis: str) -> None:
    """One axis of :func:`~xattn_utils.analysis.axes.axis_table`: per level, Pearson(CA, map) with its interval
    (filled) and the noise-corrected value with its interval (hollow), one colour per reference map."""
    import matplotlib.pyplot as plt

    part = table[(table["axis"] == axis) & ~table["level"].astype(str).str.contains("−")]
    levels = list(dict.fromkeys(part["level"]))
    refs = list(dict.fromkeys(part["reference"]))
    colours = plt.get_cmap("tab10")
    for j, ref in enumerate(refs):
        d = part[part["reference"] == ref].set_index("level").reindex(levels)
        x = np.arange(len(levels)) + 0.12 * (j - (len(refs) - 1) / 2)
        ax.errorbar(x - 0.03, d["pearson"], yerr=[d["pearson"] - d["ci_low"], d["ci_high"] - d["pearson"]],
                    fmt="o", color=colours(j), capsize=3, label=f"{ref.upper()} raw")
        ax.errorbar(x + 0.03, d["corrected"], yerr=[d["corrected"] - d["corrected_low"],
                                                    d["corrected_high"] - d["corrected"]],
                    fmt="o", mfc="white", color=colours(j), capsize=3, label=f"{ref.upper()} corrected")
        for xi, c, p in zip(x, d["corrected"].to_numpy(float), d["pearson"].to_numpy(float)):
            if np.isnan(c) and np.isfinite(p):  # reliability below the floor, or beyond ±1
                ax.annotate("corrected\nundefined", (xi + 0.03, p), textcoords="offset points", xytext=(4, 6),
                            fontsize=6, color=colours(j))
    ax.set_xticks(np.arange(len(levels)), [str(lv).replace("bundled:", "") for lv in levels])
    ax.set_ylabel("Pearson(CA all, map)")
    ax.set_title(f"{axis}")
    ax.axhline(0, color="0.8", lw=0.8)
    ax.legend(fontsize=7)
