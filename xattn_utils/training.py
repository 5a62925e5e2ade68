"""Train the offline model grid: Whisper-architecture models from scratch on the synthetic corpus.

The grid is 3 kinds x 3 scales (registry names ``xattn-<kind>-<scale>`` in ``models.csv``):

- ``en-asr``: English ASR (English-only prompt, like Whisper ``*.en``);
- ``enit-asr``: English + Italian ASR (language token);
- ``en-asrst``: multitask English ASR + English->Italian speech translation (task token);
- scales ``s`` / ``m`` / ``l`` (about 1M, 3M and 8M parameters; see :data:`SCALES`).

Models are ``transformers`` ``WhisperForConditionalGeneration`` with a small config, a 4 s window (100 encoder
positions, :mod:`xattn_utils.vocab`) and a byte vocabulary, saved as normal ``save_pretrained`` folders with their
processor and a model card, so every downstream tool runs on them unchanged. Training from scratch on our own
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

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import InputError
from .provenance import stable_hash, versions
from .vocab import LANGUAGES, encode_example, make_processor, special_ids


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
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

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
    from .audio import load_audio

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class TrainResult:
    """What a training run did: the model, the steps taken, the loss curve (step, loss) and timing."""

    model: torch.nn.Module
    steps: int
    losses: list[tuple[int, float]]
    seconds: float
    resumed_from: int = 0


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
            import warnings

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
    with tqdm(total=steps, initial=start, desc=cfg.name, unit="step", disable=not progress) as bar:
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


# ---------------------------------------------------------------- evaluation


def evaluate(loaded, manifest: pd.DataFrame, kind: str, splits=("test", "test_unseen_voice"),
             batch_size: int = 16) -> pd.DataFrame:
    """Scores per (language, task, split): WER (jiwer) for ASR, chrF and BLEU (sacrebleu) and WER for ST.

    Utterances longer than the model's window are left out and counted (``n_too_long``).
    """
    import jiwer
    import sacrebleu

    from .audio import load_audio
    from .forced import transcribe

    window = loaded.window_samples or float("inf")
    rows = []
    for split in splits:
        part = manifest[manifest["split"] == split]
        groups: dict[tuple, list] = {}
        for row in part.to_dict("records"):
            for lang, task, text in targets_for(kind, row):
                groups.setdefault((row["language"], task or "transcribe"), []).append((row, lang, text))
        for (lang, task), items in groups.items():
            audios = [load_audio(r["audio_path"]) for r, _, _ in items]
            fits = [i for i, a in enumerate(audios) if len(a) <= window]
            refs = [items[i][2] for i in fits]
            hyps = transcribe(loaded, [audios[i] for i in fits], language=items[0][1],
                              task=task if items[0][1] else None, batch_size=batch_size)
            score = {"language": lang, "task": task, "split": split, "n": len(refs),
                     "n_too_long": len(items) - len(fits), "wer": 100 * jiwer.wer(refs, hyps)}
            if task == "translate":
                score["chrf"] = sacrebleu.corpus_chrf(hyps, [refs]).score
                score["bleu"] = sacrebleu.corpus_bleu(hyps, [refs]).score
            rows.append(score)
    return pd.DataFrame(rows)


TARGETS = {"wer:test": 5.0, "wer:test_unseen_voice": 12.0, "chrf:test": 60.0}


def meets_targets(scores: pd.DataFrame) -> pd.Series:
    """Per score row: does it meet the issue's target (ASR WER <= 5 % unseen sentences, <= 12 % unseen voice;
    ST chrF >= 60)?"""
    ok = []
    for r in scores.itertuples():
        if r.task == "translate":
            ok.append(bool(r.chrf >= TARGETS["chrf:test"]) if r.split == "test" else None)
        else:
            ok.append(bool(r.wer <= TARGETS.get(f"wer:{r.split}", 100.0)))
    return pd.Series(ok, index=scores.index, dtype=object)


# ---------------------------------------------------------------- saving


def model_card(cfg: TrainConfig, result: TrainResult, scores: pd.DataFrame, data: dict, n_params: int) -> str:
    """The model card (README.md of the saved folder): data, config, steps, scores, seed."""
    scores = scores.assign(meets_target=meets_targets(scores))
    table = scores.to_markdown(index=False, floatfmt=".1f") if len(scores) else "(not evaluated)"
    langs, tasks = KINDS[cfg.kind]
    budget = f", budget {cfg.minutes} min" if cfg.minutes else ""
    return f"""# {cfg.name}

