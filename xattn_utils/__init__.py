"""xattn: how much of what a speech-to-text model does does its cross-attention explain?

One import for notebooks and users::

    from xattn_utils import load_model, load_manifest, extract_cross_attention, open_store
"""
from .errors import HypothesisError, InputError, ModelError, XattnError
from .extraction.extract import ExtractConfig, RunReport, extract_cross_attention
from .extraction.forced import (
    ForcedPass,
    Seq2SeqScorer,
    decoder_prompt,
    forced_pass,
    greedy_decode,
    transcribe,
)
from .models.loader import LoadedModel, load_model
from .store import ResultStore, open_store

__all__ = [
    "ExtractConfig",
    "ForcedPass",
    "HypothesisError",
    "InputError",
    "LoadedModel",
    "ModelError",
    "ResultStore",
    "RunReport",
    "Seq2SeqScorer",
    "XattnError",
    "decoder_prompt",
    "extract_cross_attention",
    "forced_pass",
    "greedy_decode",
    "load_model",
    "open_store",
    "transcribe",
]
