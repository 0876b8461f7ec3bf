"""Benchmark (issue 32 item 2): the audit of a Llama-3-8B-sized head, 128,256 × 4,096 float32.

The head is **synthetic** (no weights-only package with a head of d ≥ 2,048 was found in the
package index); how it is built, and what is planted in it, is described in
:mod:`kexue.experiments._unargmax_wide`, which section 5 of ``kexue reproduce unargmax`` runs.
This script writes the same head once (``--out``, 1.96 GiB, with its planted sets beside it as
JSON), memory-maps it, and audits all classes or a random subset with ``--jobs`` workers while
the peak memory (PSS of the process and its workers) is sampled:

    flock /tmp/heavy.lock nice -n 10 .venv/bin/python benchmarks/bench_unargmax_wide.py --out /tmp/wide.npy --jobs 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="where the synthetic head goes (.npy, 1.96 GiB)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--classes", type=int, default=0, help="audit a random subset (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from kexue.data import smollm2_path
    from kexue.experiments._unargmax_wide import FULL, audit_wide, cached_head, planted_check
    from kexue.unargmax import load_output_layer

    t0 = time.perf_counter()
    planted, _ = cached_head(a.out, load_output_layer(smollm2_path()).W, *FULL, a.seed)
    print(f"synthetic head ready in {time.perf_counter() - t0:.0f} s")
    C = FULL[0]
    classes = None if not a.classes else np.sort(np.random.default_rng(a.seed).choice(C, a.classes, replace=False))
    r = audit_wide(a.out, planted, a.jobs, classes)
    print(f"{(r['C'], r['d'])} float32 ({r['w_gib']:.2f} GiB), load average {r['load_before']:.2f} before, "
          f"{r['load_after']:.2f} after")
    print(f"audit {r['seconds']:.0f} s wall on {a.jobs} jobs; peak {r['peak_gib']:.2f} GiB PSS "
          f"(goal ≤ {r['w_gib'] + 2:.2f}); {r['counts']}")
    if classes is None:
        print("planted set:", planted_check(planted, r["planted_verdicts"]))
    print("wall seconds per phase:", {k: round(v, 1) for k, v in r["wall_seconds"].items()})
    print("compute seconds per stage:", {k: round(v, 1) for k, v in r["stage_seconds"].items()})


if __name__ == "__main__":
    main()