A Whisper-architecture model trained from scratch by xattn on the synthetic espeak-ng corpus (no external data, so
no contamination). Languages: {', '.join(langs)}; tasks: {', '.join(tasks)}; scale {cfg.scale!r},
{n_params / 1e6:.2f}M trainable parameters; 4 s window of 80 log-mel bins (20 ms hop), byte vocabulary.

## Training
- steps: {result.steps} (asked {cfg.steps}{budget}),
  wall time {result.seconds / 60:.1f} min, final loss {result.losses[-1][1]:.3f}
- seed {cfg.seed}; config: `{json.dumps(asdict(cfg))}`
- data: `{json.dumps(data)}`

## Scores (held-out sentences; `test_unseen_voice` is a voice never heard in training)
Targets: ASR WER <= 5 % (unseen sentences) and <= 12 % (unseen voice); ST chrF >= 60.

{table}

Reproduce: `TrainConfig(**config)` with `steps={result.steps}` on the same corpus (see xattn_utils.training).
"""


def save_model(out: Path, result: TrainResult, processor, cfg: TrainConfig, scores: pd.DataFrame,
               data: dict) -> Path:
    """Write a ``save_pretrained`` folder (model, processor, card, training.json) atomically into ``out``."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    result.model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    n = n_parameters(result.model)
    (tmp / "README.md").write_text(model_card(cfg, result, scores, data, n))
    info = {"config": asdict(cfg), "steps": result.steps, "seconds": result.seconds, "parameters": n,
            "losses": result.losses, "scores": scores.to_dict("records"), "data": data, "versions": versions()}
    (tmp / "training.json").write_text(json.dumps(info, indent=1))
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        os.replace(out, old)
        os.replace(tmp, out)
        import shutil

        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return out


# ---------------------------------------------------------------- the grid


@dataclass
class GridConfig:
    """The grid to train and the corpus it trains on.

    Attributes:
        kinds, scales: which models (all 9 by default), trained scale by scale in the order given (the mid scale
            first: on a CPU budget it is the one that gets past the loss plateau).
        steps: steps per scale (the cosine schedule spans them).
        minutes: optional wall-clock budget per model (cuts ``steps`` after a few timed steps).
        n_train: training utterances per language; n_test: held-out sentences per language (also spoken by the
            unseen voice).
        seed: models and corpus.
        device: where to train.
        retrain: train again even when a finished model with the same config is there.
        out: folder of the trained models (default ``$XATTN_HOME/models/grid``, where the registry looks).
    """

    kinds: tuple[str, ...] = tuple(KINDS)
    scales: tuple[str, ...] = ("m", "s", "l")
    steps: dict = field(default_factory=lambda: {"s": 1000, "m": 1800, "l": 800})
    minutes: float | None = None
    n_train: int = 2000
    n_test: int = 100
    seed: int = 0
    batch_size: int = 16
    out: str | None = None
    retrain: bool = False
    device: str = "cpu"


def corpus_name(cfg: GridConfig) -> str:
    return f"grid-{cfg.n_train}-{cfg.n_test}-s{cfg.seed}"


