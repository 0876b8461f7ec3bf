"""Benchmark: hubness reduction for new queries (issue 19), kexue side by side with kiez 0.5.0.

Setting: MNIST test digits in [0, 1], a seeded split into 8,000 index points and 2,000 new
queries, k = 10, 100 primary candidates, Euclidean. For none / CSLS / local scaling / mutual
proximity (Gaussian) each side reports the wall time of fit + search + reduction (everything
from the vectors to the re-ranked neighbours), 10-NN vote accuracy of the queries, and the
skewness of N_10 over the index. Each run is its own subprocess with the same thread settings,
and the two sides alternate (A B A B …); medians are printed with the load average.

kiez is not a dependency of kexue: its side runs only if ``--kiez-python`` names an interpreter
that can import kiez (kiez 0.5.0 predates ``__sklearn_tags__``; on scikit-learn ≥ 1.6 its two
base classes, ``NNAlgorithm`` and ``HubnessReduction``, need a ``__sklearn_tags__`` borrowed from
``BaseEstimator``). kiez's fit also searches the index points' neighbours among the queries.

    .venv/bin/python benchmarks/bench_hubness_reduction.py [--kiez-python PY] [--repeats 3] \\
        [--seed 0] [--threads 1] [--variants default,exact,faiss-flat]
    .venv/bin/python benchmarks/bench_hubness_reduction.py --scale [--kiez-python PY] [--repeats 3] \\
        [--scale-n 100000] [--scale-queries 10000] [--scale-samples 5000] [--scale-check 100]

``--scale``: the FAISS setting of issue 19 — an i.i.d. Gaussian index (100,000 × 384 by default;
``--scale-n``, ``--scale-dim``), 10,000 new queries (``--scale-queries``), float32, Euclidean,
k = 10, 100 candidates, an exact flat FAISS index (L2) on both sides. Each (side, method) run is
its own subprocess with the same thread settings (``--threads``, 1 by default: OMP, OpenBLAS and
MKL threads, which is what FAISS reads); sides alternate (A B A B …); medians of ``--repeats``.
The time covers everything from the float32 vectors to the re-ranked neighbours of the queries:

- kexue: build ``faiss.IndexFlatL2`` and add the index vectors (the user's index, passed as
  ``backend=``), ``make_reduction(method, n_candidates=100, backend=index,
  n_samples=S).fit(X).kneighbors(Q, 10)`` (``none``: the index searched for 10 neighbours).
  The index statistics come from a random sample of S index points (``--scale-samples``;
  default 5 % of the index, 5,000 at full size), the sample's nearest points to each index
  point by float32 BLAS; the query side (candidates and their statistic) from the FAISS search.
- kiez 0.5.0 (``--kiez-python``): ``Kiez(n_candidates=100, algorithm="Faiss",
  algorithm_kwargs={"metric": "euclidean", "index_key": "Flat"}, hubness=…)``, ``fit(Q, X)``,
  ``kneighbors(10)``. kiez cannot take a built index (its ``Faiss._fit`` calls
  ``faiss.index_factory`` itself), so the flat index build is counted on both sides (for a flat
  index it is a copy of the vectors: well under a second at full size). kiez builds two flat
  indexes (queries and index) and learns its index statistics differently: from each index
  point's 100 nearest **queries** (a search of the index against the queries, n × n_queries
  distances), not from index points, and cannot sample them; its local scaling and CSLS read
  the 100th / all 100 of those distances (kexue: k = 5, its default). ``none`` is the same search on
  both sides.

Printed per run: the wall time and the run's CPU time (``time.process_time``: all its threads;
with one thread it equals the wall time on an idle machine, and on a busy one it still compares
the two sides' work), then medians, the skewness of N_10 over the index (the queries' re-ranked top
10), and (``--scale-check M`` queries, default 100; 0 = skip) the agreement of each side's
top 10 with a float64 brute-force reference of kexue's definition (index statistics from each
index point's exact nearest other index points: k = 5 for LS and CSLS, 100 for MP; the query's
from its exact 100 candidates): the mean share of the reference top 10 found. kiez's definition
differs (statistics from the queries, k = 100), so its agreement measures that difference too.
The reference is computed once in the parent, untimed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ["none", "csls", "ls", "mp"]
KIEZ = {"none": (None, {}), "csls": ("CSLS", {}), "ls": ("LocalScaling", {"method": "standard"}),
        "mp": ("MutualProximity", {"method": "normal"})}
K, C = 10, 100


def vote(ind, y_index, n_classes=10):
    """Majority vote of the neighbours; a tie goes to the class of the nearest tied neighbour."""
    import numpy as np

    labels = y_index[ind]
    counts = np.zeros((len(labels), n_classes), int)
    np.add.at(counts, (np.repeat(np.arange(len(labels)), labels.shape[1]), labels.ravel()), 1)
    tied = counts[np.arange(len(labels))[:, None], labels] == counts.max(1, keepdims=True)
    return labels[np.arange(len(labels)), tied.argmax(1)]


def skewness(nk):
    c = nk - nk.mean()
    return float((c**3).mean() / (c**2).mean() ** 1.5)


def run_kiez(method, X, Q):
    from kiez import Kiez

    hub, kw = KIEZ[method]
    t = time.perf_counter()
    kz = Kiez(n_candidates=C, algorithm="SklearnNN", algorithm_kwargs={"algorithm": "brute"},
              hubness=hub, hubness_kwargs=dict(kw))
    kz.fit(Q, X)  # kiez: source = the queries, target = the index
    ind = kz.kneighbors(K)[1]
    return time.perf_counter() - t, ind


def run_kexue(method, X, Q, variant):
    import numpy as np

    from kexue import hubness as H

    t = time.perf_counter()
    kw = {"n_candidates": C, "metric": "euclidean"}
    if variant == "faiss-flat":
        import faiss

        index = faiss.IndexFlatL2(X.shape[1])
        index.add(X.astype(np.float32))
        kw["backend"] = index
    elif variant == "exact":
        kw["n_samples"] = None  # every index point's exact row; "default" leaves n_samples="auto"
    if method == "none":
        if variant == "faiss-flat":
            ind = H.graph.faiss_search(kw["backend"], Q, K, "euclidean")[1]
        else:
            ind = H.kneighbors(X, K, queries=Q)[1]
    else:
        ind = H.make_reduction(method, **kw).fit(X).kneighbors(Q, K)[1]
    return time.perf_counter() - t, ind


def child(side, method, variant, path):
    import numpy as np

    with np.load(path, allow_pickle=False) as f:
        X, y, Q, yq = f["X"], f["y"], f["Q"], f["yq"]
    sec, ind = run_kiez(method, X, Q) if side == "kiez" else run_kexue(method, X, Q, variant)
    ind = np.asarray(ind)
    nk = np.bincount(ind.ravel(), minlength=len(X)).astype(float)
    print(json.dumps({"seconds": sec, "accuracy": float((vote(ind, y) == yq).mean()), "skewness": skewness(nk)}))


def spawn(python, args, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    out = subprocess.run([python, __file__, *args], env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{python} {' '.join(args)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_kexue_faiss(method, X, Q, n_samples):
    import faiss

    from kexue import hubness as H

    t, cpu = time.perf_counter(), time.process_time()
    index = faiss.IndexFlatL2(X.shape[1])  # the user's index, passed in as the backend
    index.add(X)
    if method == "none":
        ind = H.graph.faiss_search(index, Q, K, "euclidean")[1]
    else:
        red = H.make_reduction(method, n_candidates=C, metric="euclidean", backend=index, n_samples=n_samples)
        ind = red.fit(X).kneighbors(Q, K)[1]
    return time.perf_counter() - t, time.process_time() - cpu, ind


def run_kiez_faiss(method, X, Q):
    from kiez import Kiez

    hub, kw = KIEZ[method]
    t, cpu = time.perf_counter(), time.process_time()
    kz = Kiez(n_candidates=C, algorithm="Faiss", algorithm_kwargs={"metric": "euclidean", "index_key": "Flat"},
              hubness=hub, hubness_kwargs=dict(kw))
    kz.fit(Q, X)  # kiez: source = the queries, target = the index; builds a flat index of each
    ind = kz.kneighbors(K)[1]
    return time.perf_counter() - t, time.process_time() - cpu, ind


def scale_child(side, method, folder, n_samples):
    import faiss
    import numpy as np

    folder = Path(folder)
    X, Q = np.load(folder / "X.npy"), np.load(folder / "Q.npy")
    load0 = os.getloadavg()[0]
    if side == "kiez":
        sec, cpu, ind = run_kiez_faiss(method, X, Q)
    else:
        sec, cpu, ind = run_kexue_faiss(method, X, Q, int(n_samples))
    np.save(folder / f"ind-{side}-{method}.npy", np.asarray(ind, dtype=np.int64))
    print(json.dumps({"seconds": sec, "cpu": cpu, "faiss_threads": faiss.omp_get_max_threads(), "load": load0}))


def _exact_rows(A, X, width, own=None, block=128):
    """Float64 brute force: each row of ``A``'s ``width`` nearest rows of ``X`` (sorted by distance,
    then index); ``own``: each row's id in ``X``, left out."""
    import numpy as np

    xsq = np.einsum("ij,ij->i", X, X)
    dist = np.empty((len(A), width))
    ind = np.empty((len(A), width), np.int64)
    for s in range(0, len(A), block):
        a = A[s:s + block]
        D = np.sqrt(np.maximum(np.einsum("ij,ij->i", a, a)[:, None] + xsq[None, :] - 2.0 * (a @ X.T), 0.0))
        if own is not None:
            D[np.arange(len(a)), own[s:s + block]] = np.inf
        part = np.argpartition(D, width, axis=1)[:, :width + 1]
        dp = np.take_along_axis(D, part, 1)
        o = np.lexsort((part, dp), axis=1)[:, :width]
        dist[s:s + block], ind[s:s + block] = np.take_along_axis(dp, o, 1), np.take_along_axis(part, o, 1)
    return dist, ind


