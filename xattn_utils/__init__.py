"""xattn: how much of what a speech-to-text model does does its cross-attention explain?

One import for notebooks and users::

    from xattn_utils import (compare_store, compute_saliency, extract_cross_attention, load_model, open_store,
                             paper_comparison, study_data)

    model = load_model("bundled:whisper-tiny.en", input_mode="trimmed")
    data = study_data(split="test", limit=2)              # the default corpus (built on first use)
    extract_cross_attention(model, data, "runs/demo/store")
    compute_saliency(model, data, "runs/demo/store")       # SPES maps (X and H) beside the cross-attention
    table = compare_store("runs/demo/store", "runs/demo/tables")
    print(paper_comparison(table))
    ds = open_store("runs/demo/store").load(data.id[0], "attention")   # xarray (layer, head, token, enc_frame)

Your own data: ``load_manifest("my_manifest.csv")`` (the ``data_manifest.csv`` schema) in place of ``study_data``.
Many runs: ``run_sweep("sweeps/smoke.yaml", workers=2)`` (or ``xattn sweep``). Progress goes to ``logging``
(``logging.basicConfig(level="INFO")`` shows it); the ``xattn`` command line shows it by default.

The names below are loaded on first use (``xattn_utils.load_model`` imports the models step, and torch with it, when
it is first touched): ``import xattn_utils`` itself loads neither torch nor any other heavy library, so
``xattn --version`` answers at once.
"""
from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xattn_utils")
except PackageNotFoundError:  # a source tree on PYTHONPATH, never installed
    __version__ = "0+unknown"

# public name -> the module (relative to this package) that defines it; imported on first access
_EXPORTS: dict[str, str] = {
    # configs
    "DecodeConfig": "extraction.extract",
    "ExtractConfig": "extraction.extract",
    "SPESConfig": "attribution.spes",
    "SMHConfig": "attribution.spes",
    "GradientConfig": "attribution.gradients",
    "SaliencyConfig": "attribution.saliency",
    "MixingConfig": "attribution.mixing",
    "CompareConfig": "analysis.compare",
    "FaithfulnessConfig": "analysis.faithfulness",
    "CorpusConfig": "data.corpus",
    "TrainConfig": "models.training",
    "GridConfig": "runs.grid",
    # data and models
    "study_data": "data.corpus",
    "load_manifest": "data.manifest",
    "load_audio": "data.audio",
    "load_model": "models.loader",
    "LoadedModel": "models.loader",
    # one call per step (the README's table of notebooks)
    "extract_cross_attention": "extraction.extract",
    "compute_saliency": "attribution.saliency",
    "compute_mixing": "attribution.mixing",
    "compare_store": "analysis.compare",
    "paper_comparison": "analysis.compare",
    "faithfulness_store": "analysis.faithfulness",
    "timestamp_study": "analysis.timing_eval",
    "train_grid": "runs.grid",
    "run_sweep": "runs.sweep",
    # lower level
    "decode": "extraction.forced",
    "transcribe": "extraction.forced",
    "forced_pass": "extraction.forced",
    "ForcedPass": "extraction.forced",
    "Seq2SeqScorer": "extraction.forced",
    "open_store": "store",
    "ResultStore": "store",
    # results
    "RunReport": "extraction.extract",
    "SweepResult": "runs.report",
    # errors
    "XattnError": "errors",
    "InputError": "errors",
    "ModelError": "errors",
    "HypothesisError": "errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    """Import the module that defines ``name`` on first access (PEP 562) and keep the value here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xattn_utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
