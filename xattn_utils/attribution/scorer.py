"""The one interface every attribution method talks to: a forced-decoding scorer.

A scorer is bound to one utterance and one forced hypothesis. It maps a batch of (possibly perturbed) inputs to the
log-probabilities of every hypothesis position, so SPES, gradient methods and faithfulness curves need nothing else
from the model. ``I`` counts the scored positions (the hypothesis tokens and the end-of-text token; the forced
prompt tokens such as start-of-transcript are inputs, not scored). ``T`` input frames, ``F`` input features,
``T'`` encoder frames, ``D`` encoder width, ``V`` vocabulary.

Implementations: :class:`xattn_utils.extraction.forced.Seq2SeqScorer` for `transformers` encoder-decoders; the
hand-built known-answer model in ``tests/toy_models.py``.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class ForcedScorer(Protocol):
    """Forced-decoding log-probs of one hypothesis under batches of inputs.

    Attributes:
        n_tokens: I, the number of scored positions.
        target_ids: (I,) long tensor, the forced token at each scored position.
        n_audio_frames: number of input frames that hold audio (frames after it are padding, never occluded).
        frames_per_encoder_frame: input frames per encoder frame (Whisper: 2), read from the model.
        occlusion_value: the value an occluded input cell takes. For Whisper's normalized log-mel this is the
            utterance's silence floor (the value padding frames hold), so occlusion means "this cell was silent"
            rather than an arbitrary mid-level energy; for zero-mean features it is 0, as in SPES.
    """

    n_tokens: int
    target_ids: torch.Tensor
    n_audio_frames: int
    frames_per_encoder_frame: int
    occlusion_value: float

    @property
    def device(self) -> torch.device: ...

    @property
    def features(self) -> torch.Tensor:
        """(F, T) the unperturbed input features of the utterance."""

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, T) input features -> (B, T', D) encoder output."""

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, T) input features -> (B, I, V) log-softmax at every scored position (differentiable)."""

    def log_probs_from_encoder(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T', D) encoder output -> (B, I, V) log-softmax at every scored position (differentiable)."""
