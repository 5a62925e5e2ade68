"""Nothing lost, nothing silently wrong (issue 11): bad inputs, faults and hostile parameters, table by table.

Every case runs on real files: a store extracted by the bundled Whisper tiny.en from espeak speech, real audio
files, a real sweep with a papermill notebook, a real training checkpoint. Each asserts that the error names the
item and that results finished before are intact.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from xattn_utils import ExtractConfig, extract_cross_attention, open_store
from xattn_utils._io import sha256_file
from xattn_utils.data.audio import load_audio
from xattn_utils.errors import (
    DamagedResultError,
    DiskFullError,
    InputError,
    MissingResultError,
    ModelError,
    StoreError,
    XattnError,
)
from xattn_utils.store import ResultStore

from tolerances import measured

KIND = "attention"


def _items(speech_dir, ids=(0, 1)):
    return pd.DataFrame({"id": [f"utt{i}" for i in ids], "audio_path": [str(speech_dir / f"utt{i}.wav") for i in ids]})


def _tree_sums(folder: Path) -> dict[str, str]:
    """sha256 of every file under a folder (to show finished results are byte-for-byte intact)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")
            and p.name not in ("errors.json", "store.json")}  # run-level records, rewritten by every run


@pytest.fixture(scope="module")
def base_store(bundled_trimmed, speech_dir, tmp_path_factory):
    """utt0 and utt1: attention (trimmed input) and SPES on H (16 masks), extracted once for the module."""
    from xattn_utils.attribution.saliency import SaliencyConfig, compute_saliency
    from xattn_utils.attribution.spes import SMHConfig

    path = tmp_path_factory.mktemp("reliability") / "store"
    rep = compute_saliency(bundled_trimmed, _items(speech_dir), path,
                           SaliencyConfig(methods=("spes-h",), smh=SMHConfig(n_masks=16, batch_size=16)),
                           progress=False)
    assert sorted(rep.done) == ["utt0", "utt1"] and not rep.failed
    return path


@pytest.fixture
def store_copy(base_store, tmp_path):
    dest = tmp_path / "store"
    shutil.copytree(base_store, dest)
    return dest


def _first_chunk(group: Path, var: str = "cross_attention") -> Path:
    chunks = [p for p in sorted((group / var).rglob("*")) if p.is_file() and p.name != "zarr.json"]
    assert chunks, f"no chunk files under {group / var}"
    return chunks[0]


# ------------------------------------------------------------------------------------------------ 1. ids


def test_colliding_stems_and_unsafe_names_keep_every_result(bundled_trimmed, speech_dir, tmp_path):
    """a/same.wav and b/same.wav get distinct ids (nothing overwritten); a name with spaces/accents gets a safe id."""
    files = [tmp_path / "a" / "same.wav", tmp_path / "b" / "same.wav", tmp_path / "c" / "Café 1.wav"]
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(speech_dir / f"utt{i}.wav", f)
    rep = extract_cross_attention(bundled_trimmed, files, tmp_path / "s", progress=False)
    assert sorted(rep.done) == ["Cafe_1", "a_same", "b_same"] and not rep.failed
    store = open_store(tmp_path / "s")
    words = {"a_same": "fox", "b_same": "birds", "Cafe_1": "book"}
    for uid, f in zip(("a_same", "b_same", "Cafe_1"), files):
        ds = store.load(uid, KIND)
        assert ds.attrs["provenance"]["data"]["sha256"] == sha256_file(f)  # each group holds its own audio
        assert words[uid] in ds.attrs["text"].lower()


def test_same_file_twice_is_refused_by_name(speech_dir, tmp_path, bundled_trimmed):
    f = speech_dir / "utt0.wav"
    with pytest.raises(InputError, match="utt0.wav: the same audio file is given twice"):
        extract_cross_attention(bundled_trimmed, [f, f], tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_duplicate_manifest_ids_are_refused_naming_both_paths(bundled_trimmed, speech_dir, store_copy, tmp_path):
    from xattn_utils.data.manifest import load_manifest

    manifest = tmp_path / "m.csv"
    pd.DataFrame({"id": ["utt0", "dup", "dup"],
                  "audio_path": [str(speech_dir / f"utt{i}.wav") for i in range(3)]}).to_csv(manifest, index=False)
    before = _tree_sums(store_copy)
    with pytest.raises(InputError) as err:
        extract_cross_attention(bundled_trimmed, load_manifest(manifest), store_copy, progress=False)
    msg = str(err.value)
    assert "'dup'" in msg and "utt1.wav" in msg and "utt2.wav" in msg and "unique" in msg
    assert _tree_sums(store_copy) == before  # nothing written, nothing lost


def test_same_id_with_other_audio_is_recomputed_not_reused(bundled_trimmed, speech_dir, store_copy):
    items = pd.DataFrame({"id": ["utt0"], "audio_path": [str(speech_dir / "utt2.wav")]})
    rep = extract_cross_attention(bundled_trimmed, items, store_copy, progress=False)
    assert rep.done == ["utt0"] and not rep.skipped
    ds = open_store(store_copy).load("utt0", KIND)
    assert ds.attrs["provenance"]["data"]["sha256"] == sha256_file(speech_dir / "utt2.wav")
    assert "book" in ds.attrs["text"].lower()


# ----------------------------------------------------------------------------------- 2. store integrity


def _delete(group):
    _first_chunk(group).unlink()


def _truncate(group):
    f = _first_chunk(group)
    f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 2)])


def _flip(group):
    f = _first_chunk(group)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def _garbage_metadata(group):
    (group / "zarr.json").write_text("{ not json")


