"""The trained model grid: evaluation, model cards and the driver that trains every model not yet there.

The training loop itself is :mod:`xattn_utils.models.training`; this module decides what to train (a
:class:`GridConfig`), builds the grid's corpus, scores each trained model (WER, chrF, BLEU against the held-out
splits), writes each model as a ``save_pretrained`` folder with its card, and reads the loss curves back.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from .._io import replace_folder, temporary_folder_beside
from ..analysis.evaluation import score_texts
from ..data.audio import load_audio
from ..data.corpus import REPO_MANIFEST, CorpusConfig, build_corpus
from ..extraction.forced import transcribe
from ..models.loader import LoadedModel
from ..models.registry import grid_dir, load_registry
from ..models.training import (
    KINDS,
    Examples,
    TrainConfig,
    TrainResult,
    make_examples,
    n_parameters,
    targets_for,
    train,
)
from ..models.vocab import LANGUAGES, make_processor
from ..paths import cache_dir
from ..provenance import stable_hash, versions

# ---------------------------------------------------------------- evaluation


def evaluate(loaded, manifest: pd.DataFrame, kind: str, splits=("test", "test_unseen_voice"),
             batch_size: int = 16) -> pd.DataFrame:
    """Scores per (language, task, split): WER (jiwer) for ASR, chrF and BLEU (sacrebleu) and WER for ST.

    Utterances longer than the model's window are left out and counted (``n_too_long``).
    """

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
            scores = score_texts(refs, hyps, task) if refs else {"wer": float("nan")}  # nothing fits: no score
            score = {"language": lang, "task": task, "split": split, "n": len(refs),
                     "n_too_long": len(items) - len(fits), "wer": scores["wer"]}
            if task == "translate":
                score["chrf"], score["bleu"] = scores.get("chrf", float("nan")), scores.get("bleu", float("nan"))
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


PLATEAU_LOSS = 0.3  # training loss: the plateau sits at 0.5-0.7 (fluent text, wrong words), a model reading the
PLATEAU_WER = 50.0  # audio falls to ~0.05; and held-out ASR WER: on the plateau the text ignores the audio (71-89 %)


def plateau_status(losses, scores) -> dict:
    """Is a trained model past the loss plateau, i.e. does its decoder read the audio?

    Args:
        losses: ``[(step, loss), ...]`` (``training.json``); the mean of the last five is the final loss.
        scores: score records (:func:`evaluate`); the worst held-out (``test``) transcription WER over languages.
    Returns: ``past_plateau`` (final loss < ``PLATEAU_LOSS`` and, when the model transcribes, worst test WER <
    ``PLATEAU_WER``), ``final_loss``, ``test_wer``, ``rule``.
    """
    tail = [float(loss) for _, loss in list(losses)[-5:]]
    final = sum(tail) / len(tail) if tail else float("nan")
    wers = [float(r["wer"]) for r in scores if r.get("split") == "test" and r.get("task", "transcribe") == "transcribe"]
    wer = max(wers) if wers else float("nan")
    past = bool(tail) and final < PLATEAU_LOSS and (not wers or wer < PLATEAU_WER)
    return {"past_plateau": past, "final_loss": final, "test_wer": wer,
            "rule": f"final training loss < {PLATEAU_LOSS} and held-out ASR WER < {PLATEAU_WER:g} %"}


def model_plateau(folder: str | Path) -> dict | None:
    """:func:`plateau_status` of a saved grid model (from its ``training.json``); None when it has none."""
    info_path = Path(folder) / "training.json"
    if not info_path.exists():
        return None
    info = json.loads(info_path.read_text())
    return plateau_status(info.get("losses", []), info.get("scores", []))


def plateau_label(status: dict | None) -> str:
    """How tables mark a model: '' for a model not trained here, else past / on the plateau with the numbers."""
    if status is None:
        return ""
    numbers = f"final loss {status['final_loss']:.2f}, test WER {status['test_wer']:.0f} %"
    return (f"past the loss plateau ({numbers})" if status["past_plateau"]
            else f"ON THE LOSS PLATEAU ({numbers}): its maps explain text that ignores the audio")


def model_status(model) -> str:
    """:func:`plateau_label` of a run's ``model`` (a trained registry name or a saved grid folder); '' otherwise."""
    entry = load_registry().get(str(model))
    folder = grid_dir() / entry.location if entry is not None and entry.source == "trained" else Path(str(model))
    return plateau_label(model_plateau(folder)) if folder.is_dir() else ""


