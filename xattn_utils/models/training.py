"""Train the offline model grid: Whisper-architecture models from scratch on the synthetic corpus.

The grid is 3 kinds x 3 scales (registry names ``xattn-<kind>-<scale>`` in ``models.csv``):

- ``en-asr``: English ASR (English-only prompt, like Whisper ``*.en``);
- ``enit-asr``: English + Italian ASR (language token);
- ``en-asrst``: multitask English ASR + English->Italian speech translation (task token);
- scales ``s`` / ``m`` / ``l`` (about 1M, 3M and 8M parameters; see :data:`SCALES`).

Models are ``transformers`` ``WhisperForConditionalGeneration`` with a small config, a 4 s window (100 encoder
positions, :mod:`xattn_utils.models.vocab`) and a byte vocabulary, saved as normal ``save_pretrained`` folders with
their processor and a model card, so every downstream tool runs on them unchanged. Training from scratch on our own
corpus also rules out data contamination.

Determinism: the model's initialisation, the order of examples (a seeded permutation per epoch) and SpecAugment's
masks (seeded per step) are functions of the seed and the step, so a run resumed from its checkpoint equals an
uninterrupted one, and the same seed gives the same weights on the same machine. A ``minutes`` budget re-plans the
number of steps once, after a few timed steps; the card records the steps taken (rerun with ``steps=N`` to
reproduce exactly).

Typical dynamics: the loss plateaus around 0.5-0.7 (fluent text, wrong words) until cross-attention locks onto the
audio, then falls to ~0.05; do not judge a run on that plateau.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from .._io import atomic_write
from ..data.audio import load_audio
from ..errors import InputError
from ..provenance import stable_hash
from .vocab import encode_example, special_ids


@dataclass(frozen=True)
class Scale:
    """Transformer sizes of one scale."""

    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    ffn: int


SCALES = {
    "s": Scale(d_model=128, encoder_layers=2, decoder_layers=2, heads=4, ffn=512),
    "m": Scale(d_model=192, encoder_layers=3, decoder_layers=2, heads=4, ffn=768),
    "l": Scale(d_model=256, encoder_layers=4, decoder_layers=4, heads=4, ffn=1024),
}
# kind -> (languages, tasks)
KINDS = {
    "en-asr": (("en",), ("transcribe",)),
    "enit-asr": (("en", "it"), ("transcribe",)),
    "en-asrst": (("en",), ("transcribe", "translate")),
}


def prompts_language_and_task(kind: str) -> bool:
    """Whether a kind's prompts carry language and task tokens (multilingual or multitask, as in Whisper)."""
    langs, tasks = KINDS[kind]
    return len(langs) > 1 or len(tasks) > 1


def model_name(kind: str, scale: str) -> str:
    """Registry name of a grid model, e.g. ``xattn-en-asr-m``."""
    return f"xattn-{kind}-{scale}"


@dataclass
class TrainConfig:
    """One training run (all of it is recorded in the model card).

    Attributes:
        kind, scale: which grid model (:data:`KINDS`, :data:`SCALES`).
        steps: optimizer steps; the cosine schedule spans them.
        minutes: optional wall-clock budget: after ``timing_steps`` steps, ``steps`` is cut to what fits.
        batch_size, lr, warmup, weight_decay, clip: AdamW with linear warm-up and cosine decay, gradient clipping.
        spec_augment: (frequency masks, max bins, time masks, max frames) per example; zeros disable it.
        window_s: input window in seconds (audio longer than it is left out of training, and counted).
        checkpoint_every: steps between resumable checkpoints.
        seed: initialisation, data order and augmentation.
        device: where to train ("cpu", "cuda"); a GPU user raises ``steps`` accordingly.
    """

    kind: str = "en-asr"
    scale: str = "m"
    steps: int = 2000
    minutes: float | None = None
    batch_size: int = 16
    lr: float = 1.5e-3
    warmup: int = 100
    weight_decay: float = 0.01
    clip: float = 1.0
    spec_augment: tuple[int, int, int, int] = (2, 10, 2, 12)
    window_s: int = 4
    checkpoint_every: int = 200
    timing_steps: int = 20
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"unknown model kind {self.kind!r}; choose from {sorted(KINDS)}")
        if self.scale not in SCALES:
            raise InputError(f"unknown scale {self.scale!r}; choose from {sorted(SCALES)}")
        self.spec_augment = tuple(self.spec_augment)

    @property
    def name(self) -> str:
        return model_name(self.kind, self.scale)

    def schedule_key(self) -> str:
        """Hash of everything that determines the weights except the budget (a checkpoint resumes under it)."""
        d = asdict(self)
        for k in ("steps", "minutes", "checkpoint_every", "timing_steps"):
            d.pop(k)
        return stable_hash(d)


# ---------------------------------------------------------------- model


