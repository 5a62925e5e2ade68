"""Cross-attention extraction over a data set: decode, force-decode, store, resume.

``extract_cross_attention(model, items, out)`` decodes each utterance (greedy), runs one forced pass over the
hypothesis and writes an ``attention`` group per utterance into a :class:`~xattn_utils.store.ResultStore`.
A bad item (missing, corrupt, empty or too long audio, checksum mismatch, empty hypothesis) is recorded with its
message and the run goes on with the rest. Items whose stored cache key matches are skipped.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm

from ..data.audio import active_seconds
from ..errors import DiskFullError, InputError, XattnError
from ..models.loader import LoadedModel
from ..provenance import provenance, stable_hash
from ..store import ResultStore
from .forced import ForcedPass, batches_by_length, decode, decoder_prompt, forced_pass

KIND = "attention"


@dataclass
class ExtractConfig:
    """Decoding and extraction parameters (all recorded in provenance).

    Attributes:
        language, task: decoder prompt for multilingual / multitask models (ignored by English-only Whisper).
        num_beams: 1 = greedy decoding, more = beam search.
        max_new_tokens: decoding limit.
        batch_size: utterances per batch (equal feature lengths batch together).
        with_hidden: also store the encoder output (T', D), needed by SMH and gradient-on-H methods.
        max_compression_ratio: a hypothesis whose text gzip-compresses better than this is a decoding loop
            ("quiet, quiet, quiet, ..."): it is recorded as failed, not explained. 2.4 is Whisper's own threshold for
            falling back to sampling; None keeps every hypothesis.
        min_active_s: audio with less than this many seconds above -45 dBFS (silence, a clip of a few
            milliseconds) is still explained but its group is flagged ``near_silence`` (a hypothesis made from
            silence, e.g. "you"); the comparison leaves flagged utterances out unless asked to keep them.
    """

    language: str | None = None
    task: str | None = None
    num_beams: int = 1
    max_new_tokens: int = 128
    batch_size: int = 8
    with_hidden: bool = False
    max_compression_ratio: float | None = 2.4
    min_active_s: float = 0.1

    def __post_init__(self):
        for name in ("num_beams", "max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a whole number of at least 1, not {value!r} "
                                 "(num_beams 1 is greedy decoding)")


@dataclass
class RunReport:
    """What a run did: ids done, skipped (already stored with the same key) and failed (id -> message)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    flagged: dict[str, str] = field(default_factory=dict)  # done, but near silence (id -> message)

    def summary(self) -> str:
        flagged = f", {len(self.flagged)} near-silent (flagged)" if self.flagged else ""
        return f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed{flagged}"


def encoder_frame_seconds(frames_per_encoder_frame: int, hop_length: int = 160, sample_rate: int = 16000) -> float:
    """Duration of one encoder frame in seconds (Whisper: 2 x 10 ms = 20 ms)."""
    return frames_per_encoder_frame * hop_length / sample_rate


def attention_dataset(fp: ForcedPass, frames_per_encoder_frame: int, hop_length: int = 160,
                      sample_rate: int = 16000, attrs: dict | None = None) -> xr.Dataset:
    """A :class:`ForcedPass` as a labeled Dataset (dims layer, head, token, enc_frame, mel, frame)."""
    enc_dt = encoder_frame_seconds(frames_per_encoder_frame, hop_length, sample_rate)
    n_l, n_h, n_i, n_t = fp.cross_attention.shape
    data = {
        "cross_attention": (("layer", "head", "token", "enc_frame"), fp.cross_attention.astype(np.float32)),
        "value_norms": (("layer", "head", "enc_frame"), fp.value_norms.astype(np.float32)),
        "log_probs": (("token",), fp.log_probs.astype(np.float32)),
        "features": (("mel", "frame"), fp.features.astype(np.float32)),
        "prompt_ids": (("prompt",), fp.prompt_ids.astype(np.int64)),
    }
    if fp.encoder_hidden is not None:
        data["encoder_hidden"] = (("enc_frame", "dim"), fp.encoder_hidden.astype(np.float32))
    coords = {
        "layer": np.arange(n_l), "head": np.arange(n_h), "token": np.arange(n_i),
        "token_id": ("token", fp.token_ids.astype(np.int64)),
        "token_str": ("token", np.array(fp.tokens, dtype=object)),
        "enc_frame": np.arange(n_t), "enc_time": ("enc_frame", np.arange(n_t) * enc_dt),
        "frame": np.arange(fp.features.shape[1]),
        "time": ("frame", np.arange(fp.features.shape[1]) * hop_length / sample_rate),
    }
    base = {"n_audio_frames": int(fp.n_audio_frames), "n_encoder_frames": int(fp.n_encoder_frames),
            "frames_per_encoder_frame": int(frames_per_encoder_frame), "text": fp.text}
    return xr.Dataset(data, coords=coords, attrs={**base, **(attrs or {})})


def compression_ratio(text: str) -> float:
    """len(text) / len(gzip(text)): high for repetitive text (Whisper's hallucination check)."""
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw))) if raw else 0.0