DAMAGE = {"deleted chunk": (_delete, "missing"), "truncated chunk": (_truncate, "changed or truncated"),
          "flipped byte": (_flip, "changed or truncated"), "garbage metadata": (_garbage_metadata, "metadata")}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_group_is_named_on_load_and_recomputed_on_resume(case, bundled_trimmed, speech_dir, base_store,
                                                                  store_copy):
    damage, what = DAMAGE[case]
    store = ResultStore(store_copy)
    damage(store_copy / "utt0" / "attention.zarr")
    with pytest.raises(DamagedResultError) as err:
        store.load("utt0", KIND)
    msg = str(err.value)
    assert msg.startswith("utt0: stored 'attention' result") and what in msg and "re-run" in msg
    assert isinstance(err.value, XattnError)
    untouched = store.load("utt1", KIND)  # the other utterance is intact
    np.testing.assert_array_equal(untouched.cross_attention.values,
                                  ResultStore(base_store).load("utt1", KIND).cross_attention.values)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        rep = extract_cross_attention(bundled_trimmed, _items(speech_dir), store, progress=False)
    assert rep.done == ["utt0"] and rep.skipped == ["utt1"] and not rep.failed
    again = store.load("utt0", KIND)
    original = ResultStore(base_store).load("utt0", KIND)
    assert list(again.token_id.values) == list(original.token_id.values)
    # recomputed alone, not in the batch it was first computed in: equal within the batch tolerance (item 7), the
    # batch 1 vs batch 3 difference through tiny.en measured in test_extract (max 1.6e-6 over 3 utterances) ×10
    np.testing.assert_allclose(again.cross_attention.values, original.cross_attention.values, rtol=0,
                               atol=measured(2e-6, margin=10))


def test_damaged_saliency_never_reaches_a_correlation(store_copy, tmp_path, capsys):
    from xattn_utils.analysis.compare import CompareConfig, compare_store
    from xattn_utils.cli import main

    cfg = CompareConfig(per_head=False, n_boot=20)
    good = compare_store(store_copy, None, cfg, progress=False)
    assert good.value.notna().any()
    _first_chunk(store_copy / "utt1" / "spes_h.zarr", "saliency").unlink()
    with pytest.raises(DamagedResultError, match=r"^utt1: stored 'spes_h' result .* missing"):
        compare_store(store_copy, None, cfg, progress=False)
    assert main(["compare", "--store", str(store_copy), "--out", str(tmp_path / "t"), "--no-per-head",
                 "--n-boot", "20", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: utt1: stored 'spes_h' result")
    assert not (tmp_path / "t" / "agreement.parquet").exists()  # no table computed from missing data


def test_group_checksums_cover_every_file(store_copy):
    import zarr

    group = store_copy / "utt0" / "attention.zarr"
    sums = dict(zarr.open_group(str(group), mode="r").attrs)["xattn_checksums"]
    files = {p.relative_to(group).as_posix() for p in group.rglob("*") if p.is_file()} - {"zarr.json"}
    assert set(sums) == files and len(files) > 5
    assert "xattn_checksums" not in ResultStore(store_copy).load("utt0", KIND).attrs


# --------------------------------------------------------------------- 3. errors outside the project's types


def _folder(tmp):
    (tmp / "folder.wav").mkdir()
    return "folder", tmp / "folder.wav"


def _nan(tmp):
    audio = np.zeros(16000, dtype=np.float32)
    audio[100] = np.nan
    sf.write(tmp / "nan.wav", audio, 16000, subtype="FLOAT")
    return "nan", tmp / "nan.wav"


def _inf(tmp):
    audio = np.zeros(16000, dtype=np.float32)
    audio[5] = np.inf
    sf.write(tmp / "inf.wav", audio, 16000, subtype="FLOAT")
    return "inf", tmp / "inf.wav"


BAD_ITEMS = {  # case: (make (tmp, speech_dir) -> (id, path), what the error says besides the item's name)
    "audio is a folder": (lambda t, s: _folder(t), "is a folder"),
    "id store.json": (lambda t, s: ("store.json", s / "utt2.wav"), "reserved"),
    "id errors.json": (lambda t, s: ("errors.json", s / "utt2.wav"), "reserved"),
    "id climbs out": (lambda t, s: ("../evil", s / "utt2.wav"), "not a safe folder name"),
    "missing audio": (lambda t, s: ("gone", t / "gone.wav"), "missing"),
    "NaN sample": (lambda t, s: _nan(t), "non-finite"),
    "Inf sample": (lambda t, s: _inf(t), "non-finite"),
    "not audio": (lambda t, s: ("text", (t / "text.wav", (t / "text.wav").write_text("hello"))[0]), "cannot read"),
}


@pytest.mark.parametrize("case", list(BAD_ITEMS))
def test_bad_item_is_recorded_by_name_and_the_batch_goes_on(case, bundled_trimmed, speech_dir, store_copy,
                                                            tmp_path):
    make, what = BAD_ITEMS[case]
    uid, path = make(tmp_path, speech_dir)
    before = _tree_sums(store_copy)
    items = pd.DataFrame({"id": [uid, "utt0", "utt1"],
                          "audio_path": [str(path), str(speech_dir / "utt0.wav"), str(speech_dir / "utt1.wav")]})
    rep = extract_cross_attention(bundled_trimmed, items, store_copy, progress=False)
    assert rep.skipped == ["utt0", "utt1"] and list(rep.failed) == [uid]
    msg = rep.failed[uid]
    assert (uid in msg or str(path) in msg) and what in msg and "\n" not in msg
    assert _tree_sums(store_copy) == before  # finished results intact, nothing stray written
    assert f"{uid}/attention" in open_store(store_copy).errors()


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("num_beams", 0), ("max_new_tokens", -1),
                                         ("batch_size", 2.5)])
def test_bad_extract_settings_fail_before_anything_runs(field, value):
    from xattn_utils import DecodeConfig

    with pytest.raises(InputError, match=f"^{field} must be a whole number of at least 1"):
        ExtractConfig(**{field: value}) if field == "batch_size" else DecodeConfig(**{field: value})


@pytest.mark.parametrize("argv,said", [
    (["extract", "--out", "{out}", "--batch-size", "0", "{wav}"], "error: batch_size must be"),
    (["extract", "--out", "{out}", "--beams", "0", "{wav}"], "error: num_beams must be"),
    (["compare", "--store", "{missing}", "--out", "{out}"], "error: no result store at"),
    (["faithfulness", "--store", "{missing}", "--out", "{out}", "{wav}"], "error: no result store at"),
])
def test_cli_bad_parameters_one_line_exit_2(argv, said, speech_dir, tmp_path, capsys):
    from xattn_utils.cli import main

    fill = {"out": str(tmp_path / "out"), "wav": str(speech_dir / "utt0.wav"), "missing": str(tmp_path / "nope")}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(said), err
    assert not (tmp_path / "out").exists()


def test_missing_store_is_still_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no result store at"):
        open_store(tmp_path / "nope")
    with pytest.raises(StoreError):
        open_store(tmp_path / "nope")


