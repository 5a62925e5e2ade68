"""A hand-built encoder-decoder whose answer is known: token i depends only on input frames of block i.

Encoder: H[t'] = tanh(A · mean(X[:, 2t'], X[:, 2t'+1]))  (two input frames per encoder frame, like Whisper).
Decoder: logits_i = W2 · tanh(W1 · mean(H[block_i]) + b1) + b2, with block_i = encoder frames
[i*block, (i+1)*block). So the true relevance of token i is exactly its block, in X and in H.
It implements :class:`xattn_utils.attribution.scorer.ForcedScorer`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


class BlockToyScorer:
    def __init__(self, n_tokens: int = 4, block: int = 5, n_features: int = 8, width: int = 16,
                 vocab: int = 13, seed: int = 0, pad_frames: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.n_tokens = n_tokens
        self.block = block
        self.frames_per_encoder_frame = 2
        self.n_audio_frames = 2 * block * n_tokens
        self.occlusion_value = 0.0
        t_in = self.n_audio_frames + pad_frames
        self.A = torch.randn(width, n_features, generator=g) / n_features ** 0.5
        self.W1 = torch.randn(width, width, generator=g) * 2 / width ** 0.5
        self.b1 = torch.randn(width, generator=g) * 0.1
        self.W2 = torch.randn(vocab, width, generator=g) * 3 / width ** 0.5
        self.b2 = torch.randn(vocab, generator=g) * 0.1
        self._features = torch.randn(n_features, t_in, generator=g)
        if pad_frames:
            self._features[:, self.n_audio_frames:] = self.occlusion_value
        with torch.no_grad():
            self.target_ids = self.log_probs(self._features[None])[0].argmax(-1)

    @property
    def device(self) -> torch.device:
        return self._features.device

    @property
    def features(self) -> torch.Tensor:
        return self._features

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, T) -> (B, T', D)."""
        b, f, t = features.shape
        pairs = features.reshape(b, f, t // 2, 2).mean(-1)  # (B, F, T')
        return torch.tanh(torch.einsum("df,bft->btd", self.A, pairs))

    def log_probs_from_encoder(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T', D) -> (B, I, V)."""
        b = hidden.shape[0]
        used = hidden[:, : self.n_tokens * self.block]
        pooled = used.reshape(b, self.n_tokens, self.block, -1).mean(2)  # (B, I, D)
        z = torch.tanh(pooled @ self.W1.T + self.b1)
        return torch.log_softmax(z @ self.W2.T + self.b2, dim=-1)

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, T) -> (B, I, V)."""
        return self.log_probs_from_encoder(self.encode(features))

    def true_map_x(self) -> torch.Tensor:
        """(I, T) 1 on the input frames of token i's block, 0 elsewhere."""
        t_in = self._features.shape[1]
        m = torch.zeros(self.n_tokens, t_in)
        span = 2 * self.block
        for i in range(self.n_tokens):
            m[i, i * span:(i + 1) * span] = 1.0
        return m

    def true_map_h(self) -> torch.Tensor:
        """(I, T') 1 on the encoder frames of token i's block, 0 elsewhere."""
        t_enc = self._features.shape[1] // 2
        m = torch.zeros(self.n_tokens, t_enc)
        for i in range(self.n_tokens):
            m[i, i * self.block:(i + 1) * self.block] = 1.0
        return m


@dataclass(frozen=True)
class ToyRecipe:
    """A picklable, hashable zero-argument recipe for :class:`BlockToyScorer` (to rebuild it on Dask workers)."""

    n_tokens: int = 4
    block: int = 5
    n_features: int = 8
    width: int = 16
    vocab: int = 13
    seed: int = 0
    pad_frames: int = 0

    def __call__(self) -> BlockToyScorer:
        return BlockToyScorer(**asdict(self))


class PlantedAlignerToy:
    """Cross-attention ``(L, H, S, T')`` of a toy decoder with one planted aligning head; the word times are known.

    Every head computes ``softmax(q k^T / sqrt(d))`` over encoder frames whose keys are sinusoidal position codes.
    The planted head's query for DTW row r is the mean key of word r's frames (row N, the end-of-text query, points at
    the frames after the last word), so it attends where the word is spoken; every other head's queries are random
    (a seeded Gaussian, as large as the planted ones). Decoder positions: ``n_prompt`` prompt rows, the N text rows,
    one end-of-text row, so the DTW rows are ``slice(n_prompt - 1, -1)`` as in Whisper.
    """

    def __init__(self, bounds, n_frames: int, n_layers: int = 3, n_heads: int = 4, planted=(2, 1), d: int = 32,
                 sharpness: float = 6.0, n_prompt: int = 2, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.bounds = list(bounds)  # word r spans frames [bounds[r], bounds[r + 1]); the rest is silence
        self.n_words = len(self.bounds) - 1
        self.n_prompt = n_prompt
        t = torch.arange(n_frames, dtype=torch.float32)[:, None]
        freq = torch.exp(-torch.arange(d // 2, dtype=torch.float32) / (d // 2) * 5.0)[None]
        self.keys = torch.cat([torch.sin(t * freq), torch.cos(t * freq)], dim=1)  # (T', d)
        spans = [(self.bounds[r], self.bounds[r + 1]) for r in range(self.n_words)] + [(self.bounds[-1], n_frames)]
        aligned = torch.stack([self.keys[a:b].mean(0) for a, b in spans])  # (N + 1, d)
        aligned = aligned / aligned.norm(dim=1, keepdim=True) * sharpness * d ** 0.5
        s = n_prompt + self.n_words + 1
        q = torch.randn(n_layers, n_heads, s, d, generator=g) * sharpness
        q[planted[0], planted[1], n_prompt - 1: -1] = aligned
        self.attention = torch.softmax(q @ self.keys.T / d ** 0.5, dim=-1)  # (L, H, S, T')
        self.planted = tuple(planted)

    @property
    def rows(self) -> slice:
        return slice(self.n_prompt - 1, -1)

    def pieces(self) -> list[str]:
        return [f" w{r}" for r in range(self.n_words)]

    def ref_words(self, frames_per_second: float = 50.0) -> list[dict]:
        return [{"word": f"w{r}", "start": self.bounds[r] / frames_per_second,
                 "end": self.bounds[r + 1] / frames_per_second} for r in range(self.n_words)]

    def as_pass(self, uid: str) -> dict:
        return {"attention": self.attention, "rows": self.rows, "pieces": self.pieces(),
                "ref_words": self.ref_words(), "utterance": uid}
