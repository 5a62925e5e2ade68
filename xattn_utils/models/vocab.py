"""The tokenizer and processor of the models we train: Whisper's, with a byte vocabulary and a short window.

Every byte is one token (a byte-level BPE with no merges), so any text round-trips: ``città`` is ``c i t t Ã ł``
at the token level and ``città`` again when decoded. Whisper's special tokens follow the 256 bytes, so prompts read
as in Whisper: ``<|startoftranscript|> [<|en|> <|transcribe|>] <|notimestamps|>``. The processor is a plain
:class:`transformers.WhisperProcessor` saved with the model, so every tool loads it with ``AutoProcessor``.

Features: 80 log-mel bins with a 20 ms hop (``hop_length`` 320; the 2x stride of Whisper's second convolution
then gives 40 ms encoder frames) over a ``window_s`` window (4 s: 200 frames, 100 encoder positions).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

LANGUAGES = ("en", "it")
TASKS = ("transcribe", "translate")
EOT = "<|endoftext|>"
SOT = "<|startoftranscript|>"
NO_TIMESTAMPS = "<|notimestamps|>"
SPECIALS = (SOT, *(f"<|{lang}|>" for lang in LANGUAGES), *(f"<|{t}|>" for t in TASKS), NO_TIMESTAMPS)
HOP_LENGTH = 320


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes 0..255 (printable Latin-1 bytes stand for
    themselves; the others are moved to code points from 256 up), in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def make_processor(window_s: int = 4, n_mels: int = 80, hop_length: int = HOP_LENGTH):
    """A WhisperProcessor: byte tokenizer (ids 0..255 = bytes, then EOT and :data:`SPECIALS`) + log-mel features."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab.write_text(json.dumps({s: i for i, s in enumerate(byte_symbols())}))
        merges.write_text("#version: 0.2\n")
        tok = WhisperTokenizer(str(vocab), str(merges), unk_token=EOT, bos_token=EOT, eos_token=EOT, pad_token=EOT)
    tok.add_special_tokens({"additional_special_tokens": list(SPECIALS)})
    fe = WhisperFeatureExtractor(feature_size=n_mels, hop_length=hop_length, chunk_length=int(window_s),
                                 sampling_rate=16000, n_fft=400)
    return WhisperProcessor(feature_extractor=fe, tokenizer=tok)


def special_ids(tokenizer) -> dict[str, int]:
    """Ids of EOT and every special token by name."""
    return {t: int(tokenizer.convert_tokens_to_ids(t)) for t in (EOT, *SPECIALS)}


def prompt_tokens(language: str | None, task: str | None) -> list[str]:
    """Whisper's prompt: SOT, then language and task for multilingual/multitask models, then no-timestamps."""
    if (language is None) != (task is None):
        raise ValueError("give both language and task (multilingual/multitask model) or neither (English-only)")
    middle = [f"<|{language}|>", f"<|{task}|>"] if language else []
    return [SOT, *middle, NO_TIMESTAMPS]


def encode_example(tokenizer, text: str, language: str | None = None, task: str | None = None) -> tuple[list[int], int]:
    """Token ids ``prompt + text + EOT`` and the prompt's length (the loss starts after it)."""
    prompt = tokenizer.convert_tokens_to_ids(prompt_tokens(language, task))
    body = tokenizer(text, add_special_tokens=False).input_ids
    return [*prompt, *body, tokenizer.convert_tokens_to_ids(EOT)], len(prompt)