def test_faithfulness_item_missing_from_store_is_recorded(bundled_trimmed, speech_dir, store_copy):
    from xattn_utils.analysis.faithfulness import FaithfulnessConfig, faithfulness_store

    items = pd.DataFrame({"id": ["ghost", "utt0", "utt1"],
                          "audio_path": [str(speech_dir / f"utt{i}.wav") for i in (2, 0, 1)]})
    store = open_store(store_copy)
    with pytest.raises(MissingResultError, match="no 'attention' result for utterance 'ghost'"):
        store.load("ghost", KIND)
    _truncate(store_copy / "utt1" / "attention.zarr")
    curves, aucs = faithfulness_store(bundled_trimmed, store, items, ("random",), ("deletion",),
                                      FaithfulnessConfig(percents=(0, 50)), progress=False)
    assert set(curves.utterance) == {"utt0"} and list(aucs.utterance) == ["utt0"]
    assert curves[curves.percent == 0].wer.iloc[0] == 0  # nothing deleted: the hypothesis itself
    failed = curves.attrs["failed"]
    assert sorted(failed) == ["ghost", "utt1"]
    assert failed["ghost"].startswith("ghost: no 'attention' result") and "damaged" in failed["utt1"]
    assert {"ghost/faithfulness", "utt1/faithfulness"} <= set(store.errors())
    with pytest.raises(XattnError, match="no item can be scored"):
        faithfulness_store(bundled_trimmed, store, items.iloc[[0]], ("random",), progress=False)


