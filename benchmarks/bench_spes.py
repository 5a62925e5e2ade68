"""Benchmark of the SPES core: overhead over the model, core speedup over the per-mask reference, convergence, memory.

    python benchmarks/bench_spes.py --quick            # seconds, on the block toy scaled up
    python benchmarks/bench_spes.py --masks 2048       # longer
    python benchmarks/bench_spes.py --scorer bundled [--input-mode padded]   # Whisper tiny.en, default corpus

Measured in one run on the same masks:
  overhead     SPES wall time (segmentation, masks, KL, accumulation, snapshots) ÷ the time spent inside the
               scorer's forward passes of that same run (timed by a wrapper, synchronized on CUDA). Goal <= 1.10.
  speedup      saliency core without the model (mask gather, KL, accumulation) on identical model outputs:
               per-mask reference structure (explicit (I, N) heatmap per mask, as the FBK accumulator) ÷ the
               batched GEMM core. Goal >= 10.
  k95_fraction first checkpoint at which Pearson(running map, final map) >= 0.95, as a fraction of the masks.
  memory       peak memory of a run vs n_masks (CUDA: max_memory_allocated; CPU: peak RSS above the start,
               sampled every 2 ms) -- flat in n_masks.
Ends with one line: overhead=<x> speedup=<y> k95_fraction=<z>.

    python benchmarks/bench_spes.py --throughput [--rounds 2] [--out benchmarks/throughput.md]   # issue 22

Throughput (``--throughput``): masks/s of the real models (tiny.en, base) on a ~4 s default-corpus utterance, SMX at
coarse (250/500/1000) and published (2000/2500/3000) segments, SMH with and without the K/V-once decoder, fp32 vs
bf16, batch sizes, one process of 1 or 2 threads vs 2 one-thread processes; GFLOP per mask (torch's flop counter on
one batch) x masks/s as a fraction of this machine's measured GEMM rate (fp32 and bf16, same thread count). Every
variant is timed in each round, the variants interleaved (a shared machine's load hits them alike); the table holds
the median over rounds and the load average before and after.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from xattn_utils.attribution.spes import (  # noqa: E402  (after the sys.path line above)
    MaskBits,
    PartialSums,
    SPESConfig,
    accumulate,
    build_occlusion,
    kl_scores,
    plan_smx,
    relevance,
    resolve_precision,
    spes_smx,
)

# ---------------------------------------------------------------- the one function to swap


def make_scorer(kind: str, device: str, quick: bool, input_mode: str = "trimmed"):
    """The scorer under test: the bundled Whisper tiny.en on the default corpus's first utterance, or the toy."""
    if kind == "bundled":
        return bundled_scorer(device, input_mode)
    from toy_models import BlockToyScorer
    toy = BlockToyScorer(n_tokens=8 if quick else 20, block=25, n_features=80, width=256,
                         vocab=2000 if quick else 8000, pad_frames=100)
    for name in ("A", "W1", "b1", "W2", "b2", "_features", "target_ids"):
        setattr(toy, name, getattr(toy, name).to(device))
    return toy


def bundled_scorer(device: str, input_mode: str, index: int = 0):
    """Bundled Whisper tiny.en forced on its own hypothesis of a default-corpus utterance."""
    from xattn_utils.data.audio import load_audio
    from xattn_utils.data.corpus import study_data
    from xattn_utils.extraction.forced import Seq2SeqScorer, decode
    from xattn_utils.models.loader import load_model

    row = study_data(limit=index + 1).iloc[index]
    audio = load_audio(row.audio_path)
    loaded = load_model("bundled:whisper-tiny.en", input_mode=input_mode, device=device)
    prompt = loaded.prompt_ids()
    hyp = decode(loaded, loaded.features(audio, loaded.decode_mode).values[None], prompt)[0]
    return Seq2SeqScorer(loaded, loaded.features(audio), prompt, hyp)


