"""Benchmark: N_k of 100,000 × 384 float32 points, k = 10 (SPEC 8, issue 5).

Ours (exact blocked backend; FAISS backend with a flat (exact) and an IVF (approximate) index) vs scikit-learn ``NearestNeighbors(algorithm=
"brute")``, each in its own subprocess so peak memory (max RSS) is per method. Prints wall time,
ratios to scikit-learn from this one run, peak memory, and agreement with our exact graph
(identical neighbour sets for exact methods; recall for the approximate one).

    .venv/bin/python benchmarks/bench_hubness.py [--n 100000] [--dim 384] [--k 10]

Data: i.i.d. Gaussian (seed 0) — the hardest case for approximate search (no cluster structure).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


# our backends as benchmarked; HNSW graphs on 100k × 384 Gaussian points take 10+ minutes to build
# on 2 cores, so the default run uses FAISS flat (exact, BLAS) and IVF (approximate)
VARIANTS = {
    "ours-exact": ("exact", None),
    "ours-faiss-flat": ("faiss", {"index": "flat"}),
    "ours-faiss-ivf": ("faiss", {"index": "ivf", "nlist": 1024, "nprobe": 64}),
    "ours-faiss-hnsw": ("faiss", {"index": "hnsw", "M": 16, "ef_construction": 40, "ef_search": 64}),
    "ours-hnswlib": ("hnsw", {"M": 16, "ef_construction": 40, "ef_search": 64}),
}


def data(n, dim):
    return np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)


def child(method, n, dim, k, out):
    X = data(n, dim)
    t = time.perf_counter()
    if method == "sklearn-brute":
        from sklearn.neighbors import NearestNeighbors

        # kneighbors() without X excludes each point itself, as ours does
        ind = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors(return_distance=False)
    else:
        from kexue.hubness import kneighbors

        backend, params = VARIANTS[method]
        ind = kneighbors(X, k, backend=backend, backend_params=params)[1]
    sec = time.perf_counter() - t
    np.save(out, ind.astype(np.int64))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    print(json.dumps({"method": method, "seconds": sec, "peak_gib": peak}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--methods", default="ours-exact,ours-faiss-flat,ours-faiss-ivf,sklearn-brute",
                    help=f"comma-separated, from: {', '.join(VARIANTS)}, sklearn-brute")
    ap.add_argument("--child", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.n, a.dim, a.k, a.out)
    import faiss
    import sklearn

    print(f"N_k for {a.n} × {a.dim} float32, k = {a.k}; threads: faiss {faiss.omp_get_max_threads()}; "
          f"sklearn {sklearn.__version__}")
    res, inds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in a.methods.split(","):
            out = str(Path(tmp) / f"{m}.npy")
            r = subprocess.run([sys.executable, __file__, "--child", m, "--n", str(a.n), "--dim", str(a.dim),
                                "--k", str(a.k), "--out", out], capture_output=True, text=True)
            if r.returncode:
                print(f"{m}: failed\n{r.stderr[-2000:]}")
                continue
            res[m] = json.loads(r.stdout.strip().splitlines()[-1])
            inds[m] = np.load(out)
            print(f"{m:18s} {res[m]['seconds']:8.1f} s   peak RSS {res[m]['peak_gib']:.2f} GiB", flush=True)
    ref = inds.get("ours-exact")
    base = res.get("sklearn-brute", {}).get("seconds")
    print()
    print(f"{'method':18s} {'seconds':>8s} {'vs sklearn':>10s} {'peak GiB':>9s} {'same sets / recall vs ours-exact':>34s}")
    for m, r in res.items():
        ratio = f"{base / r['seconds']:.2f}x" if base else "-"
        agree = "-"
        if ref is not None and m != "ours-exact":
            hits = (np.sort(inds[m], 1)[:, :, None] == np.sort(ref, 1)[:, None, :]).any(2).mean()
            agree = f"{hits:.4f}"
        print(f"{m:18s} {r['seconds']:8.1f} {ratio:>10s} {r['peak_gib']:9.2f} {agree:>34s}")
    if base:
        print("(vs sklearn = sklearn time / our time; > 1 means ours is faster)")


if __name__ == "__main__":
    main()
