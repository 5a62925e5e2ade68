"""Cross-attention extraction over a data set: decode, force-decode, store, resume.

``extract_cross_attention(model, items, out)`` decodes each utterance (greedy, or beam search: :class:`DecodeConfig`),
runs one forced pass over the hypothesis and writes an ``attention`` group per utterance into a
:class:`~xattn_utils.store.ResultStore`. One decode per utterance: only the decoding options (with the model, its
decoding input mode and the audio) key the hypothesis (``hypothesis_key`` and ``decoding`` in the group's attributes),
so storing it again with another batch size or with hidden states reuses it; :func:`ensure_attention` gives
explanation runs the stored hypotheses and refuses to replace them.
A bad item (missing, corrupt, empty or too long audio, checksum mismatch, empty hypothesis) is recorded with its
message and the run goes on with the rest. Items whose stored cache key matches are skipped.
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutput

from ..data.audio import active_seconds, load_utterance_audio
from ..errors import DiskFullError, InputError, XattnError
from ..models.loader import LoadedModel
from ..provenance import provenance, stable_hash
from ..store import ResultStore
from .forced import ForcedPass, batches_by_length, decode, forced_pass

KIND = "attention"


def _check_counts(cfg, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a whole number of at least 1, not {value!r} "
                             "(num_beams 1 is greedy decoding)")


@dataclass(frozen=True)
class DecodeConfig:
    """The options that decide the hypothesis (with the model, its decoding input mode and the audio).

    Only these key a hypothesis: storing with another batch size or with hidden states reuses it.

    Attributes:
        language, task: decoder prompt for multilingual / multitask models (ignored by English-only Whisper).
        num_beams: 1 = greedy decoding, more = beam search.
        max_new_tokens: decoding limit.
    """

    language: str | None = None
    task: str | None = None
    num_beams: int = 1
    max_new_tokens: int = 128

    def __post_init__(self):
        _check_counts(self, ("num_beams", "max_new_tokens"))


@dataclass
class ExtractConfig:
    """Decoding options and how to store and run them (all recorded in provenance).

    Attributes:
        decoding: what decides the hypothesis (the only part of the attention group's cache key besides the model,
            input mode and audio).
        batch_size: utterances per batch (equal feature lengths batch together).
        with_hidden: also store the encoder output (T', D) as ``encoder_hidden``, for analyses of it (the
            explanation methods recompute it). Asking for it on a stored group without it adds it, keeping the
            stored hypothesis.
        max_compression_ratio: a hypothesis whose text gzip-compresses better than this is a decoding loop
            ("quiet, quiet, quiet, ..."): it is recorded as failed, not explained. 2.4 is Whisper's own threshold for
            falling back to sampling; None keeps every hypothesis.
        min_active_s: audio with less than this many seconds above -45 dBFS (silence, a clip of a few
            milliseconds) is still explained but its group is flagged ``near_silence`` (a hypothesis made from
            silence, e.g. "you"); the comparison leaves flagged utterances out unless asked to keep them.
        no_speech_threshold: a hypothesis decoded where the model's no-speech probability (softmax of the first
            decoding step at ``<|nospeech|>``, :func:`no_speech_probs`) exceeds this is flagged ``non_speech`` like
            near-silence (white noise -> "You"). 0.6 is Whisper's own threshold; None turns the check off.
    """

    decoding: DecodeConfig = field(default_factory=DecodeConfig)
    batch_size: int = 8
    with_hidden: bool = False
    max_compression_ratio: float | None = 2.4
    min_active_s: float = 0.1
    no_speech_threshold: float | None = 0.6

    def __post_init__(self):
        if not isinstance(self.decoding, DecodeConfig):
            raise InputError(f"decoding must be a DecodeConfig, not {type(self.decoding).__name__}: "
                             "ExtractConfig(DecodeConfig(language=..., num_beams=...), batch_size=...)")
        _check_counts(self, ("batch_size",))


def resolved_decoding(loaded: LoadedModel, decoding: DecodeConfig) -> dict:
    """What decides a hypothesis on ``loaded`` besides the audio: the model weights, the input mode decoding runs
    on, the prompt ids the language and task give, beams and the token limit (``language=None`` and ``"en"`` give
    the same prompt on an English model, so they resolve alike). Raises InputError for a prompt the model lacks."""
    return {"weights_sha256": loaded.weights_sha256, "decode_mode": loaded.decode_mode,
            "prompt_ids": loaded.prompt_ids(decoding.language, decoding.task), "num_beams": decoding.num_beams,
            "max_new_tokens": decoding.max_new_tokens}


def hypothesis_key(resolved: dict, audio_sha256: str) -> str:
    """The key of one utterance's hypothesis: :func:`resolved_decoding` and the audio's sha256."""
    return stable_hash("hypothesis", resolved, audio_sha256)


def attention_key(loaded: LoadedModel, hyp_key: str) -> str:
    """The attention group's cache key: its hypothesis and the input the forced pass runs on (not how it was
    stored: batch size, hidden states and the loop threshold leave it unchanged)."""
    return stable_hash(KIND, hyp_key, loaded.input_mode, loaded.trim_quantum)


def recorded_decoding(attrs: dict) -> DecodeConfig | None:
    """The decoding options an attention group's or a store's (``store.json``) attributes record; None if none.

    Reads the ``decoding`` record, else the provenance's ``extract`` parameters (groups written before it)."""
    rec = attrs.get("decoding")
    if not isinstance(rec, dict):
        extract = (attrs.get("provenance") or attrs).get("params", {}).get("extract") or {}
        rec = extract.get("decoding", extract)
    names = {f.name for f in fields(DecodeConfig)}
    if not isinstance(rec, dict) or not names & set(rec):
        return None
    return DecodeConfig(**{k: rec[k] for k in names if k in rec})