def scale_reference(X, Qc, k_stat=5):
    """Top 10 of the check queries ``Qc`` by each reduction's secondary distance, from float64
    brute force: q's exact 100 candidates, q's statistic from them, each candidate x's statistic
    from its exact nearest other index points (kexue's definition, written out from the formulas)."""
    import numpy as np
    from scipy.special import ndtr

    X, Qc = X.astype(np.float64), Qc.astype(np.float64)
    dq, iq = _exact_rows(Qc, X, C)
    P = np.unique(iq)
    dp, _ = _exact_rows(X[P], X, C, own=P)
    row = np.full(len(X), -1)
    row[P] = np.arange(len(P))
    dx = dp[row[iq]]  # (m, C, C): each candidate's own sorted row
    sec = {"none": dq,
           "csls": 2.0 * dq - dq[:, :k_stat].mean(1)[:, None] - dx[:, :, :k_stat].mean(2),  # r = -mean d
           "ls": -np.expm1(-dq**2 / (dq[:, k_stat - 1][:, None] * dx[:, :, k_stat - 1])),
           "mp": 1.0 - ndtr((dq.mean(1)[:, None] - dq) / dq.std(1)[:, None]) * ndtr((dx.mean(2) - dq) / dx.std(2))}
    out = {}
    for m, v in sec.items():
        o = np.lexsort((iq, v), axis=1)[:, :K]
        out[m] = np.take_along_axis(iq, o, 1)
    return out