class TimedScorer:
    """Wraps a scorer and adds up the seconds spent in its forward passes."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _timed(self, fn, x):
        _sync(x.device)
        t = time.perf_counter()
        out = fn(x)
        _sync(x.device)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out

    def log_probs(self, features):
        return self._timed(self.inner.log_probs, features)

    def log_probs_from_encoder(self, hidden):
        return self._timed(self.inner.log_probs_from_encoder, hidden)

    def encode(self, features):
        return self._timed(self.inner.encode, features)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- cores on identical model outputs


def fast_core(plan, bits, logp, batch_size):
    sums = PartialSums.zeros(plan.base.shape[0], plan.n_cells, plan.base.device)
    for a in range(0, logp.shape[0], batch_size):
        b = min(logp.shape[0], a + batch_size)
        occ = build_occlusion(plan.labels, bits[a:b], a)
        accumulate(sums, kl_scores(plan.base, logp[a:b]), occ)
    return sums


def reference_core(plan, bits, logp):
    """One mask at a time: gather its mask, its per-token KL, an explicit (I, N) heatmap, sum."""
    g_count = plan.labels.shape[0]
    base = plan.base.float()
    p = base.exp()
    sums = PartialSums.zeros(base.shape[0], plan.n_cells, base.device)
    for m in range(logp.shape[0]):
        occ = bits[m].to(base.device)[plan.labels[m % g_count]]  # (N,)
        score = (p * (base - logp[m].float())).sum(-1)  # (I,)
        sums.numerator += score[:, None].double() * occ[None, :].double()
        sums.count += occ.long()
        sums.n_masks += 1
    return sums


def reference_pipeline(plan, bits, n: int):
    """One mask per forward pass (the FBK structure): occlude, forward, KL, explicit heatmap, sum."""
    sums = PartialSums.zeros(plan.base.shape[0], plan.n_cells, plan.base.device)
    for m in range(n):
        occ = build_occlusion(plan.labels, bits[m:m + 1], m)
        logp = plan.perturb(occ)
        score = kl_scores(plan.base, logp)[0]  # (I,)
        sums.numerator += score[:, None].double() * occ[0].reshape(1, -1).double()
        sums.count += occ[0].reshape(-1).long()
        sums.n_masks += 1
    return sums


def _best_of(fn, repeats: int, device) -> float:
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


# ---------------------------------------------------------------- memory


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(run, device) -> int:
    """Peak bytes above the start while ``run()`` executes."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    start, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        run()
    finally:
        done.set()
        th.join()
    return max(0, max(peak[0], _rss()) - start)


# ---------------------------------------------------------------- main


# ---------------------------------------------------------------- --throughput (issue 22)

TP_MODELS = {"tiny.en": "bundled:whisper-tiny.en", "base": "bundled:whisper-base"}
TP_UTTERANCE = 1  # default-corpus test utterance 1: 3.84 s, the "4 s utterance"
SEGMENTS = {"coarse": (250, 500, 1000), "published": (2000, 2500, 3000)}


def tp_scorer(model: str, index: int = TP_UTTERANCE):
    """The forced scorer of ``model``'s own greedy hypothesis of a default-corpus test utterance, trimmed input."""
    from xattn_utils.data.audio import load_audio
    from xattn_utils.data.corpus import study_data
    from xattn_utils.extraction.forced import Seq2SeqScorer, decode
    from xattn_utils.models.loader import load_model

    row = study_data(limit=index + 1).iloc[index]
    audio = load_audio(row.audio_path)
    loaded = load_model(TP_MODELS[model], input_mode="trimmed")
    prompt = loaded.prompt_ids()
    hyp = decode(loaded, loaded.features(audio, "padded").values[None], prompt)[0]
    return Seq2SeqScorer(loaded, loaded.features(audio), prompt, hyp), float(row.duration_s)


def tp_config(space: str, segments: str, precision: str, batch: int, kv_once: bool = True):
    from xattn_utils.attribution.spes import SMHConfig

    if space == "smx":
        return SPESConfig(n_masks=20000, n_segments=SEGMENTS[segments], batch_size=batch, precision=precision,
                          convergence=False)
    return SMHConfig(n_masks=20000, batch_size=batch, precision=precision, kv_once=kv_once, convergence=False)


def tp_plan(scorer, space: str, cfg):
    from xattn_utils.attribution.spes import plan_smh

    return plan_smx(scorer, cfg) if space == "smx" else plan_smh(scorer, cfg)


