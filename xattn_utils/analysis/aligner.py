"""Word timestamps from a loaded model: forced pass over the whole decoder sequence, heads as chosen, DTW.

``align(loaded, audio, heads="alignment")`` is the Whisper recipe (openai-whisper ``timing.find_alignment``,
CTranslate2 ``Whisper.align``) on our `transformers` model: decoder input ``prompt + text + end-of-text``, the
chosen heads' cross-attention cut to ``n_audio_frames // 2`` encoder frames and renormalized, standardized over
**every** decoder position, median-filtered, averaged over heads; DTW over the rows from the last prompt token (the
query that predicts the first text token) to the last text token (whose query predicts end-of-text). Word
probability: the mean over the word's tokens of the text-vocabulary softmax (tokens below end-of-text), as
faster-whisper reports it.

Heads (``heads=``): ``"alignment"`` (the model's ``generation_config.alignment_heads``, OpenAI's set for tiny.en and
base), ``"all"``, ``"L3H2,L1H0"`` or a list of ``(layer, head)`` pairs.

``L`` decoder layers, ``H`` heads, ``P`` forced prompt tokens (Whisper tiny.en: start-of-transcript,
no-timestamps), ``N`` text tokens, ``S = P + N + 1`` decoder positions, ``T'`` encoder frames.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.audio import load_audio
from ..errors import XattnError
from ..extraction.forced import decode
from ..models.conversion import bundled_source_dir
from ..models.loader import LoadedModel
from .timestamps import (
    WHISPER_FRAMES_PER_SECOND,
    alignment_matrix,
    decode_token_pieces,
    dtw_path,
    token_times,
    words_from_token_times,
)

_HEAD = re.compile(r"^L(\d+)H(\d+)$", re.IGNORECASE)


def parse_heads(spec, n_layers: int, n_heads: int, alignment_heads=None) -> list[tuple[int, int]]:
    """Heads named by ``spec`` -> sorted unique ``(layer, head)`` pairs, checked against the model's shape.

    ``spec``: ``"alignment"`` (needs ``alignment_heads``), ``"all"``, ``"L3H2,L1H0"``, or pairs.
    """
    if isinstance(spec, str):
        s = spec.strip()
        if s == "alignment":
            if not alignment_heads:
                raise XattnError("--heads alignment: this model's generation config has no alignment_heads; "
                                 "use --heads all, discovered heads, or name them (L3H2,...)")
            pairs = [tuple(map(int, h)) for h in alignment_heads]
        elif s == "all":
            pairs = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        else:
            pairs = []
            for part in filter(None, (p.strip() for p in s.split(","))):
                m = _HEAD.match(part)
                if not m:
                    raise XattnError(f"head {part!r}: write heads as L<layer>H<head> (0-based), e.g. L3H2,L1H0, "
                                     "or use 'alignment' / 'all'")
                pairs.append((int(m.group(1)), int(m.group(2))))
    else:
        pairs = [tuple(map(int, h)) for h in spec]
    bad = [f"L{a}H{b}" for a, b in pairs if not (0 <= a < n_layers and 0 <= b < n_heads)]
    if bad or not pairs:
        raise XattnError(f"heads {bad or spec!r}: the model has {n_layers} decoder layers x {n_heads} heads "
                         f"(L0H0 .. L{n_layers - 1}H{n_heads - 1})")
    return sorted(set(pairs))


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


@dataclass
class AlignmentPass:
    """One forced pass over ``prompt + text + end-of-text`` for word timestamps.

    Attributes:
        attention: (L, H, S, T'_audio) cross-attention of every decoder position, renormalized over the audio frames.
        text_ids: (N,) text token ids; ``pieces``: N token strings whose concatenation is the text.
        text_probs: (N,) probability of each text token under the text-vocabulary softmax.
        n_prompt: P, forced prompt tokens (the DTW rows are ``slice(P - 1, -1)``).
        n_frames: T'_audio = input audio frames // frames per encoder frame (Whisper's floor).
    """

    attention: torch.Tensor
    text_ids: list[int]
    pieces: list[str]
    text_probs: np.ndarray
    n_prompt: int
    n_frames: int

    @property
    def rows(self) -> slice:
        return slice(self.n_prompt - 1, -1)


@torch.inference_mode()
def alignment_pass(loaded: LoadedModel, audio: np.ndarray, text_ids: Sequence[int] | None = None,
                   language: str | None = None, task: str | None = None) -> AlignmentPass:
    """Encode ``audio`` (the model's input mode), decode greedily when ``text_ids`` is None, force the text."""
    prompt = loaded.prompt_ids(language, task)
    feats = loaded.features(audio)
    x = feats.values[None].to(loaded.device)
    if text_ids is None:
        dec = feats if loaded.decode_mode == loaded.input_mode else loaded.features(audio, loaded.decode_mode)
        text_ids = decode(loaded, dec.values[None].to(loaded.device), prompt)[0]
    text_ids = [int(t) for t in text_ids]
    if not text_ids:
        raise XattnError("nothing to align: the text is empty (the model produced no tokens for this audio)")
    eos = loaded.eos_id
    ids = torch.tensor([prompt + text_ids + [eos]], device=loaded.device)
    out = loaded.model(encoder_outputs=(loaded.encode(x),), decoder_input_ids=ids, output_attentions=True)
    n_frames = max(1, feats.n_audio_frames // loaded.frames_per_encoder_frame)
    ca = torch.stack(out.cross_attentions, dim=1)[0, ..., :n_frames].float()  # (L, H, S, T'_audio)
    ca = ca / ca.sum(-1, keepdim=True).clamp_min(1e-12)
    p = len(prompt)
    logits = out.logits[0, p - 1: p - 1 + len(text_ids)].float()
    vocab = eos if loaded.is_whisper else logits.shape[-1]  # Whisper: text tokens lie below end-of-text
    probs = torch.softmax(logits[:, :vocab], -1).gather(-1, torch.tensor(text_ids, device=logits.device)[:, None])
    return AlignmentPass(attention=ca.cpu(), text_ids=text_ids,
                         pieces=decode_token_pieces(loaded.tokenizer, text_ids), text_probs=probs[:, 0].cpu().numpy(),
                         n_prompt=p, n_frames=n_frames)


def head_weights(ap: AlignmentPass, heads: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(K, S, T') the chosen heads' attention of an :class:`AlignmentPass`."""
    layers = torch.tensor([h[0] for h in heads])
    hs = torch.tensor([h[1] for h in heads])
    return ap.attention[layers, hs]


def pass_words(ap: AlignmentPass, heads: Sequence[tuple[int, int]], medfilt_width: int = 7, ties: str = "diagonal",
               frames_per_second: float = WHISPER_FRAMES_PER_SECOND) -> list[dict]:
    """Words ``[{"word", "start", "end", "probability"}]`` of one pass with the chosen heads (the Whisper recipe)."""
    matrix = alignment_matrix(head_weights(ap, heads), medfilt_width=medfilt_width, rows=ap.rows)
    starts, ends = token_times(matrix, frames_per_second, n_tokens=len(ap.text_ids), ties=ties)
    words = words_from_token_times(ap.pieces, starts, ends)
    return [{"word": w.text.strip(), "start": round(w.start, 3), "end": round(w.end, 3),
             "probability": round(float(np.mean(ap.text_probs[list(w.tokens)])), 4)} for w in words]


def align(loaded: LoadedModel, audio: np.ndarray, heads="alignment", text: str | None = None,
          language: str | None = None, task: str | None = None, medfilt_width: int = 7,
          ties: str = "diagonal") -> list[dict]:
    """Word timestamps of one utterance: the hypothesis (or the given ``text``, forced) timed by ``heads``."""
    pairs = parse_heads(heads, loaded.n_layers, loaded.n_heads, loaded.alignment_heads)
    ids = None if text is None else text_token_ids(loaded, text)
    ap = alignment_pass(loaded, audio, ids, language, task)
    return pass_words(ap, pairs, medfilt_width, ties, _frames_per_second(loaded))


def text_token_ids(loaded: LoadedModel, text: str) -> list[int]:
    """Token ids of a transcript as the model would write it after the prompt (a leading space, no specials)."""
    return list(loaded.tokenizer.encode(" " + text.strip(), add_special_tokens=False))


def _frames_per_second(loaded: LoadedModel) -> float:
    return 16000 / (loaded.hop_length * loaded.frames_per_encoder_frame)


# --------------------------------------------------------------------------------------------------- parity
def ctranslate2_align(ct2_model, features: np.ndarray, start_sequence: Sequence[int], text_ids: Sequence[int],
                      n_input_frames: int, medfilt_width: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CTranslate2's ``Whisper.align`` on one utterance: (text_idx, time_idx) of its DTW path and token probs.

    Args:
        ct2_model: a ``ctranslate2.models.Whisper``.
        features: (F, T) log-mel input (Whisper: padded to 3000 frames).
        start_sequence: the prompt without ``<|notimestamps|>`` (CTranslate2 appends it).
        n_input_frames: input frames holding audio (CTranslate2 halves it for the encoder stride).
    """
    import ctranslate2

    sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(features, dtype=np.float32)[None]))
    res = ct2_model.align(sv, [int(t) for t in start_sequence], [[int(t) for t in text_ids]], int(n_input_frames),
                          median_filter_width=medfilt_width)[0]
    path = np.asarray(res.alignments, dtype=np.int64).reshape(-1, 2)
    return path[:, 0], path[:, 1], np.asarray(res.text_token_probs, dtype=np.float64)


def ctranslate2_parity(loaded: LoadedModel, audios: dict[str, np.ndarray], ct2_dir: str | None = None,
                       ties: str = "time") -> "pd.DataFrame":
    """Our token-to-frame path vs CTranslate2's ``Whisper.align`` per utterance, same heads, same hypothesis.

    ``audios``: id -> 16 kHz audio. The hypothesis is our greedy decoding; both sides align it with the model's
    ``alignment_heads`` (CTranslate2 reads them from its own ``config.json``; they must be the same list).
    Returns one row per utterance: n_tokens, path_identical (the whole DTW path), start_frames_equal (share of
    tokens whose first frame agrees), max_frame_diff, prob_max_abs_diff (text-token probabilities).
    """

    import ctranslate2

    if ct2_dir is None:
        ct2_dir = str(bundled_source_dir())
    ct2_heads = [tuple(h) for h in json.loads((Path(ct2_dir) / "config.json").read_text()).get("alignment_heads", [])]
    if sorted(ct2_heads) != sorted(loaded.alignment_heads or []):
        raise XattnError(f"{ct2_dir}: CTranslate2's alignment heads {ct2_heads} differ from the model's "
                         f"{loaded.alignment_heads}; compare the same model")
    if loaded.input_mode != "padded":
        raise XattnError("CTranslate2 aligns Whisper's padded 30 s input: load the model with input_mode='padded'")
    ct2 = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32", intra_threads=1)
    heads = loaded.alignment_heads
    rows = []
    for uid, audio in audios.items():
        ap = alignment_pass(loaded, audio)
        feats = loaded.features(audio)
        start = loaded.prompt_ids()[:-1]  # without <|notimestamps|>
        ti, tj, probs = ctranslate2_align(ct2, feats.values.numpy(), start, ap.text_ids, feats.n_audio_frames)
        matrix = alignment_matrix(head_weights(ap, heads), rows=ap.rows)
        oi, oj = dtw_path(-matrix, ties=ties, dtype=np.float32)
        ours = _entries(oi, oj, matrix.shape[0])
        theirs = _entries(ti, tj, matrix.shape[0])
        rows.append({"id": uid, "n_tokens": len(ap.text_ids), "n_frames": ap.n_frames,
                     "path_identical": bool(len(oi) == len(ti) and (oi == ti).all() and (oj == tj).all()),
                     "start_frames_equal": float((ours == theirs).mean()),
                     "max_frame_diff": int(np.abs(ours - theirs).max()),
                     "prob_max_abs_diff": float(np.abs(probs - ap.text_probs).max())})
    return pd.DataFrame(rows)


def _entries(text_idx: np.ndarray, time_idx: np.ndarray, n_rows: int) -> np.ndarray:
    """First frame of each row on a path, (n_rows,)."""
    out = np.full(n_rows, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(out, np.asarray(text_idx, dtype=np.int64), np.asarray(time_idx, dtype=np.int64))
    return out


# --------------------------------------------------------------------------------------------------- batch + output
def timestamps_for(loaded: LoadedModel, items, heads="alignment", force_transcript: bool = False,
                   language: str | None = None, task: str | None = None, medfilt_width: int = 7,
                   ties: str = "diagonal") -> tuple[list[dict], dict[str, str]]:
    """Word timestamps of audio files or manifest rows: ``[{"file", "words": [...]}]`` and failures (file -> message).

    ``items``: paths, or a manifest DataFrame (``force_transcript``: align its ``transcript`` instead of the
    hypothesis). A file that cannot be read or aligned is reported in the failures and the rest go on.
    """
    pairs = parse_heads(heads, loaded.n_layers, loaded.n_heads, loaded.alignment_heads)
    if hasattr(items, "itertuples"):
        jobs = [(r["audio_path"], r.get("transcript") if force_transcript else None, r.get("language") or language)
                for r in items.to_dict("records")]
    else:
        jobs = [(str(f), None, language) for f in items]
    results, failed = [], {}
    for path, text, lang in jobs:
        try:
            words = align(loaded, load_audio(path), pairs, text, lang, task, medfilt_width, ties)
        except XattnError as err:
            failed[path] = str(err) if path in str(err) else f"{path}: {err}"
            continue
        results.append({"file": path, "words": words})
    return results, failed


def format_words(results: list[dict], fmt: str = "table") -> str:
    """``table`` (aligned columns), ``json`` (the list as is) or ``csv`` (one row per word) text of results."""
    if fmt == "json":
        return json.dumps(results, indent=1, ensure_ascii=False)

    extra = ["source"] if any("source" in r for r in results) else []
    rows = [{"file": r["file"], **{k: r[k] for k in extra}, **w} for r in results for w in r["words"]]
    df = pd.DataFrame(rows, columns=["file", *extra, "word", "start", "end", "probability"])
    if fmt == "csv":
        return df.to_csv(index=False).rstrip("\n")
    if fmt != "table":
        raise XattnError(f"format {fmt!r}: use table, json or csv")
    return df.to_string(index=False, float_format=lambda v: f"{v:.3f}")
