"""Shared fixtures: the bundled Whisper tiny.en (converted once per session) and short synthetic speech."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))  # toy_models

SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "seven small birds sing in the garden",
    "please bring the red book to my office",
)


@pytest.fixture(scope="session", autouse=True)
def _xattn_home(tmp_path_factory):
    """Built artifacts go to $XATTN_HOME when set (make test: .cache/), else a session temp folder."""
    if not os.environ.get("XATTN_HOME"):
        os.environ["XATTN_HOME"] = str(tmp_path_factory.mktemp("xattn_home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture(scope="session")
def bundled():
    """Bundled Whisper tiny.en, padded input (faithful)."""
    from xattn_utils import load_model

    return load_model("bundled:whisper-tiny.en", input_mode="padded")


@pytest.fixture(scope="session")
def bundled_trimmed():
    from xattn_utils import load_model

    return load_model("bundled:whisper-tiny.en", input_mode="trimmed")


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory):
    """Three short espeak-ng utterances as 16 kHz mono WAVs (plus their texts in a dict on the folder)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: apt-get install -y espeak-ng (make test installs it as root)")
    from scipy.signal import resample_poly

    folder = tmp_path_factory.mktemp("speech")
    for i, text in enumerate(SENTENCES):
        raw = folder / f"raw{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True)
        audio, sr = sf.read(raw, dtype="float32")
        sf.write(folder / f"utt{i}.wav", resample_poly(audio, 16000, sr).astype(np.float32), 16000)
        raw.unlink()
    return folder