_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.\-]+")
_RESERVED_IDS = ("store.json", "errors.json")


def safe_id(name: str) -> str:
    """A store-safe id from a file name: accents folded, other characters -> ``_`` (``"Café 1"`` -> ``"Cafe_1"``).

    A name with nothing usable left (e.g. only non-Latin letters) gets ``audio-`` and a hash of the name.
    """
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = _UNSAFE_ID.sub("_", folded).strip("_.-")
    if not slug or not slug[0].isalnum():
        slug = f"audio-{hashlib.sha256(name.encode()).hexdigest()[:8]}" + (f"_{slug}" if slug else "")
    return slug + "_" if slug in _RESERVED_IDS else slug


def ids_for_paths(paths: list[Path]) -> list[str]:
    """One unique store id per audio path: the safe file stem, with parent folders prepended where stems collide.

    ``a/same.wav`` and ``b/same.wav`` -> ``a_same``, ``b_same``. The same file given twice is an error naming it.
    """
    resolved = [p.resolve() for p in paths]
    seen: dict[Path, int] = {}
    for i, r in enumerate(resolved):
        if r in seen:
            raise InputError(f"{paths[i]}: the same audio file is given twice (arguments {seen[r] + 1} and {i + 1}); "
                             "give each file once")
        seen[r] = i
    depth = [0] * len(paths)

    def make(i: int) -> str:
        parts = [*resolved[i].parent.parts[len(resolved[i].parent.parts) - depth[i]:], resolved[i].stem]
        return "_".join(safe_id(x) for x in parts if x not in ("/", ""))

    def raw(i: int) -> tuple:
        return (*resolved[i].parent.parts[len(resolved[i].parent.parts) - depth[i]:], resolved[i].stem)

    ids = [make(i) for i in range(len(paths))]
    for _ in range(64):
        groups: dict[str, list[int]] = {}
        for i, u in enumerate(ids):
            groups.setdefault(u, []).append(i)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            return ids
        for g in clashes:
            folded = len({raw(i) for i in g}) > 1  # different names that fold to one id ("a b", "a_b")
            for i in g:
                if not folded and depth[i] < len(resolved[i].parent.parts) - 1:
                    depth[i] += 1
                    ids[i] = make(i)
                else:  # a hash of the full path decides
                    ids[i] = f"{make(i)}-{hashlib.sha256(str(resolved[i]).encode()).hexdigest()[:8]}"
    raise InputError(f"cannot derive unique ids for {len(paths)} audio files; use a manifest with explicit ids")


def check_unique_ids(df: pd.DataFrame) -> None:
    """Refuse items whose ids repeat (results of one would overwrite the other's), naming the id and both paths."""
    dup = df[df["id"].astype(str).duplicated(keep=False)]
    if len(dup):
        uid = str(dup["id"].iloc[0])
        paths = [str(p) for p in dup[dup["id"].astype(str) == uid]["audio_path"]]
        raise InputError(f"id {uid!r} is used by {len(paths)} items ({', '.join(paths[:3])}); ids must be unique "
                         f"per store: give each row its own id ({dup['id'].astype(str).nunique()} id(s) repeat)")


def items_from(data) -> pd.DataFrame:
    """Normalize input items: a manifest DataFrame (unique ids), or audio paths (ids: :func:`ids_for_paths`)."""
    if isinstance(data, pd.DataFrame):
        if not {"id", "audio_path"} <= set(data.columns):
            raise InputError("items need columns 'id' and 'audio_path' (load them with xattn_utils.load_manifest)")
        check_unique_ids(data)
        return data.reset_index(drop=True)
    paths = [Path(p) for p in data]
    return pd.DataFrame({"id": ids_for_paths(paths), "audio_path": [str(p) for p in paths]})


def _checked_audio(row) -> tuple:
    """Load one item's audio, checking its checksum when the manifest gives one."""
    from .._io import sha256_file
    from ..data.audio import load_audio
    from ..data.manifest import stated_problems

    path = Path(row["audio_path"])
    want = row.get("sha256") if hasattr(row, "get") else None
    if not path.exists():
        raise InputError(f"{row['id']}: audio file {path} is missing; rebuild the data (make data) or fix the manifest")
    if not path.is_file():
        raise InputError(f"{row['id']}: {path} is a folder, not an audio file; give the audio files inside it")
    try:
        digest = sha256_file(path)
    except OSError as err:
        raise InputError(f"{row['id']}: cannot read {path} ({type(err).__name__}: {err.strerror or err})") from None
    if isinstance(want, str) and want and want != digest:
        raise InputError(f"{row['id']}: checksum mismatch for {path} (manifest {want[:12]}…, file {digest[:12]}…); "
                         "the file changed since the manifest was written: rebuild it or update the manifest")
    audio = load_audio(path)
    problems = stated_problems(row, path) if hasattr(row, "get") else []
    if problems:
        raise InputError("; ".join(problems))
    return audio, digest


