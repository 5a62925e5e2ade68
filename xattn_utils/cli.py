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
import logging
import sys
from pathlib import Path

from . import __version__
from ._io import write_table
from .analysis import evaluation
from .analysis.aligner import format_words, parse_heads, timestamps_for
from .analysis.compare import CompareConfig, compare_store, paper_comparison
from .analysis.faithfulness import FaithfulnessConfig, faithfulness_store
from .analysis.timing_eval import discover_heads, model_passes, store_word_rows
from .attribution.mixing import MixingConfig, compute_mixing
from .attribution.saliency import SaliencyConfig, compute_saliency
from .attribution.spes import SMHConfig, SPESConfig
from .data import corpus
from .data.audio import load_audio
from .data.manifest import load_manifest
from .errors import XattnError
from .extraction.extract import DecodeConfig, ExtractConfig, extract_cross_attention
from .extraction.forced import transcribe
from .models.loader import load_model
from .provenance import provenance
from .runs import study, sweep
from .store import open_store

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


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="bundled:whisper-tiny.en",
                   help="bundled:whisper-tiny.en, bundled:whisper-base, a registry name, a local save_pretrained "
                        "folder, or a hub id")
    p.add_argument("--input-mode", choices=("padded", "trimmed"), default="padded",
                   help="padded: Whisper's 30 s input (faithful); trimmed: audio only (cheaper)")
    p.add_argument("--device", default="cpu")


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    """The decoder prompt of multilingual / multitask models (recorded in provenance and cache keys)."""
    p.add_argument("--language", help="spoken language code, e.g. en, it (multilingual models; default en)")
    p.add_argument("--task", choices=("transcribe", "translate"),
                   help="transcribe (default) or translate into English (multitask models)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """Model, input files or a manifest (with filters), decoder prompt, progress."""
    _add_model_args(p)
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--manifest", help="data manifest CSV (data_manifest.csv schema)")
    p.add_argument("--split")
    p.add_argument("--limit", type=int)
    _add_prompt_args(p)
    p.add_argument("--quiet", action="store_true")


def _items(args) -> object:
    if getattr(args, "manifest", None):
        return load_manifest(args.manifest, split=args.split, limit=args.limit)
    if not args.files:
        raise XattnError("give audio FILEs or --manifest CSV")
    return args.files


def cmd_transcribe(args) -> int:
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
    cfg = ExtractConfig(DecodeConfig(language=args.language, task=args.task, num_beams=args.beams),
                        batch_size=args.batch_size, with_hidden=args.with_hidden)  # bad values fail before loading
    loaded = load_model(args.model, args.input_mode, args.device)
    report = extract_cross_attention(loaded, _items(args), args.out, cfg, progress=not args.quiet)
    return _finish(report, args.out)


def _decoding(args):
    """The decoding options given (--language, --task), or None: explain with the store's own."""
    return DecodeConfig(language=args.language, task=args.task) if args.language or args.task else None


def cmd_saliency(args) -> int:
    for name, value in (("--n-masks", args.n_masks), ("--ig-steps", args.ig_steps)):
        if value is not None and value < 1:
            raise XattnError(f"{name} must be at least 1, not {value}")
    if args.n_masks is not None and args.n_masks > args.max_masks:
        raise XattnError(f"--n-masks {args.n_masks} is over the cap of {args.max_masks} masks per utterance (the paper "
                         "used 20000; each mask is one forward pass): lower it, or raise the cap with --max-masks")
    loaded = load_model(args.model, args.input_mode, args.device)
    spes = SPESConfig.cpu()
    overrides = {k: v for k, v in (("n_masks", args.n_masks), ("seed", args.seed)) if v is not None}
    spes = dataclasses.replace(spes, **overrides)
    smh = dataclasses.replace(SMHConfig(), **overrides)
    cfg = SaliencyConfig(methods=tuple(args.method), spes=spes, smh=smh, ig_steps=args.ig_steps)
    report = compute_saliency(loaded, _items(args), args.out, cfg, _decoding(args), progress=not args.quiet)
    return _finish(report, args.out)


def cmd_mixing(args) -> int:
    loaded = load_model(args.model, args.input_mode, args.device)
    report = compute_mixing(loaded, _items(args), args.out, MixingConfig(methods=tuple(args.method)),
                            _decoding(args), progress=not args.quiet)
    return _finish(report, args.out)


def cmd_compare(args) -> int:
    cfg = CompareConfig(per_head=not args.no_per_head, special=args.special, normalize=args.normalize,
                        pool=args.pool, gradient_pool=args.gradient_pool, n_boot=args.n_boot, seed=args.seed)
    if args.mixing:  # encoder context mixing composed with CA: extra attention entries such as rollout∘all
        cfg = dataclasses.replace(cfg, mixing=tuple(args.mixing), mixing_depths=args.mixing_depths)
    table = compare_store(args.store, args.out, cfg, progress=not args.quiet)
    print(paper_comparison(table).to_string(index=False))
    print(f"{Path(args.out) / 'agreement.parquet'}: {len(table)} rows")
    return 0


def cmd_faithfulness(args) -> int:
    store = open_store(args.store)  # a missing store fails before the model loads
    loaded = load_model(args.model, args.input_mode, args.device)
    items = _items(args)
    cfg = FaithfulnessConfig(seed=args.seed)
    curves, aucs = faithfulness_store(loaded, store, items, tuple(args.explanations), tuple(args.mode), cfg,
                                      progress=not args.quiet)
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
    if args.store:
        print(format_words(store_word_rows(args.store, None if args.heads == "alignment" else args.heads,
                                           ties=args.ties), args.format))
        return 0

    loaded = load_model(args.model, args.input_mode, args.device)
    heads = args.heads
    if heads == "discovered":
        heads = _discovered_heads(loaded, args)
    else:
        parse_heads(heads, loaded.n_layers, loaded.n_heads, loaded.alignment_heads)  # fail before any audio
    results, failed = timestamps_for(loaded, _items(args), heads, force_transcript=args.force_transcript,
                                     language=args.language, task=args.task, ties=args.ties)
    for msg in failed.values():
        print(f"error: {msg}", file=sys.stderr)
    if results:
        print(format_words(results, args.format))
    return (2 if not results else 1) if failed else 0


def _discovered_heads(loaded, args) -> list:
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
    parser = argparse.ArgumentParser(prog="xattn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO",
                        help="show progress and status records from this level up on stderr (default INFO; "
                             "WARNING: only warnings and errors)")
    # the same option after the command; SUPPRESS: when absent there, the value given before the command stands
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=argparse.SUPPRESS,
                        help="as before the command")
    sub = _Subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)

    p = sub.add_parser("transcribe", help="print one greedy hypothesis per audio file")
    _add_model_args(p)
    p.add_argument("files", nargs="+", metavar="FILE")
    _add_prompt_args(p)
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("extract", help="decode, force-decode and store cross-attention for a data set")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="result store folder")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--with-hidden", action="store_true", help="also store the encoder output")
    p.add_argument("--beams", type=int, default=1, help="1: greedy decoding (default); more: beam search")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("saliency", help="SPES (X, H) and gradient maps, stored beside the cross-attention")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="result store folder (the same as extract's)")
    p.add_argument("--method", nargs="+", default=["spes-x", "spes-h"],
                   choices=("spes-x", "spes-h", "saliency", "ixg", "ig"))
    p.add_argument("--n-masks", type=int, help="SPES masks per utterance (CPU default; the paper used 20000)")
    p.add_argument("--seed", type=int)
    p.add_argument("--ig-steps", type=int, default=32)
    p.add_argument("--max-masks", type=int, default=100_000, help="refuse --n-masks above this (a typo guard)")
    p.set_defaults(func=cmd_saliency)

    p = sub.add_parser("compare", help="agreement of cross-attention with every saliency map in a store")
    p.add_argument("--store", required=True)
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
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--mixing", nargs="+", choices=("rollout", "normmix", "alti", "vzero"),
                   help="also compare CA composed with these encoder mixing maps (stored by `xattn mixing`)")
    p.add_argument("--mixing-depths", action="store_true",
                   help="with --mixing: also the partial compositions method[k]∘aggregate (top k layers undone)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("mixing", help="encoder context-mixing maps (rollout, norm-based, ALTI, value zeroing)")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="result store folder (the same as extract's)")
    p.add_argument("--method", nargs="+", default=["rollout", "normmix", "alti", "vzero"],
                   choices=("rollout", "normmix", "alti", "vzero"))
    p.set_defaults(func=cmd_mixing)

    p = sub.add_parser("faithfulness", help="deletion/insertion curves and AUCs per explanation")
    _add_data_args(p)
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--explanations", nargs="+", default=["ca:all", "smx", "random"])
    p.add_argument("--mode", nargs="+", default=["deletion"], choices=("deletion", "insertion"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_faithfulness)

    p = sub.add_parser("timestamps", help="word timestamps (start, end, probability) from cross-attention or saliency")
    _add_data_args(p)
    p.add_argument("--heads", default="alignment",
                   help="alignment (the model's own), all, discovered (ranked on --calibration), or L3H2,L1H0,...")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--force-transcript", action="store_true",
                   help="with --manifest: align the manifest's transcript instead of the model's hypothesis")
    p.add_argument("--ties", choices=("diagonal", "time"), default="diagonal",
                   help="DTW ties: diagonal (ours) or time (openai-whisper / CTranslate2)")
    p.add_argument("--store", help="instead of audio: words from every map (attention, SMX, SMH, gradients) of a "
                                   "result store, each through the same DTW")
    p.add_argument("--calibration", help="manifest with word times for --heads discovered")
    p.add_argument("--calibration-split")
    p.add_argument("--calibration-limit", type=int)
    p.add_argument("--k-max", type=int, default=12, help="largest number of discovered heads to try")
    p.set_defaults(func=cmd_timestamps)

    for name, module, help_ in (
            ("evaluate", evaluation, "WER / BLEU / chrF of a model on a manifest per language and task"),
            ("sweep", sweep, "run a sweep file: notebooks x parameters, resumable, through Dask (see sweeps/*.yaml)"),
            ("study", study, "the default study: the default sweep over the bundled model and every trained one"),
            ("corpus", corpus, "build the default synthetic corpus (--default) or another one (--config)")):
        p = sub.add_parser(name, help=help_, description=module.DESCRIPTION)
        module.add_arguments(p)
        p.set_defaults(func=module.command)
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
    try:
        return int(args.func(args) or 0)
    except XattnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished items are kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