def recorded_hypothesis_key(loaded: LoadedModel, attrs: dict) -> str | None:
    """The hypothesis key an attention group was written with (derived from the provenance of a group written
    before keys were recorded, when it was decoded by ``loaded``'s weights and decoding input mode); else None."""
    if attrs.get("hypothesis_key"):
        return str(attrs["hypothesis_key"])
    prov = attrs.get("provenance") or {}
    decoding = recorded_decoding(attrs)
    digest = (prov.get("data") or {}).get("sha256")
    same_model = ((prov.get("model") or {}).get("weights_sha256") == loaded.weights_sha256
                  and (prov.get("params") or {}).get("decode_mode") == loaded.decode_mode)
    if decoding is None or not digest or not same_model:
        return None
    return hypothesis_key(resolved_decoding(loaded, decoding), digest)


@dataclass
class RunReport:
    """What a run did: ids done, skipped (already stored with the same key) and failed (id -> message)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    flagged: dict[str, str] = field(default_factory=dict)  # done, but near silence or non-speech (id -> message)
    redone: dict[str, str] = field(default_factory=dict)  # a damaged stored group recomputed (id -> what and why)

    def summary(self) -> str:
        """``3 done, 0 skipped, 0 failed[, 1 near-silent or non-speech (flagged)][; 1 redone: u0 attention damaged
        (...)]``."""
        flagged = f", {len(self.flagged)} near-silent or non-speech (flagged)" if self.flagged else ""
        redone = f"; {len(self.redone)} redone: {', '.join(self.redone.values())}" if self.redone else ""
        return f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed{flagged}{redone}"

    def __str__(self) -> str:
        return self.summary()


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
    """One unique store id per audio path: the safe file stem; where stems collide, the file name with its extension
    (``speech.flac``, ``speech.ogg``), then parent folders prepended (``a/same.wav``, ``b/same.wav`` -> ``a_same``,
    ``b_same``). A symbolic link is named by its own name, not its target's. The same file given twice (a link to
    a file given too included) is an error naming it.
    """
    resolved = [p.resolve() for p in paths]
    seen: dict[Path, int] = {}
    for i, r in enumerate(resolved):
        if r in seen:
            raise InputError(f"{paths[i]}: the same audio file is given twice (arguments {seen[r] + 1} and {i + 1}); "
                             "give each file once")
        seen[r] = i
    named = [Path(os.path.abspath(p)) for p in paths]  # not resolved: a link keeps its own name
    depth = [0] * len(paths)
    full = [False] * len(paths)  # the file name with its extension instead of its stem

    def raw(i: int) -> tuple:
        parents = named[i].parent.parts
        return (*parents[len(parents) - depth[i]:], named[i].name if full[i] else named[i].stem)

    def make(i: int) -> str:
        return "_".join(safe_id(x) for x in raw(i) if x not in ("/", ""))

    ids = [make(i) for i in range(len(paths))]
    for _ in range(64):
        groups: dict[str, list[int]] = {}
        for i, u in enumerate(ids):
            groups.setdefault(u, []).append(i)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            return ids
        for g in clashes:
            if not all(full[i] for i in g) and len({named[i].name for i in g}) > 1:
                for i in g:  # speech.flac, speech.ogg: the extension tells them apart
                    full[i] = True
                    ids[i] = make(i)
                continue
            folded = len({raw(i) for i in g}) > 1  # different names that fold to one id ("a b", "a_b")
            for i in g:
                if not folded and depth[i] < len(named[i].parent.parts) - 1:
                    depth[i] += 1
                    ids[i] = make(i)
                else:  # a hash of the full path decides
                    ids[i] = f"{make(i)}-{hashlib.sha256(str(named[i]).encode()).hexdigest()[:8]}"
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


@dataclass
class _Pending:
    """One utterance waiting for its forced pass (and its decode, when ``hyp`` is None)."""

    uid: str
    features: object  # Features for the forced pass (the model's input mode)
    decode_features: object  # Features for decoding (the model's decode mode)
    key: str
    hyp_key: str
    digest: str
    active_s: float
    hyp: list[int] | None = None
    no_speech_prob: float | None = None  # Whisper's P(<|nospeech|>) at the first decoding step (None: unknown)


@dataclass
class _Extraction:
    """What the phases of one :func:`extract_cross_attention` run share."""

    loaded: LoadedModel
    store: ResultStore
    cfg: ExtractConfig
    resolved: dict
    progress: bool
    report: RunReport = field(default_factory=lambda: RunReport())
    pending: list[_Pending] = field(default_factory=list)
    decoded: list[int] = field(default_factory=list)  # indices into pending decoded by this run
    bar: object = None

    @property
    def prompt(self) -> list[int]:
        return self.resolved["prompt_ids"]

    def fail(self, uid: str, message: str) -> None:
        self.report.failed[uid] = message
        self.store.record_error(uid, KIND, message)


def _stored_hypothesis(store: ResultStore, uid: str) -> list[int]:
    with store.peek(uid, KIND) as ds:
        return [int(t) for t in ds.token_id.values[:-1]]


def _stored_no_speech(store: ResultStore, uid: str) -> float | None:
    with store.peek(uid, KIND) as ds:
        value = ds.attrs.get("no_speech_prob")
    return None if value is None else float(value)


def _has_hidden(store: ResultStore, uid: str) -> bool:
    with store.peek(uid, KIND) as ds:
        return "encoder_hidden" in ds.data_vars


def no_speech_token(loaded: LoadedModel) -> int | None:
    """Whisper's no-speech token id (``<|nospeech|>``, ``<|nocaptions|>`` in older vocabularies); None without."""
    if not loaded.is_whisper:
        return None
    unk = loaded.tokenizer.unk_token_id
    for name in ("<|nospeech|>", "<|nocaptions|>"):
        tid = loaded.tokenizer.convert_tokens_to_ids(name)
        if tid is not None and tid != unk:
            return int(tid)
    return None


