"""Result store: labeled round trip, atomic replace, cache keys, error records, provenance."""
import json

import numpy as np
import pytest

from xattn_utils.extraction.extract import attention_dataset
from xattn_utils.extraction.forced import ForcedPass
from xattn_utils.provenance import provenance, stable_hash
from xattn_utils.store import ResultStore, open_store


def _fake_pass(seed=0, n_tok=5, t_enc=30):
    rng = np.random.default_rng(seed)
    ca = rng.random((4, 6, n_tok, t_enc)).astype(np.float32)
    ca /= ca.sum(-1, keepdims=True)
    return ForcedPass(prompt_ids=np.array([50257, 50362]), token_ids=np.arange(n_tok),
                      tokens=[f" w{i}" for i in range(n_tok)],
                      log_probs=-rng.random(n_tok).astype(np.float32), cross_attention=ca,
                      value_norms=rng.random((4, 6, t_enc)).astype(np.float32),
                      features=rng.random((80, 2 * t_enc)).astype(np.float32), n_audio_frames=2 * t_enc - 1,
                      n_encoder_frames=t_enc)


def test_round_trip_labels_and_provenance(tmp_path):
    fp = _fake_pass()
    prov = provenance(model={"model_id": "m", "weights_sha256": "abc"}, params={"x": (1, 2)}, seed=3)
    ds = attention_dataset(fp, frames_per_encoder_frame=2, attrs={"provenance": prov})
    store = ResultStore(tmp_path / "s")
    store.write("utt-1", "attention", ds, key="k1")
    back = open_store(tmp_path / "s").load("utt-1", "attention")
    np.testing.assert_array_equal(back.cross_attention.values, fp.cross_attention)
    assert back.cross_attention.dims == ("layer", "head", "token", "enc_frame")
    assert list(back.token_str.values) == fp.tokens
    assert back.enc_time.values[1] == pytest.approx(0.02)  # 2 frames x 10 ms
    assert back.attrs["provenance"]["model"]["weights_sha256"] == "abc"
    assert back.attrs["provenance"]["seed"] == 3
    assert "torch" in back.attrs["provenance"]["versions"]
    assert store.utterances() == ["utt-1"] and store.kinds("utt-1") == ["attention"]


def test_cache_key_and_replace(tmp_path):
    store = ResultStore(tmp_path)
    store.write("u", "attention", attention_dataset(_fake_pass(0), 2), key="k1")
    assert store.has("u", "attention", "k1") and not store.has("u", "attention", "k2")
    store.write("u", "attention", attention_dataset(_fake_pass(1), 2), key="k2")
    assert store.has("u", "attention", "k2")
    np.testing.assert_array_equal(store.load("u", "attention").cross_attention.values, _fake_pass(1).cross_attention)
    # no temporary or old folders left behind
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == ["attention.zarr"]


def test_half_written_group_is_not_trusted(tmp_path):
    store = ResultStore(tmp_path)
    (tmp_path / "u" / "attention.zarr").mkdir(parents=True)  # a crash left an empty folder
    assert not store.has("u", "attention")
    with pytest.raises(KeyError, match="no 'spes_x' result"):
        store.load("u", "spes_x")


def test_errors_recorded_and_cleared(tmp_path):
    store = ResultStore(tmp_path)
    store.record_error("bad", "attention", "bad: audio file missing")
    assert json.loads((tmp_path / "errors.json").read_text()) == {"bad/attention": "bad: audio file missing"}
    store.write("bad", "attention", attention_dataset(_fake_pass(), 2), key="k")
    assert store.errors() == {}


def test_stable_hash_is_order_free_for_dicts_and_sensitive_to_values():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_unsafe_utterance_id_rejected(tmp_path):
    from xattn_utils.errors import InputError

    with pytest.raises(InputError, match="not a safe folder name"):
        ResultStore(tmp_path).write("../evil", "attention", attention_dataset(_fake_pass(), 2), key="k")