def grid_corpus(cfg: GridConfig, progress: bool = True) -> pd.DataFrame:
    """The training corpus (English + Italian, train/test/unseen-voice splits), built on first use.

    Sentences of the default study corpus (``data_manifest.csv``) are excluded from it, so the study's data are
    never training data.
    """
    from .corpus import REPO_MANIFEST, CorpusConfig, build_corpus
    from .paths import cache_dir

    exclude = tuple(pd.read_csv(REPO_MANIFEST, dtype=str)["transcript"]) if REPO_MANIFEST.exists() else ()
    ccfg = CorpusConfig(name=corpus_name(cfg), out_dir=str(cache_dir("data")),
                        languages=LANGUAGES, n_train=cfg.n_train, n_dev=0, n_test=cfg.n_test,
                        n_test_unseen_voice=cfg.n_test, seed=cfg.seed, exclude=exclude)
    return build_corpus(ccfg, progress=progress)


def training_curves(root: str | Path | None = None) -> pd.DataFrame:
    """Loss curves of the trained models under ``root`` (default: the registry's grid folder): model, step, loss."""
    from .registry import grid_dir

    frames = []
    for info_path in sorted(Path(root or grid_dir()).glob("*/training.json")):
        info = json.loads(info_path.read_text())
        steps, losses = zip(*info["losses"]) if info["losses"] else ((), ())
        frames.append(pd.DataFrame({"model": info_path.parent.name, "step": steps, "loss": losses}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model", "step", "loss"])


def train_grid(cfg: GridConfig, progress: bool = True) -> pd.DataFrame:
    """Train, evaluate and save every model of the grid that is not there yet; returns one row per score."""
    from .models import LoadedModel
    from .registry import grid_dir

    root = Path(cfg.out) if cfg.out else grid_dir()
    root.mkdir(parents=True, exist_ok=True)
    manifest = grid_corpus(cfg, progress)
    corpus_sha = stable_hash(sorted(manifest["sha256"]))
    processor = make_processor()
    rows = []
    examples: dict[str, Examples] = {}
    for scale in cfg.scales:
        for kind in cfg.kinds:
            tcfg = TrainConfig(kind=kind, scale=scale, steps=int(cfg.steps[scale]), minutes=cfg.minutes,
                               batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device)
            folder = root / tcfg.name
            done = folder / "training.json"
            if done.exists() and not cfg.retrain:
                info = json.loads(done.read_text())
                if info["config"] == json.loads(json.dumps(asdict(tcfg))) and info["data"]["sha256"] == corpus_sha:
                    rows += [{"model": tcfg.name, "kind": kind, "scale": scale, "parameters": info["parameters"],
                              "steps": info["steps"], "minutes": info["seconds"] / 60, **s} for s in info["scores"]]
                    continue
            if kind not in examples:
                examples[kind] = make_examples(manifest[manifest["split"] == "train"], kind, processor, progress)
            result = train(tcfg, examples[kind], processor, root / ".checkpoints" / f"{tcfg.name}.pt", progress)
            loaded = LoadedModel(model=result.model, processor=processor, model_id=tcfg.name, path="(training)",
                                 weights_sha256="(unsaved)")
            scores = evaluate(loaded, manifest, kind)
            data = {"corpus": corpus_name(cfg), "sha256": corpus_sha,
                    "n_train_examples": len(examples[kind]), "skipped_long": len(examples[kind].skipped)}
            save_model(folder, result, processor, tcfg, scores, data)
            rows += [{"model": tcfg.name, "kind": kind, "scale": scale, "parameters": n_parameters(result.model),
                      "steps": result.steps, "minutes": result.seconds / 60, **s}
                     for s in scores.to_dict("records")]
    table = pd.DataFrame(rows)
    if len(table):
        table["meets_target"] = meets_targets(table)
    return table


__all__ = [
    "KINDS",
    "SCALES",
    "Examples",
    "GridConfig",
    "Scale",
    "TrainConfig",
    "TrainResult",
    "batch_indices",
    "build_model",
    "collate",
    "evaluate",
    "make_examples",
    "meets_targets",
    "model_name",
    "n_parameters",
    "save_model",
    "spec_augment",
    "targets_for",
    "train",
    "train_grid",
    "training_curves",
]
