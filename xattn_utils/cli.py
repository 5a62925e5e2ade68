"""The ``xattn`` command line (also ``python -m xattn_utils``).

    xattn [--log-level LEVEL] COMMAND ...   # transcribe extract saliency mixing compare faithfulness timestamps
                                            # evaluate sweep study corpus
    xattn --version

Every command exits 0 on success; on bad input it prints one line naming the item and the problem and exits
non-zero (1: some items failed, the rest were done; 2: nothing could be done). Results (tables, JSON, the ``runs:``
line of a sweep) go to stdout; progress and status are log records on stderr, shown from ``--log-level`` up (default
INFO; WARNING keeps only warnings and errors). ``--log-level`` may be given before or after the command.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from . import __version__, maps
from ._entry import SUBCOMMANDS, Subcommand
from .errors import XattnError

# Every step is imported inside the command that runs it: `xattn --help` and `xattn --version` load no torch
# (tests/test_cli.py checks), and a subcommand's help loads only the module that runs it.

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

logger = logging.getLogger(__name__)


class _StderrHandler(logging.StreamHandler):
    """Writes each record to the ``sys.stderr`` of the moment (so redirections and captures see it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it once; the property always answers sys.stderr
        pass


class _Formatter(logging.Formatter):
    """Progress (INFO, DEBUG) as the bare message; warnings and errors prefixed like the command's own lines."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def configure_logging(level: str = "INFO") -> None:
    """Show ``xattn_utils`` log records from ``level`` up, other libraries' from WARNING (or ``level``) up, on stderr.

    One handler on the root logger (added once; handlers others installed, e.g. pytest's, are left alone).
    """
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise XattnError(f"--log-level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(max(number, logging.WARNING))
    logging.getLogger(__package__).setLevel(number)


# Other libraries' progress bars and chatter, silenced unless --log-level DEBUG. Environment variables, so that the
# processes a command starts (Dask workers, notebook kernels) inherit them: transformers' and the hub's "Loading
# weights" / download bars (read at import), tqdm bars in kernels (they would leave \r fragments in runs' log.txt),
# Dask's scheduler and worker lines, the kernel's debugger warning about frozen modules.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
             "DASK_LOGGING__DISTRIBUTED": "error", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
QUIET_LOGGERS = ("distributed", "dask", "papermill", "traitlets", "transformers", "huggingface_hub", "nbconvert")


def quiet_third_parties(level: str, command: str | None = None, environ=None) -> None:
    """Silence other libraries' progress bars and status lines unless ``level`` is DEBUG (see ``QUIET_ENV``).

    Sweeps and the study (``command`` sweep / study) also turn tqdm off in the notebooks they run (``TQDM_DISABLE``:
    no bars in ``log.txt``), and so does any command at WARNING or above. Values already set are kept.
    """
    environ = os.environ if environ is None else environ
    if level.upper() == "DEBUG":
        return
    quiet = dict(QUIET_ENV)
    if command in ("sweep", "study") or level.upper() in ("WARNING", "ERROR"):
        quiet["TQDM_DISABLE"] = "1"
    for key, value in quiet.items():
        environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if name in ("distributed", "dask") else logging.WARNING)
    # a sweep's local Dask cluster takes another port when its dashboard's is taken: no need to say so
    warnings.filterwarnings("ignore", message=r"Port \d+ is already in use", category=UserWarning)
    if "transformers" in sys.modules:  # already imported: the environment variable came too late
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def _progress(args) -> bool:
    """Progress bars: on at INFO and DEBUG, off with --quiet or --log-level WARNING / ERROR."""
    return not getattr(args, "quiet", False) and logging.getLogger(__package__).isEnabledFor(logging.INFO)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help followed by its default (none for flags, options without one, or help that says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text.lower() or default in (None, False, argparse.SUPPRESS)
                or (not action.option_strings and action.nargs not in ("?", "*"))):
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    """A parser whose options may be those of a heavy subcommand (``heavy``: :data:`xattn_utils._entry.SUBCOMMANDS`:
    ``evaluate``, ``sweep``, ``study``, ``corpus``), added when that subcommand is parsed or shows its help; the module
    that runs it is imported only when it runs."""

    def __init__(self, *args, heavy: Subcommand | None = None, **kw) -> None:
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)
        self._heavy = heavy

    def load(self) -> argparse.ArgumentParser:
        if self._heavy:
            heavy, self._heavy = self._heavy, None
            self.description = heavy.description
            heavy.add_arguments(self)
            self.set_defaults(func=lambda args: importlib.import_module(heavy.module, __package__).command(args))
        return self

    def parse_known_args(self, args=None, namespace=None):
        self.load()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.load()
        return super().format_help()


def _model_folder(name: str, entry) -> Path:
    """Where a model's ``config.json`` is (or will be) without loading it: the converted bundled folder, the trained
    grid folder, or the local folder given."""
    from .models.registry import grid_dir
    from .paths import cache_dir

    if entry is not None and entry.source == "bundled":
        return cache_dir("models") / name.split(":", 1)[1]
    if entry is not None and entry.source == "trained":
        return grid_dir() / entry.location
    return Path(name).expanduser()


def check_device(device: str | None) -> None:
    """Refuse a ``--device`` this machine lacks (``cuda`` without CUDA, ``cuda:3`` with one GPU, ``mps`` off a
    Mac, a misspelling), before anything loads; torch is imported here, not with the command line."""
    if not device or device == "cpu":
        return
    import torch

    kind, _, index = str(device).partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "torch here is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise XattnError(f"--device {device}: {why} (torch {torch.__version__}); use --device cpu or run on a "
                             "machine with a GPU")
        n = torch.cuda.device_count()
        if index and (not index.isdigit() or int(index) >= n):
            raise XattnError(f"--device {device}: this machine has {n} CUDA device(s) (cuda:0 to cuda:{n - 1})")
    elif kind == "mps":
        if not torch.backends.mps.is_available():
            raise XattnError(f"--device {device}: Apple's MPS is not available here; use --device cpu")
    else:
        try:
            torch.device(device)
        except (RuntimeError, ValueError):
            raise XattnError(f"--device {device}: not a torch device; use cpu, cuda, cuda:N or mps") from None


def check_model_args(args) -> None:
    """Fail before any model loads on a --device this machine lacks, an unknown --model (with the nearest registry
    names), a --language or --task the model does not have (models.csv), --heads outside the model's decoder (its
    config.json, when present) and a missing --manifest / --calibration; one line each."""
    check_device(getattr(args, "device", None))
    from .models.registry import load_registry, suggest

    name = args.model
    registry = load_registry()
    entry = registry.get(name)
    if entry is None and not Path(name).expanduser().exists() and "/" not in name:
        close = suggest(name, registry)
        hint = f"did you mean {' or '.join(close)}?" if close else f"known models: {', '.join(registry)}"
        raise XattnError(f"unknown model {name!r} (not in models.csv, not a local folder, not a hub id owner/name): "
                         + hint)
    if entry is not None:
        languages = entry.languages.split(";")
        language = getattr(args, "language", None)
        if language and not entry.multilingual and language not in languages:
            multi = [n for n, e in registry.items() if e.multilingual and e.source == "bundled"]
            raise XattnError(f"--language {language}: model {name} speaks only {', '.join(languages)} (models.csv); "
                             f"drop --language or use a multilingual model ({', '.join(multi) or 'see models.csv'})")
        task = getattr(args, "task", None)
        if task and task not in entry.tasks.split(";"):
            raise XattnError(f"--task {task}: model {name} only does {entry.tasks.replace(';', ', ')} (models.csv)")
    for option in ("manifest", "calibration"):
        given = getattr(args, option, None)
        if given and not Path(given).exists():
            raise XattnError(f"--{option} {given} does not exist; give a CSV with the data_manifest.csv columns")
    heads = getattr(args, "heads", None)
    config = _model_folder(name, entry) / "config.json"
    if heads not in (None, "alignment", "all", "discovered") and config.exists():
        # a light check of L<layer>H<head> names against the config (torch-free); analysis.aligner.parse_heads checks
        # the whole spec again once the model is loaded
        cfg = json.loads(config.read_text())
        n_layers, n_heads = cfg["decoder_layers"], cfg["decoder_attention_heads"]
        named = [re.fullmatch(r"\s*L(\d+)H(\d+)\s*", part, re.IGNORECASE) for part in heads.split(",") if part.strip()]
        bad = [m.group(0).strip() for m in named
               if m and not (int(m.group(1)) < n_layers and int(m.group(2)) < n_heads)]
        if bad:
            raise XattnError(f"heads {bad!r}: the model has {n_layers} decoder layers x {n_heads} heads "
                             f"(L0H0 .. L{n_layers - 1}H{n_heads - 1})")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="bundled:whisper-tiny.en",
                   help="bundled:whisper-tiny.en, bundled:whisper-base, a registry name, a local save_pretrained "
                        "folder, or a hub id")
    p.add_argument("--input-mode", choices=("padded", "trimmed"), default="trimmed",
                   help="trimmed: the audio only, as the study and the notebooks run (about 20x cheaper on CPU); "
                        "padded: Whisper's 30 s input")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    """The decoder prompt of multilingual / multitask models (recorded in provenance and cache keys)."""
    p.add_argument("--language", help="spoken language code, e.g. en, it (multilingual models; default en)")
    p.add_argument("--task", choices=("transcribe", "translate"),
                   help="transcribe (default) or translate into English (multitask models)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """Model, input files or a manifest (with filters), decoder prompt, progress."""
    _add_model_args(p)
    p.add_argument("files", nargs="*", metavar="FILE", help="audio files (or give --manifest)")
    p.add_argument("--manifest", help="data manifest CSV (data_manifest.csv schema)")
    p.add_argument("--split", help="with --manifest: only the rows of this split (e.g. test)")
    p.add_argument("--limit", type=int, help="with --manifest: only the first N rows (after --split)")
    _add_prompt_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar (as --log-level WARNING)")


def _items(args) -> object:
    """The manifest's rows (--manifest, --split, --limit) or the FILEs given; read before any model loads."""
    from .data.manifest import load_manifest

    if getattr(args, "manifest", None):
        return load_manifest(args.manifest, split=args.split, limit=args.limit)
    if not args.files:
        raise XattnError("give audio FILEs or --manifest CSV")
    return args.files


def cmd_transcribe(args) -> int:
    from .data.audio import load_audio
    from .extraction.forced import transcribe
    from .models.loader import load_model

    check_model_args(args)
    loaded = load_model(args.model, args.input_mode, args.device)
    status = 0
    for f in args.files:
        try:
            audio = load_audio(f)
        except XattnError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        text = transcribe(loaded, [audio], language=args.language, task=args.task)[0]
        print(f"{f}\t{text}")
    return status


def cmd_extract(args) -> int:
    from .extraction.extract import DecodeConfig, ExtractConfig, extract_cross_attention
    from .models.loader import load_model

    check_model_args(args)
    cfg = ExtractConfig(DecodeConfig(language=args.language, task=args.task, num_beams=args.beams),
                        batch_size=args.batch_size, with_hidden=args.with_hidden)  # bad values fail before loading
    items = _items(args)
    loaded = load_model(args.model, args.input_mode, args.device)
    report = extract_cross_attention(loaded, items, args.out, cfg, progress=_progress(args))
    return _finish(report, args.out)


def _decoding(args):
    """The decoding options given (--language, --task), or None: explain with the store's own."""
    from .extraction.extract import DecodeConfig

    return DecodeConfig(language=args.language, task=args.task) if args.language or args.task else None


def cmd_saliency(args) -> int:
    for name, value in (("--n-masks", args.n_masks), ("--n-masks-h", args.n_masks_h), ("--ig-steps", args.ig_steps),
                        ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise XattnError(f"{name} must be at least 1, not {value}")
    for name, value in (("--n-masks", args.n_masks), ("--n-masks-h", args.n_masks_h)):
        if value > args.max_masks:
            raise XattnError(f"{name} {value} is over the cap of {args.max_masks} masks per utterance (the paper "
                             "used 20000; each mask is one forward pass): lower it, or raise the cap with --max-masks")
    check_model_args(args)
    from .attribution.saliency import SaliencyConfig, compute_saliency
    from .attribution.spes import SMHConfig, SPESConfig
    from .models.loader import load_model

    items = _items(args)
    from .attribution.cost import spes_seconds

    seconds = spes_seconds(len(items), args.n_masks, args.n_masks_h, args.method, args.input_mode, args.model)
    if seconds > 60:
        logger.info("estimated time: about %.0f min for %d utterance(s) x %d + %d masks (%s input, %s, at the "
                    "measured one-core rates of xattn_utils.attribution.cost; a loaded machine is slower)",
                    seconds / 60, len(items), args.n_masks, args.n_masks_h, args.input_mode, args.model)
    loaded = load_model(args.model, args.input_mode, args.device)
    seed = {} if args.seed is None else {"seed": args.seed}
    seed.update({} if args.batch_size is None else {"batch_size": args.batch_size})  # masks per pass: same maps
    seed.update({} if args.precision is None else {"precision": args.precision})  # recorded, keys the store
    spes = dataclasses.replace(SPESConfig.cpu(), n_masks=args.n_masks, **seed)
    smh = dataclasses.replace(SMHConfig(), n_masks=args.n_masks_h, **seed)
    cfg = SaliencyConfig(methods=tuple(args.method), spes=spes, smh=smh, ig_steps=args.ig_steps)
    report = compute_saliency(loaded, items, args.out, cfg, _decoding(args), progress=_progress(args))
    return _finish(report, args.out)


def cmd_mixing(args) -> int:
    from .attribution.mixing import MixingConfig, compute_mixing
    from .models.loader import load_model

    check_model_args(args)
    items = _items(args)
    loaded = load_model(args.model, args.input_mode, args.device)
    report = compute_mixing(loaded, items, args.out, MixingConfig(methods=tuple(args.method)),
                            _decoding(args), progress=_progress(args))
    return _finish(report, args.out)


def cmd_compare(args) -> int:
    from .analysis.compare import CompareConfig, compare_store
    from .runs.report import readable_comparison

    cfg = CompareConfig(per_head=not args.no_per_head, special=args.special, normalize=args.normalize,
                        pool=args.pool, gradient_pool=args.gradient_pool, n_boot=args.n_boot, seed=args.seed,
                        resolution_ms=args.resolution_ms)
    if args.mixing:  # encoder context mixing composed with CA: extra attention entries such as rollout∘all
        cfg = dataclasses.replace(cfg, mixing=tuple(args.mixing), mixing_depths=args.mixing_depths)
    table = compare_store(args.store, args.out, cfg, progress=_progress(args))
    shown, warnings = readable_comparison(table)
    print(shown.to_string(index=False))
    for msg in warnings:
        print(f"warning: {msg}", file=sys.stderr)
    print(f"{Path(args.out) / 'agreement.parquet'}: {len(table)} rows")
    return 0


def cmd_faithfulness(args) -> int:
    from ._io import write_table
    from .analysis.faithfulness import FaithfulnessConfig, faithfulness_store
    from .models.loader import load_model
    from .provenance import provenance
    from .store import open_store

    check_model_args(args)
    store = open_store(args.store)  # a missing store fails before the model loads
    items = _items(args)
    loaded = load_model(args.model, args.input_mode, args.device)
    cfg = FaithfulnessConfig(seed=args.seed)
    curves, aucs = faithfulness_store(loaded, store, items, tuple(args.explanations), tuple(args.mode), cfg,
                                      progress=_progress(args))
    prov = provenance(model=loaded.provenance(), params={"explanations": args.explanations, "modes": args.mode,
                                                         "faithfulness": cfg}, seed=args.seed)
    write_table(curves, Path(args.out), "faithfulness_curves", prov)
    write_table(aucs, Path(args.out), "faithfulness_auc", prov)
    print(aucs.groupby(["explanation", "mode"])["auc_wer"].mean().round(1).to_string())
    failed = curves.attrs.get("failed", {})
    for msg in failed.values():
        print(f"error: {msg}", file=sys.stderr)
    return 1 if failed else 0


def cmd_timestamps(args) -> int:
    from .analysis.aligner import format_words, parse_heads, timestamps_for
    from .analysis.timing_eval import store_word_rows
    from .models.loader import load_model

    if args.store:
        print(format_words(store_word_rows(args.store, None if args.heads == "alignment" else args.heads,
                                           ties=args.ties), args.format))
        return 0

    check_model_args(args)
    items = _items(args)
    loaded = load_model(args.model, args.input_mode, args.device)
    heads = args.heads
    if heads == "discovered":
        heads = _discovered_heads(loaded, args)
    else:
        parse_heads(heads, loaded.n_layers, loaded.n_heads, loaded.alignment_heads)  # fail before any audio
    results, failed = timestamps_for(loaded, items, heads, force_transcript=args.force_transcript,
                                     language=args.language, task=args.task, ties=args.ties)
    for msg in failed.values():
        print(f"error: {msg}", file=sys.stderr)
    if results:
        print(format_words(results, args.format))
    return (2 if not results else 1) if failed else 0


def _discovered_heads(loaded, args) -> list:
    from .analysis.timing_eval import discover_heads, model_passes
    from .data.manifest import load_manifest

    if not args.calibration:
        raise XattnError("--heads discovered needs --calibration MANIFEST (rows with word times) to rank heads on")
    cal = load_manifest(args.calibration, split=args.calibration_split, limit=args.calibration_limit)
    found = discover_heads(model_passes(loaded, cal), k_max=args.k_max)
    names = ",".join(f"L{l}H{h}" for l, h in found["heads"])
    logger.info("discovered heads (k=%d, %d calibration utterances): %s", found["k"], len(cal), names)
    return found["heads"]


def _finish(report, out) -> int:
    for msg in report.failed.values():
        print(f"error: {msg}", file=sys.stderr)
    for msg in getattr(report, "flagged", {}).values():
        print(f"warning: {msg}", file=sys.stderr)
    print(f"{out}: {report.summary()}")
    if report.failed and not (report.done or report.skipped):
        return 2
    return 1 if report.failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The ``xattn`` parser: one subcommand per step; ``sweep``, ``study``, ``corpus`` and ``evaluate`` take their
    options from the modules that run them (the same as their ``python -m`` entry points)."""
    parser = _Parser(prog="xattn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO",
                        help="show progress and status records from this level up on stderr (default INFO; "
                             "WARNING: only warnings and errors, no progress bars; DEBUG: also other libraries' "
                             "progress bars and status lines)")
    # the same option after the command; SUPPRESS: when absent there, the value given before the command stands
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=argparse.SUPPRESS,
                        help="as before the command")
    sub = _Subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                             parser_class=_Parser), common)

    p = sub.add_parser("transcribe", help="print one greedy hypothesis per audio file")
    _add_model_args(p)
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ...)")
    _add_prompt_args(p)
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("extract", help="decode, force-decode and store cross-attention for a data set")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="result store folder")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass")
    p.add_argument("--with-hidden", action="store_true", help="also store the encoder output")
    p.add_argument("--beams", type=int, default=1, help="1: greedy decoding; more: beam search")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("saliency", help="SPES (X, H) and gradient maps, stored beside the cross-attention")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="result store folder (the same as extract's)")
    p.add_argument("--method", nargs="+", default=["spes-x", "spes-h"], choices=maps.methods(),
                   help=f"maps to compute (the registry, xattn_utils.maps): {maps.methods_help()}")
    p.add_argument("--n-masks", type=int, default=256,
                   help="SPES masks per utterance for SMX (as notebook 02 and the study; the paper used 20000)")
    p.add_argument("--n-masks-h", type=int, default=256,
                   help="SPES masks per utterance for SMH (as notebook 02 and the study)")
    p.add_argument("--seed", type=int, help="mask seed (default: the configs' own, 0)")
    p.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps (method ig)")
    p.add_argument("--batch-size", type=int,
                   help="SPES masks per forward pass (memory; the maps do not change; default 16 on X, 64 on H)")
    p.add_argument("--max-masks", type=int, default=100_000, help="refuse --n-masks above this (a typo guard)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="SPES forward passes: bf16 weights and activations (vocabulary projection, log-softmax and "
                        "KL in fp32; per-token map r >= 0.99 vs fp32), fp32, or auto: bf16 where the device has "
                        "bf16 matrix hardware (AVX512-BF16 / AMX CPUs, recent GPUs), else fp32; the store records "
                        "the resolved one (default: the configs' own, auto)")
    p.set_defaults(func=cmd_saliency)

    p = sub.add_parser("compare", help="agreement of cross-attention with every saliency map in a store")
    p.add_argument("--store", required=True, help="result store folder (extract's and saliency's --out)")
    p.add_argument("--out", required=True, help="folder for agreement.parquet/.csv/.json")
    p.add_argument("--special", choices=("exclude", "include"), default="exclude",
                   help="the end-of-text row (the forced prompt is never scored)")
    p.add_argument("--normalize", choices=("zscore", "minmax", "sum", "none"), default="zscore",
                   help="per-token normalization before comparing")
    p.add_argument("--pool", choices=("mean", "max", "sum"), default="mean",
                   help="SMX to encoder frames: mean over the cells present (SPES cells are means), 2-D max, sum")
    p.add_argument("--gradient-pool", choices=("sum", "mean", "max"), default="sum",
                   help="|gradient| X maps to encoder frames (attributions are amounts: sum)")
    p.add_argument("--no-per-head", action="store_true", help="skip the per-(layer, head) rows")
    p.add_argument("--resolution-ms", type=float, default=None,
                   help="pool CA and every map to frames of this many ms before comparing, a multiple of the encoder "
                        "frame (40: the paper's Conformer; default: the encoder's own frame, 20 ms for Whisper)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--quiet", action="store_true", help="no progress bar (as --log-level WARNING)")
    p.add_argument("--mixing", nargs="+", choices=("rollout", "normmix", "alti", "vzero"),
                   help="also compare CA composed with these encoder mixing maps (stored by `xattn mixing`)")
    p.add_argument("--mixing-depths", action="store_true",
                   help="with --mixing: also the partial compositions method[k]∘aggregate (top k layers undone)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("mixing", help="encoder context-mixing maps (rollout, norm-based, ALTI, value zeroing)")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="result store folder (the same as extract's)")
    p.add_argument("--method", nargs="+", default=["rollout", "normmix", "alti", "vzero"],
                   choices=("rollout", "normmix", "alti", "vzero"),
                   help="rollout (attention rollout), normmix (norm-based mixing), alti, vzero (value zeroing)")
    p.set_defaults(func=cmd_mixing)

    p = sub.add_parser("faithfulness", help="deletion/insertion curves and AUCs per explanation")
    _add_data_args(p)
    p.add_argument("--store", required=True, help="result store with the maps to rank frames by")
    p.add_argument("--out", required=True, help="folder for faithfulness_curves and faithfulness_auc tables")
    p.add_argument("--explanations", nargs="+", default=["ca:all", "smx", "random"],
                   help="rankings to delete/insert by: ca:<aggregate> (cross-attention), smx, smh, random, ...")
    p.add_argument("--mode", nargs="+", default=["deletion"], choices=("deletion", "insertion"),
                   help="deletion: remove the top-ranked frames first; insertion: add them first")
    p.add_argument("--seed", type=int, default=0, help="seed of the random ranking")
    p.set_defaults(func=cmd_faithfulness)

    p = sub.add_parser("timestamps", help="word timestamps (start, end, probability) from cross-attention or saliency")
    _add_data_args(p)
    p.add_argument("--heads", default="alignment",
                   help="alignment (the model's own), all, discovered (ranked on --calibration), or L3H2,L1H0,...")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="how the words are printed")
    p.add_argument("--force-transcript", action="store_true",
                   help="with --manifest: align the manifest's transcript instead of the model's hypothesis")
    p.add_argument("--ties", choices=("diagonal", "time"), default="diagonal",
                   help="DTW ties: diagonal (ours) or time (openai-whisper / CTranslate2)")
    p.add_argument("--store", help="instead of audio: words from every map (attention, SMX, SMH, gradients) of a "
                                   "result store, each through the same DTW")
    p.add_argument("--calibration", help="manifest with word times for --heads discovered")
    p.add_argument("--calibration-split", help="with --calibration: only this split")
    p.add_argument("--calibration-limit", type=int, help="with --calibration: only the first N rows")
    p.add_argument("--k-max", type=int, default=12, help="largest number of discovered heads to try")
    p.set_defaults(func=cmd_timestamps)

    for name, heavy in SUBCOMMANDS.items():  # their modules are imported only when the command runs (_Parser.load)
        sub.add_parser(name, help=heavy.help, heavy=heavy)
    return parser


class _Subcommands:
    """``add_subparsers``' action, adding ``--log-level`` to every subcommand."""

    def __init__(self, action, common: argparse.ArgumentParser) -> None:
        self.action, self.common = action, common

    def add_parser(self, name: str, **kw) -> argparse.ArgumentParser:
        return self.action.add_parser(name, parents=[self.common], **kw)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    before = {key: os.environ.get(key) for key in (*QUIET_ENV, "TQDM_DISABLE")}
    quiet_third_parties(args.log_level, args.command)
    try:
        if hasattr(args, "model") and not (args.command == "timestamps" and args.store):
            check_model_args(args)  # before the command imports torch or loads anything: a mistake answers at once
        return int(args.func(args) or 0)
    except XattnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished items are kept, re-run to resume", file=sys.stderr)
        return 130
    finally:  # called in-process (tests, a notebook): leave the environment as it was for what runs next
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