def extract_cross_attention(loaded: LoadedModel, data, out: str | Path | ResultStore,
                            cfg: ExtractConfig | None = None, progress: bool = True) -> RunReport:
    """Decode and force-decode every item, writing one ``attention`` group per utterance into ``out``."""
    cfg = cfg or ExtractConfig()
    store = out if isinstance(out, ResultStore) else ResultStore(out)
    items = items_from(data)
    store.clean_orphans()
    prompt = decoder_prompt(loaded, cfg.language, cfg.task)
    store.update_attrs(**provenance(model=loaded.provenance(), params={"extract": cfg}))
    report = RunReport()
    active: dict[str, float] = {}  # id -> seconds above -45 dBFS
    pending = []  # (id, features for the forced pass, features for decoding, cache key, audio sha256)
    for _, row in tqdm(items.iterrows(), total=len(items), desc="features", disable=not progress):
        uid = str(row["id"])
        try:
            audio, digest = _checked_audio(row)
            key = stable_hash(KIND, loaded.weights_sha256, loaded.input_mode, loaded.trim_quantum, digest, cfg)
            if store.has(uid, KIND, key):
                report.skipped.append(uid)
                continue
            feats = loaded.features(audio)
            dec = feats if loaded.decode_mode == loaded.input_mode else loaded.features(audio, loaded.decode_mode)
            pending.append((uid, feats, dec, key, digest))
            active[uid] = active_seconds(audio)
        except XattnError as err:
            report.failed[uid] = str(err)
            store.record_error(uid, KIND, str(err))
    bar = tqdm(total=2 * len(pending), desc="decode + forced pass", unit="step", disable=not progress)
    hyps: dict[int, list[int]] = {}
    for idx in batches_by_length([p[2] for p in pending], cfg.batch_size):
        x = torch.stack([pending[i][2].values for i in idx])
        hyps.update(zip(idx, decode(loaded, x, prompt, cfg.num_beams, cfg.max_new_tokens)))
        bar.update(len(idx))
    for i, h in list(hyps.items()):
        uid = pending[i][0]
        ratio = compression_ratio(loaded.tokenizer.decode(h, skip_special_tokens=True)) if h else 0.0
        if not h:
            report.failed[uid] = f"{uid}: empty hypothesis (the model heard no speech); nothing to explain"
        elif cfg.max_compression_ratio is not None and ratio > cfg.max_compression_ratio:
            report.failed[uid] = (f"{uid}: the hypothesis repeats itself (compression ratio {ratio:.1f} > "
                                  f"{cfg.max_compression_ratio}, {len(h)} tokens): a decoding loop, not explained; "
                                  "try --beams 4 or raise max_compression_ratio")
            hyps[i] = []
        else:
            continue
        store.record_error(uid, KIND, report.failed[uid])
    ok = [i for i in range(len(pending)) if hyps[i]]
    for sub in batches_by_length([pending[i][1] for i in ok], cfg.batch_size):
        idx = [ok[j] for j in sub]
        passes = forced_pass(loaded, [pending[i][1] for i in idx], prompt, [hyps[i] for i in idx], cfg.with_hidden)
        for i, fp in zip(idx, passes):
            uid, _, _, key, digest = pending[i]
            attrs = provenance(model=loaded.provenance(), data={"id": uid, "sha256": digest},
                               params={"extract": cfg, "decode_mode": loaded.decode_mode})
            silent = active[uid] < cfg.min_active_s
            ds = attention_dataset(fp, loaded.frames_per_encoder_frame, loaded.hop_length,
                                   attrs={"provenance": attrs, "active_s": active[uid], "near_silence": int(silent)})
            if silent:
                report.flagged[uid] = (f"{uid}: only {active[uid]:.2f} s of the audio is above -45 dBFS: the "
                                       f"hypothesis {fp.text.strip()!r} was made from (near-)silence; stored, flagged "
                                       "near_silence (the comparison leaves it out)")
            try:
                store.write(uid, KIND, ds, key)
            except DiskFullError:
                raise  # the run stops; finished groups are kept
            except XattnError as err:
                report.failed[uid] = str(err)
                store.record_error(uid, KIND, str(err))
                continue
            report.done.append(uid)
        bar.update(len(idx))
    bar.close()
    return report
