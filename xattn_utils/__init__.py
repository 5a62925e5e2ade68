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

Importing the package loads torch and the pipeline's modules, not papermill or dask (a sweep imports them when it
runs).
"""
from importlib.metadata import PackageNotFoundError, version

from .analysis.compare import CompareConfig, compare_store, paper_comparison
from .analysis.faithfulness import FaithfulnessConfig, faithfulness_store
from .attribution.saliency import SaliencyConfig, compute_saliency
from .data.corpus import study_data
from .data.manifest import load_manifest
from .errors import HypothesisError, InputError, ModelError, XattnError
from .extraction.extract import (
    DecodeConfig,
    ExtractConfig,
    RunReport,
    extract_cross_attention,
)
from .extraction.forced import (
    ForcedPass,
    Seq2SeqScorer,
    decode,
    forced_pass,
    transcribe,
)
from .models.loader import LoadedModel, load_model
from .runs.sweep import run_sweep
from .store import ResultStore, open_store

try:
    __version__ = version("xattn_utils")
except PackageNotFoundError:  # a source tree on PYTHONPATH, never installed
    __version__ = "0+unknown"

__all__ = [
    "CompareConfig",
    "DecodeConfig",
    "ExtractConfig",
    "FaithfulnessConfig",
    "ForcedPass",
    "HypothesisError",
    "InputError",
    "LoadedModel",
    "ModelError",
    "ResultStore",
    "RunReport",
    "SaliencyConfig",
    "Seq2SeqScorer",
    "XattnError",
    "__version__",
    "compare_store",
    "compute_saliency",
    "decode",
    "extract_cross_attention",
    "faithfulness_store",
    "forced_pass",
    "load_manifest",
    "load_model",
    "open_store",
    "paper_comparison",
    "run_sweep",
    "study_data",
    "transcribe",
]