@torch.inference_mode()
def no_speech_probs(loaded: LoadedModel, features: torch.Tensor) -> list[float | None]:
    """(B, F, T) decoding inputs -> B no-speech probabilities: softmax of the decoder's first step (after
    ``<|startoftranscript|>``) at the no-speech token, as Whisper computes it (None for models without the token)."""
    tid = no_speech_token(loaded)
    if tid is None:
        return [None] * len(features)
    hidden = loaded.encode(features.to(loaded.device))
    sot = int(loaded.model.generation_config.decoder_start_token_id)
    ids = torch.full((len(hidden), 1), sot, dtype=torch.long, device=loaded.device)
    logits = loaded.model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), decoder_input_ids=ids).logits
    return [float(p) for p in torch.softmax(logits[:, 0].float(), dim=-1)[:, tid].cpu()]


def extract_cross_attention(loaded: LoadedModel, data, out: str | Path | ResultStore,
                            cfg: ExtractConfig | None = None, progress: bool = True) -> RunReport:
    """Decode and force-decode every item, writing one ``attention`` group per utterance into ``out``.

    One decode per utterance: a stored group whose hypothesis key (:func:`hypothesis_key`) matches is kept (skipped);
    ``with_hidden`` on a group without the encoder output, or another input mode, reruns only the forced pass on
    the stored hypothesis. Other decoding options than a group was decoded with decode it anew and replace it.
    A damaged stored group is recomputed and counted in the report's ``redone``.
    """
    items = items_from(data)  # bad ids fail before the store is touched
    run = _start(loaded, out, cfg or ExtractConfig(), progress)  # the store, its orphans cleaned, its provenance
    _prepare(run, items)  # each item's audio loaded and checked, its stored group looked up, its features
    _decode(run)  # hypotheses of the items without a stored one, batched by length
    _reject(run)  # empty hypotheses and decoding loops recorded as failed
    _force_and_write(run)  # one forced pass per hypothesis, flagged when made from (near-)silence or non-speech
    return run.report


