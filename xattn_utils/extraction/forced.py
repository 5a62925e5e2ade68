"""Decoding and forced decoding: the hypothesis, its log-probs, and cross-attention under teacher forcing.

Vocabulary used throughout: ``P`` forced prompt tokens (Whisper: start-of-transcript, [language, task],
no-timestamps), ``N`` hypothesis tokens, ``I = N + 1`` scored positions (the hypothesis tokens and end-of-text),
``L`` decoder layers, ``H`` heads, ``T`` input frames, ``T'`` encoder frames, ``D`` model width, ``V`` vocabulary.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from transformers import GenerationMixin
from transformers.modeling_outputs import BaseModelOutput

from ..errors import HypothesisError, InputError
from ..models.loader import Features, LoadedModel


@torch.inference_mode()
def decode(loaded: LoadedModel, features: torch.Tensor, prompt: list[int], num_beams: int = 1,
           max_new_tokens: int = 128) -> list[list[int]]:
    """Greedy (``num_beams=1``) or beam-search hypotheses of a batch, without end-of-text.

    Runs `transformers`' generic ``GenerationMixin.generate`` on our encoder output with the model's suppressed and
    begin-suppressed ids, not Whisper's own ``generate``: that one takes raw features through the full-size encoder
    and adds long-form, timestamp and language-detection logic this forced setting must not have. Greedy decoding
    through it gives the same hypotheses as an argmax loop over the full decoder (``tests/test_extract.py`` checks
    it on the test corpus).

    Args:
        features: (B, F, T) inputs of equal length.
        prompt: (P,) forced prompt ids (:meth:`LoadedModel.prompt_ids`).
    Returns: B lists of hypothesis token ids.
    """

    eos = loaded.eos_id
    limit = min(max_new_tokens, int(getattr(loaded.model.config, "max_target_positions", 448)) - len(prompt) - 1)
    hidden = loaded.encode(features.to(loaded.device))
    ids = torch.tensor([prompt] * len(hidden), device=loaded.device)
    out = GenerationMixin.generate(
        loaded.model, encoder_outputs=BaseModelOutput(last_hidden_state=hidden), decoder_input_ids=ids,
        decoder_attention_mask=torch.ones_like(ids), num_beams=num_beams, do_sample=False, max_new_tokens=limit,
        max_length=None, suppress_tokens=loaded.suppress_ids or None,
        begin_suppress_tokens=loaded.begin_suppress_ids or None, eos_token_id=eos, pad_token_id=loaded.pad_id)
    result = []
    for row in out[:, len(prompt):].tolist():
        result.append(row[: row.index(eos)] if eos in row else row)
    return result


def _decoder_inputs(prompt: list[int], hyps: list[list[int]], pad: int, device) -> torch.Tensor:
    """(B, P + max N) prompt + hypothesis, right-padded (causal: padding never changes earlier positions)."""
    n = max(len(h) for h in hyps)
    rows = [prompt + h + [pad] * (n - len(h)) for h in hyps]
    return torch.tensor(rows, dtype=torch.long, device=device)


@contextlib.contextmanager
def _cross_attention_mask(loaded: LoadedModel, removed: torch.Tensor | None, dtype: torch.dtype):
    """While active, every decoder layer's cross-attention adds -inf (the dtype's minimum) to the scores of the
    ``removed`` (B, T') encoder frames (an additive mask of shape (B, 1, 1, T'), broadcast over queries)."""
    if removed is None:
        yield
        return
    mask = torch.zeros(removed.shape, dtype=dtype, device=removed.device).masked_fill(removed,
                                                                                     torch.finfo(dtype).min)
    mask = mask[:, None, None, :]

    def hook(module, args, kwargs):
        return args, {**kwargs, "attention_mask": mask}

    handles = [layer.encoder_attn.register_forward_pre_hook(hook, with_kwargs=True)
               for layer in loaded.model.get_decoder().layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


PRECISIONS = ("fp32", "bf16")


def _cast_model(loaded: LoadedModel, dtype: torch.dtype) -> LoadedModel:
    """A copy of ``loaded`` with its weights in ``dtype`` (own trimmed encoders; the original is untouched)."""
    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model).to(dtype), _trimmed_encoders={})


class Seq2SeqScorer:
    """:class:`xattn_utils.attribution.scorer.ForcedScorer` for a `transformers` encoder-decoder and one forced
    hypothesis.

    Scored positions are the N hypothesis tokens and end-of-text (I = N + 1).

    The forced pass is lean: the decoder body runs without a key/value cache, and only the I scored rows are
    projected onto the vocabulary (the P - 1 prompt rows before them are never scored). ``precision="bf16"``
    (:meth:`at_precision`) runs the encoder and the decoder body with bfloat16 weights and activations; the
    vocabulary projection, the log-softmax (and SPES's KL) stay in float32.
    """

    def __init__(self, loaded: LoadedModel, features: Features, prompt: list[int], hypothesis: list[int]):
        if not hypothesis:
            raise HypothesisError("empty hypothesis: the model produced no tokens for this input, nothing to explain")
        self.loaded = loaded
        self.precision = "fp32"
        self.dtype = torch.float32
        self._source = features
        self._features = features.values.to(loaded.device)
        self.n_audio_frames = int(features.n_audio_frames)
        self.occlusion_value = float(features.occlusion_value)
        self.frames_per_encoder_frame = loaded.frames_per_encoder_frame
        self.prompt = list(prompt)
        self.hypothesis = list(hypothesis)
        self.target_ids = torch.tensor(self.hypothesis + [loaded.eos_id], device=loaded.device)
        self.n_tokens = len(self.target_ids)
        self._decoder_ids = torch.tensor(self.prompt + self.hypothesis, device=loaded.device)
        self._casts: dict[str, Seq2SeqScorer] = {"fp32": self}
        self._fp32_head: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def at_precision(self, precision: str) -> Seq2SeqScorer:
        """This scorer with weights and activations in ``precision`` (``fp32`` or ``bf16``; the cast copy of the
        model is made once per scorer). The vocabulary projection keeps the float32 weights of the original."""
        if precision not in PRECISIONS:
            raise InputError(f"precision {precision!r} is not one of {PRECISIONS}")
        if precision not in self._casts:
            root = self._casts["fp32"]
            other = copy.copy(root)
            other.loaded = _cast_model(root.loaded, torch.bfloat16)
            other.precision, other.dtype = precision, torch.bfloat16
            other._fp32_head = root._head()
            self._casts[precision] = other
        return self._casts[precision]

    def _head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(V, D) float32 weight and (V,) bias (or None) of the vocabulary projection."""
        if self._fp32_head is None:
            head = self.loaded.model.get_output_embeddings()
            bias = getattr(head, "bias", None)
            self._fp32_head = (head.weight.float(), None if bias is None else bias.float())
        return self._fp32_head

    @property
    def device(self) -> torch.device:
        return self._features.device

    @property
    def features(self) -> torch.Tensor:
        """(F, T) the unperturbed features."""
        return self._features

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, T) -> (B, T', D) (in the scorer's precision)."""
        return self.loaded.encode(features.to(self.dtype))

    def scored_log_probs(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, I, D) decoder output at the scored rows -> (B, I, V) float32 log-softmax (projection in float32)."""
        weight, bias = self._head()
        return torch.log_softmax(torch.nn.functional.linear(rows.float(), weight, bias), dim=-1)

    def log_probs_from_encoder(self, hidden: torch.Tensor, removed: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T', D) -> (B, I, V) log-softmax at the scored positions.

        ``removed``: (B, T') bool, encoder frames the decoder may not attend to: their cross-attention keys are
        masked out of the softmax in every layer, which is the same as deleting those frames from ``hidden``.
        """
        hidden = hidden.to(self.dtype)
        ids = self._decoder_ids.expand(hidden.shape[0], -1)
        model = self.loaded.model
        with _cross_attention_mask(self.loaded, removed, hidden.dtype):
            if hasattr(model, "final_logits_bias"):  # a head with more than a projection: the full model
                logits = model(encoder_outputs=(hidden,), decoder_input_ids=ids).logits
                return torch.log_softmax(logits[:, len(self.prompt) - 1:].float(), dim=-1)
            body = model.get_decoder()(input_ids=ids, encoder_hidden_states=hidden, use_cache=False)
        return self.scored_log_probs(body.last_hidden_state[:, len(self.prompt) - 1:])

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, T) -> (B, I, V)."""
        return self.log_probs_from_encoder(self.encode(features))

    def cross_kv_decoder(self, hidden: torch.Tensor) -> CrossKVDecoder | None:
        """The decoder of SM^H with the cross-attention keys and values of ``hidden`` (1, T', D) computed once
        (:class:`CrossKVDecoder`); None for a model other than Whisper."""
        return CrossKVDecoder(self, hidden) if self.loaded.is_whisper else None


class CrossKVDecoder:
    """Whisper's decoder for occlusions of one encoder output, with its cross-attention K/V computed once.

    An occluded encoder frame (set to 0) has key ``k_proj(0)`` and value ``v_proj(0)`` in every layer, so the
    perturbed keys and values are the unperturbed ones with occluded rows replaced; no projection of the encoder
    output is repeated per mask. Scores against the shared keys are one GEMM per layer, occluded scores are replaced
    by ``q · k_proj(0)``, and the output is ``(w ⊙ kept) @ V + (Σ_occluded w) v_proj(0)``. Layer 0's
    self-attention sees only the forced tokens, so its output is computed once too. Equals the plain decoder to
    float rounding (``tests/test_spes.py``).
    """

    def __init__(self, scorer: Seq2SeqScorer, hidden: torch.Tensor):
        if not scorer.loaded.is_whisper:
            raise InputError(f"the K/V-once SM^H decoder is Whisper's; model type {scorer.loaded.family!r} "
                             "needs SMHConfig(kv_once=False)")
        self.scorer = scorer
        self.dec = scorer.loaded.model.get_decoder()
        hidden = hidden.to(scorer.dtype)
        zero = hidden.new_zeros(1, 1, hidden.shape[-1])
        self.kv = []  # per layer: K (H, d, T'), V (H, T', d), k0 (H, d), v0 (H, d)
        for layer in self.dec.layers:
            att = layer.encoder_attn
            h, d = att.num_heads, att.head_dim
            k = att.k_proj(hidden)[0].view(-1, h, d).permute(1, 2, 0).contiguous()
            v = att.v_proj(hidden)[0].view(-1, h, d).transpose(0, 1).contiguous()
            self.kv.append((k, v, att.k_proj(zero).view(h, d), att.v_proj(zero).view(h, d)))
        ids = scorer._decoder_ids[None]
        s = ids.shape[1]
        x = self.dec.embed_tokens(ids) + self.dec.embed_positions.weight[:s]
        self.causal = torch.full((s, s), torch.finfo(x.dtype).min, dtype=x.dtype, device=x.device).triu(1)
        self.h0 = x + self._self_attention(self.dec.layers[0], x)  # (1, S, D): layer 0 after its self-attention

    def _self_attention(self, layer, x: torch.Tensor) -> torch.Tensor:
        att = layer.self_attn
        b, s, _ = x.shape
        y = layer.self_attn_layer_norm(x)
        q = (att.q_proj(y) * att.scaling).view(b, s, att.num_heads, -1).transpose(1, 2)
        k = att.k_proj(y).view(b, s, att.num_heads, -1).transpose(1, 2)
        v = att.v_proj(y).view(b, s, att.num_heads, -1).transpose(1, 2)
        w = torch.softmax(q @ k.transpose(2, 3) + self.causal, dim=-1)
        return att.out_proj((w @ v).transpose(1, 2).reshape(b, s, -1))

    def _cross_attention(self, layer, x: torch.Tensor, kv, occ: torch.Tensor, remove: bool) -> torch.Tensor:
        att = layer.encoder_attn
        k, v, k0, v0 = kv
        b, s, _ = x.shape
        nh = att.num_heads
        y = layer.encoder_attn_layer_norm(x)
        q = (att.q_proj(y) * att.scaling).view(b, s, nh, -1).permute(2, 0, 1, 3)  # (H, B, S, d)
        scores = (q.reshape(nh, b * s, -1) @ k).view(nh, b, s, -1)  # (H, B, S, T')
        occ4 = occ[None, :, None, :]
        if remove:
            scores = scores.masked_fill(occ4, torch.finfo(scores.dtype).min)
        else:
            scores = torch.where(occ4, (q * k0[:, None, None, :]).sum(-1, keepdim=True), scores)
        w = torch.softmax(scores, dim=-1)
        kept = w.masked_fill(occ4, 0.0)
        out = (kept.reshape(nh, b * s, -1) @ v).view(nh, b, s, -1)
        if not remove:
            out = out + w.masked_fill(~occ4, 0.0).sum(-1, keepdim=True) * v0[:, None, None, :]
        return att.out_proj(out.permute(1, 2, 0, 3).reshape(b, s, -1))

    def log_probs(self, occluded: torch.Tensor, remove: bool = False) -> torch.Tensor:
        """(B, T') bool occluded encoder frames (set to 0, or removed from the softmax with ``remove``) ->
        (B, I, V) float32 log-softmax at the scored positions."""
        b = occluded.shape[0]
        x = self.h0.expand(b, -1, -1)
        for li, (layer, kv) in enumerate(zip(self.dec.layers, self.kv)):
            if li > 0:
                x = x + self._self_attention(layer, x)
            x = x + self._cross_attention(layer, x, kv, occluded, remove)
            y = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(y)))
        x = self.dec.layer_norm(x)
        return self.scorer.scored_log_probs(x[:, len(self.scorer.prompt) - 1:])