def gflop_per_mask(plan, batch: int) -> float:
    """GFLOP of one mask: torch's flop counter over the forward pass of one batch (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    occ = build_occlusion(plan.labels, MaskBits(plan.seed, max(plan.n_labels), plan.p).rows(0, batch), 0)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        plan.perturb(occ)
    return fc.get_total_flops() / batch / 1e9


def gemm_gflops(threads: int, n: int = 1024, rounds: int = 8) -> dict[str, float]:
    """Measured GEMM rate (GFLOP/s) of an n x n x n torch.mm in fp32 and bf16 on ``threads`` threads: the two
    dtypes interleaved, ``rounds`` timings of 4 products each, the best (a shared machine's load only slows)."""
    torch.set_num_threads(threads)
    mats = {dt: (torch.randn(n, n).to(t), torch.randn(n, n).to(t))
            for dt, t in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    best = dict.fromkeys(mats, 0.0)
    for _ in range(rounds):
        for dt, (a, b) in mats.items():
            torch.mm(a, b)
            t = time.perf_counter()
            for _ in range(4):
                torch.mm(a, b)
            best[dt] = max(best[dt], 4 * 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def time_masks(plan, n: int, batch: int, start: int = 0) -> float:
    """Seconds to score masks ``start .. start + n - 1`` of a plan (the SPES inner loop: masks, forward, KL, sums)."""
    from xattn_utils.attribution.spes import partial_sums

    t = time.perf_counter()
    partial_sums(plan, start, start + n, batch)
    return time.perf_counter() - t


def _proc_worker(model: str, space: str, segments: str, precision: str, batch: int, start: int, n: int):
    """One of the processes of the processes-vs-threads row: one thread, its own model and plan, then timed."""
    torch.set_num_threads(1)
    scorer, _ = tp_scorer(model)
    plan = tp_plan(scorer, space, tp_config(space, segments, precision, batch))
    time_masks(plan, 4, 4, 10_000)  # warm-up
    t0 = time.time()
    time_masks(plan, n, batch, start)
    return t0, time.time()


def throughput(rounds: int, out: Path | None, n_smx: int, n_smh: int) -> None:
    import concurrent.futures
    import multiprocessing
    import statistics
    import subprocess

    load0 = os.getloadavg()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    gemm = {(dt, th): g for th in (1, 2) for dt, g in gemm_gflops(th).items()}
    torch.set_num_threads(1)
    scorers = {m: tp_scorer(m) for m in TP_MODELS}
    # (model, space, segments, precision, batch, kv_once, threads)
    variants = []
    for m in TP_MODELS:
        for seg in SEGMENTS:
            for prec in ("fp32", "bf16"):
                variants.append((m, "smx", seg, prec, 16, True, 1))
        for prec in ("fp32", "bf16"):
            variants.append((m, "smh", "-", prec, 64, True, 1))
        variants.append((m, "smh", "-", "fp32", 64, False, 1))
    # batch and parallelism in the precision SPES takes here by default ("auto": bf16 only on bf16 hardware)
    auto = resolve_precision("auto", "cpu")
    variants += [("tiny.en", "smx", "published", auto, b, True, 1) for b in (32, 64)]
    variants += [("tiny.en", "smh", "-", auto, b, True, 1) for b in (32, 128)]
    variants += [("tiny.en", "smx", "published", auto, 16, True, 2), ("tiny.en", "smh", "-", auto, 64, True, 2)]
    plans, flops = {}, {}
    for v in variants:
        m, space, seg, prec, batch, kv, _ = v
        key = (m, space, seg, prec, kv)
        if key not in plans:
            plans[key] = tp_plan(scorers[m][0], space, tp_config(space, seg, prec, batch, kv))
            flops[key] = gflop_per_mask(plans[key], 8)
    times: dict[tuple, list[float]] = {v: [] for v in variants}
    kernel: dict[tuple, list[float]] = {v: [] for v in variants}  # share of the process's CPU time in the kernel
    for r in range(rounds):
        for v in variants:
            m, space, seg, prec, batch, kv, threads = v
            n = n_smx if space == "smx" else n_smh
            n = max(batch, n // (2 if m == "base" else 1) // batch * batch)
            torch.set_num_threads(threads)
            time_masks(plans[(m, space, seg, prec, kv)], 4, 4, 10_000)  # warm-up
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            times[v].append(time_masks(plans[(m, space, seg, prec, kv)], n, batch, 1000 * r) / n)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            kernel[v].append((r1.ru_stime - r0.ru_stime) / cpu if cpu > 0 else 0.0)
            print(f"round {r} {v}: {1 / times[v][-1]:.1f} masks/s", flush=True)
        torch.set_num_threads(1)
    # processes: 2 one-thread processes, each half the masks, wall = first start to last end
    proc = {}
    ctx = multiprocessing.get_context("spawn")
    for space, seg, n in (("smx", "published", n_smx), ("smh", "-", n_smh)):
        rates = []
        for _round in range(1):  # one round: each costs two model loads and plans
            with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
                batch = 16 if space == "smx" else 64
                futs = [pool.submit(_proc_worker, "tiny.en", space, seg, auto, batch, i * n, n) for i in range(2)]
                spans = [f.result() for f in futs]
            rates.append(2 * n / (max(e for _, e in spans) - min(s for s, _ in spans)))
        proc[space] = statistics.median(rates)
    load1 = os.getloadavg()

    rows = []
    for v in variants:
        m, space, seg, prec, batch, kv, threads = v
        rate = 1 / statistics.median(times[v])
        gf = flops[(m, space, seg, prec, kv)]
        frac = gf * rate / gemm[(prec, threads)]
        label = f"{space.upper()} {seg}" if space == "smx" else f"SMH {'K/V once' if kv else 'plain'}"
        rows.append((m, label, prec, batch, f"1 process x {threads} thread{'s' if threads > 1 else ''}", rate, gf, frac,
                     20000 / rate / 60, f"{statistics.median(kernel[v]):.0%}"))
    for space, rate in proc.items():
        key = ("tiny.en", space, "published" if space == "smx" else "-", auto, True)
        gf = flops[key]
        label = "SMX published" if space == "smx" else "SMH K/V once"
        rows.append(("tiny.en", label, auto, 16 if space == "smx" else 64, "2 processes x 1 thread", rate, gf,
                     gf * rate / gemm[(auto, 2)], 20000 / rate / 60, "-"))
    when = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    lines = [f"Throughput of SPES (benchmarks/bench_spes.py --throughput), {when}, "
             f"commit {commit}, torch {torch.__version__}, {os.cpu_count()} CPUs; load average (1/5/15 min) "
             f"{'/'.join(f'{x:.1f}' for x in load0)} before, {'/'.join(f'{x:.1f}' for x in load1)} after; "
             f"median of {rounds} interleaved rounds; utterance: default-corpus test {TP_UTTERANCE} "
             f"({scorers['tiny.en'][1]:.2f} s; I = {scorers['tiny.en'][0].n_tokens} tiny.en, "
             f"{scorers['base'][0].n_tokens} base).",
             "",
             "Measured GEMM rate (1024^3 torch.mm, fp32 and bf16 interleaved, best of 8): " + ", ".join(
                 f"{dt} {th} thread{'s' if th > 1 else ''} {g:.0f} GFLOP/s" for (dt, th), g in gemm.items()),
             "",
             "| model | map | precision | batch | parallelism | masks/s | GFLOP/mask | fraction of GEMM rate "
             "| 20 000 masks (min) | CPU time in the kernel |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {m} | {lab} | {p} | {b} | {par} | {r:.1f} | {g:.2f} | {f:.2f} | {mins:.1f} | {k} |"
              for m, lab, p, b, par, r, g, f, mins, k in rows]
    text = "\n".join(lines)
    print(text)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, seconds on a CPU")
    ap.add_argument("--scorer", choices=("toy", "bundled"), default="toy")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--masks", type=int, default=None, help="masks of the timed run")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--core-masks", type=int, default=None, help="masks whose model outputs the core timing reuses")
    ap.add_argument("--segments", type=int, nargs="+", default=None)
    ap.add_argument("--input-mode", choices=("trimmed", "padded"), default="trimmed", help="bundled scorer only")
    ap.add_argument("--e2e-masks", type=int, default=None, help="masks for the one-mask-per-pass reference run")
    ap.add_argument("--throughput", action="store_true", help="issue 22's throughput table (real models, ~10 min)")
    ap.add_argument("--rounds", type=int, default=2, help="--throughput: interleaved rounds")
    ap.add_argument("--smx-masks", type=int, default=32, help="--throughput: SMX masks per timing (base: half)")
    ap.add_argument("--smh-masks", type=int, default=128, help="--throughput: SMH masks per timing (base: half)")
    ap.add_argument("--out", type=Path, default=None, help="--throughput: also write the table here")
    args = ap.parse_args(argv)
    if args.throughput:
        throughput(args.rounds, args.out, args.smx_masks, args.smh_masks)
        return
    torch.manual_seed(0)
    n_masks = args.masks or (256 if args.quick else 2048)
    core_masks = args.core_masks or (64 if args.quick else 128)
    bs = args.batch_size or (32 if args.quick else 64)
    segs = tuple(args.segments or ((250, 500) if args.quick else (500, 1000, 1500)))
    scorer = TimedScorer(make_scorer(args.scorer, args.device, args.quick, args.input_mode))
    cfg = dataclasses.replace(SPESConfig.cpu(), n_masks=n_masks, n_segments=segs, batch_size=bs)
    feats = scorer.features
    print(f"device={args.device} scorer={args.scorer} mode={args.input_mode} I={scorer.n_tokens} "
          f"F×T={tuple(feats.shape)} "
          f"audio_frames={scorer.n_audio_frames} masks={n_masks} batch={bs} segments={segs}")

    # 1. overhead: one full SPES run, forward time measured inside it
    _sync(args.device)
    t = time.perf_counter()
    res = spes_smx(scorer, cfg, progress=not args.quick)
    _sync(args.device)
    wall = time.perf_counter() - t
    overhead = wall / scorer.seconds
    rate = res.n_masks_done / wall
    k95 = next((k for k, r in res.convergence if r >= 0.95), res.n_masks_done) / res.n_masks_done

    # 2. core speedup on identical model outputs (the first core_masks masks of the same plan)
    plan = plan_smx(scorer.inner, cfg)
    bits = MaskBits(plan.seed, max(plan.n_labels), plan.p).rows(0, core_masks)
    with torch.inference_mode():
        logp = torch.cat([plan.perturb(build_occlusion(plan.labels, bits[a:a + bs], a))
                          for a in range(0, core_masks, bs)])
        fast = fast_core(plan, bits, logp, bs)
        ref = reference_core(plan, bits, logp)
        assert torch.allclose(relevance(fast), relevance(ref), rtol=1e-4, atol=1e-6), "fast core != reference"
        t_fast = _best_of(lambda: fast_core(plan, bits, logp, bs), 3, args.device)
        t_ref = _best_of(lambda: reference_core(plan, bits, logp), 1 if args.quick else 2, args.device)
    speedup = t_ref / t_fast

    # 2b. end to end against one mask per forward pass, on the same plan
    e2e_masks = args.e2e_masks or (8 if args.quick else 32)
    with torch.inference_mode():
        t_pipe = _best_of(lambda: reference_pipeline(plan, bits, e2e_masks), 1, args.device) / e2e_masks
    e2e = t_pipe / (wall / res.n_masks_done)

    # 3. memory vs n_masks
    mem = []
    for n in sorted({max(bs, n_masks // 4), n_masks}):
        c = dataclasses.replace(cfg, n_masks=n, convergence=False)
        mem.append((n, peak_memory(lambda c=c: spes_smx(scorer.inner, c, progress=False), args.device)))

    rows = [("SPES wall time (s)", f"{wall:.3f}"),
            ("forward passes inside it (s)", f"{scorer.seconds:.3f}"),
            ("overhead (goal <= 1.10)", f"{overhead:.3f}"),
            ("masks/s", f"{rate:.1f}"),
            (f"core, reference per-mask, {core_masks} masks (ms)", f"{1e3 * t_ref:.1f}"),
            (f"core, batched GEMM, {core_masks} masks (ms)", f"{1e3 * t_fast:.1f}"),
            ("core speedup (goal >= 10)", f"{speedup:.1f}"),
            (f"one mask per pass, s/mask ({e2e_masks} masks)", f"{t_pipe:.4f}"),
            ("batched SPES, s/mask", f"{wall / res.n_masks_done:.4f}"),
            ("end-to-end speedup vs one mask per pass", f"{e2e:.2f}"),
            ("k95 fraction", f"{k95:.3f}"),
            ("segments per granularity", str(res.n_labels))]
    rows += [(f"peak memory, {n} masks (MiB)", f"{b / 2 ** 20:.1f}") for n, b in mem]
    width = max(len(k) for k, _ in rows)
    print("-" * (width + 14))
    for k, v in rows:
        print(f"{k:<{width}}  {v:>10}")
    print("-" * (width + 14))
    print(f"overhead={overhead:.3f} speedup={speedup:.1f} k95_fraction={k95:.3f}")


if __name__ == "__main__":
    main()