def _run_with_file_limit(limit: int, fn):
    """Run ``fn`` with writes beyond ``limit`` bytes per file failing (EFBIG: the process's disk is full)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        return fn()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def test_full_disk_stops_cleanly_and_keeps_finished_results(bundled_trimmed, speech_dir, store_copy):
    before = _tree_sums(store_copy)
    items = _items(speech_dir, (0, 1, 2))  # utt0, utt1 finished; utt2 must be written
    with pytest.raises(DiskFullError) as err:
        _run_with_file_limit(16_384, lambda: extract_cross_attention(bundled_trimmed, items, store_copy,
                                                                     progress=False))
    msg = str(err.value)
    assert msg.startswith("utt2/attention: no space left") and "finished before is kept" in msg
    store = open_store(store_copy)
    assert _tree_sums(store_copy) == before
    assert store.utterances() == ["utt0", "utt1", "utt2"] and store.kinds("utt2") == []
    assert not [p for p in (store_copy / "utt2").iterdir()]  # no temporary left behind
    store.load("utt0", KIND), store.load("utt1", KIND)  # intact
    rep = extract_cross_attention(bundled_trimmed, items, store_copy, progress=False)  # space again: resumes
    assert rep.done == ["utt2"] and rep.skipped == ["utt0", "utt1"]


def test_orphan_temporaries_of_dead_writers_are_cleaned(bundled_trimmed, speech_dir, store_copy):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = os.getpid()
    orphans = [store_copy / "utt0" / f".attention.{dead.pid}.abcd.tmp", store_copy / "utt0" /
               f".attention.zarr.old-{dead.pid}", store_copy / f".store.json.{dead.pid}.x.tmp"]
    kept = [store_copy / "utt1" / f".spes_h.{live}.efgh.tmp"]
    for p in orphans[:2] + kept:
        (p / "g.zarr").mkdir(parents=True)
    orphans[2].write_text("{}")
    before = _tree_sums(store_copy)
    rep = extract_cross_attention(bundled_trimmed, _items(speech_dir), store_copy, progress=False)
    assert rep.skipped == ["utt0", "utt1"]
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in kept)
    assert _tree_sums(store_copy) == before


def test_truncated_weights_are_named_and_the_bundled_cache_rebuilt(tmp_path):
    from xattn_utils import load_model
    from xattn_utils._io import weights_sha256
    from xattn_utils.models.conversion import ensure_bundled_whisper

    dest = ensure_bundled_whisper(cache=tmp_path / "cache")
    recorded = json.loads((dest / "conversion.json").read_text())["weights_sha256"]
    local = tmp_path / "local"
    shutil.copytree(dest, local)
    w = local / "model.safetensors"
    w.write_bytes(w.read_bytes()[: 1 << 20])
    with pytest.raises(ModelError, match=f"cannot load model '{local}'"):
        load_model(str(local))
    weights = dest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1 << 20])  # the cached conversion is damaged
    with pytest.warns(UserWarning, match="no longer match the sha256 recorded"):
        again = ensure_bundled_whisper(cache=tmp_path / "cache")
    assert again == dest and weights_sha256(dest) == recorded  # rebuilt, same bits as the first conversion
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [dest.name]


# ---------------------------------------------------------------------------- 4. non-finite audio (direct)


@pytest.mark.parametrize("make", [_nan, _inf])
def test_non_finite_audio_is_rejected_by_name(make, tmp_path):
    _, path = make(tmp_path)
    with pytest.raises(InputError, match=rf"^{path}: audio holds 1 non-finite sample\(s\)"):
        load_audio(path)


# ----------------------------------------------------------------------------------- 5. injection


INJECTION = "a = 1\nimport os; os.system('touch {marker}')\nb"


@pytest.mark.parametrize("where,key,said", [
    ("grid", INJECTION, "not Python identifiers"),
    ("grid", "1a", "not Python identifiers"),
    ("grid", "import", "not Python identifiers"),
    ("grid", "n_mask", "in no notebook's parameters cell"),
    ("common", INJECTION, "not Python identifiers"),
    ("fixed", INJECTION, "not Python identifiers"),
    ("fixed", "typo", "not in its parameters cell"),
])
def test_sweep_keys_cannot_inject_code(where, key, said, sweep_done, tmp_path):
    from test_sweep import PROBE

    from xattn_utils.runs.sweep import SweepError, run_sweep

    probe_dir, root, spec, status = sweep_done
    marker = tmp_path / "INJECTED"
    key = key.format(marker=marker)
    bad = json.loads(json.dumps(spec))
    if where == "grid":
        bad["grid"][key] = [1]
    elif where == "common":
        bad["common"] = {key: 1}
    else:
        bad["notebooks"] = [{PROBE: {key: 1}}]
    with pytest.raises(SweepError, match=said) as err:
        run_sweep(bad, out=root, workers=1, verbose=False)
    assert repr(key)[1:-1][:20] in str(err.value) or key in str(err.value)
    assert not marker.exists()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [Path(status[0]).name]  # no new run
    assert (Path(status[0]) / "status").read_text() == status[1]  # the finished run is intact


@pytest.fixture(scope="module")
def sweep_done(tmp_path_factory):
    """A real finished sweep (one papermill run of the probe notebook) to attack."""
    from test_sweep import write_probe

    from xattn_utils.runs.sweep import run_sweep

    base = tmp_path_factory.mktemp("sweep")
    probe_dir = write_probe(base / "nb").parent
    spec = {"name": "probe", "notebook_dir": str(probe_dir), "notebooks": ["sweep_probe.ipynb"],
            "grid": {"a": [2]}}
    res = run_sweep(spec, out=base / "out", workers=1, verbose=False)
    assert res.summary() == "runs: 1 done, 0 skipped, 0 failed"
    run_dir = res.done[0].run_dir
    return probe_dir, base / "out", spec, (run_dir, (Path(run_dir) / "status").read_text())


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_training_checkpoints_are_loaded_without_running_code(tmp_path):
    import torch

    from xattn_utils.models.training import Examples, TrainConfig, train
    from xattn_utils.models.vocab import encode_example, make_processor

    processor = make_processor()
    g = torch.Generator().manual_seed(0)
    encoded = [encode_example(processor.tokenizer, t) for t in ("hello there", "two words")]
    examples = Examples(features=torch.randn(2, 80, 200, generator=g), tokens=[e[0] for e in encoded],
                        prompt_lengths=np.array([e[1] for e in encoded]))
    cfg = TrainConfig(kind="en-asr", scale="s", steps=2, warmup=1, batch_size=2, checkpoint_every=1,
                      spec_augment=(0, 0, 0, 0))
    ckpt = tmp_path / "run.pt"
    first = train(cfg, examples, processor, checkpoint=ckpt, progress=False, until=1)
    assert first.steps == 1
    resumed = train(cfg, examples, processor, checkpoint=ckpt, progress=False)  # weights_only=True loads it
    assert resumed.resumed_from == 1 and resumed.steps == 2
    marker = tmp_path / "PWNED"
    torch.save({"key": _Evil(marker)}, ckpt)
    with pytest.warns(UserWarning, match="cannot be loaded safely"):
        fresh = train(cfg, examples, processor, checkpoint=ckpt, progress=False)
    assert not marker.exists() and fresh.resumed_from == 0 and fresh.steps == 2


# ---------------------------------------------------------------------------------- 6. concurrent writers


def _record_many(path: str, worker: int, n: int) -> None:
    store = ResultStore(path)
    for i in range(n):
        store.record_error(f"w{worker}-{i}", "attention", f"w{worker}-{i}: failed on purpose")


def test_concurrent_error_records_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    errs = ResultStore(tmp_path).errors()
    assert len(errs) == 100 and errs["w3-24/attention"] == "w3-24: failed on purpose"


# --------------------------------------------------------------------------------------- 6. weak answers


def test_silence_and_tiny_clips_are_flagged_and_left_out_of_the_comparison(bundled_trimmed, speech_dir, store_copy,
                                                                           tmp_path):
    from xattn_utils.analysis.compare import CompareConfig, compare_store
    from xattn_utils.attribution.saliency import SaliencyConfig, compute_saliency
    from xattn_utils.attribution.spes import SMHConfig

    sf.write(tmp_path / "silence.wav", np.zeros(16000, dtype=np.float32), 16000)
    speech, _ = sf.read(speech_dir / "utt0.wav", dtype="float32")
    loud = int(np.argmax(np.abs(speech)))
    sf.write(tmp_path / "clip.wav", speech[loud: loud + 800], 16000)  # 0.05 s out of the loudest part
    items = pd.DataFrame({"id": ["silence", "clip", "utt0"],
                          "audio_path": [str(tmp_path / "silence.wav"), str(tmp_path / "clip.wav"),
                                         str(speech_dir / "utt0.wav")]})
    rep = extract_cross_attention(bundled_trimmed, items, store_copy, progress=False)
    assert rep.skipped == ["utt0"]
    explained = [u for u in ("silence", "clip") if u in rep.done]  # a hypothesis came out (else: failed, empty)
    assert set(explained) | set(rep.failed) == {"silence", "clip"} and explained
    assert set(rep.flagged) == set(explained) and "near-silent or non-speech (flagged)" in rep.summary()
    store = open_store(store_copy)
    for uid in explained:
        assert "(near-)silence" in rep.flagged[uid] and rep.flagged[uid].startswith(uid)
        assert store.load(uid, KIND).attrs["near_silence"] == 1 and store.near_silence(uid)
    assert not store.near_silence("utt0") and store.load("utt0", KIND).attrs.get("near_silence", 0) == 0
    compute_saliency(bundled_trimmed, items[items.id.isin(explained)], store_copy,
                     SaliencyConfig(methods=("spes-h",), smh=SMHConfig(n_masks=16, batch_size=16)), progress=False)
    cfg = CompareConfig(per_head=False, n_boot=20)
    table = compare_store(store_copy, tmp_path / "t", cfg, progress=False)
    assert set(table.utterance.dropna()) - {""} <= {"utt0", "utt1"}
    skipped = json.loads((tmp_path / "t" / "agreement.json").read_text())["data"]["skipped"]
    assert set(skipped) == set(explained) and all("near" in v for v in skipped.values())
    cfg.exclude_near_silence = False
    kept = compare_store(store_copy, None, cfg, progress=False)
    assert set(explained) <= set(kept.utterance.dropna())


@pytest.mark.parametrize("column,value,said", [
    ("sample_rate", 8000, "manifest says 8000 Hz but"),
    ("sample_rate", "fast", "sample_rate 'fast' is not a number"),
    ("duration_s", "long", "duration_s 'long' is not a number"),
    ("duration_s", "nan", "duration_s 'nan' is not a number"),
    ("duration_s", 9.9, "manifest says 9.900 s but"),
])
def test_manifest_rows_that_disagree_with_their_audio_are_refused_by_id(column, value, said, bundled_trimmed,
                                                                        speech_dir, store_copy, tmp_path):
    from xattn_utils.data.manifest import load_manifest, validate_manifest

    rows = pd.DataFrame({"id": ["bad", "utt0"], "audio_path": [str(speech_dir / "utt2.wav"),
                                                                str(speech_dir / "utt0.wav")],
                         "transcript": ["x", "y"], "sample_rate": [16000, 16000],
                         "duration_s": [round(sf.info(speech_dir / f"utt{i}.wav").duration, 4) for i in (2, 0)]})
    rows[column] = rows[column].astype(object)
    rows.loc[0, column] = value
    rows.to_csv(tmp_path / "m.csv", index=False)
    manifest = load_manifest(tmp_path / "m.csv")
    assert list(validate_manifest(manifest)) == ["bad"] and said in validate_manifest(manifest)["bad"][0]
    before = _tree_sums(store_copy)
    rep = extract_cross_attention(bundled_trimmed, manifest, store_copy, progress=False)
    assert list(rep.failed) == ["bad"] and rep.failed["bad"].startswith("bad: ") and said in rep.failed["bad"]
    assert rep.skipped == ["utt0"] and _tree_sums(store_copy) == before


@pytest.mark.parametrize("argv,said", [
    (["--n-masks", "1000000000"], "error: --n-masks 1000000000 is over the cap of 100000"),
    (["--n-masks", "0"], "error: --n-masks must be at least 1"),
    (["--n-masks", "200", "--max-masks", "100"], "error: --n-masks 200 is over the cap of 100"),
])
def test_saliency_mask_budget_is_checked_before_the_model_loads(argv, said, speech_dir, tmp_path, capsys):
    from xattn_utils.cli import main

    assert main(["saliency", "--out", str(tmp_path / "s"), str(speech_dir / "utt0.wav"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(said)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("config,said", [
    ({"name": "../../escaped"}, "corpus name '../../escaped' must be a plain folder name"),
    ({"name": "/abs"}, "corpus name '/abs' must be a plain folder name"),
    ({"name": "ok", "languages": ["xx"]}, "languages ['xx']"),
    ({"name": "ok", "n_test": -1}, "n_test must be a whole number >= 0"),
    ({"name": "ok", "speed": [1.2, 0.9]}, "speed must be [low, high]"),
    ({"name": "ok", "rate": 3}, "unknown field(s) ['rate']"),
    ({"name": "ok", "voices": {"en": ["flite:nobody"]}}, "flite has no voice 'nobody' here; installed: flite:rms"),
    ("{ not json", "not valid JSON"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_corpus_configs_are_one_line_errors_and_write_nothing(config, said, tmp_path, capsys):
    from xattn_utils.data.corpus import main

    out = tmp_path / "a" / "b"
    out.mkdir(parents=True)
    f = tmp_path / "corpus.json"
    text = config if isinstance(config, str) else json.dumps({**config, "out_dir": str(out)} if isinstance(config, dict)
                                                             else config)
    f.write_text(text)
    assert main(["--config", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: corpus config {f}: ") and said in err[0], err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "corpus.json"]


def test_transcribe_names_non_finite_audio_and_transcribes_the_rest(speech_dir, tmp_path, capsys):
    from xattn_utils.cli import main

    _, bad = _nan(tmp_path)
    good = speech_dir / "utt0.wav"
    assert main(["transcribe", "--input-mode", "trimmed", str(bad), str(good)]) == 1
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error")]  # (transformers logs too)
    assert errors == [f"error: {bad}: audio holds 1 non-finite sample(s) (NaN or Inf); the model "
                                        "would explain garbage: repair or re-export the file"]
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{good}\t") and "fox" in lines[0].lower()
    assert "!!!" not in out


# ------------------------------------------------------------------------------ issue 24: the second round


def _truncated_copy(src: Path, dest: Path) -> Path:
    """A WAV cut in the middle of its data: the header still states the full length."""
    data = src.read_bytes()
    dest.write_bytes(data[: 44 + (len(data) - 44) // 2])
    return dest


def test_truncated_wav_is_refused_by_name_and_the_rest_goes_on(bundled_trimmed, speech_dir, store_copy, tmp_path):
    from xattn_utils.data.audio import load_utterance_audio
    from xattn_utils.data.manifest import validate_manifest

    cut = _truncated_copy(speech_dir / "utt2.wav", tmp_path / "cut.wav")
    assert sf.info(cut).frames < sf.info(speech_dir / "utt2.wav").frames  # libsndfile alone reads it silently
    with pytest.raises(InputError, match=rf"^{cut}: audio is truncated: its header states \d+ bytes of data "
                                         r"\(\d\.\d\d s\) but only \d+ are present"):
        load_audio(cut)
    with pytest.raises(InputError, match="truncated"):
        load_utterance_audio({"id": "cut", "audio_path": str(cut)})
    items = pd.DataFrame({"id": ["cut", "utt0", "utt1"],
                          "audio_path": [str(cut), str(speech_dir / "utt0.wav"), str(speech_dir / "utt1.wav")]})
    assert "truncated" in validate_manifest(items.assign(transcript="x"))["cut"][0]
    before = _tree_sums(store_copy)
    rep = extract_cross_attention(bundled_trimmed, items, store_copy, progress=False)
    assert list(rep.failed) == ["cut"] and str(cut) in rep.failed["cut"] and "truncated" in rep.failed["cut"]
    assert rep.skipped == ["utt0", "utt1"] and _tree_sums(store_copy) == before
    assert "truncated" in open_store(store_copy).errors()["cut/attention"]


def test_noise_corrected_correlations_never_leave_minus_one_to_one(store_copy):
    from xattn_utils.analysis.agreement import (
        NOTE_BELOW_FLOOR,
        NOTE_OUT_OF_RANGE,
        RELIABILITY_FLOOR,
        corrected_note,
        disattenuate,
        spearman_brown,
    )
    from xattn_utils.analysis.compare import CompareConfig, compare_store

    # known answers: r_half 0.05 -> reliability 0.095 (< floor); r 0.9 at reliability 0.5 -> 1.27 (> 1); r 0.5 at
    # reliability 0.64 -> 0.625
    half_for = {rel: rel / (2 - rel) for rel in (0.5, 0.64)}  # spearman_brown inverse
    assert spearman_brown(0.05) < RELIABILITY_FLOOR
    assert np.isnan(disattenuate(0.1, 0.05)) and corrected_note(0.1, 0.05) == NOTE_BELOW_FLOOR
    assert np.isnan(disattenuate(0.9, half_for[0.5])) and corrected_note(0.9, half_for[0.5]) == NOTE_OUT_OF_RANGE
    assert disattenuate(0.5, half_for[0.64]) == pytest.approx(0.625) and corrected_note(0.5, half_for[0.64]) == ""
    assert disattenuate(0.9, half_for[0.5], beyond="clip") == 1.0  # bootstrap replicates: clipped, not dropped
    # a real store: SPES on H with 16 masks is noisy (many reliabilities near 0)
    table = compare_store(store_copy, None, CompareConfig(per_head=False, n_boot=50), progress=False)
    cor = table[table.measure == "pearson_corrected"]
    assert len(cor) and not (cor.value.abs() > 1).any()
    undefined = cor[cor.value.isna()]
    assert len(undefined) > 0, "16 masks should leave some token reliabilities below the floor"
    assert set(undefined.note) <= {NOTE_BELOW_FLOOR, NOTE_OUT_OF_RANGE, ""}
    cols = ["utterance", "token", "attention", "reference"]
    raw = table[(table.measure == "pearson") & (table.level == "token")][cols + ["value"]]
    tok = undefined[undefined.level == "token"].merge(raw, on=cols, suffixes=("", "_raw"))
    assert len(tok) and (tok[tok.value_raw.notna()].note != "").all()  # every undefined value with a finite r
    assert (tok[tok.value_raw.notna()].note.isin([NOTE_BELOW_FLOOR, NOTE_OUT_OF_RANGE])).all()  # says why
    assert (cor[cor.value.notna()].note == "").all()


def test_non_utf8_manifest_names_file_and_line(speech_dir, tmp_path, capsys):
    from xattn_utils.cli import main
    from xattn_utils.data.manifest import load_manifest

    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"id,audio_path,transcript\n"
                         + f"utt0,{speech_dir / 'utt0.wav'},fine\n".encode()
                         + f"utt1,{speech_dir / 'utt1.wav'},caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=rf"^manifest {manifest}: line 3 is not UTF-8 \(byte 0xE9 .*save the file "
                                         "as UTF-8"):
        load_manifest(manifest)
    assert main(["extract", "--out", str(tmp_path / "s"), "--manifest", str(manifest)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: manifest {manifest}: line 3 is not UTF-8")
    assert not (tmp_path / "s").exists()


def test_device_cuda_without_cuda_fails_before_anything_loads(speech_dir, tmp_path, capsys):
    import torch

    from xattn_utils.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    for argv in (["extract"], ["saliency", "--method", "spes-h"], ["mixing"]):
        assert main([*argv, "--out", str(tmp_path / "s"), str(speech_dir / "utt0.wav"), "--device", "cuda"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error: --device cuda: ") and "--device cpu" in err[0], err
    assert main(["extract", "--out", str(tmp_path / "s"), str(speech_dir / "utt0.wav"), "--device", "gpu0"]) == 2
    assert "not a torch device" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value,said", [("!!binary aGVsbG8=", "a[0] = b'hello' is a YAML bytes"),
                                        ("2020-01-01", "a[0] = datetime.date(2020, 1, 1) is a YAML date"),
                                        ("!!set {x: null}", "is a YAML set")])
def test_sweep_values_of_non_json_yaml_types_are_named(value, said, sweep_done, tmp_path):
    from xattn_utils.runs.sweep import SweepError, run_sweep

    probe_dir, root, spec, status = sweep_done
    f = tmp_path / "s.yaml"
    f.write_text(f"name: probe\nnotebook_dir: {probe_dir}\nnotebooks: [sweep_probe.ipynb]\ngrid:\n  a: [{value}]\n")
    with pytest.raises(SweepError, match="not a JSON value") as err:
        run_sweep(f, out=root, workers=1, verbose=False)
    assert str(err.value).startswith("grid: parameter ") and said in str(err.value) and "quote it" in str(err.value)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [Path(status[0]).name]
    assert (Path(status[0]) / "status").read_text() == status[1]


def test_notebook_parameters_are_type_checked_against_the_parameters_cell(sweep_done, tmp_path):
    from xattn_utils.runs.spec import NOTEBOOK_DIR, check_parameter_types
    from xattn_utils.runs.sweep import SweepError, run_sweep

    with pytest.raises(SweepError) as err:  # the probe's n_masks "1; import os" on the real notebook 02
        check_parameter_types(NOTEBOOK_DIR / "02_saliency_maps.ipynb", {"n_masks": "1; import os", "seed": 3})
    assert str(err.value) == ("02_saliency_maps.ipynb: parameter n_masks = '1; import os' is a string, but its "
                              "parameters cell has n_masks = 256 (a whole number); give a whole number")
    check_parameter_types(NOTEBOOK_DIR / "02_saliency_maps.ipynb", {"n_masks": 64, "language": "it",
                                                                    "methods": ["spes-x"], "sanity": False})
    probe_dir, root, spec, status = sweep_done
    marker = tmp_path / "INJECTED"
    bad = {**spec, "grid": {"a": [f"1; open({str(marker)!r}, 'w')"]}}
    with pytest.raises(SweepError, match=r"^sweep_probe.ipynb: parameter a = .* is a string, but its parameters "
                                         r"cell has a = 1 \(a whole number\)"):
        run_sweep(bad, out=root, workers=1, verbose=False)
    for value, ok in ((True, False), (2.5, False), (None, True), (3, True)):
        if ok:
            check_parameter_types(probe_dir / "sweep_probe.ipynb", {"a": value})
        else:
            with pytest.raises(SweepError, match="parameter a = "):
                check_parameter_types(probe_dir / "sweep_probe.ipynb", {"a": value})
    assert not marker.exists()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [Path(status[0]).name]


def test_a_notebook_run_directly_checks_its_own_parameter_types(tmp_path):
    """``papermill 03.ipynb -p n_boot "1; import os"`` (no sweep in between): the notebook's first cell after its
    parameters stops with the one-line message naming the parameter, before any work."""
    import papermill

    from xattn_utils.paths import resource

    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(resource("notebooks/03_alignment_analysis.ipynb")), str(tmp_path / "out.ipynb"),
                                   parameters={"n_boot": "1; import os", "run_dir": str(tmp_path)},
                                   cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    assert err.value.evalue == ("03_alignment_analysis.ipynb: parameter n_boot = '1; import os' is a string, but "
                                "its parameters cell has n_boot = 1000 (a whole number); give a whole number")
    assert not (tmp_path / "tables").exists()  # stopped before the notebook did anything


def _read_only_copy(src: Path, dest: Path):
    """``src`` copied onto a read-only filesystem (a tmpfs remounted ro: root ignores permission bits); None where
    mounting is not allowed and permission bits cannot stop this user either."""
    dest.mkdir()
    if os.geteuid() != 0:
        shutil.copytree(src, dest, dirs_exist_ok=True)
        for p in [dest, *dest.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        return lambda: [p.chmod(0o755) for p in [dest, *dest.rglob("*")] if p.is_dir()]
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(dest)], capture_output=True).returncode:
        return None
    shutil.copytree(src, dest, dirs_exist_ok=True)
    subprocess.run(["mount", "-o", "remount,ro", str(dest)], check=True)
    return lambda: subprocess.run(["umount", str(dest)], check=True)


def test_read_only_store_is_one_line_naming_it(bundled_trimmed, speech_dir, base_store, tmp_path, capsys):
    from xattn_utils._io import atomic_write_text
    from xattn_utils.cli import main
    from xattn_utils.errors import StoreError

    ro = tmp_path / "ro"
    undo = _read_only_copy(base_store, ro)
    if undo is None:
        pytest.skip("cannot make a read-only folder here (root without mount)")
    try:
        before = _tree_sums(ro)
        with pytest.raises(StoreError, match=rf"^x.txt: {ro} is read-only or not writable \(.*\); make it writable"):
            atomic_write_text(ro / "x.txt", "x")
        with pytest.raises(StoreError, match=f"{ro} is read-only or not writable"):
            extract_cross_attention(bundled_trimmed, _items(speech_dir, (0, 1, 2)), ro, progress=False)
        argv = ["extract", "--input-mode", "trimmed", "--out", str(ro), *(str(speech_dir / f"utt{i}.wav")
                                                                         for i in range(3))]
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert len(err) == 1 and f"{ro} is read-only or not writable" in err[0]
        assert _tree_sums(ro) == before
        assert ResultStore(ro).load("utt0", KIND).cross_attention.size  # finished results still read
    finally:
        undo()


def test_summaries_count_what_was_recomputed(bundled_trimmed, speech_dir, store_copy):
    from xattn_utils.attribution.saliency import SaliencyConfig, compute_saliency
    from xattn_utils.attribution.spes import SMHConfig

    _flip(store_copy / "utt0" / "attention.zarr")
    (store_copy / "utt1" / "attention.zarr" / "zarr.json").unlink()  # the root metadata deleted
    cfg = SaliencyConfig(methods=("spes-h",), smh=SMHConfig(n_masks=16, batch_size=16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = compute_saliency(bundled_trimmed, _items(speech_dir), store_copy, cfg, progress=False)
    assert not rep.failed and sorted(rep.redone) == ["utt0", "utt1"]
    assert rep.redone["utt0"].startswith("utt0 attention damaged (file(s) changed or truncated")
    assert rep.redone["utt1"].startswith("utt1 attention damaged (its metadata cannot be read")
    assert "; 2 redone: utt0 attention damaged (" in rep.summary() and "utt1 attention damaged (" in rep.summary()
    store = open_store(store_copy)
    assert store.load("utt0", KIND).attrs["text"] and store.load("utt1", KIND).attrs["text"]  # intact again
    (store_copy / "utt0" / "spes_h.zarr" / "zarr.json").unlink()
    rep = extract_cross_attention(bundled_trimmed, _items(speech_dir), store_copy, progress=False)
    assert rep.skipped == ["utt0", "utt1"] and not rep.redone and "redone" not in rep.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = compute_saliency(bundled_trimmed, _items(speech_dir), store_copy, cfg, progress=False)
    assert rep.done == ["utt0"] and list(rep.redone) == ["utt0/spes_h"]
    assert "; 1 redone: utt0 spes_h damaged (its metadata cannot be read" in rep.summary()


def test_every_run_start_cleans_orphans_it_can_prove_dead(bundled_trimmed, speech_dir, store_copy):
    from xattn_utils.attribution.saliency import SaliencyConfig, compute_saliency
    from xattn_utils.attribution.spes import SMHConfig
    from xattn_utils.store import ORPHAN_AGE_S

    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])  # another live process: its fresh temporary is kept
    try:
        gone = store_copy / "utt0" / f".spes_h.{dead.pid}.abcd.tmp"  # e.g. a disk-full stop of a saliency run
        stale = store_copy / "utt1" / f".spes_h.{alive.pid}.old1.tmp"  # a live pid, but too old: a reused pid
        fresh = store_copy / "utt1" / f".spes_h.{alive.pid}.new1.tmp"
        for p in (gone, stale, fresh):
            (p / "g.zarr").mkdir(parents=True)
        old = time.time() - ORPHAN_AGE_S - 60
        os.utime(stale, (old, old))
        before = _tree_sums(store_copy)
        cfg = SaliencyConfig(methods=("spes-h",), smh=SMHConfig(n_masks=16, batch_size=16))
        rep = compute_saliency(bundled_trimmed, _items(speech_dir), store_copy, cfg, progress=False)
        assert rep.skipped == ["utt0", "utt1"] and not rep.done  # nothing recomputed: only the orphans went
        assert not gone.exists() and not stale.exists() and fresh.exists()
        assert _tree_sums(store_copy) == before
    finally:
        alive.kill()
        alive.wait()


def test_ids_keep_the_extension_when_stems_collide_and_links_their_own_name(speech_dir, tmp_path):
    from xattn_utils.extraction.extract import ids_for_paths

    audio, sr = sf.read(speech_dir / "utt0.wav", dtype="float32")
    files = [tmp_path / "rel" / f"speech.{ext}" for ext in ("flac", "ogg", "wav")]
    files[0].parent.mkdir()
    for f in files:
        sf.write(f, audio, sr)
    link = tmp_path / "rel" / "link.wav"
    link.symlink_to(speech_dir / "utt1.wav")
    other = tmp_path / "rel" / "other.wav"
    shutil.copy(speech_dir / "utt2.wav", other)
    assert ids_for_paths([*files, link, other]) == ["speech.flac", "speech.ogg", "speech.wav", "link", "other"]
    a, b = tmp_path / "a" / "same.wav", tmp_path / "b" / "same.wav"  # same names in other folders: the folder
    for f in (a, b):
        f.parent.mkdir()
        shutil.copy(speech_dir / "utt0.wav", f)
    assert ids_for_paths([a, b]) == ["a_same", "b_same"]
    with pytest.raises(InputError, match="the same audio file is given twice"):
        ids_for_paths([speech_dir / "utt1.wav", link])  # a link to a file given too


def test_non_speech_is_flagged_and_left_out_of_the_comparison(bundled_trimmed, speech_dir, store_copy, tmp_path):
    from xattn_utils.analysis.compare import CompareConfig, compare_store

    noise = tmp_path / "noise.wav"
    sf.write(noise, np.random.default_rng(0).uniform(-1, 1, 5 * 16000).astype(np.float32), 16000, subtype="FLOAT")
    items = pd.concat([_items(speech_dir), pd.DataFrame({"id": ["noise"], "audio_path": [str(noise)]})])
    before = _tree_sums(store_copy)
    rep = extract_cross_attention(bundled_trimmed, items, store_copy, progress=False)
    assert rep.done == ["noise"] and rep.skipped == ["utt0", "utt1"] and list(rep.flagged) == ["noise"]
    msg = rep.flagged["noise"]
    assert msg.startswith("noise: the model's no-speech probability is 0.") and "made from non-speech" in msg
    ds = open_store(store_copy).load("noise", KIND)
    assert ds.attrs["non_speech"] == 1 and ds.attrs["near_silence"] == 0 and ds.attrs["no_speech_prob"] > 0.6
    assert {k: v for k, v in _tree_sums(store_copy).items() if not k.startswith("noise/")} == before
    speech = extract_cross_attention(bundled_trimmed, _items(speech_dir, (2,)), store_copy, progress=False)
    assert speech.done == ["utt2"] and not speech.flagged  # real speech: not flagged
    assert open_store(store_copy).load("utt2", KIND).attrs["no_speech_prob"] < 0.1
    table = compare_store(store_copy, tmp_path / "t", CompareConfig(per_head=False, n_boot=20), progress=False)
    assert "noise" not in set(table.utterance.dropna())
    skipped = json.loads((tmp_path / "t" / "agreement.json").read_text())["data"]["skipped"]
    assert "noise" in skipped


def test_results_are_readable_as_the_umask_allows(bundled_trimmed, speech_dir, tmp_path):
    from xattn_utils._io import atomic_write_text, write_table

    old = os.umask(0o022)
    try:
        rep = extract_cross_attention(bundled_trimmed, _items(speech_dir, (0,)), tmp_path / "s", progress=False)
        assert rep.done == ["utt0"]
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t", "tab", {"x": 1})
        files = [tmp_path / "s" / "store.json", *(tmp_path / "t").iterdir(),
                 *[p for p in (tmp_path / "s" / "utt0").rglob("*") if p.is_file()]]
        assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}, [(p, oct(p.stat().st_mode)) for p in files]
        folders = [tmp_path / "s" / "utt0", *[p for p in (tmp_path / "s" / "utt0").rglob("*") if p.is_dir()]]
        assert {oct(p.stat().st_mode & 0o777) for p in folders} == {"0o755"}
        os.umask(0o077)  # a private umask keeps them private
        assert oct(atomic_write_text(tmp_path / "private.txt", "x").stat().st_mode & 0o777) == "0o600"
    finally:
        os.umask(old)


def test_large_sweeps_ask_for_yes_with_count_and_time(sweep_done, tmp_path, capsys):
    from xattn_utils.runs.sweep import MAX_RUNS_UNASKED, SweepError, main, run_sweep

    probe_dir, root, spec, status = sweep_done
    huge = {**spec, "grid": {"a": list(range(1000)), "b": [str(i) for i in range(1000)]}}  # 10^6 points
    t0 = time.time()
    with pytest.raises(SweepError) as err:
        run_sweep(huge, out=tmp_path / "huge", workers=2, verbose=False)
    assert time.time() - t0 < 30  # refused before the grid is expanded
    msg = str(err.value)
    assert msg.startswith(f"sweep probe: 1,000,000 runs (over {MAX_RUNS_UNASKED} asks for confirmation), an "
                          "estimated ") and "with 2 worker(s)" in msg and "pass --yes" in msg
    assert not (tmp_path / "huge").exists()
    big = {**spec, "grid": {"a": list(range(MAX_RUNS_UNASKED + 1))}}
    with pytest.raises(SweepError, match=rf"{MAX_RUNS_UNASKED + 1} runs .* min per run: the mean of 1 finished"):
        run_sweep(big, out=root, workers=1, verbose=False)  # the finished probe run measures the time
    f = tmp_path / "big.yaml"
    import yaml

    f.write_text(yaml.safe_dump(big))
    assert main([str(f), "--out", str(tmp_path / "big")]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "pass --yes" in err_lines[0]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [Path(status[0]).name]


def test_saliency_batch_size_flag(bundled_trimmed, speech_dir, base_store, tmp_path, capsys):
    from xattn_utils.cli import main

    store = tmp_path / "s"
    shutil.copytree(base_store, store)
    assert main(["saliency", "--out", str(store), str(speech_dir / "utt0.wav"), "--batch-size", "0"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --batch-size must be at least 1, not 0")
    shutil.rmtree(store / "utt0" / "spes_h.zarr")
    assert main(["saliency", "--input-mode", "trimmed", "--out", str(store), "--method", "spes-h",
                 "--n-masks-h", "16", "--batch-size", "4", "--quiet", str(speech_dir / "utt0.wav")]) == 0
    again = ResultStore(store).load("utt0", "spes_h")
    first = ResultStore(base_store).load("utt0", "spes_h")
    # masks scored 4 at a time instead of 16: the same map within float32 batching noise (as across batches in
    # test_extract, x10)
    for var in first.data_vars:
        if np.issubdtype(first[var].dtype, np.floating):
            np.testing.assert_allclose(again[var].values, first[var].values, rtol=0, atol=measured(2e-6, margin=10))