def build_model(cfg: TrainConfig, processor) -> torch.nn.Module:
    """A freshly initialised WhisperForConditionalGeneration for ``cfg`` (seeded), with its generation config."""
    sc = SCALES[cfg.scale]
    ids = special_ids(processor.tokenizer)
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    fe = processor.feature_extractor
    config = WhisperConfig(
        vocab_size=len(processor.tokenizer), num_mel_bins=fe.feature_size, d_model=sc.d_model,
        encoder_layers=sc.encoder_layers, decoder_layers=sc.decoder_layers, encoder_attention_heads=sc.heads,
        decoder_attention_heads=sc.heads, encoder_ffn_dim=sc.ffn, decoder_ffn_dim=sc.ffn,
        max_source_positions=fe.nb_max_frames // 2, max_target_positions=160, pad_token_id=eot, bos_token_id=eot,
        eos_token_id=eot, decoder_start_token_id=sot, suppress_tokens=[], begin_suppress_tokens=[],
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=False,
    )
    torch.manual_seed(cfg.seed)
    model = WhisperForConditionalGeneration(config)
    langs, tasks = KINDS[cfg.kind]
    multi = prompts_language_and_task(cfg.kind)
    gen = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot, max_length=160,
        no_timestamps_token_id=ids["<|notimestamps|>"], suppress_tokens=[], begin_suppress_tokens=[],
        is_multilingual=multi,
        lang_to_id={f"<|{lang}|>": ids[f"<|{lang}|>"] for lang in langs} if multi else None,
        task_to_id={t: ids[f"<|{t}|>"] for t in tasks} if multi else None,
    )
    model.generation_config = gen
    return model


def n_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters (Whisper's sinusoidal encoder positions are frozen, so they do not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- data


@dataclass
class Examples:
    """Training examples of one kind, ready for batching.

    Attributes:
        features: (N, F, T) float32 log-mels over the model's window.
        tokens: N token-id lists ``prompt + text + EOT``.
        prompt_lengths: (N,) prompt length of each (the loss skips the prompt).
        skipped: ids left out (audio longer than the window).
    """

    features: torch.Tensor
    tokens: list[list[int]]
    prompt_lengths: np.ndarray
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)


def targets_for(kind: str, row: dict) -> list[tuple[str | None, str | None, str]]:
    """(language, task, text) targets of one manifest row for a model kind (none when it does not apply)."""
    langs, tasks = KINDS[kind]
    lang = row["language"]
    if lang not in langs:
        return []
    multi = prompts_language_and_task(kind)
    out = [(lang if multi else None, "transcribe" if multi else None, row["transcript"])]
    if "translate" in tasks and row.get("translation"):
        out.append((lang, "translate", row["translation"]))
    return out


def make_examples(manifest: pd.DataFrame, kind: str, processor, progress: bool = True) -> Examples:
    """Features and token targets for every (row, target) of ``manifest`` that ``kind`` trains on."""
    fe, tok = processor.feature_extractor, processor.tokenizer
    feats, tokens, plen, skipped = [], [], [], []
    for row in tqdm(manifest.to_dict("records"), desc=f"features {kind}", disable=not progress, unit="utt"):
        targets = targets_for(kind, row)
        if not targets:
            continue
        audio = load_audio(row["audio_path"])
        if len(audio) > fe.n_samples:
            skipped.append(row["id"])
            continue
        x = torch.from_numpy(fe(audio, sampling_rate=16000, return_tensors="np")["input_features"][0])
        for lang, task, text in targets:
            ids, p = encode_example(tok, text, lang, task)
            feats.append(x)
            tokens.append(ids)
            plen.append(p)
    if not tokens:
        raise InputError(f"no training examples for kind {kind!r} in the manifest (languages {KINDS[kind][0]})")
    return Examples(torch.stack(feats), tokens, np.array(plen), skipped)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Example indices of batch ``step``: a stream of seeded per-epoch permutations (a pure function of step)."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, pos = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).numpy()
        out.extend(perm[pos: pos + batch_size - len(out)])
    return np.array(out)


def spec_augment(x: torch.Tensor, params: tuple[int, int, int, int], gen: torch.Generator) -> torch.Tensor:
    """Frequency and time masking (SpecAugment) of a (B, F, T) batch, masked cells set to each example's mean."""
    n_f, max_f, n_t, max_t = params
    b, nf, nt = x.shape
    keep = torch.ones_like(x, dtype=torch.bool)
    for n_masks, width, size, dim in ((n_f, max_f, nf, 1), (n_t, max_t, nt, 2)):
        for _ in range(n_masks):
            w = torch.randint(0, width + 1, (b,), generator=gen)
            s = (torch.rand(b, generator=gen) * (size - w).clamp(min=1)).long()
            ar = torch.arange(size)
            band = (ar[None] >= s[:, None]) & (ar[None] < (s + w)[:, None])  # (B, size)
            keep &= ~(band[:, :, None] if dim == 1 else band[:, None, :])
    fill = x.mean(dim=(1, 2), keepdim=True).expand_as(x)
    return torch.where(keep, x, fill)