def _start(loaded: LoadedModel, out, cfg: ExtractConfig, progress: bool) -> _Extraction:
    store = out if isinstance(out, ResultStore) else ResultStore(out)
    store.clean_orphans()
    resolved = resolved_decoding(loaded, cfg.decoding)
    store.update_attrs(**provenance(model=loaded.provenance(), params={"extract": cfg}),
                       decoding=asdict(cfg.decoding))
    return _Extraction(loaded, store, cfg, resolved, progress)


def _prepare(run: _Extraction, items: pd.DataFrame) -> None:
    loaded, store = run.loaded, run.store
    for _, row in tqdm(items.iterrows(), total=len(items), desc="features", disable=not run.progress):
        uid = str(row["id"])
        try:
            audio, digest = load_utterance_audio(row)
            hyp_key = hypothesis_key(run.resolved, digest)
            key = attention_key(loaded, hyp_key)
            hyp = no_speech = None
            if store.has(uid, KIND, key):
                if not run.cfg.with_hidden or _has_hidden(store, uid):
                    run.report.skipped.append(uid)
                    continue
                hyp, no_speech = _stored_hypothesis(store, uid), _stored_no_speech(store, uid)  # forced pass only
            elif store.has(uid, KIND):
                peek = store.peek(uid, KIND)
                with peek:
                    same = recorded_hypothesis_key(loaded, dict(peek.attrs)) == hyp_key
                if same:  # e.g. another input mode: the same hypothesis, forced again
                    hyp, no_speech = _stored_hypothesis(store, uid), _stored_no_speech(store, uid)
            else:
                damage = store.damage(uid, KIND)
                if damage is not None:
                    run.report.redone[uid] = f"{uid} {KIND} damaged ({damage})"
            feats = loaded.features(audio)
            dec = feats if loaded.decode_mode == loaded.input_mode else loaded.features(audio, loaded.decode_mode)
            run.pending.append(_Pending(uid, feats, dec, key, hyp_key, digest, active_seconds(audio), hyp,
                                        no_speech))
        except XattnError as err:
            run.fail(uid, str(err))


