"""Word timestamps from cross-attention (Whisper-style), and from any other (I, T') map for comparison.

The recipe of openai-whisper's ``timing.find_alignment`` (and faster-whisper's ``align``), re-implemented:

1. take the alignment heads' attention of the scored rows, ``(K, R, T')``: row r is the query that predicts text
   token r; the row after the last text token (end-of-text) marks where the last token ends;
2. cut to the encoder frames holding audio and renormalize each row over them (Whisper re-softmaxes the logits of
   the kept frames, which is the same thing; HF transformers skips this step: ``renormalize=False``);
3. standardize each head over the token axis, median-filter along time (width 7), average the heads;
4. dynamic time warping on the negated matrix: a monotone path through (token, frame);
5. the frame where the path first enters row r is token r's start; the next row's entry is its end;
6. tokens merge into words (a leading space starts a word; punctuation attaches to its neighbour).

``K`` heads, ``R`` rows (text tokens, optionally + end-of-text), ``T'`` encoder frames. Times in seconds at
``frames_per_second`` encoder frames per second (Whisper: 50).
"""
from __future__ import annotations

import difflib
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..errors import XattnError

WHISPER_FRAMES_PER_SECOND = 50.0
PREPEND_PUNCTUATION = "\"'“¿([{-«"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、»;…"
TOLERANCES = (0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class Word:
    """One word: text (with its leading space, if any), start and end in seconds, indices of its tokens."""

    text: str
    start: float
    end: float
    tokens: tuple[int, ...] = field(default=(), compare=False)


# --------------------------------------------------------------------------------------------------- matrix
def median_filter(x: torch.Tensor, width: int = 7) -> torch.Tensor:
    """Median over a sliding window of odd ``width`` along the last axis, reflect-padded: (..., T) -> (..., T)."""
    if width % 2 != 1 or width < 1:
        raise XattnError(f"median filter width {width}: use an odd positive number (Whisper: 7)")
    pad = width // 2
    if width == 1 or x.shape[-1] <= pad:  # reflect padding needs more frames than the half-width
        return x
    lead = x.shape[:-1]
    y = torch.nn.functional.pad(x.reshape(-1, 1, x.shape[-1]), (pad, pad), mode="reflect")
    return y.unfold(-1, width, 1).median(-1).values.reshape(*lead, x.shape[-1])


def standardize_tokens(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (population) std over the token axis: (K, R, T') -> (K, R, T'); a constant column -> 0."""
    std, mean = torch.std_mean(x, dim=-2, keepdim=True, unbiased=False)
    return (x - mean) / std.clamp_min(1e-12)


def alignment_matrix(weights, n_frames: int | None = None, renormalize: bool = True, standardize: bool = True,
                     medfilt_width: int = 7, rows: slice | None = None) -> torch.Tensor:
    """Heads' attention ``(K, R, T')`` (or one map ``(R, T')``) -> the matrix DTW runs on, ``(R, n_frames)``.

    Args:
        n_frames: encoder frames holding audio (None: all).
        renormalize: rescale each row to sum 1 over the kept frames (Whisper's re-softmax after the cut).
        standardize: z-score over the token axis per head.
        medfilt_width: median filter along time (1: none).
        rows: rows kept for DTW after standardization (None: all). openai-whisper standardizes over every decoder
            position (prompt, text, end-of-text query) and keeps ``slice(len(sot_sequence), -1)``; pass those rows
            and this slice to match it exactly. With only the scored rows (a ForcedPass), the statistics come from
            the scored rows alone — a small difference.
    """
    w = torch.as_tensor(weights).detach().float()
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3:
        raise XattnError(f"alignment weights must be (K, R, T') or (R, T'), got shape {tuple(w.shape)}")
    if n_frames is not None:
        if not 0 < int(n_frames) <= w.shape[-1]:
            raise XattnError(f"n_frames={n_frames} outside 1..{w.shape[-1]} (the map's encoder frames)")
        w = w[..., : int(n_frames)]
    if renormalize:
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    if standardize:
        w = standardize_tokens(w)
    m = median_filter(w, medfilt_width).mean(0)
    return m if rows is None else m[rows]


# --------------------------------------------------------------------------------------------------- DTW
TIES = ("diagonal", "time")


def _dtw_steps(c: np.ndarray, ties: str) -> np.ndarray:
    """Back-pointers of the DTW recurrence on a batch of costs ``(B, R, T)`` -> ``(B, R + 1, T + 1)`` int8.

    0 diagonal, 1 down (next token), 2 right (next frame). The recurrence runs over anti-diagonals, each one a
    vectorized step over the batch and the cells of the anti-diagonal; accumulation is in ``c``'s dtype.
    ``ties="diagonal"``: the smallest predecessor, ties to diagonal, then down. ``ties="time"``: openai-whisper's and
    CTranslate2's rule: diagonal only if strictly smaller than both others, down only if strictly smaller than both
    others, else right — so any tie (even diagonal = down < right) moves along time.
    """
    b, n, m = c.shape
    acc = np.full((b, n + 1, m + 1), np.inf, dtype=c.dtype)
    acc[:, 0, 0] = 0.0
    step = np.zeros((b, n + 1, m + 1), dtype=np.int8)
    for d in range(2, n + m + 1):  # cells (i, j) with i + j = d, 1 <= i <= n, 1 <= j <= m
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = acc[:, i - 1, j - 1], acc[:, i - 1, j], acc[:, i, j - 1]  # each (B, cells)
        if ties == "diagonal":
            cand = np.stack([c0, c1, c2])
            choice = cand.argmin(0)
            best = np.take_along_axis(cand, choice[None], 0)[0]
        else:
            choice = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
            best = np.where(choice == 0, c0, np.where(choice == 1, c1, c2))
        acc[:, i, j] = c[:, i - 1, j - 1] + best
        step[:, i, j] = choice
    return step


def _dtw_input(cost, ties: str, dtype) -> np.ndarray:
    if ties not in TIES:
        raise XattnError(f"ties={ties!r}: use 'diagonal' (ours) or 'time' (openai-whisper / CTranslate2)")
    return np.asarray(cost.detach().cpu() if isinstance(cost, torch.Tensor) else cost, dtype=dtype)


def dtw_path(cost, ties: str = "diagonal", dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost monotone path through ``cost`` (R, T) from (0, 0) to (R-1, T-1).

    Steps: diagonal (next token, next frame), down (next token, same frame), right (same token, next frame).
    ``ties``: ``"diagonal"`` (default) prefers diagonal, then down; ``"time"`` is Whisper's rule (see
    :func:`_dtw_steps`). ``dtype``: accumulation precision (openai-whisper accumulates in float32).
    Returns: (text_idx, time_idx), the path's cells in order.
    """
    c = _dtw_input(cost, ties, dtype)
    if c.ndim != 2 or 0 in c.shape:
        raise XattnError(f"dtw_path needs a non-empty (R, T) cost matrix, got shape {c.shape}")
    step = _dtw_steps(c[None], ties)[0]
    i, j, path = c.shape[0], c.shape[1], []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        s = step[i, j]
        if s == 0:
            i, j = i - 1, j - 1
        elif s == 1:
            i -= 1
        else:
            j -= 1
    # the start (0, 0) is forced by acc's borders, so the walk ends at i == j == 0
    arr = np.array(path[::-1])
    return arr[:, 0], arr[:, 1]


def dtw_entry_frames(costs, ties: str = "diagonal", dtype=np.float64) -> np.ndarray:
    """For a batch of costs ``(B, R, T)``: the first frame of each row on each optimal path, ``(B, R)`` int.

    The same paths as :func:`dtw_path` (equal for every batch element), traced back for the whole batch at once.
    """
    c = _dtw_input(costs, ties, dtype)
    if c.ndim != 3 or 0 in c.shape:
        raise XattnError(f"dtw_entry_frames needs a non-empty (B, R, T) cost batch, got shape {c.shape}")
    b, n, m = c.shape
    step = _dtw_steps(c, ties)
    entry = np.full((b, n), m, dtype=np.int64)
    i, j = np.full(b, n), np.full(b, m)
    rows = np.arange(b)
    while True:
        live = (i > 0) & (j > 0)
        if not live.any():
            break
        r, ii, jj = rows[live], i[live], j[live]
        entry[r, ii - 1] = np.minimum(entry[r, ii - 1], jj - 1)
        s = step[r, ii, jj]
        i[live] = ii - (s != 2)
        j[live] = jj - (s != 1)
    return entry


def token_times(matrix, frames_per_second: float = WHISPER_FRAMES_PER_SECOND, n_tokens: int | None = None,
                ties: str = "diagonal") -> tuple[np.ndarray, np.ndarray]:
    """Token start/end times (s) from an alignment matrix ``(R, T')`` (higher = more aligned).

    DTW on ``-matrix``; token r starts at the first frame of the path's row r and ends at the first frame of row
    r + 1. With ``n_tokens = R - 1`` the last row is end-of-text and only closes the last token (Whisper); with
    ``n_tokens = R`` (default) the last token ends after the path's last frame. ``ties``: see :func:`dtw_path`.
    Returns: (starts, ends), each (n_tokens,).
    """
    m = torch.as_tensor(matrix).detach().float().cpu().numpy()
    n_rows, n_frames = m.shape
    n_tokens = n_rows if n_tokens is None else int(n_tokens)
    if not (n_rows - 1 <= n_tokens <= n_rows) or n_tokens < 1:
        raise XattnError(f"{n_tokens} tokens for {n_rows} alignment rows: give R rows for R or R-1 text tokens")
    entry = dtw_entry_frames(-m[None], ties)[0].astype(np.float64)  # (R,) first frame of each row
    bounds = np.r_[entry, n_frames] if n_tokens == n_rows else entry
    return bounds[:n_tokens] / frames_per_second, bounds[1:n_tokens + 1] / frames_per_second


# --------------------------------------------------------------------------------------------------- words
def _is_special(tok: str) -> bool:
    return tok.startswith("<|") and tok.endswith("|>")


def _is_punct(tok: str) -> bool:
    s = tok.strip()
    return bool(s) and all(ch in string.punctuation or ch in PREPEND_PUNCTUATION + APPEND_PUNCTUATION for ch in s)


def words_from_token_times(tokens: Sequence[str], starts, ends) -> list[Word]:
    """Merge timed tokens into words.

    A token with a leading space starts a word (Whisper BPE); a token without one continues the current word.
    Punctuation-only tokens attach: opening marks (``PREPEND_PUNCTUATION``, e.g. ``(`` ``"`` ``¿``) to the next
    word, the others to the previous word. A word's times come from its non-punctuation tokens (a trailing
    period's row can hold a pause), falling back to all its tokens. Special tokens (``<|...|>``) and empty strings
    are skipped; token indices refer to ``tokens``.
    """
    if not len(tokens) == len(starts) == len(ends):
        raise XattnError(f"{len(tokens)} tokens but {len(starts)} starts and {len(ends)} ends")
    groups: list[list[int]] = []
    pending: list[int] = []  # opening punctuation waiting for its word
    for k, tok in enumerate(tokens):
        if not tok or _is_special(tok):
            continue
        if _is_punct(tok):
            opening = all(ch in PREPEND_PUNCTUATION for ch in tok.strip())
            if opening and (tok[0].isspace() or not groups or pending):
                pending.append(k)
            elif groups and not pending:
                groups[-1].append(k)
            else:
                pending.append(k)
            continue
        if pending:
            groups.append(pending + [k])
            pending = []
        elif tok[0].isspace() or not groups:
            groups.append([k])
        else:
            groups[-1].append(k)
    if pending:
        if groups:
            groups[-1].extend(pending)
        else:
            groups.append(pending)
    words = []
    for g in groups:
        timed = [k for k in g if not _is_punct(tokens[k])] or g
        words.append(Word(text="".join(tokens[k] for k in g), start=float(min(starts[k] for k in timed)),
                          end=float(max(ends[k] for k in timed)), tokens=tuple(g)))
    return words


def decode_token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """Per-token text whose concatenation is the decoded text, for tokenizers that split characters over tokens.

    Tokens are grouped until they decode to complete characters (no U+FFFD); the group's text goes to its last
    token and the others get "" (so a multi-byte character is timed by the token that completes it).
    """
    out: list[str] = []
    group: list[int] = []
    for t in ids:
        group.append(int(t))
        text = tokenizer.decode(group)
        if "\ufffd" not in text:
            out.extend([""] * (len(group) - 1) + [text])
            group = []
    if group:
        out.extend([""] * (len(group) - 1) + [tokenizer.decode(group)])
    return out


# --------------------------------------------------------------------------------------------------- pipelines
def _n_text_tokens(tokens: Sequence[str], n_rows: int) -> int:
    if len(tokens) == n_rows and _is_special(tokens[-1]):
        return n_rows - 1  # the end-of-text row closes the last word
    if len(tokens) in (n_rows, n_rows - 1):
        return len(tokens)
    raise XattnError(f"{len(tokens)} tokens for {n_rows} attention rows: pass the text tokens (optionally with "
                     "end-of-text last), one per scored row")


def word_timestamps(alignment_weights, tokens: Sequence[str], n_frames: int | None = None,
                    frames_per_second: float = WHISPER_FRAMES_PER_SECOND, renormalize: bool = True,
                    medfilt_width: int = 7, rows: slice | None = None, ties: str = "diagonal") -> list[Word]:
    """Whisper-style word timestamps from the alignment heads' cross-attention.

    Args:
        alignment_weights: (K, R, T') softmax attention of the alignment heads (e.g.
            ``ca[[l for l, h in heads], [h for l, h in heads]]`` of a ForcedPass), rows = scored positions.
        tokens: the R scored token strings (last one ``<|endoftext|>``, as ``ForcedPass.tokens``) or the R or R-1
            text tokens.
        n_frames: encoder frames holding audio (Whisper: input frames // 2).
        renormalize: Whisper's re-softmax over the kept frames (False: HF transformers' variant).
        rows: see :func:`alignment_matrix` (then ``tokens`` match the kept rows).
        ties: DTW tie-breaking, ``"diagonal"`` (ours) or ``"time"`` (Whisper, CTranslate2); see :func:`dtw_path`.
    Returns: words with start/end in seconds.
    """
    matrix = alignment_matrix(alignment_weights, n_frames, renormalize=renormalize, medfilt_width=medfilt_width,
                              rows=rows)
    n_text = _n_text_tokens(tokens, matrix.shape[0])
    starts, ends = token_times(matrix, frames_per_second, n_tokens=n_text, ties=ties)
    return words_from_token_times(list(tokens)[:n_text], starts, ends)


def timestamps_from_saliency(saliency, tokens: Sequence[str], n_frames: int | None = None,
                             frames_per_second: float = WHISPER_FRAMES_PER_SECOND, medfilt_width: int = 7,
                             absolute: bool = True) -> list[Word]:
    """Word timestamps from any relevance map ``(I, T')`` (saliency, gradients), by the same DTW recipe.

    The map's rows are scaled to sum 1 over the audio frames (as attention rows do) before standardization, so
    attention and saliency differ only in where their mass lies. ``absolute``: use |map| (signed gradients).
    """
    s = torch.as_tensor(saliency).detach().float()
    s = s.abs() if absolute else s - s.min()
    return word_timestamps(s[None], tokens, n_frames, frames_per_second, renormalize=True,
                           medfilt_width=medfilt_width)


# --------------------------------------------------------------------------------------------------- errors
def _as_word(w) -> Word:
    if isinstance(w, Word):
        return w
    if isinstance(w, dict):
        return Word(str(w.get("text", w.get("word", ""))), float(w["start"]), float(w["end"]))
    text, start, end = w
    return Word(str(text), float(start), float(end))


def _norm(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def timestamp_errors(pred_words: Sequence, ref_words: Sequence, tolerances: Sequence[float] = TOLERANCES
                     ) -> pd.DataFrame:
    """Per reference word: predicted vs reference boundaries.

    Words are paired in order when the two lists have the same length, else by their normalized text (difflib
    alignment; unmatched reference words get NaN errors and False within-tolerance flags). Words may be
    :class:`Word`, ``(text, start, end)`` or ``{"text"|"word", "start", "end"}``.
    Returns: columns word, ref_start, ref_end, pred_start, pred_end, start_error, end_error (absolute, s), and
    ``start_within_{ms}ms`` / ``end_within_{ms}ms`` booleans per tolerance (their means are the within-tolerance
    fractions; see :func:`timestamp_summary`).
    """
    pred = [_as_word(w) for w in pred_words]
    ref = [_as_word(w) for w in ref_words]
    match: list[int | None]
    if len(pred) == len(ref):
        match = list(range(len(ref)))
    else:
        match = [None] * len(ref)
        sm = difflib.SequenceMatcher(a=[_norm(w.text) for w in ref], b=[_norm(w.text) for w in pred], autojunk=False)
        for blk in sm.get_matching_blocks():
            for k in range(blk.size):
                match[blk.a + k] = blk.b + k
    nan = float("nan")
    rows = []
    for r, p in zip(ref, match):
        ps, pe = (pred[p].start, pred[p].end) if p is not None else (nan, nan)
        rows.append({"word": r.text.strip(), "ref_start": r.start, "ref_end": r.end, "pred_start": ps,
                     "pred_end": pe, "start_error": abs(ps - r.start), "end_error": abs(pe - r.end)})
    df = pd.DataFrame(rows, columns=["word", "ref_start", "ref_end", "pred_start", "pred_end", "start_error",
                                     "end_error"])
    for tol in tolerances:
        ms = round(tol * 1000)
        df[f"start_within_{ms}ms"] = df.start_error <= tol + 1e-9
        df[f"end_within_{ms}ms"] = df.end_error <= tol + 1e-9
    return df


def timestamp_summary(errors: pd.DataFrame, by: str | Sequence[str] | None = None) -> pd.DataFrame:
    """Mean/median absolute boundary errors and within-tolerance fractions of :func:`timestamp_errors` frames
    (concatenate several with extra columns, e.g. ``source``, and group ``by`` them)."""
    flags = [c for c in errors.columns if "_within_" in c]
    agg = {"start_error": ["mean", "median"], "end_error": ["mean", "median"], **{c: "mean" for c in flags}}
    if by is None:
        out = errors.agg(agg)
        flat = {f"{c}_{s}" if c in ("start_error", "end_error") else c: out.loc[s, c]
                for c, ss in agg.items() for s in (ss if isinstance(ss, list) else [ss])}
        return pd.DataFrame([{**flat, "n_words": len(errors)}])
    out = errors.groupby(by).agg(agg)
    out.columns = [f"{c}_{s}" if c in ("start_error", "end_error") else c for c, s in out.columns]
    out["n_words"] = errors.groupby(by).size()
    return out.reset_index()