@dataclass
class ForcedPass:
    """Everything one forced pass over a hypothesis gives, cut to the frames that hold audio.

    Attributes:
        prompt_ids: (P,) forced prompt.
        token_ids: (I,) scored tokens: hypothesis then end-of-text.
        tokens: I token strings.
        log_probs: (I,) log-prob of each scored token.
        cross_attention: (L, H, I, T'_audio) softmax weights of the scored positions' queries.
        value_norms: (L, H, T'_audio) ||W_O^h (W_V^h h_j + b_V^h)|| (Kobayashi et al. 2020); norm-based attention
            is ``cross_attention * value_norms[:, :, None, :]``.
        features: (F, T_audio) input features of the audio frames.
        n_audio_frames: input frames holding audio.
        n_encoder_frames: encoder frames holding audio (T'_audio).
        encoder_hidden: (T'_audio, D) encoder output, when asked.
    """

    prompt_ids: np.ndarray
    token_ids: np.ndarray
    tokens: list[str]
    log_probs: np.ndarray
    cross_attention: np.ndarray
    value_norms: np.ndarray
    features: np.ndarray
    n_audio_frames: int
    n_encoder_frames: int
    encoder_hidden: np.ndarray | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens[:-1]).strip()


def _value_norms(loaded: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """(B, T', D) encoder output -> (B, L, H, T') norms of each head's transformed value vectors."""
    norms = []
    for layer in loaded.model.get_decoder().layers:
        attn = layer.encoder_attn
        n_heads, d_head = attn.num_heads, attn.head_dim
        v = attn.v_proj(hidden).unflatten(-1, (n_heads, d_head))  # (B, T', H, d)
        w_o = attn.out_proj.weight.unflatten(1, (n_heads, d_head))  # (D, H, d)
        fx = torch.einsum("bthd,ehd->bhte", v, w_o)  # (B, H, T', D)
        norms.append(fx.norm(dim=-1))
    return torch.stack(norms, dim=1)


def encoder_frames_for(n_audio_frames: int, frames_per_encoder_frame: int) -> int:
    """Encoder frames covering ``n_audio_frames`` input frames (rounded up)."""
    return -(-n_audio_frames // frames_per_encoder_frame)


@torch.inference_mode()
def forced_pass(loaded: LoadedModel, features: list[Features], prompt: list[int], hyps: list[list[int]],
                with_hidden: bool = False) -> list[ForcedPass]:
    """One batched forced pass over each utterance's hypothesis (features of equal length in one batch).

    Right-padding of shorter hypotheses never changes the scored rows (the decoder is causal), so a batch gives
    the same arrays as one-by-one.
    """
    for h in hyps:
        if not h:
            raise HypothesisError("empty hypothesis: the model produced no tokens for this input, nothing to explain")
    eos = loaded.eos_id
    x = torch.stack([f.values for f in features]).to(loaded.device)
    hidden = loaded.encode(x)
    ids = _decoder_inputs(prompt, hyps, eos, loaded.device)
    out = loaded.model(encoder_outputs=(hidden,), decoder_input_ids=ids, output_attentions=True)
    logp = torch.log_softmax(out.logits.float(), dim=-1)
    ca = torch.stack(out.cross_attentions, dim=1).float()  # (B, L, H, P+N, T')
    vnorm = _value_norms(loaded, hidden).float()
    tok = loaded.tokenizer
    p = len(prompt)
    results = []
    for b, (feat, hyp) in enumerate(zip(features, hyps)):
        targets = hyp + [eos]
        i = len(targets)
        t_enc = encoder_frames_for(feat.n_audio_frames, loaded.frames_per_encoder_frame)
        rows = slice(p - 1, p - 1 + i)
        lp = logp[b, rows].gather(-1, torch.tensor(targets, device=logp.device)[:, None])[:, 0]
        results.append(ForcedPass(
            prompt_ids=np.array(prompt),
            token_ids=np.array(targets),
            tokens=[tok.decode([t]) for t in targets],
            log_probs=lp.cpu().numpy(),
            cross_attention=ca[b, :, :, rows, :t_enc].cpu().numpy(),
            value_norms=vnorm[b, :, :, :t_enc].cpu().numpy(),
            features=feat.values[:, : feat.n_audio_frames].cpu().numpy(),
            n_audio_frames=feat.n_audio_frames,
            n_encoder_frames=t_enc,
            encoder_hidden=hidden[b, :t_enc].float().cpu().numpy() if with_hidden else None,
        ))
    return results


def transcribe(loaded: LoadedModel, audios: list[np.ndarray], language: str | None = None,
               task: str | None = None, max_new_tokens: int = 128, batch_size: int = 8) -> list[str]:
    """Greedy transcripts of 16 kHz mono audios (batched by equal feature length)."""
    prompt = loaded.prompt_ids(language, task)
    feats = [loaded.features(a, loaded.decode_mode) for a in audios]
    texts: list[str] = [""] * len(audios)
    for idx in batches_by_length(feats, batch_size):
        x = torch.stack([feats[i].values for i in idx])
        for i, hyp in zip(idx, decode(loaded, x, prompt, 1, max_new_tokens)):
            texts[i] = loaded.tokenizer.decode(hyp, skip_special_tokens=True).strip()
    return texts


def batches_by_length(features: list[Features], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of equal feature length (order kept within a length)."""
    groups: dict[int, list[int]] = {}
    for i, f in enumerate(features):
        groups.setdefault(int(f.values.shape[-1]), []).append(i)
    return [idx[k:k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]