# ---------------------------------------------------------------- saving


def model_card(cfg: TrainConfig, result: TrainResult, scores: pd.DataFrame, data: dict, n_params: int) -> str:
    """The model card (README.md of the saved folder): data, config, steps, scores, seed."""
    scores = scores.assign(meets_target=meets_targets(scores))
    table = scores.to_markdown(index=False, floatfmt=".1f") if len(scores) else "(not evaluated)"
    langs, tasks = KINDS[cfg.kind]
    budget = f", budget {cfg.minutes} min" if cfg.minutes else ""
    status = plateau_status(result.losses, scores.to_dict("records"))
    return f"""# {cfg.name}

A Whisper-architecture model trained from scratch by xattn on the synthetic espeak-ng corpus (no external data, so
no contamination). Languages: {', '.join(langs)}; tasks: {', '.join(tasks)}; scale {cfg.scale!r},
{n_params / 1e6:.2f}M trainable parameters; 4 s window of 80 log-mel bins (20 ms hop), byte vocabulary.

## Training
- steps: {result.steps} (asked {cfg.steps}{budget}),
  wall time {result.seconds / 60:.1f} min, final loss {result.losses[-1][1]:.3f}
- plateau: {plateau_label(status)} (rule: {status['rule']})
- seed {cfg.seed}; config: `{json.dumps(asdict(cfg))}`
- data: `{json.dumps(data)}`

## Scores (held-out sentences; `test_unseen_voice` is a voice never heard in training)
Targets: ASR WER <= 5 % (unseen sentences) and <= 12 % (unseen voice); ST chrF >= 60.

{table}

Reproduce: `TrainConfig(**config)` with `steps={result.steps}` on the same corpus (see xattn_utils.models.training).
"""


def save_model(out: Path, result: TrainResult, processor, cfg: TrainConfig, scores: pd.DataFrame,
               data: dict) -> Path:
    """Write a ``save_pretrained`` folder (model, processor, card, training.json) atomically into ``out``."""
    out = Path(out)
    with temporary_folder_beside(out) as tmp:
        result.model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        n = n_parameters(result.model)
        (tmp / "README.md").write_text(model_card(cfg, result, scores, data, n))
        info = {"config": asdict(cfg), "steps": result.steps, "seconds": result.seconds, "parameters": n,
                "losses": result.losses, "scores": scores.to_dict("records"), "data": data, "versions": versions(),
                "plateau": plateau_status(result.losses, scores.to_dict("records"))}
        (tmp / "training.json").write_text(json.dumps(info, indent=1))
        tmp.chmod(0o755)  # mkdtemp makes it private
        replace_folder(tmp, out)
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

    exclude = tuple(pd.read_csv(REPO_MANIFEST, dtype=str)["transcript"]) if REPO_MANIFEST.exists() else ()
    ccfg = CorpusConfig(name=corpus_name(cfg), out_dir=str(cache_dir("data")),
                        languages=LANGUAGES, n_train=cfg.n_train, n_dev=0, n_test=cfg.n_test,
                        n_test_unseen_voice=cfg.n_test, seed=cfg.seed, exclude=exclude)
    return build_corpus(ccfg, progress=progress)


def training_curves(root: str | Path | None = None) -> pd.DataFrame:
    """Loss curves of the trained models under ``root`` (default: the registry's grid folder): model, step, loss."""
    frames = []
    for info_path in sorted(Path(root or grid_dir()).glob("*/training.json")):
        info = json.loads(info_path.read_text())
        steps, losses = zip(*info["losses"]) if info["losses"] else ((), ())
        frames.append(pd.DataFrame({"model": info_path.parent.name, "step": steps, "loss": losses}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model", "step", "loss"])


def train_grid(cfg: GridConfig, progress: bool = True) -> pd.DataFrame:
    """Train, evaluate and save every model of the grid that is not there yet; returns one row per score."""

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