def scale(a):
    """The FAISS setting at scale, both sides (module docstring)."""
    import numpy as np
    from _bench import load
    from threadpoolctl import threadpool_limits

    n, nq, dim = a.scale_n, a.scale_queries, a.scale_dim
    ns = a.scale_samples or max(2, round(0.05 * n))
    sides = ["kexue"] + (["kiez"] if a.kiez_python else [])
    py = {"kexue": sys.executable, "kiez": a.kiez_python}
    rng = np.random.default_rng(a.seed)
    X = rng.standard_normal((n, dim), dtype=np.float32)
    Q = rng.standard_normal((nq, dim), dtype=np.float32)
    print(f"i.i.d. Gaussian index {n:,} × {dim}, {nq:,} queries (seed {a.seed}), k={K}, {C} candidates, "
          f"exact flat FAISS index; kexue's index statistics from a {ns:,}-point sample; median of {a.repeats}")
    runs = {(s, m): [] for s in sides for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "X.npy", X)
        np.save(Path(tmp) / "Q.npy", Q)
        for _ in range(a.repeats):
            for m in METHODS:
                for s in sides:  # A B A B: both sides under the same machine conditions
                    r = spawn(py[s], ["--scale-child", s, m, tmp, str(ns)], a.threads)
                    runs[s, m].append(r)
                    print(f"  {s:<6} {m:<5} {r['seconds']:8.2f} s wall {r['cpu']:8.2f} s CPU   (FAISS threads "
                          f"{r['faiss_threads']}, load {r['load']:.2f})", flush=True)
        ind = {(s, m): np.load(Path(tmp) / f"ind-{s}-{m}.npy") for s in sides for m in METHODS}
    print(f"after the timed runs: {load()}")
    ref = None
    if a.scale_check:
        t = time.perf_counter()
        with threadpool_limits(a.threads):
            ref = scale_reference(X, Q[:a.scale_check])
        print(f"float64 reference for the first {a.scale_check} queries: {time.perf_counter() - t:.1f} s (untimed)")
    med = {key: (statistics.median(x["seconds"] for x in r), statistics.median(x["cpu"] for x in r))
           for key, r in runs.items()}
    print(f"{'method':<8}" + "".join(f"{s:>40}" for s in sides) + ("" if len(sides) < 2 else f"{'kexue / kiez':>20}"))
    print(f"{'':<8}" + "".join(f"{'wall s / CPU s / skew N_10 / top-10 agr.':>40}" for _ in sides)
          + ("" if len(sides) < 2 else f"{'wall    CPU':>20}"))
    for m in METHODS:
        cells = []
        for s in sides:
            i = ind[s, m]
            agr = "-" if ref is None else f"{np.mean([len(set(u) & set(v)) for u, v in zip(i, ref[m])]) / K:.3f}"
            nk = np.bincount(i.ravel(), minlength=n).astype(float)
            cells.append(f"{med[s, m][0]:8.2f} / {med[s, m][1]:8.2f} / {skewness(nk):5.2f} / {agr:>5}")
        line = f"{m:<8}" + "".join(f"{c:>40}" for c in cells)
        if len(sides) == 2:
            line += f"{med['kexue', m][0] / med['kiez', m][0]:12.2f}x {med['kexue', m][1] / med['kiez', m][1]:6.2f}x"
        print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kiez-python", default=None, help="a Python that can import kiez (its side is skipped without)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="default,exact,faiss-flat",
                    help="kexue variants (comma list): default (n_samples='auto': statistics from a 2,000-point "
                         "sample at 8,000 index points), exact (n_samples=None), faiss-flat (a built IndexFlatL2 "
                         "as backend, its self-search for the statistics)")
    ap.add_argument("--scale", action="store_true", help="the FAISS setting at scale (module docstring)")
    ap.add_argument("--scale-n", type=int, default=100_000, help="index points of --scale")
    ap.add_argument("--scale-queries", type=int, default=10_000, help="new queries of --scale")
    ap.add_argument("--scale-dim", type=int, default=384)
    ap.add_argument("--scale-samples", type=int, default=None,
                    help="kexue's statistics sample in --scale (default 5%% of the index)")
    ap.add_argument("--scale-check", type=int, default=100,
                    help="queries checked against the float64 reference (0: skip)")
    ap.add_argument("--scale-child", nargs=4, metavar=("SIDE", "METHOD", "DIR", "SAMPLES"), help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=4, metavar=("SIDE", "METHOD", "VARIANT", "NPZ"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(*a.child)
    if a.scale_child:
        return scale_child(*a.scale_child)
    sys.path.insert(0, str(Path(__file__).parent))
    from _bench import load

    print(f"before: {load()}; {a.threads} thread(s) per run")
    if a.scale:
        scale(a)
        print(f"after: {load()}")
        return
    import numpy as np

    from kexue import data

    Xall, yall = data.load_mnist_test()
    p = np.random.default_rng(a.seed).permutation(len(Xall))
    Xall = Xall.astype(np.float64) / 255.0
    variants = a.variants.split(",")
    sides = [f"kexue-{v}" for v in variants] + (["kiez"] if a.kiez_python else [])
    py = {s: sys.executable for s in sides} | {"kiez": a.kiez_python}
    runs = {(s, m): [] for s in sides for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "split.npz"
        np.savez(npz, X=Xall[p[:8000]], y=yall[p[:8000]], Q=Xall[p[8000:10000]], yq=yall[p[8000:10000]])
        for _ in range(a.repeats):
            for m in METHODS:
                for s in sides:  # A B A B: both sides under the same machine conditions
                    side, _, variant = s.partition("-")
                    runs[s, m].append(spawn(py[s], ["--child", side, m, variant or "-", str(npz)], a.threads))
    print(f"after: {load()}")
    print(f"MNIST test, seed {a.seed}: 8,000 index / 2,000 queries, k={K}, {C} candidates; median of "
          f"{a.repeats} (time s / 10-NN accuracy / skewness of N_10 over the index)")
    print(f"{'method':<8}" + "".join(f"{s:>30}" for s in sides))
    for m in METHODS:
        cells = []
        for s in sides:
            r = runs[s, m]
            cells.append(f"{statistics.median(x['seconds'] for x in r):8.2f} / {r[-1]['accuracy']:.4f} / "
                         f"{r[-1]['skewness']:5.2f}")
        print(f"{m:<8}" + "".join(f"{c:>30}" for c in cells))
    if a.kiez_python:
        tz = {m: statistics.median(x["seconds"] for x in runs["kiez", m]) for m in METHODS}
        for s in sides[:-1]:
            print(f"{s} time / kiez time: " + ", ".join(
                f"{m} {statistics.median(x['seconds'] for x in runs[s, m]) / tz[m]:.2f}x" for m in METHODS))


if __name__ == "__main__":
    main()
