"""Cross-attention extraction over a data set: decode, force-decode, store, resume.

``extract_cross_attention(model, items, out)`` decodes each utterance (greedy), runs one forced pass over the
hypothesis and writes an ``attention`` group per utterance into a :class:`~xattn_utils.store.ResultStore`.
A bad item (missing, corrupt, empty or too long audio, checksum mismatch, empty hypothesis) is recorded with its
message and the run goes on with the rest. Items whose stored cache key matches are skipped.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .errors import InputError, XattnError
from .forced import batches_by_length, decode, decoder_prompt, forced_pass
from .models import LoadedModel
from .provenance import provenance, stable_hash
from .store import ResultStore, attention_dataset

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
    """

    language: str | None = None
    task: str | None = None
    num_beams: int = 1
    max_new_tokens: int = 128
    batch_size: int = 8
    with_hidden: bool = False
    max_compression_ratio: float | None = 2.4


@dataclass
class RunReport:
    """What a run did: ids done, skipped (already stored with the same key) and failed (id -> message)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed"


def compression_ratio(text: str) -> float:
    """len(text) / len(gzip(text)): high for repetitive text (Whisper's hallucination check)."""
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw))) if raw else 0.0


def items_from(data) -> pd.DataFrame:
    """Normalize input items: a manifest DataFrame, or a list of audio paths (ids from file stems)."""
    if isinstance(data, pd.DataFrame):
        if not {"id", "audio_path"} <= set(data.columns):
            raise InputError("items need columns 'id' and 'audio_path' (load them with xattn_utils.load_manifest)")
        return data.reset_index(drop=True)
    paths = [Path(p) for p in data]
    return pd.DataFrame({"id": [p.stem for p in paths], "audio_path": [str(p) for p in paths]})


def _checked_audio(row) -> tuple:
    """Load one item's audio, checking its checksum when the manifest gives one."""
    from .audio import load_audio, sha256_file

    path = Path(row["audio_path"])
    want = row.get("sha256") if hasattr(row, "get") else None
    if not path.exists():
        raise InputError(f"{row['id']}: audio file {path} is missing; rebuild the data (make data) or fix the manifest")
    digest = sha256_file(path)
    if isinstance(want, str) and want and want != digest:
        raise InputError(f"{row['id']}: checksum mismatch for {path} (manifest {want[:12]}…, file {digest[:12]}…); "
                         "the file changed since the manifest was written: rebuild it or update the manifest")
    return load_audio(path), digest


def extract_cross_attention(loaded: LoadedModel, data, out: str | Path | ResultStore,
                            cfg: ExtractConfig | None = None, progress: bool = True) -> RunReport:
    """Decode and force-decode every item, writing one ``attention`` group per utterance into ``out``."""
    cfg = cfg or ExtractConfig()
    store = out if isinstance(out, ResultStore) else ResultStore(out)
    items = items_from(data)
    prompt = decoder_prompt(loaded, cfg.language, cfg.task)
    store.update_attrs(**provenance(model=loaded.provenance(), params={"extract": cfg}))
    report = RunReport()
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
            ds = attention_dataset(fp, loaded.frames_per_encoder_frame, loaded.hop_length,
                                   attrs={"provenance": attrs})
            store.write(uid, KIND, ds, key)
            report.done.append(uid)
        bar.update(len(idx))
    bar.close()
    return report