def _decode(run: _Extraction) -> None:
    pending, cfg = run.pending, run.cfg
    to_decode = run.decoded = [i for i, p in enumerate(pending) if p.hyp is None]
    run.bar = tqdm(total=len(to_decode) + len(pending), desc="decode + forced pass", unit="step",
                   disable=not run.progress)
    for sub in batches_by_length([pending[i].decode_features for i in to_decode], cfg.batch_size):
        idx = [to_decode[j] for j in sub]
        x = torch.stack([pending[i].decode_features.values for i in idx])
        hyps = decode(run.loaded, x, run.prompt, cfg.decoding.num_beams, cfg.decoding.max_new_tokens)
        for i, h, ns in zip(idx, hyps, no_speech_probs(run.loaded, x)):
            pending[i].hyp, pending[i].no_speech_prob = h, ns
        run.bar.update(len(idx))


def _reject(run: _Extraction) -> None:
    cfg = run.cfg
    for p in (run.pending[i] for i in run.decoded):
        text = run.loaded.tokenizer.decode(p.hyp, skip_special_tokens=True) if p.hyp else ""
        ratio = compression_ratio(text) if p.hyp else 0.0
        if not p.hyp:
            run.fail(p.uid, f"{p.uid}: empty hypothesis (the model heard no speech); nothing to explain")
        elif cfg.max_compression_ratio is not None and ratio > cfg.max_compression_ratio:
            run.fail(p.uid, f"{p.uid}: the hypothesis repeats itself (compression ratio {ratio:.1f} > "
                            f"{cfg.max_compression_ratio}, {len(p.hyp)} tokens): a decoding loop, not explained; "
                            "try --beams 4 or raise max_compression_ratio")
            p.hyp = []


def _flag(run: _Extraction, p: _Pending, text: str) -> str | None:
    """Why the utterance's hypothesis is flagged (made from near-silence or from non-speech), or None."""
    cfg = run.cfg
    if p.active_s < cfg.min_active_s:
        return (f"{p.uid}: only {p.active_s:.2f} s of the audio is above -45 dBFS: the hypothesis {text!r} was made "
                "from (near-)silence; stored, flagged near_silence (the comparison leaves it out)")
    if (cfg.no_speech_threshold is not None and p.no_speech_prob is not None
            and p.no_speech_prob > cfg.no_speech_threshold):
        return (f"{p.uid}: the model's no-speech probability is {p.no_speech_prob:.2f} (> "
                f"{cfg.no_speech_threshold}): the hypothesis {text!r} was made from non-speech; stored, flagged "
                "non_speech (the comparison leaves it out)")
    return None


def _force_and_write(run: _Extraction) -> None:
    loaded, cfg, store = run.loaded, run.cfg, run.store
    ok = [p for p in run.pending if p.hyp]
    for idx in batches_by_length([p.features for p in ok], cfg.batch_size):
        batch = [ok[i] for i in idx]
        passes = forced_pass(loaded, [p.features for p in batch], run.prompt, [p.hyp for p in batch],
                             cfg.with_hidden)
        for p, fp in zip(batch, passes):
            uid = p.uid
            attrs = provenance(model=loaded.provenance(), data={"id": uid, "sha256": p.digest},
                               params={"extract": cfg, "decode_mode": loaded.decode_mode})
            flag = _flag(run, p, fp.text.strip())
            silent = p.active_s < cfg.min_active_s
            extra = {} if p.no_speech_prob is None else {"no_speech_prob": float(p.no_speech_prob)}
            ds = attention_dataset(fp, loaded.frames_per_encoder_frame, loaded.hop_length,
                                   attrs={"provenance": attrs, "decoding": asdict(cfg.decoding),
                                          "hypothesis_key": p.hyp_key, "active_s": p.active_s,
                                          "near_silence": int(silent), "non_speech": int(bool(flag) and not silent),
                                          **extra})
            if flag:
                run.report.flagged[uid] = flag
            try:
                store.write(uid, KIND, ds, p.key)
            except DiskFullError:
                raise  # the run stops; finished groups are kept
            except XattnError as err:
                run.fail(uid, str(err))
                continue
            run.report.done.append(uid)
        run.bar.update(len(batch))
    run.bar.close()


