"""Benchmark: the pre-check pipeline vs the exact LP for every class (SPEC 3.4/3.6), the full
SmolLM2-135M audit time and the full Gemma 3 270M audit (262,144 × 640) time per stage, from one run.

    .venv/bin/python benchmarks/bench_unargmax.py [--jobs 2] [--baseline-classes 60] [--skip-smollm2] [--skip-gemma]

Gemma's weights come from the survey's cache (``make zoo`` fetches them); the run is skipped with a
message when they are absent.

The baseline is the paper's exact LP (HiGHS, all C-1 constraints) for every class, with no
pre-checks. At C = 5000 one such LP takes seconds, so by default it is timed on a random sample
of classes (all of them with ``--baseline-classes 0``) and the full-layer time is extrapolated
linearly (the LPs are independent and of equal size); its verdicts are compared with the
pipeline's on exactly the sampled classes, and both with the planted truth.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--classes", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--planted", type=int, default=250)
    ap.add_argument("--bias", action="store_true")
    ap.add_argument("--baseline-classes", type=int, default=60, help="0 = every class")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--skip-gemma", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from kexue.unargmax import ARGMAXABLE, audit, planted_layer

    C = a.classes
    W, b, truth = planted_layer(C, a.dim, a.planted, bias=a.bias, seed=a.seed)
    print(f"planted layer {C}×{a.dim}, {a.planted} interior rows, bias={a.bias}, jobs={a.jobs}, load average {os.getloadavg()[0]:.1f}")

    t0 = time.perf_counter()
    fast = audit(W, b, n_jobs=a.jobs)
    t_fast = time.perf_counter() - t0
    exact = np.array_equal(fast.verdict == ARGMAXABLE, truth)
    print(f"pipeline: {t_fast:.1f} s  {fast.counts()}  recovers the planted set exactly: {exact}")
    print("  stage compute seconds:", {k: round(v, 2) for k, v in fast.stage_seconds.items()})
    print("  decided by stage:", fast.stage_counts())

    n_base = C if a.baseline_classes in (0, None) or a.baseline_classes >= C else a.baseline_classes
    sample = np.arange(C) if n_base == C else np.sort(np.random.default_rng(a.seed).choice(C, n_base, replace=False))
    t0 = time.perf_counter()
    # the paper's LP alone: no pre-checks, no nearest-point stage, every other row a constraint
    slow = audit(W, b, prechecks=False, nearest=False, working_set=C, classes=sample, n_jobs=a.jobs,
                 keep_witnesses=False)
    t_slow = time.perf_counter() - t0
    t_slow_full = t_slow * C / n_base
    same = np.array_equal(slow.verdict[sample], fast.verdict[sample])
    true = np.array_equal(slow.verdict[sample] == ARGMAXABLE, truth[sample])
    print(f"LP for every class: {t_slow:.1f} s on {n_base} classes ({int((~truth[sample]).sum())} planted)"
          + (f" → {t_slow_full:.0f} s extrapolated to all {C}" if n_base < C else "")
          + f"; verdicts identical to the pipeline's: {same}; match the truth: {true}")
    print(f"speed-up (LP for every class / pipeline): {t_slow_full / t_fast:.1f}×"
          + (" (baseline extrapolated from the sample)" if n_base < C else ""))

    if not a.skip_smollm2:
        from kexue.data import smollm2_path
        from kexue.unargmax import load_output_layer

        t0 = time.perf_counter()
        layer = load_output_layer(smollm2_path())
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = audit(layer.W, layer.b, n_jobs=a.jobs, keep_witnesses=False)
        t_aud = time.perf_counter() - t0
        print(f"SmolLM2-135M output layer {layer.W.shape}: load {t_load:.1f} s, audit {t_aud:.1f} s on {a.jobs} jobs, "
              f"load average now {os.getloadavg()[0]:.1f}; {res.counts()}")
        print("  stage compute seconds:", {k: round(v, 1) for k, v in res.stage_seconds.items()})
        print("  unargmaxable:", [(int(k), layer.token(int(k))) for k in res.unargmaxable])


    if not a.skip_gemma:
        gemma(a.jobs)


def gemma(jobs):
    from kexue.experiments.unargmax_zoo import PeakMemory
    from kexue.unargmax import audit, zoo

    try:
        t0 = time.perf_counter()
        layer = zoo.load("gemma3-270m", download=False)
    except zoo.ZooUnavailable as e:
        print(f"Gemma 3 270M skipped: {e}")
        return
    t_load = time.perf_counter() - t0
    print(f"Gemma 3 270M {layer.W.shape} ({layer.precision}): load {t_load:.1f} s, load average {os.getloadavg()[0]:.1f}")
    with PeakMemory() as mem:
        res = audit(layer.W, layer.b, n_jobs=jobs, keep_witnesses=False, precision=layer.precision)
    print(f"  audit {res.seconds:.1f} s wall on {jobs} jobs, peak memory {mem.gib:.2f} GiB (PSS; RSS summed over processes {mem.peak_rss / 2**30:.2f} GiB), load average now "
          f"{os.getloadavg()[0]:.1f}; {res.counts()}")
    print("  wall seconds per phase:", {k: round(v, 1) for k, v in res.wall_seconds.items()})
    print("  compute seconds per stage (summed over workers):", {k: round(v, 1) for k, v in res.stage_seconds.items()})
    print("  decided by stage:", res.stage_counts())
    print("  unargmaxable:", [(int(k), layer.token(int(k))) for k in res.unargmaxable][:50])


if __name__ == "__main__":
    main()
