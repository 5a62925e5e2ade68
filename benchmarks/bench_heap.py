"""SPES SMX batches with glibc's default allocation vs freed memory kept in the heap (attribution/heap.py).

Whisper tiny.en on default-corpus test utterance 1, published segments, float32, one thread; every timing in a
fresh process (glibc's state is per process and outlives a mode), the two allocation modes and the batch sizes
interleaved over rounds. Per variant: masks per
second of wall time and of this process's CPU time (the second is what a shared machine does not distort), the share
of CPU time in the kernel, and minor page faults per mask.

    python benchmarks/bench_heap.py [--rounds 2] [--masks 128]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_spes import time_masks, tp_config, tp_plan, tp_scorer  # noqa: E402

from xattn_utils.attribution import heap  # noqa: E402


def one(mode: str, batch: int, masks: int, start: int) -> tuple:
    """In this (fresh) process: the plan, one warm-up batch, then ``masks`` masks timed."""
    torch.set_num_threads(1)
    if mode == "glibc defaults":
        heap._mallopt = lambda: None
    scorer, _ = tp_scorer("tiny.en")
    plan = tp_plan(scorer, "smx", tp_config("smx", "published", "fp32", batch))
    time_masks(plan, batch, batch, 10_000 + start)  # warm-up batch
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time_masks(plan, masks, batch, start)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    user, sys_ = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    return masks / wall, masks / (user + sys_), sys_ / (user + sys_), (r1.ru_minflt - r0.ru_minflt) / masks


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--masks", type=int, default=128, help="masks per timing")
    args = ap.parse_args(argv)
    rows: dict[tuple, list[tuple]] = {}
    ctx = multiprocessing.get_context("spawn")
    for r in range(args.rounds):
        for mode in ("glibc defaults", "heap kept"):
            for b in (16, 64):
                with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    rows.setdefault((mode, b), []).append(pool.submit(one, mode, b, args.masks, 1000 * r).result())
                print(f"round {r} {mode} batch {b}: {rows[mode, b][-1][0]:.1f} masks/s", flush=True)
    print(f"\nbench_heap.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
          f"{args.masks} masks per timing, median of {args.rounds} rounds\n")
    print("| allocation | batch | masks/s (wall) | masks per CPU second | CPU time in the kernel "
          "| page faults per mask |")
    print("|---|---|---|---|---|---|")
    for (mode, b), vals in rows.items():
        med = [sorted(v[i] for v in vals)[len(vals) // 2] for i in range(4)]
        print(f"| {mode} | {b} | {med[0]:.1f} | {med[1]:.1f} | {med[2]:.0%} | {med[3]:,.0f} |")


if __name__ == "__main__":
    main()
