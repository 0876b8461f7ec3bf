"""Benchmark (issue 32 item 2): the audit of a Llama-3-8B-sized head, 128,256 × 4,096 float32.

No weights-only package with a head of d ≥ 2,048 was found in the package index, so the head is
**synthetic**, built to have a real head's structure (``synthetic_head``):

- a spectrum: the rows are Gaussian vectors times the singular-value profile of SmolLM2-135M's
  head (49,152 × 576), stretched over 4,096 dimensions (a decaying, not white, spectrum);
- a norm profile: each row scaled to a norm drawn from SmolLM2's row norms (resampled);
- 64 planted exact duplicates, 256 hull-interior rows (convex combinations of 3 rows, as untrained
  tokens tend to be) and 256 near-hull rows (the same combinations pushed 1e-3 outwards: they
  are argmaxable by a small margin, the expensive case).

It is written once, memory-mapped (``--out``, 1.96 GiB), and audited with ``--jobs`` workers
while the peak memory (PSS of the process and its workers) is sampled:

    flock /tmp/heavy.lock nice -n 10 .venv/bin/python benchmarks/bench_unargmax_wide.py --out /tmp/wide.npy --jobs 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def synthetic_head(path: str, C: int = 128_256, d: int = 4096, seed: int = 0) -> dict:
    """Write the synthetic head to ``path`` (.npy, float32), a block of rows at a time; returns
    what was planted: {"duplicates": [(copy, original)], "interior": [...], "near_hull": [...]}."""
    from kexue.data import smollm2_path
    from kexue.unargmax import load_output_layer

    rng = np.random.default_rng(seed)
    ref = np.asarray(load_output_layer(smollm2_path()).W, np.float32)
    sv = np.linalg.svd(ref[rng.choice(len(ref), 8192, replace=False)], compute_uv=False)
    profile = np.interp(np.linspace(0, 1, d), np.linspace(0, 1, sv.size), sv / sv[0]).astype(np.float32)
    norms = np.linalg.norm(ref, axis=1)
    W = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(C, d))
    n_special = 64 + 256 + 256
    base = C - n_special
    for r in range(0, base, 8192):
        blk = rng.standard_normal((min(8192, base - r), d), dtype=np.float32) * profile
        blk *= (rng.choice(norms, blk.shape[0]) / np.linalg.norm(blk, axis=1))[:, None]
        W[r:r + blk.shape[0]] = blk
    planted = {"duplicates": [], "interior": [], "near_hull": []}
    k = base
    for _ in range(64):
        i = int(rng.integers(base))
        W[k] = W[i]
        planted["duplicates"].append((k, i))
        k += 1
    for kind, push in (("interior", 0.0), ("near_hull", 1e-3)):
        for _ in range(256):
            idx = rng.choice(base, 3, replace=False)
            lam = rng.dirichlet(np.ones(3)).astype(np.float64)
            rows = np.asarray(W[idx], np.float64)
            x = lam @ rows
            W[k] = (x + push * (x - rows.mean(0))).astype(np.float32) if push else x.astype(np.float32)
            planted[kind].append(k)
            k += 1
    W.flush()
    return planted


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="where the synthetic head goes (.npy, 1.96 GiB)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--classes", type=int, default=0, help="audit a random subset (0 = all)")
    a = ap.parse_args()

    from kexue.experiments.unargmax_zoo import PeakMemory
    from kexue.unargmax import audit

    if not os.path.exists(a.out):
        t0 = time.perf_counter()
        synthetic_head(a.out)
        print(f"synthetic head written in {time.perf_counter() - t0:.0f} s")
    W = np.load(a.out, mmap_mode="r")
    classes = None if not a.classes else np.sort(np.random.default_rng(0).choice(len(W), a.classes, replace=False))
    print(f"{W.shape} float32 ({W.nbytes / 2**30:.2f} GiB), load average {os.getloadavg()[0]:.2f}")
    with PeakMemory() as mem:
        res = audit(W, None, n_jobs=a.jobs, classes=classes, precision="F32")
    print(f"audit {res.seconds:.0f} s wall on {a.jobs} jobs; peak {mem.gib:.2f} GiB PSS (goal ≤ {W.nbytes / 2**30 + 2:.2f}); "
          f"load average now {os.getloadavg()[0]:.2f}; {res.counts()}")
    print("wall seconds per phase:", {k: round(v, 1) for k, v in res.wall_seconds.items()})
    print("compute seconds per stage:", {k: round(v, 1) for k, v in res.stage_seconds.items()})


if __name__ == "__main__":
    main()
