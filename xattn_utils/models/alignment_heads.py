"""Alignment heads in a saved model's generation config: the heads `transformers` uses for word timestamps.

``model.generate(..., return_token_timestamps=True)`` (and the ASR pipeline's ``return_timestamps="word"``) read
``generation_config.alignment_heads``. OpenAI ships them for its checkpoints; a model trained here has none until
notebook 05 discovers its best heads on a calibration split and writes them with :func:`save_alignment_heads`.
"""
from __future__ import annotations

import json
from pathlib import Path

from .._io import atomic_write_json
from ..errors import ModelError


def is_trained_here(folder: str | Path) -> bool:
    """A ``save_pretrained`` folder written by the grid trainer (it holds ``training.json``): the only kind whose
    heads xattn may replace; bundled and hub checkpoints keep their official heads."""
    return (Path(folder) / "training.json").is_file() and (Path(folder) / "config.json").is_file()


def save_alignment_heads(folder: str | Path, heads, source: str = "") -> Path:
    """Write ``heads`` ([(layer, head), ...]) as ``alignment_heads`` into ``folder/generation_config.json``
    (atomically; the previous value and ``source`` are kept under ``xattn_alignment_heads``). Returns the file.

    Raises :class:`ModelError` when the folder has no generation config or a head is outside the decoder.
    """
    folder = Path(folder)
    gen_path, cfg_path = folder / "generation_config.json", folder / "config.json"
    if not gen_path.is_file() or not cfg_path.is_file():
        raise ModelError(f"{folder}: no generation_config.json / config.json; save the model with save_pretrained "
                         "first")
    config = json.loads(cfg_path.read_text())
    n_layers, n_heads = int(config["decoder_layers"]), int(config["decoder_attention_heads"])
    pairs = [[int(layer), int(head)] for layer, head in heads]
    bad = [p for p in pairs if not (0 <= p[0] < n_layers and 0 <= p[1] < n_heads)]
    if not pairs or bad:
        raise ModelError(f"{folder}: alignment heads must be (layer, head) pairs of the decoder's {n_layers} layers × "
                         f"{n_heads} heads; got {bad or 'none'}")
    gen = json.loads(gen_path.read_text())
    gen["xattn_alignment_heads"] = {"previous": gen.get("alignment_heads"), "source": source}
    gen["alignment_heads"] = pairs
    return atomic_write_json(gen_path, gen)
