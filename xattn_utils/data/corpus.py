"""Synthetic corpora: sentences spoken by speech engines with word times, and a manifest.

``build_corpus(CorpusConfig(...))`` writes 16 kHz mono 16-bit WAVs, one word-times JSON per utterance and a manifest
(:mod:`xattn_utils.data.manifest` schema) into ``out_dir``. Two sources of sentences:

* ``natural`` (default): the committed bilingual set of everyday sentences (:mod:`xattn_utils.data.sentences`),
  split by sentence (a test sentence is never in train or dev), spoken by voices the bundled models understand
  (:mod:`xattn_utils.data.engines`: flite and festival for English, festival's Italian diphone voices);
* ``grammar``: seeded template sentences (:mod:`xattn_utils.data.grammar`; controlled structure) — with the
  espeak-ng voices of ``sweeps/corpus_hard.json`` this is the study's *hard speech* condition.

Splits: ``train``, ``dev``, ``test`` and ``test_unseen_voice`` (test sentences spoken by a voice never used in train:
for English a voice of another engine, for Italian the second festival voice). Every utterance carries its
translation into the other language (tasks ``asr;st``).

Determinism: every utterance is synthesized in a fresh process (a forkserver pool). Same config and engine versions
-> byte-identical files. The manifest's ``source`` names engine, engine version, voice and speed; a rebuild on a
machine with other engine versions re-synthesizes, says how far the new audio is from the committed manifest and
goes on (each run records the sha256 of the audio it used).

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
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm.auto import tqdm

from .._entry import module_main
from .._io import atomic_write, atomic_write_json, sha256_file
from ..errors import InputError, XattnError
from ..paths import checkout_root, resource, xattn_home
from .audio import SAMPLE_RATE
from .engines import ENGINES, engine_version, parse_voice, speak
from .grammar import sentence
from .manifest import COLUMNS, load_manifest
from .sentences import split_pairs

REPO_MANIFEST = resource("data_manifest.csv")
SOURCES = ("natural", "grammar")
# Voices the bundled models understand (greedy WER on the natural test sentences in the README's quality table).
VOICES = {"en": ("flite:rms", "flite:slt", "flite:awb"), "it": ("festival:lp_diphone",)}
# Never used in train: English from another engine; Italian has two festival voices, the second one is held out.
UNSEEN_VOICES = {"en": ("festival:cmu_us_slt_arctic_hts",), "it": ("festival:pc_diphone",)}
SPEEDS = {"en": (0.95, 1.05), "it": (0.78, 0.82)}


@dataclass
class CorpusConfig:
    """What to synthesize (all recorded in the corpus folder's ``corpus.json``).

    Attributes:
        name: folder name under ``out_dir`` and prefix of ids.
        out_dir: where audio, word times and ``manifest.csv`` go (paths in the manifest are relative to it).
        languages: "en" and/or "it".
        sentences: ``natural`` (the committed bilingual set) or ``grammar`` (seeded templates).
        n_train, n_dev, n_test, n_test_unseen_voice: utterances per split and language (the same sentences in
            every language: Italian test audio says the English test sentences' translations). A natural split
            asked for more utterances than it has sentences says them again, reshuffled, with new voice draws.
        voices, unseen_voices: language -> ``engine:voice`` specs (:mod:`xattn_utils.data.engines`); each utterance
            draws one; unseen voices speak the first ``n_test_unseen_voice`` test sentences and must not be in
            ``voices``.
        speed: speaking-rate factor range [low, high] drawn per utterance (1.0: the engine's default), or
            language -> range. Default: English 0.95-1.05; Italian 0.78-0.82 (festival's Italian diphone voice at
            0.8 is transcribed by Whisper base at 13 % WER on the natural test sentences, at its default rate 19 %).
        pitch: espeak-ng pitch range (0-100) drawn per utterance; other engines keep their voice's pitch.
        exclude: English sentences never to use (e.g. another corpus's test set).
    """

    name: str = "synthetic"
    out_dir: str = "data"
    languages: tuple[str, ...] = ("en",)
    sentences: str = "natural"
    n_train: int = 0
    n_dev: int = 0
    n_test: int = 24
    n_test_unseen_voice: int = 0
    seed: int = 0
    speed: tuple[float, float] | dict = field(default_factory=lambda: dict(SPEEDS))
    pitch: tuple[int, int] = (35, 65)
    voices: dict = field(default_factory=lambda: {k: list(v) for k, v in VOICES.items()})
    unseen_voices: dict = field(default_factory=lambda: {k: list(v) for k, v in UNSEEN_VOICES.items()})
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
        if self.sentences not in SOURCES:
            raise InputError(f"corpus {self.name}: sentences {self.sentences!r}; choose from {list(SOURCES)}")
        for key in ("n_train", "n_dev", "n_test", "n_test_unseen_voice", "workers", "seed"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "workers" else 0):
                raise InputError(f"corpus {self.name}: {key} must be a whole number "
                                 f"{'of at least 1' if key == 'workers' else '>= 0'}, not {value!r}")
        if self.n_test_unseen_voice > self.n_test:
            raise InputError(f"corpus {self.name}: n_test_unseen_voice must not exceed n_test (it re-speaks test "
                             "sentences)")
        ranges = [("pitch", self.pitch, int)] + [
            ("speed", r, (int, float)) for r in (self.speed.values() if isinstance(self.speed, dict) else [self.speed])]
        for key, r, kind in ranges:
            ok = isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(v, kind) for v in r)
            if not ok or r[0] > r[1] or (key == "speed" and r[0] <= 0):
                raise InputError(f"corpus {self.name}: {key} must be [low, high] "
                                 f"{'positive numbers' if key == 'speed' else 'whole numbers'}, not {r!r}")
        if isinstance(self.speed, dict) and set(self.languages) - set(self.speed):
            missing = sorted(set(self.languages) - set(self.speed))
            raise InputError(f"corpus {self.name}: speed has no range for {missing}")
        for lang in self.languages:
            for key in ("voices", "unseen_voices"):
                specs = self.voices.get(lang) if key == "voices" else self.unseen_voices.get(lang)
                if not specs and (key == "voices" or self.n_test_unseen_voice):
                    raise InputError(f"corpus {self.name}: {key} has no voice for {lang!r}")
                for spec in specs or ():
                    parse_voice(spec)
            shared = set(self.voices.get(lang, ())) & set(self.unseen_voices.get(lang, ()))
            if shared and self.n_test_unseen_voice:
                raise InputError(f"corpus {self.name}: {sorted(shared)} are in both voices and unseen_voices for "
                                 f"{lang!r}; an unseen voice must never speak train")


def default_config(out_dir: str | Path | None = None) -> CorpusConfig:
    """The default study corpus: 24 natural English test sentences (flite voices) in ``out_dir/data/default``
    (default: beside ``data_manifest.csv`` in a checkout, under ``$XATTN_HOME`` for an installed package)."""
    out_dir = out_dir if out_dir is not None else (REPO_MANIFEST.parent if checkout_root() else xattn_home())
    return CorpusConfig(name="default", out_dir=str(Path(out_dir) / "data"), languages=("en",), n_test=24, seed=0)


def _sentences(cfg: CorpusConfig, rng: random.Random) -> dict[str, list]:
    """The sentences of each split (shared by every language): natural pairs from their split's pool in a seeded
    order, or fresh grammar sentences; never one in ``cfg.exclude``, never one twice."""
    counts = {"train": cfg.n_train, "dev": cfg.n_dev, "test": cfg.n_test}
    seen: set[str] = set(cfg.exclude)
    out: dict[str, list] = {}
    pools = split_pairs() if cfg.sentences == "natural" else None
    for split, n in counts.items():
        chosen = []
        if pools is not None and n:
            pool = [s for _, s in pools[split] if s.english not in seen]
            if not pool:
                raise InputError(f"corpus {cfg.name}: the natural set has no {split} sentence left (exclude); "
                                 "use sentences='grammar'")
            while len(chosen) < n:  # more utterances than sentences: the split's sentences again, reshuffled
                chosen += rng.sample(pool, len(pool))
            chosen = chosen[:n]
        while len(chosen) < n:
            s = sentence(rng)
            if s.english not in seen:
                seen.add(s.english)
                chosen.append(s)
        out[split] = chosen
    out["test_unseen_voice"] = out["test"][: cfg.n_test_unseen_voice]
    return out


def plan_corpus(cfg: CorpusConfig) -> list[dict]:
    """The utterances to synthesize (text, voice, speed, pitch, split, paths), deterministic in ``cfg.seed``."""
    rng = random.Random(cfg.seed)
    by_split = _sentences(cfg, rng)
    rows = []
    for lang in cfg.languages:
        for split, sents in by_split.items():
            for k, s in enumerate(sents):
                voices = cfg.unseen_voices[lang] if split == "test_unseen_voice" else cfg.voices[lang]
                voice = voices[k % len(voices)] if split == "test_unseen_voice" else rng.choice(voices)
                speeds = cfg.speed[lang] if isinstance(cfg.speed, dict) else cfg.speed
                speed, pitch = round(rng.uniform(*speeds), 2), rng.randint(*cfg.pitch)
                uid = f"{cfg.name}-{lang}-{split}-{k:05d}"
                rel = f"{cfg.name}/{lang}/{split}/{uid}"
                rows.append({
                    "id": uid, "text": s.english if lang == "en" else s.italian,
                    "translation": s.italian if lang == "en" else s.english, "language": lang,
                    "tasks": "asr;st", "split": split, "voice": voice, "speed": speed,
                    "pitch": pitch if parse_voice(voice)[0] == "espeak-ng" else None,
                    "audio_path": f"{rel}.wav", "word_times_path": f"{rel}.words.json",
                })
    return rows


def _synthesize(job: dict) -> dict:
    """Worker: speak one utterance in this fresh process, write WAV + word times atomically, return its row."""
    speech = speak(job["text"], job["voice"], speed=job["speed"], pitch=job["pitch"])
    audio = np.clip(speech.audio, -1.0, 1.0)
    wav = Path(job["root"]) / job["audio_path"]
    atomic_write(wav, lambda tmp: sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV"))
    words = [{"word": w.word, "start": round(w.start, 4), "end": round(w.end, 4), "exact": w.exact}
             for w in speech.words]
    meta = {"text": job["text"], "voice": job["voice"], "speed": job["speed"], "pitch": job["pitch"],
            "engine": engine_version(job["voice"]), "words": words}
    atomic_write_json(Path(job["root"]) / job["word_times_path"], meta)
    return {"sha256": sha256_file(wav), "duration_s": round(len(audio) / SAMPLE_RATE, 4), "source": _source_of(job)}


def _row(job: dict, made: dict) -> dict:
    return {"id": job["id"], "audio_path": job["audio_path"], "sample_rate": SAMPLE_RATE,
            "duration_s": made["duration_s"], "language": job["language"], "tasks": job["tasks"],
            "transcript": job["text"], "translation": job["translation"], "word_times_path": job["word_times_path"],
            "sha256": made["sha256"], "source": made["source"], "licence": "CC0-1.0 (generated)",
            "split": job["split"], "voice": job["voice"]}


def build_corpus(cfg: CorpusConfig, expected: dict[str, str] | None = None, progress: bool = True) -> pd.DataFrame:
    """Synthesize the corpus into ``cfg.out_dir`` and write its ``manifest.csv``; returns the manifest.

    Files whose sha256 already equals ``expected[id]`` are kept as they are; without ``expected``, those of the existing
    manifest whose row was made from the same job (sentence, translation, voice, speed, pitch, engine version):
    a changed config re-synthesizes what it changed, never relabels old audio.
    """
    root = Path(cfg.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / cfg.name / "manifest.csv"
    jobs = [{**j, "root": str(root)} for j in plan_corpus(cfg)]
    check_voices(cfg.name, {j["voice"] for j in jobs})
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
        ctx.set_forkserver_preload(["xattn_utils.data.corpus", "xattn_utils.data.engines"])
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


def check_voices(name: str, voices) -> None:
    """Every voice spec's engine and voice installed here, before anything is synthesized: else one
    :class:`InputError` naming the corpus, the voice and the command that installs it."""
    for spec in sorted(voices):
        engine, voice = parse_voice(spec)
        e = ENGINES[engine]
        if not e.installed():
            raise InputError(f"corpus {name}: voice {spec}: {engine} is not installed: run '{e.install}'")
        if not e.has_voice(voice):
            known = ", ".join(f"{engine}:{v}" for vs in e.voices.values() for v in vs if e.has_voice(v))
            raise InputError(f"corpus {name}: {engine} has no voice {voice!r} here; installed: {known or 'none'} "
                             f"('{e.install}' installs the study's voices)")


def _source_of(job: dict) -> str:
    """Provenance of one utterance: engine and version, voice, speed (and espeak-ng's pitch)."""
    pitch = f", pitch {job['pitch']}" if job["pitch"] is not None else ""
    return f"{engine_version(job['voice'])} synthetic ({job['voice']}, speed {job['speed']}{pitch})"


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write a manifest (absolute paths) atomically, with paths relative to ``path``'s folder."""
    out = df.copy()
    for col in ("audio_path", "word_times_path"):
        out[col] = [os.path.relpath(p, path.parent.resolve()) for p in out[col]]
    atomic_write(path, lambda tmp: out.to_csv(tmp, index=False))


def ensure_default_corpus(manifest: str | Path = REPO_MANIFEST, progress: bool = True) -> Path:
    """The default corpus's manifest, built first when any of its files is missing.

    Files that reproduce the committed ``data_manifest.csv`` (same sha256) are used as they are. When this machine's
    engines give other bytes (another engine version), the corpus is re-synthesized here, a warning says how many
    rows differ and by how much (duration; the engine versions), and the study goes on with this machine's audio
    through ``data/default/manifest.csv`` (returned then): every run records the sha256 of the audio it used.
    """
    manifest = Path(manifest)
    if not manifest.exists():
        raise InputError(f"default manifest {manifest} is missing; restore it from the repository")
    committed = load_manifest(manifest)
    # an installed package never writes into itself: its corpus is built under $XATTN_HOME and read from there
    installed = checkout_root() is None
    root = xattn_home() if installed else manifest.parent
    local = Path(default_config(root).out_dir) / "default" / "manifest.csv"
    here = load_manifest(local) if installed and local.exists() else committed
    if all(Path(p).exists() for p in here["audio_path"]) and all(Path(p).exists() for p in here["word_times_path"]):
        if installed:
            return local
        return local if local.exists() and _differs(committed, load_manifest(local)) else manifest
    built = build_corpus(default_config(root), expected=dict(zip(committed["id"], committed["sha256"])),
                         progress=progress)
    if not _differs(committed, built):
        return local if installed else manifest
    warnings.warn(rebuild_difference(committed, built), stacklevel=2)
    return local


def _differs(committed: pd.DataFrame, built: pd.DataFrame) -> bool:
    return dict(zip(committed["id"], committed["sha256"])) != dict(zip(built["id"], built["sha256"]))


def rebuild_difference(committed: pd.DataFrame, built: pd.DataFrame) -> str:
    """One paragraph: how far a rebuild is from the committed manifest (rows, durations, engine versions)."""
    a = committed.set_index("id")
    b = built.set_index("id").reindex(a.index)
    changed = a.index[a["sha256"] != b["sha256"]]
    dd = (b.loc[changed, "duration_s"].astype(float) - a.loc[changed, "duration_s"].astype(float)).abs()
    old = sorted({str(x).split(" synthetic")[0] for x in a.loc[changed, "source"]})
    new = sorted({str(x).split(" synthetic")[0] for x in b.loc[changed, "source"]})
    return (f"the default corpus rebuilt here differs from data_manifest.csv in {len(changed)} of {len(a)} rows "
            f"(e.g. {changed[0]}): durations differ by {dd.mean():.3f} s on average, {dd.max():.3f} s at most; "
            f"committed with {', '.join(old)}, rebuilt with {', '.join(new)}. The study goes on with this machine's "
            "audio (data/default/manifest.csv; runs record its sha256s); to reproduce the committed bytes install "
            "the committed engine versions")


def study_data(manifest: str | Path | None = None, split: str | None = "test", limit: int | None = None,
               language: str | None = None, ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The items a study notebook runs on: a given manifest, or the default corpus (built on first use); its first
    ``limit`` rows, or, when ``ids`` are given (a notebook's ``utterances``), the rows of those ids in their order
    (``limit`` then unused)."""
    path = Path(manifest) if manifest else ensure_default_corpus()
    return load_manifest(path, split=split, language=language, limit=None if ids else limit, ids=ids)


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
        try:
            df = build_corpus(cfg)
        except XattnError as err:
            print(f"error: corpus config {args.config}: {err}", file=sys.stderr)
            return 2
        print(f"{Path(cfg.out_dir) / cfg.name / 'manifest.csv'}: {len(df)} utterances")
    else:
        print("error: give --default (the study's corpus) or --config FILE (another corpus); see --help",
              file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m xattn_utils.data.corpus``: the same options and output as ``xattn corpus`` (kept for old scripts)."""
    return module_main("corpus", command, argv)


if __name__ == "__main__":
    sys.exit(main())
