"""The synthetic corpus: seeded sentences from :mod:`xattn_utils.data.grammar`, spoken by espeak-ng with exact word times.

``build_corpus(CorpusConfig(...))`` writes 16 kHz mono 16-bit WAVs, one word-times JSON per utterance and a manifest
(:mod:`xattn_utils.data.manifest` schema) into ``out_dir``. Splits: ``train``, ``dev``, ``test`` (sentences never seen in
train) and ``test_unseen_voice`` (test sentences spoken by a voice never used in train). Every utterance carries its
translation into the other language (tasks ``asr;st``): English utterances their Italian sentence (the trained grid's
English->Italian ST), Italian utterances their English sentence (Whisper translates into English).

Determinism: libespeak-ng carries state from one synthesis to the next within a process, so every utterance is
synthesized in a fresh process (a forkserver pool; about 15 utterances/s on 2 cores). Same config and espeak-ng
version -> byte-identical files. The default corpus (English test split, 24 utterances) is described by the committed
``data_manifest.csv``, whose sha256s it must reproduce; a mismatch names the row (the usual cause: another espeak-ng
version).

    xattn corpus --default                  # build the default corpus beside data_manifest.csv
    xattn corpus --config my_corpus.json    # another corpus (CorpusConfig fields as JSON)

(also ``python -m xattn_utils corpus ...``; the old ``python -m xattn_utils.data.corpus ...`` still works)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm.auto import tqdm

from .._entry import module_main
from .._io import atomic_write, atomic_write_json, sha256_file
from ..errors import InputError
from .audio import SAMPLE_RATE, resample
from .espeak import Synthesizer, espeak_version
from .grammar import sentence
from .manifest import COLUMNS, load_manifest

REPO_MANIFEST = Path(__file__).resolve().parents[2] / "data_manifest.csv"
VOICES = {
    "en": ("en-us", "en-us+f3", "en", "en+m3", "en-gb-x-rp+f2", "en-029+m5"),
    "it": ("it", "it+f3", "it+m3", "it+f2"),
}
UNSEEN_VOICES = {"en": "en-gb-scotland+f4", "it": "it+m5"}


@dataclass
class CorpusConfig:
    """What to synthesize (all recorded in the manifest's sidecar JSON).

    Attributes:
        name: folder name under ``out_dir`` and prefix of ids.
        out_dir: where audio, word times and ``manifest.csv`` go (paths in the manifest are relative to it).
        languages: "en" and/or "it".
        n_train, n_dev, n_test, n_test_unseen_voice: utterances per split and language.
        rate, pitch: ranges (words per minute; 0-100) drawn per utterance.
        exclude: English sentences never to use (e.g. another corpus's test set).
    """

    name: str = "synthetic"
    out_dir: str = "data"
    languages: tuple[str, ...] = ("en",)
    n_train: int = 0
    n_dev: int = 0
    n_test: int = 24
    n_test_unseen_voice: int = 0
    seed: int = 0
    rate: tuple[int, int] = (115, 160)
    pitch: tuple[int, int] = (35, 65)
    voices: dict = field(default_factory=lambda: {k: list(v) for k, v in VOICES.items()})
    unseen_voices: dict = field(default_factory=lambda: dict(UNSEEN_VOICES))
    workers: int = 2
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", self.name) \
                or ".." in self.name:
            raise InputError(f"corpus name {self.name!r} must be a plain folder name (letters, digits, _ . -): it "
                             "becomes a folder under out_dir and the prefix of every id")
        bad = [lang for lang in self.languages if lang not in VOICES]
        if bad or not self.languages:
            raise InputError(f"corpus {self.name}: languages {list(self.languages)!r}; choose from {sorted(VOICES)}")
        for key in ("n_train", "n_dev", "n_test", "n_test_unseen_voice", "workers", "seed"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "workers" else 0):
                raise InputError(f"corpus {self.name}: {key} must be a whole number "
                                 f"{'of at least 1' if key == 'workers' else '>= 0'}, not {value!r}")
        for key in ("rate", "pitch"):
            r = getattr(self, key)
            ok = isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(v, int) for v in r)
            if not ok or r[0] > r[1]:
                raise InputError(f"corpus {self.name}: {key} must be [low, high] whole numbers, not {r!r}")


def default_config(out_dir: str | Path = REPO_MANIFEST.parent) -> CorpusConfig:
    """The default study corpus: 24 English test utterances (2-5 s) in ``out_dir/data/default``."""
    return CorpusConfig(name="default", out_dir=str(Path(out_dir) / "data"), languages=("en",), n_test=24, seed=0)


def plan_corpus(cfg: CorpusConfig) -> list[dict]:
    """The utterances to synthesize (text, voice, rate, pitch, split, paths), deterministic in ``cfg.seed``."""
    rng = random.Random(cfg.seed)
    counts = {"train": cfg.n_train, "dev": cfg.n_dev, "test": cfg.n_test}
    seen: set[str] = set(cfg.exclude)
    rows = []
    for lang in cfg.languages:
        by_split: dict[str, list] = {}
        for split, n in counts.items():
            chosen = []
            while len(chosen) < n:
                s = sentence(rng)
                if s.english not in seen:
                    seen.add(s.english)
                    chosen.append(s)
            by_split[split] = chosen
        by_split["test_unseen_voice"] = by_split["test"][: cfg.n_test_unseen_voice]
        if cfg.n_test_unseen_voice > len(by_split["test"]):
            raise InputError("n_test_unseen_voice must not exceed n_test (it re-speaks test sentences)")
        for split, sents in by_split.items():
            for k, s in enumerate(sents):
                voice = cfg.unseen_voices[lang] if split == "test_unseen_voice" else rng.choice(cfg.voices[lang])
                uid = f"{cfg.name}-{lang}-{split}-{k:05d}"
                rel = f"{cfg.name}/{lang}/{split}/{uid}"
                rows.append({
                    "id": uid, "text": s.english if lang == "en" else s.italian,
                    "translation": s.italian if lang == "en" else s.english, "language": lang,
                    "tasks": "asr;st", "split": split, "voice": voice,
                    "rate": rng.randint(*cfg.rate), "pitch": rng.randint(*cfg.pitch),
                    "audio_path": f"{rel}.wav", "word_times_path": f"{rel}.words.json",
                })
    return rows


def _synthesize(job: dict) -> dict:
    """Worker: speak one utterance in this fresh process, write WAV + word times atomically, return its row."""
    speech = Synthesizer().speak(job["text"], job["voice"], job["rate"], job["pitch"])
    audio = np.clip(resample(speech.audio, speech.sample_rate, SAMPLE_RATE), -1.0, 1.0)
    wav = Path(job["root"]) / job["audio_path"]
    atomic_write(wav, lambda tmp: sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV"))
    words = [{"word": w.word, "start": round(w.start, 4), "end": round(w.end, 4), "exact": w.exact}
             for w in speech.words]
    meta = {"text": job["text"], "voice": job["voice"], "rate": job["rate"], "pitch": job["pitch"], "words": words}
    atomic_write_json(Path(job["root"]) / job["word_times_path"], meta)
    return {"sha256": sha256_file(wav), "duration_s": round(len(audio) / SAMPLE_RATE, 4), "source": _source_of(job)}


def _row(job: dict, made: dict) -> dict:
    return {"id": job["id"], "audio_path": job["audio_path"], "sample_rate": SAMPLE_RATE,
            "duration_s": made["duration_s"], "language": job["language"], "tasks": job["tasks"],
            "transcript": job["text"], "translation": job["translation"], "word_times_path": job["word_times_path"],
            "sha256": made["sha256"], "source": made["source"], "licence": "CC0-1.0 (generated)",
            "split": job["split"]}


def build_corpus(cfg: CorpusConfig, expected: dict[str, str] | None = None, progress: bool = True) -> pd.DataFrame:
    """Synthesize the corpus into ``cfg.out_dir`` and write its ``manifest.csv``; returns the manifest.

    Files whose sha256 already equals ``expected[id]`` are kept as they are; without ``expected``, those of the existing
    manifest whose row was made from the same job (sentence, translation, voice, rate, pitch, espeak-ng version):
    a changed config re-synthesizes what it changed, never relabels old audio.
    """
    root = Path(cfg.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / cfg.name / "manifest.csv"
    jobs = [{**j, "root": str(root)} for j in plan_corpus(cfg)]
    if expected is None and manifest_path.exists():
        old = pd.read_csv(manifest_path, dtype=str, keep_default_na=False).set_index("id")
        expected = {j["id"]: old.at[j["id"], "sha256"] for j in jobs if j["id"] in old.index
                    and (old.at[j["id"], "transcript"], old.at[j["id"], "translation"], old.at[j["id"], "source"])
                    == (j["text"], j["translation"], _source_of(j))}
    expected = expected or {}
    rows: dict[str, dict] = {}
    todo = []
    for j in jobs:
        wav = root / j["audio_path"]
        if j["id"] in expected and wav.exists() and (root / j["word_times_path"]).exists() \
                and sha256_file(wav) == expected[j["id"]]:
            info = sf.info(wav)
            rows[j["id"]] = _row(j, {"sha256": expected[j["id"]], "duration_s": round(info.frames / SAMPLE_RATE, 4),
                                     "source": _source_of(j)})
        else:
            todo.append(j)
    if todo:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["xattn_utils.data.corpus", "xattn_utils.data.espeak"])
        with ctx.Pool(max(1, cfg.workers), maxtasksperchild=1) as pool:
            made = list(tqdm(pool.imap(_synthesize, todo, chunksize=1), total=len(todo), desc=f"corpus {cfg.name}",
                             unit="utt", disable=not progress))
        for j, m in zip(todo, made):
            rows[j["id"]] = _row(j, m)
    df = pd.DataFrame([rows[j["id"]] for j in jobs], columns=list(COLUMNS))
    for col in ("audio_path", "word_times_path"):
        df[col] = [str((root / p).resolve()) for p in df[col]]
    _write_csv(df, manifest_path)
    (root / cfg.name / "corpus.json").write_text(json.dumps(asdict(cfg), indent=1))
    return load_manifest(manifest_path)


def _source_of(job: dict) -> str:
    return f"espeak-ng {espeak_version()} synthetic ({job['voice']}, {job['rate']} wpm, pitch {job['pitch']})"


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write a manifest (absolute paths) atomically, with paths relative to ``path``'s folder."""
    out = df.copy()
    for col in ("audio_path", "word_times_path"):
        out[col] = [os.path.relpath(p, path.parent.resolve()) for p in out[col]]
    atomic_write(path, lambda tmp: out.to_csv(tmp, index=False))


def ensure_default_corpus(manifest: str | Path = REPO_MANIFEST, progress: bool = True) -> Path:
    """Build the default corpus described by the committed manifest when any file is missing; verify checksums.

    Returns the manifest path. Raises :class:`InputError` naming the first rows whose rebuilt audio does not match.
    """
    manifest = Path(manifest)
    if not manifest.exists():
        raise InputError(f"default manifest {manifest} is missing; restore it from the repository")
    committed = load_manifest(manifest)
    if all(Path(p).exists() for p in committed["audio_path"]) and \
            all(Path(p).exists() for p in committed["word_times_path"]):
        return manifest
    cfg = default_config(manifest.parent)
    built = build_corpus(cfg, expected=dict(zip(committed["id"], committed["sha256"])), progress=progress)
    made = dict(zip(built["id"], built["sha256"]))
    bad = [f"{r.id} ({r.audio_path})" for r in committed.itertuples() if made.get(r.id) != r.sha256]
    if bad:
        raise InputError(f"the rebuilt default corpus does not match data_manifest.csv for {len(bad)} row(s), e.g. "
                         f"{bad[0]}: checksum mismatch. Your espeak-ng differs from the one the manifest was made with "
                         f"({committed['source'].iloc[0]}); install that version or regenerate the manifest with "
                         "`xattn corpus --default --write-manifest`")
    return manifest


def study_data(manifest: str | Path | None = None, split: str | None = "test", limit: int | None = None,
               language: str | None = None) -> pd.DataFrame:
    """The items a study notebook runs on: a given manifest, or the default corpus (built on first use)."""
    path = Path(manifest) if manifest else ensure_default_corpus()
    return load_manifest(path, split=split, language=language, limit=limit)


def ensure_corpus(config: str | Path, progress: bool = True) -> Path:
    """The manifest of the corpus a JSON config describes, built (or completed) first when any file is missing."""
    cfg = load_corpus_config(config)
    manifest = Path(cfg.out_dir) / cfg.name / "manifest.csv"
    if manifest.exists():
        rows = load_manifest(manifest)
        if len(rows) == len(plan_corpus(cfg)) and all(Path(p).exists() for p in rows["audio_path"]):
            return manifest
    build_corpus(cfg, progress=progress)
    return manifest


def load_corpus_config(path: str | Path) -> CorpusConfig:
    """A :class:`CorpusConfig` from a JSON file; :class:`InputError` naming the file and the field when it is bad."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"corpus config {path}: cannot read it ({err.strerror or err})") from None
    except ValueError as err:
        raise InputError(f"corpus config {path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise InputError(f"corpus config {path}: must be a JSON object of CorpusConfig fields")
    known = {f.name for f in fields(CorpusConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"corpus config {path}: unknown field(s) {unknown}; known: {', '.join(sorted(known))}")
    try:
        return CorpusConfig(**raw)
    except InputError as err:
        raise InputError(f"corpus config {path}: {err}") from None
    except (TypeError, ValueError) as err:
        raise InputError(f"corpus config {path}: {err}") from None


DESCRIPTION = "Build synthetic speech corpora with espeak-ng."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``xattn corpus``."""
    parser.add_argument("--default", action="store_true", help="build (and verify) the default corpus of the study")
    parser.add_argument("--write-manifest", action="store_true",
                        help="with --default: (re)write data_manifest.csv from a fresh build (maintainers)")
    parser.add_argument("--config", help="JSON file with CorpusConfig fields, for other corpora")


def command(args: argparse.Namespace) -> int:
    """``xattn corpus``: build the default corpus (printing its manifest's path) or one from ``--config``."""
    if args.default and args.write_manifest:
        df = build_corpus(default_config(), expected={})
        _write_csv(df, REPO_MANIFEST)
        print(f"wrote {REPO_MANIFEST} ({len(df)} rows)")
    elif args.default:
        print(ensure_default_corpus())
    elif args.config:
        try:
            cfg = load_corpus_config(args.config)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        df = build_corpus(cfg)
        print(f"{Path(cfg.out_dir) / cfg.name / 'manifest.csv'}: {len(df)} utterances")
    else:
        print("error: give --default (the study's corpus) or --config FILE (another corpus); see --help",
              file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m xattn_utils.data.corpus``: the same options and output as ``xattn corpus`` (kept for old scripts)."""
    return module_main("python -m xattn_utils.data.corpus", DESCRIPTION, add_arguments, command, argv)


if __name__ == "__main__":
    sys.exit(main())