def collate(ex: Examples, idx: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (B, F, T), decoder inputs (B, L), labels (B, L) with -100 on prompt and padding)."""
    seqs = [ex.tokens[i] for i in idx]
    n = max(len(s) for s in seqs) - 1
    inp = torch.full((len(idx), n), pad_id, dtype=torch.long)
    lab = torch.full((len(idx), n), -100, dtype=torch.long)
    for r, (s, p) in enumerate(zip(seqs, ex.prompt_lengths[idx])):
        inp[r, : len(s) - 1] = torch.tensor(s[:-1])
        lab[r, p - 1: len(s) - 1] = torch.tensor(s[p:])
    return ex.features[idx], inp, lab


# ---------------------------------------------------------------- loop


def lr_at(step: int, cfg: TrainConfig, steps: int) -> float:
    """Linear warm-up, then cosine decay to zero at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, steps - cfg.warmup))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))


def loss_on(model, x: torch.Tensor, inp: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy of a batch (labels -100 ignored)."""
    logits = model(input_features=x, decoder_input_ids=inp).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=-100)


def _atomic_save(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


@dataclass
class TrainResult:
    """What a training run did: the model, the steps taken, the loss curve (step, loss) and timing."""

    model: torch.nn.Module
    steps: int
    losses: list[tuple[int, float]]
    seconds: float
    resumed_from: int = 0


@contextlib.contextmanager
def deterministic():
    """Deterministic kernels for the duration (then the caller's setting again). Needed for "same seed -> same
    weights": with two CPU threads the decoder's position-embedding gradient (an index_put with accumulate) sums
    repeated positions in thread order once a batch's target length passes the kernel's grain (measured: 83 tokens
    differ run to run, short targets do not)."""
    prev, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=warn)


def train(cfg: TrainConfig, examples: Examples, processor, checkpoint: Path | None = None,
          progress: bool = True, until: int | None = None) -> TrainResult:
    """Train one model from scratch, or resume from ``checkpoint`` when it holds this config's run.

    ``until`` stops after that step with a checkpoint written (to split a run across sessions); the run resumed
    later ends with the same weights as an uninterrupted one.
    """
    model = build_model(cfg, processor).to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    steps, start, losses, spent = cfg.steps, 0, [], 0.0
    if checkpoint is not None and checkpoint.exists():
        try:  # weights_only: a checkpoint is tensors and plain values, never code to run
            state = torch.load(checkpoint, weights_only=True, map_location=cfg.device)
        except Exception as err:  # noqa: BLE001 - truncated, foreign or unsafe file: train from scratch

            warnings.warn(f"{checkpoint}: cannot be loaded safely ({type(err).__name__}); training {cfg.name} "
                          "from scratch", stacklevel=2)
            state = {"key": None}
        if state["key"] == cfg.schedule_key() and state["steps"] == cfg.steps:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            steps, start, losses, spent = state["planned"], state["step"], state["losses"], state["seconds"]
    pad = special_ids(processor.tokenizer)["<|endoftext|>"]
    model.train()
    t0 = time.time() - spent
    with deterministic(), tqdm(total=steps, initial=start, desc=cfg.name, unit="step", disable=not progress) as bar:
        step = start
        while step < min(steps, until or steps):
            x, inp, lab = collate(examples, batch_indices(len(examples), cfg.batch_size, step, cfg.seed), pad)
            if any(cfg.spec_augment):
                x = spec_augment(x, cfg.spec_augment, torch.Generator().manual_seed(cfg.seed * 7_919 + step))
            x, inp, lab = x.to(cfg.device), inp.to(cfg.device), lab.to(cfg.device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg, steps)
            loss = loss_on(model, x, inp, lab)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            step += 1
            losses.append((step, loss.item()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1][1]:.3f}")
            if cfg.minutes and step == start + cfg.timing_steps and start == 0:
                per_step = (time.time() - t0) / step
                steps = max(step, min(steps, int(cfg.minutes * 60 / per_step)))
                bar.total = steps
            if checkpoint is not None and (step % cfg.checkpoint_every == 0 or step in (steps, until)):
                _atomic_save({"key": cfg.schedule_key(), "steps": cfg.steps, "planned": steps, "step": step,
                              "model": model.state_dict(), "optimizer": opt.state_dict(), "losses": losses,
                              "seconds": time.time() - t0}, checkpoint)
    model.eval()
    return TrainResult(model, step, losses, time.time() - t0, start)


__all__ = [
    "KINDS",
    "SCALES",
    "Examples",
    "Scale",
    "TrainConfig",
    "TrainResult",
    "batch_indices",
    "build_model",
    "collate",
    "make_examples",
    "model_name",
    "n_parameters",
    "spec_augment",
    "targets_for",
    "train",
]
