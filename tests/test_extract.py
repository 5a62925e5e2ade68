"""Decoding, forced pass and extraction on the real bundled Whisper tiny.en."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from xattn_utils import (
    DecodeConfig,
    ExtractConfig,
    ModelError,
    Seq2SeqScorer,
    extract_cross_attention,
    load_model,
    open_store,
)
from xattn_utils.errors import HypothesisError
from xattn_utils.extraction.forced import (
    _value_norms,
    decode,
    forced_pass,
)

from tolerances import f32, measured

# Batch 1 vs batch 3 through the whole float32 tiny.en (other BLAS blockings, 1500-frame softmaxes): measured max
# differences over 3 utterances, 1 and 2 threads (see test_batch_equals_one_by_one), with a ×10 margin or more
BATCH_CA_ATOL = measured(2e-6, margin=10)  # cross-attention weights: measured max 1.6e-6
BATCH_LP_ATOL = measured(5e-6, margin=40)  # log-probs: measured max 4.1e-6


def _items(speech_dir, n=3):
    return pd.DataFrame({"id": [f"utt{i}" for i in range(n)],
                         "audio_path": [str(speech_dir / f"utt{i}.wav") for i in range(n)]})


def test_transcribes_synthetic_speech(bundled, speech_dir):
    from xattn_utils import transcribe

    audio, _ = sf.read(speech_dir / "utt0.wav", dtype="float32")
    text = transcribe(bundled, [audio])[0].lower()
    assert "lazy" in text and "fox" in text and "quick" in text


def test_batch_equals_one_by_one(bundled, speech_dir, tmp_path):
    items = _items(speech_dir)
    r1 = extract_cross_attention(bundled, items, tmp_path / "b1", ExtractConfig(batch_size=1), progress=False)
    r3 = extract_cross_attention(bundled, items, tmp_path / "b3", ExtractConfig(batch_size=3), progress=False)
    assert len(r1.done) == len(r3.done) == 3
    s1, s3 = open_store(tmp_path / "b1"), open_store(tmp_path / "b3")
    for uid in items.id:
        a, b = s1.load(uid, "attention"), s3.load(uid, "attention")
        assert list(a.token_id.values) == list(b.token_id.values)
        np.testing.assert_allclose(a.cross_attention.values, b.cross_attention.values, rtol=0, atol=BATCH_CA_ATOL)
        np.testing.assert_allclose(a.log_probs.values, b.log_probs.values, rtol=0, atol=BATCH_LP_ATOL)


def test_forced_pass_shapes_and_values(bundled, speech_dir, tmp_path):
    extract_cross_attention(bundled, _items(speech_dir, 1), tmp_path, progress=False)
    ds = open_store(tmp_path).load("utt0", "attention")
    n_l, n_h = bundled.n_layers, bundled.n_heads
    assert ds.cross_attention.dims == ("layer", "head", "token", "enc_frame")
    assert ds.cross_attention.shape[:2] == (n_l, n_h) == (4, 6)
    # cut to the audio: ceil(frames / 2) encoder frames, far fewer than Whisper's 1500
    assert ds.sizes["enc_frame"] == -(-ds.attrs["n_audio_frames"] // 2) < 1500
    assert str(ds.token_str.values[-1]) == "<|endoftext|>"
    assert (ds.log_probs.values <= 0).all() and ds.log_probs.values.mean() > -1.5
    # rows were softmax over 1500 frames: the mass on the audio frames is at most 1 (Whisper also looks at padding)
    mass = ds.cross_attention.sum("enc_frame").values
    # float32 softmax normalizer over 1500 frames plus this sum over up to 1500 of them
    assert (mass <= 1 + f32(n_ops=2 * 1500)).all() and mass.mean() > 0.3
    prov = ds.attrs["provenance"]
    assert prov["model"]["model_id"] == "bundled:whisper-tiny.en" and len(prov["model"]["weights_sha256"]) == 64
    assert prov["model"]["input_mode"] == "padded" and len(prov["data"]["sha256"]) == 64


def test_scorer_agrees_with_forced_pass(bundled, speech_dir):
    audio, _ = sf.read(speech_dir / "utt1.wav", dtype="float32")
    feats = bundled.features(audio)
    prompt = bundled.prompt_ids()
    hyp = decode(bundled, feats.values[None], prompt)[0]
    fp = forced_pass(bundled, [feats], prompt, [hyp])[0]
    scorer = Seq2SeqScorer(bundled, feats, prompt, hyp)
    with torch.inference_mode():
        lp = scorer.log_probs(feats.values[None])[0]
    assert scorer.n_tokens == len(hyp) + 1 == lp.shape[0]
    # the same decoder on the same input through two code paths (one item each): at most the batch-shape difference
    np.testing.assert_allclose(lp.gather(-1, scorer.target_ids[:, None])[:, 0].numpy(), fp.log_probs,
                               rtol=0, atol=BATCH_LP_ATOL)
    # greedy: every hypothesis token is the forced pass's argmax (suppressed tokens aside)
    assert (lp[:-1].argmax(-1) == scorer.target_ids[:-1]).float().mean() == 1.0
    # padding frames hold the silence floor, which is the occlusion value
    assert torch.allclose(feats.values[:, feats.n_audio_frames + 1:], torch.tensor(feats.occlusion_value))


def test_value_norms_match_explicit_head_computation(bundled):
    torch.manual_seed(0)
    hidden = torch.randn(1, 7, bundled.model.config.d_model)
    with torch.no_grad():
        norms = _value_norms(bundled, hidden)  # (1, L, H, T')
        attn = bundled.model.get_decoder().layers[2].encoder_attn
        d = attn.head_dim
        v = attn.v_proj(hidden)[0, :, 3 * d:4 * d]  # head 3
        fx = v @ attn.out_proj.weight[:, 3 * d:4 * d].T
    # float32, two orders: the value projection (D = 384), the head's output projection (d_h = 64), the norm (D)
    d_model = bundled.model.config.d_model
    np.testing.assert_allclose(norms[0, 2, 3].numpy(), fx.norm(dim=-1).numpy(), rtol=f32(n_ops=2 * d_model + d))


def test_trimmed_mode(bundled, bundled_trimmed, speech_dir, tmp_path):
    items = _items(speech_dir, 2)
    extract_cross_attention(bundled, items, tmp_path / "p", progress=False)
    extract_cross_attention(bundled_trimmed, items, tmp_path / "t", progress=False)
    for uid in items.id:
        p, t = open_store(tmp_path / "p").load(uid, "attention"), open_store(tmp_path / "t").load(uid, "attention")
        # the hypothesis is decoded on the padded input in both modes; attention is cut to the same frames
        assert list(p.token_id.values) == list(t.token_id.values)
        assert p.cross_attention.shape == t.cross_attention.shape
        np.testing.assert_array_equal(p.features.values, t.features.values)
        assert t.attrs["provenance"]["model"]["input_mode"] == "trimmed"
    audio, _ = sf.read(speech_dir / "utt0.wav", dtype="float32")
    f = bundled_trimmed.features(audio)
    assert f.values.shape[1] % 100 == 0 and f.values.shape[1] < 3000


def test_resume_skips_finished_and_recomputes_on_new_parameters(bundled, speech_dir, tmp_path):
    items = _items(speech_dir, 2)
    first = extract_cross_attention(bundled, items, tmp_path, progress=False)
    again = extract_cross_attention(bundled, items, tmp_path, progress=False)
    assert len(first.done) == 2 and again.done == [] and sorted(again.skipped) == ["utt0", "utt1"]
    changed = extract_cross_attention(bundled, items, tmp_path, ExtractConfig(DecodeConfig(max_new_tokens=64)),
                                      progress=False)
    assert len(changed.done) == 2


def test_bad_items_are_recorded_and_the_rest_goes_on(bundled, speech_dir, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF....WAVEfmt garbage")
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(16000 * 31, dtype=np.float32), 16000)
    items = pd.DataFrame({
        "id": ["good", "missing", "corrupt", "long", "badsum"],
        "audio_path": [speech_dir / "utt0.wav", tmp_path / "nope.wav", corrupt, long, speech_dir / "utt1.wav"],
        "sha256": [None, None, None, None, "0" * 64],
    })
    report = extract_cross_attention(bundled, items, tmp_path / "s", progress=False)
    assert report.done == ["good"]
    assert set(report.failed) == {"missing", "corrupt", "long", "badsum"}
    assert "missing" in report.failed["missing"] and "nope.wav" in report.failed["missing"]
    assert "checksum" in report.failed["badsum"]
    assert "30" in report.failed["long"]
    assert set(open_store(tmp_path / "s").errors()) == {f"{k}/attention" for k in report.failed}


def test_empty_hypothesis_is_a_clear_error(bundled):
    feats = bundled.features(np.zeros(16000, dtype=np.float32))
    with pytest.raises(HypothesisError, match="empty hypothesis"):
        Seq2SeqScorer(bundled, feats, bundled.prompt_ids(), [])


@pytest.mark.parametrize("name,match", [
    ("bundled:whisper-large", "unknown bundled model"),
    ("/no/such/folder", "does not exist"),
    ("someone/not-a-model", "unknown model"),
])
def test_unknown_models_fail_fast(name, match):
    with pytest.raises(ModelError, match=match):
        load_model(name)


def test_cli(speech_dir, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "xattn_utils", *a], capture_output=True, text=True,
                                    timeout=300)
    ok = run("transcribe", str(speech_dir / "utt2.wav"))
    assert ok.returncode == 0 and "book" in ok.stdout.lower()
    bad = run("transcribe", str(tmp_path / "missing.wav"))
    assert bad.returncode != 0
    err_lines = [l for l in bad.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(err_lines) == 1 and "missing.wav" in err_lines[0] and "Traceback" not in bad.stderr
    out = run("extract", "--out", str(tmp_path / "store"), "--quiet", str(speech_dir / "utt0.wav"))
    assert out.returncode == 0, out.stderr
    assert open_store(tmp_path / "store").utterances() == ["utt0"]


def test_beam_search_hypothesis(bundled, speech_dir, tmp_path):
    items = _items(speech_dir, 1)
    report = extract_cross_attention(bundled, items, tmp_path, ExtractConfig(DecodeConfig(num_beams=3)),
                                     progress=False)
    ds = open_store(tmp_path).load("utt0", "attention")
    assert report.done == ["utt0"] and "fox" in ds.attrs["text"].lower()
    assert ds.attrs["provenance"]["params"]["extract"]["decoding"]["num_beams"] == 3


def test_decoding_loops_are_recorded_not_explained(bundled, speech_dir, tmp_path):
    from xattn_utils.extraction.extract import compression_ratio

    assert compression_ratio("quiet, " * 40) > 2.4 > compression_ratio("the big mountain follows a cold cake")
    strict = ExtractConfig(max_compression_ratio=0.5)  # every real sentence "loops" under this threshold
    report = extract_cross_attention(bundled, _items(speech_dir, 1), tmp_path, strict, progress=False)
    assert report.done == [] and "repeats itself" in report.failed["utt0"]


def test_special_ids_are_the_generation_configs(bundled):
    gen = bundled.model.generation_config
    assert bundled.eos_id == gen.eos_token_id == 50256
    assert bundled.suppress_ids == list(gen.suppress_tokens) and len(bundled.suppress_ids) > 50
    assert bundled.begin_suppress_ids == list(gen.begin_suppress_tokens) == [220, 50256]
    assert bundled.pad_id == gen.pad_token_id
    assert bundled.prompt_ids() == [gen.decoder_start_token_id, gen.no_timestamps_token_id] == [50257, 50362]


@torch.inference_mode()
def _argmax_loop(loaded, features, prompt, max_new_tokens=128) -> list[int]:
    """Reference greedy decoding: the whole decoder rerun at every step (no cache), argmax after suppression."""
    hidden = loaded.encode(features[None])
    hyp: list[int] = []
    for step in range(max_new_tokens):
        logits = loaded.model(encoder_outputs=(hidden,), decoder_input_ids=torch.tensor([prompt + hyp])).logits[0, -1]
        logits[loaded.suppress_ids] = -torch.inf
        if step == 0:
            logits[loaded.begin_suppress_ids] = -torch.inf
        nxt = int(logits.argmax())
        if nxt == loaded.eos_id:
            break
        hyp.append(nxt)
    return hyp


def test_greedy_decoding_through_generate_is_the_argmax_chain(bundled, speech_dir):
    """``decode`` runs transformers' generate; greedy hypotheses equal a plain argmax loop on the test corpus,
    batched and one by one."""
    feats = [bundled.features(sf.read(speech_dir / f"utt{i}.wav", dtype="float32")[0]) for i in range(3)]
    prompt = bundled.prompt_ids()
    batched = decode(bundled, torch.stack([f.values for f in feats]), prompt)
    for f, hyp in zip(feats, batched):
        assert hyp == _argmax_loop(bundled, f.values, prompt) == decode(bundled, f.values[None], prompt)[0]
        assert hyp and bundled.eos_id not in hyp


def test_storage_options_reuse_the_hypothesis(bundled, speech_dir, tmp_path, monkeypatch):
    """Batch size and hidden states are storage options: a second extraction with batch size 1 and with_hidden
    keeps the key and the hypothesis and never decodes again (hidden states are added by a forced pass)."""
    import xattn_utils.extraction.extract as extract

    items = _items(speech_dir, 2)
    first = extract_cross_attention(bundled, items, tmp_path, ExtractConfig(batch_size=8), progress=False)
    store = open_store(tmp_path)
    before = {u: store.load(u, "attention") for u in items.id}
    assert sorted(first.done) == ["utt0", "utt1"] and "encoder_hidden" not in before["utt0"]
    assert before["utt0"].attrs["decoding"] == {"language": None, "task": None, "num_beams": 1, "max_new_tokens": 128}

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(extract, "decode", no_decoding)
    again = extract_cross_attention(bundled, items, tmp_path, ExtractConfig(batch_size=1, with_hidden=True),
                                    progress=False)
    assert sorted(again.done) == ["utt0", "utt1"] and not again.failed
    for uid, old in before.items():
        new = store.load(uid, "attention")
        assert new.attrs["cache_key"] == old.attrs["cache_key"]
        assert new.attrs["hypothesis_key"] == old.attrs["hypothesis_key"]
        assert list(new.token_id.values) == list(old.token_id.values)
        assert new.encoder_hidden.shape == (new.sizes["enc_frame"], bundled.model.config.d_model)
        np.testing.assert_allclose(new.cross_attention.values, old.cross_attention.values, rtol=0, atol=BATCH_CA_ATOL)
    third = extract_cross_attention(bundled, items, tmp_path, ExtractConfig(batch_size=3, with_hidden=True,
                                                                          max_compression_ratio=None), progress=False)
    assert sorted(third.skipped) == ["utt0", "utt1"]  # hidden states stored: nothing to do
    # language None and "en" give the same prompt on an English model: the same hypothesis
    same = extract_cross_attention(bundled, items, tmp_path, ExtractConfig(DecodeConfig(language="en")),
                                   progress=False)
    assert sorted(same.skipped) == ["utt0", "utt1"]


def test_another_input_mode_forces_the_stored_hypothesis(bundled, bundled_trimmed, speech_dir, tmp_path, monkeypatch):
    import xattn_utils.extraction.extract as extract

    items = _items(speech_dir, 1)
    extract_cross_attention(bundled, items, tmp_path, progress=False)
    padded = open_store(tmp_path).load("utt0", "attention")
    monkeypatch.setattr(extract, "decode", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded again")))
    report = extract_cross_attention(bundled_trimmed, items, tmp_path, progress=False)
    trimmed = open_store(tmp_path).load("utt0", "attention")
    assert report.done == ["utt0"] and trimmed.attrs["provenance"]["model"]["input_mode"] == "trimmed"
    assert trimmed.attrs["hypothesis_key"] == padded.attrs["hypothesis_key"]
    assert trimmed.attrs["cache_key"] != padded.attrs["cache_key"]
    assert list(trimmed.token_id.values) == list(padded.token_id.values)
