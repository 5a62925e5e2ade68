"""The subcommands whose code is heavy (``sweep``, ``study``, ``corpus``, ``evaluate``): their options, shared by
``xattn`` and their ``python -m xattn_utils.<step>.<module>`` entry points.

The options live here, in a module that imports nothing heavy, so ``xattn sweep --help`` answers at once; the
module that runs the command (:attr:`Subcommand.module`, which loads torch and the models) is imported only when
the command runs.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass

# A sweep of more runs than this asks for confirmation (``--yes``, ``run_sweep(..., yes=True)``) before any work.
MAX_RUNS_UNASKED = 64


def sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``xattn sweep``."""
    parser.add_argument("file", help="sweep file (YAML)")
    parser.add_argument("--out", default=None, help="output root (default: the file's 'out')")
    parser.add_argument("--scheduler", default=None, help="address of a running Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes of the local Dask cluster (default 1)")
    parser.add_argument("--yes", action="store_true",
                        help=f"run a sweep of more than {MAX_RUNS_UNASKED} runs (else refused with its count and "
                             "estimated time)")


def study_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``xattn study``."""
    parser.add_argument("--out", default="runs/study", help="output root of the sweep (runs are resumed there)")
    parser.add_argument("--train", action="store_true", help="train the grid first when no trained model exists")
    parser.add_argument("--no-train", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old scripts
    parser.add_argument("--workers", type=int, default=2,
                        help="Dask worker processes (one run at a time each, one thread each: Dask sets "
                             "OMP_NUM_THREADS=1)")


def corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``xattn corpus``."""
    parser.add_argument("--default", action="store_true", help="build (and verify) the default corpus of the study")
    parser.add_argument("--write-manifest", action="store_true",
                        help="with --default: (re)write data_manifest.csv from a fresh build (maintainers)")
    parser.add_argument("--config", help="JSON file with CorpusConfig fields, for other corpora")


def evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``xattn evaluate``."""
    parser.add_argument("--model", default="bundled:whisper-tiny.en", help="a registry name, a folder or a hub id")
    parser.add_argument("--manifest", required=True, help="data manifest CSV (data_manifest.csv schema)")
    parser.add_argument("--setting", nargs="+", default=["en:transcribe"], help="LANGUAGE:TASK, e.g. it:translate")
    parser.add_argument("--split", default="test", help="only the manifest rows of this split")
    parser.add_argument("--limit", type=int, help="only the first N rows (after --split)")
    parser.add_argument("--out", help="write scores and hypotheses as <out>.scores.csv / <out>.hypotheses.csv")


@dataclass(frozen=True)
class Subcommand:
    """One heavy subcommand: ``module`` (relative to the package) defines ``command(args) -> int``."""

    name: str
    module: str
    help: str  # one line, in ``xattn --help``
    description: str  # the first line of ``xattn NAME --help``
    add_arguments: Callable[[argparse.ArgumentParser], None]


SUBCOMMANDS = {s.name: s for s in (
    Subcommand("evaluate", ".analysis.evaluation", "WER / BLEU / chrF of a model on a manifest per language and task",
               "WER / BLEU / chrF of a model on a manifest per language and task.", evaluate_arguments),
    Subcommand("sweep", ".runs.sweep", "run a sweep file: notebooks x parameters, resumable, through Dask (see "
               "sweeps/*.yaml)", "Run a parameter sweep of the study notebooks (see sweeps/*.yaml).", sweep_arguments),
    Subcommand("study", ".runs.study", "the default study: the default sweep over the bundled model and every "
               "trained one; writes report.md and report.html",
               "Run the default xattn study: the default sweep over the bundled model and every trained grid model "
               "present.", study_arguments),
    Subcommand("corpus", ".data.corpus", "build the default synthetic corpus (--default) or another one (--config)",
               "Build synthetic speech corpora (flite, festival, espeak-ng) with word times.", corpus_arguments),
)}


def module_main(name: str, command: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    """``python -m`` entry point of subcommand ``name``: parse ``argv`` with its options, log at INFO (as ``xattn``
    does by default) and run ``command``; the same options and output as ``xattn NAME``."""
    sub = SUBCOMMANDS[name]
    prog = "python -m xattn_utils" + sub.module
    parser = argparse.ArgumentParser(prog=prog, description=sub.description)
    sub.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return command(args)