def _options(resolved: dict) -> tuple:
    """The decoding options of a :func:`resolved_decoding` (the prompt they give, beams, limit)."""
    return tuple(resolved["prompt_ids"]), resolved["num_beams"], resolved["max_new_tokens"]


def _describe(decoding: DecodeConfig) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in asdict(decoding).items())


def ensure_attention(loaded: LoadedModel, data, out: str | Path | ResultStore, decoding: DecodeConfig | None = None,
                     batch_size: int = 8) -> RunReport:
    """Every item's ``attention`` group for an explanation run, never replacing a stored hypothesis.

    A stored, intact group of the same audio is used as is (whatever batch size, hidden states or input mode it was
    stored with). Items without one are extracted with ``decoding``, or when None with the decoding options the
    store was made with (``store.json``; :class:`DecodeConfig` defaults for a new store).

    Raises:
        InputError, before anything is computed: a stored hypothesis was decoded by another model, or with other
            decoding options than ``decoding`` (when given); the message names the utterance and both.
    """
    store = out if isinstance(out, ResultStore) else ResultStore(out)
    items = items_from(data)
    wanted = None if decoding is None else resolved_decoding(loaded, decoding)
    missing = []
    for _, row in items.iterrows():
        uid = str(row["id"])
        peek = store.peek(uid, KIND) if store.has(uid, KIND) else None
        if peek is None:
            missing.append(uid)
            continue
        with peek:
            attrs = dict(peek.attrs)
        prov = attrs.get("provenance") or {}
        try:
            same_audio = (prov.get("data") or {}).get("sha256") == load_utterance_audio(row)[1]
        except InputError:
            same_audio = False
        if not same_audio:  # the audio changed (or is gone): its old hypothesis is not this audio's
            missing.append(uid)
            continue
        model = prov.get("model") or {}
        if model.get("weights_sha256") != loaded.weights_sha256:
            raise InputError(f"{uid}: the stored hypothesis in {store.path} was decoded by model "
                             f"{model.get('model_id')!r} (weights {str(model.get('weights_sha256'))[:12]}…), not by "
                             f"{loaded.model_id!r} (weights {loaded.weights_sha256[:12]}…); explain it with that "
                             "model, or use a new store for this one")
        if wanted is None:
            continue
        stored = recorded_decoding(attrs) or DecodeConfig()
        if _options(resolved_decoding(loaded, stored)) != _options(wanted):
            raise InputError(f"{uid}: the stored hypothesis in {store.path} was decoded with {_describe(stored)}, "
                             f"not with the decoding options given ({_describe(decoding)}); pass the same options "
                             "(or none, to use the store's), or use a new store to decode with these")
    if not missing:
        return RunReport(skipped=[str(u) for u in items["id"]])
    if decoding is None:
        decoding = recorded_decoding(store.attrs) or DecodeConfig()
    todo = items[items["id"].astype(str).isin(missing)]
    report = extract_cross_attention(loaded, todo, store, ExtractConfig(decoding, batch_size=batch_size),
                                     progress=False)
    report.skipped += [str(u) for u in items["id"] if str(u) not in missing]
    return report
