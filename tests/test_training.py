"""The offline model grid: byte tokenizer, training (loss falls, resumes exactly), save/load, registry, multitask."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from xattn_utils.errors import InputError, ModelError
from xattn_utils.extraction.forced import forced_pass
from xattn_utils.models.loader import load_model, resolve_model_path
from xattn_utils.models.registry import load_registry, resolve
from xattn_utils.models.training import (
    TrainConfig,
    batch_indices,
    build_model,
    make_examples,
    n_parameters,
    spec_augment,
    targets_for,
    train,
)
from xattn_utils.models.vocab import encode_example, make_processor, special_ids
from xattn_utils.runs.grid import evaluate, meets_targets, save_model, training_curves

from tolerances import f32, measured


@pytest.fixture(scope="module")
def processor():
    return make_processor()


@pytest.fixture(scope="module")
def corpus():
    from xattn_utils.data.corpus import study_data

    items = study_data(split="test")  # 24 English utterances with Italian translations
    return items[items.duration_s <= 3.9].reset_index(drop=True)  # the grid's 4 s window


@pytest.mark.parametrize("text,lang,task", [
    ("two farmers buy six happy chairs at the station", None, None),
    ("la finestra bella vende il treno nel villaggio", "it", "transcribe"),
    ("perché città è già più", "en", "translate"),
])
def test_tokenizer_round_trips_with_special_tokens(processor, tmp_path, text, lang, task):
    tok = processor.tokenizer
    ids, n_prompt = encode_example(tok, text, lang, task)
    specials = special_ids(tok)
    assert ids[0] == specials["<|startoftranscript|>"] and ids[-1] == specials["<|endoftext|>"]
    assert ids[n_prompt - 1] == specials["<|notimestamps|>"]
    assert n_prompt == (4 if lang else 2)
    if lang:
        assert ids[1:3] == [specials[f"<|{lang}|>"], specials[f"<|{task}|>"]]
    assert len(ids) - n_prompt - 1 == len(text.encode("utf-8"))  # one token per byte
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids).startswith("<|startoftranscript|>") and tok.decode(ids).endswith(text + "<|endoftext|>")
    processor.save_pretrained(tmp_path)
    from transformers import AutoProcessor

    again = AutoProcessor.from_pretrained(tmp_path)
    assert encode_example(again.tokenizer, text, lang, task) == (ids, n_prompt)
    assert again.feature_extractor.hop_length == 320 and again.feature_extractor.nb_max_frames == 200


def test_targets_per_kind():
    en = {"language": "en", "transcript": "the dog", "translation": "il cane"}
    it = {"language": "it", "transcript": "il cane", "translation": ""}
    assert targets_for("en-asr", en) == [(None, None, "the dog")] and targets_for("en-asr", it) == []
    assert targets_for("enit-asr", it) == [("it", "transcribe", "il cane")]
    assert targets_for("en-asrst", en) == [("en", "transcribe", "the dog"), ("en", "translate", "il cane")]


def test_batches_and_augmentation_are_functions_of_seed_and_step():
    a = batch_indices(10, 4, 7, seed=1)
    assert np.array_equal(a, batch_indices(10, 4, 7, seed=1)) and not np.array_equal(a, batch_indices(10, 4, 7, 2))
    epoch = np.concatenate([batch_indices(10, 5, s, 0) for s in range(2)])
    assert sorted(epoch) == list(range(10))  # one epoch sees every example once
    x = torch.randn(3, 80, 50)
    y1 = spec_augment(x, (2, 10, 2, 12), torch.Generator().manual_seed(3))
    y2 = spec_augment(x, (2, 10, 2, 12), torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2) and not torch.equal(y1, x)
    assert ((y1 == x).float().mean() > 0.4)


@pytest.fixture(scope="module")
def smoke(processor, corpus, tmp_path_factory):
    """A small multitask model overfit for a few steps on 4 utterances (ASR + ST examples)."""
    examples = make_examples(corpus.iloc[:4], "en-asrst", processor, progress=False)
    cfg = TrainConfig(kind="en-asrst", scale="s", steps=60, warmup=5, lr=3e-3, batch_size=8, seed=0,
                      spec_augment=(0, 0, 0, 0))
    result = train(cfg, examples, processor, progress=False)
    root = tmp_path_factory.mktemp("grid")
    scores = evaluate_loaded(result.model, processor, corpus.iloc[:2].assign(split="test"))
    folder = save_model(root / cfg.name, result, processor, cfg, scores, {"corpus": "default", "sha256": "x"})
    return {"cfg": cfg, "examples": examples, "result": result, "folder": folder, "root": root, "scores": scores}


def evaluate_loaded(model, processor, manifest):
    from xattn_utils.models.loader import LoadedModel

    loaded = LoadedModel(model=model, processor=processor, model_id="smoke", path="-", weights_sha256="-")
    return evaluate(loaded, manifest, "en-asrst", splits=("test",))


def test_training_loss_falls(smoke):
    losses = [loss for _, loss in smoke["result"].losses]
    assert len(losses) == 60
    assert np.mean(losses[:3]) / np.mean(losses[-5:]) > 2.0, losses  # 5.1 -> 2.2 on this machine


def test_save_load_identical_logits(smoke, corpus):
    folder = smoke["folder"]
    card = (folder / "README.md").read_text()
    assert "steps: 60" in card and "seed 0" in card and "chrF" in card
    loaded = load_model(str(folder), input_mode="padded")
    assert loaded.hop_length == 320 and loaded.frames_per_encoder_frame == 2
    from xattn_utils.data.audio import load_audio

    x = torch.from_numpy(np.stack([loaded.features(load_audio(p)).values.numpy()
                                   for p in corpus.audio_path[:2]]))
    ids = torch.tensor([smoke["examples"].tokens[0][:12]] * 2)
    model = smoke["result"].model
    with torch.no_grad():
        a = model(input_features=x, decoder_input_ids=ids).logits
        b = loaded.model(input_features=x, decoder_input_ids=ids).logits
    for (k, v), w in zip(model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(v, w), k  # identical weights ...
    # ... and logits (training ran sdpa attention, the loader eager): float32, other kernels; measured max 1.4e-6
    # (1 and 2 threads), ×10
    assert torch.allclose(a, b, rtol=0, atol=measured(1.5e-6, margin=10))
    info = json.loads((folder / "training.json").read_text())
    assert info["parameters"] == n_parameters(model) and 0.9e6 < info["parameters"] < 1.2e6
    curves = training_curves(smoke["root"])
    assert len(curves) == 60 and set(curves.model) == {"xattn-en-asrst-s"}


def test_resumed_run_equals_uninterrupted(processor, smoke, tmp_path):
    cfg = TrainConfig(kind="en-asrst", scale="s", steps=6, warmup=2, batch_size=4, checkpoint_every=100, seed=1)
    full = train(cfg, smoke["examples"], processor, progress=False)
    ckpt = tmp_path / "run.pt"
    first = train(cfg, smoke["examples"], processor, checkpoint=ckpt, progress=False, until=3)
    assert first.steps == 3 and ckpt.exists()
    rest = train(cfg, smoke["examples"], processor, checkpoint=ckpt, progress=False)
    assert rest.resumed_from == 3 and rest.steps == 6
    for (k, v), w in zip(full.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(v, w), k
    assert [round(loss, 6) for _, loss in full.losses] == [round(loss, 6) for _, loss in rest.losses]
    other = train(TrainConfig(**{**cfg.__dict__, "seed": 2}), smoke["examples"], processor, progress=False,
                  until=1)
    assert not torch.equal(other.model.model.decoder.embed_tokens.weight, full.model.model.decoder.embed_tokens.weight)


def test_multitask_model_accepts_both_task_prompts(smoke, corpus):
    loaded = load_model(str(smoke["folder"]), input_mode="trimmed", trim_quantum=50)
    ids = special_ids(loaded.tokenizer)
    asr, st = loaded.prompt_ids("en", "transcribe"), loaded.prompt_ids("en", "translate")
    assert asr[2] == ids["<|transcribe|>"] and st[2] == ids["<|translate|>"] and asr[:2] == st[:2]
    with pytest.raises(InputError, match="no language 'fr'.*its languages: en"):
        loaded.prompt_ids("fr", "transcribe")
    from xattn_utils.data.audio import load_audio

    audio = load_audio(corpus.audio_path[0])
    text = {"transcribe": corpus.transcript[0], "translate": corpus.translation[0]}
    for task, prompt in (("transcribe", asr), ("translate", st)):
        target = loaded.tokenizer(text[task], add_special_tokens=False).input_ids
        fp = forced_pass(loaded, [loaded.features(audio)], prompt, [target])[0]
        assert fp.cross_attention.shape[:3] == (2, 4, len(target) + 1)  # layers, heads, tokens + EOT
        # the audio's 20 ms input frames (a partly filled last one counts), 2x subsampled to 40 ms encoder frames
        assert fp.cross_attention.shape[-1] == fp.n_encoder_frames == math.ceil(math.ceil(len(audio) / 320) / 2)
        # float32 softmax over the frames the encoder ran on (the audio's, padded up to the input quantum of
        # trim_quantum = 50 frames), summed over the audio's: two sums of at most that many terms
        t_run = fp.n_encoder_frames + loaded.trim_quantum // loaded.frames_per_encoder_frame
        assert (fp.cross_attention.sum(-1) <= 1 + f32(n_ops=t_run + fp.n_encoder_frames)).all() \
            and len(fp.log_probs) == len(target) + 1
    scores = smoke["scores"]
    assert set(scores.task) == {"transcribe", "translate"} and "chrf" in scores
    assert meets_targets(pd.DataFrame([{"task": "transcribe", "split": "test", "wer": 4.0},
                                       {"task": "transcribe", "split": "test_unseen_voice", "wer": 13.0},
                                       {"task": "translate", "split": "test", "wer": 50.0, "chrf": 61.0}])).tolist() \
        == [True, False, True]


def test_every_registry_entry_resolves_or_says_why(tmp_path, monkeypatch, smoke):
    registry = load_registry()
    assert {"bundled", "trained", "hub"} == {e.source for e in registry.values()}
    assert len([e for e in registry.values() if e.source == "trained"]) == 9
    monkeypatch.setenv("XATTN_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, entry in registry.items():
        if entry.source == "trained":
            with pytest.raises(ModelError, match="make models"):
                resolve_model_path(name)
        elif entry.source == "hub":
            assert resolve(name) == entry.location
            with pytest.raises(ModelError, match=name.replace(".", r"\.")):
                load_model(name)
    # a trained model present in the grid folder resolves to it and loads by its registry name
    import shutil

    shutil.copytree(smoke["folder"], tmp_path / "models" / "grid" / "xattn-en-asrst-s")
    assert resolve_model_path("xattn-en-asrst-s") == tmp_path / "models" / "grid" / "xattn-en-asrst-s"
    assert load_model("xattn-en-asrst-s").model_id == "xattn-en-asrst-s"


def test_bundled_entry_resolves(bundled):
    assert "bundled:whisper-tiny.en" in load_registry()
    assert bundled.model_id == "bundled:whisper-tiny.en"


def test_untrained_model_is_a_whisper_model(processor):
    cfg = TrainConfig(kind="enit-asr", scale="m")
    model = build_model(cfg, processor)
    assert 2.5e6 < n_parameters(model) < 3.2e6
    assert model.generation_config.is_multilingual and set(model.generation_config.lang_to_id) == {"<|en|>", "<|it|>"}
    assert model.config.max_source_positions == 100
