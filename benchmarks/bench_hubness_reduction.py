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
        [--seed 0] [--threads 1] [--variant exact|faiss-flat|sampled]

``--scale``: kexue only, 100,000 × 384 Gaussian index, 10,000 queries, a FAISS flat index built
once and passed as the backend; index statistics from a 5,000-point sample.
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
    elif variant == "sampled":
        kw["n_samples"] = 2000
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
    out = subprocess.run([python, __file__, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def scale(threads):
    """kexue alone at 100,000 × 384 with a built FAISS index passed as the backend."""
    import faiss
    import numpy as np

    from kexue import hubness as H

    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100_000, 384), dtype=np.float32)
    Q = rng.standard_normal((10_000, 384), dtype=np.float32)
    t = time.perf_counter()
    index = faiss.IndexFlatL2(384)  # exact; an HNSW graph of 100k × 384 takes 10+ min to build here
    index.add(X)
    print(f"FAISS IndexFlatL2 built in {time.perf_counter() - t:.1f} s (the user's index, not timed below)")
    t = time.perf_counter()
    prim = H.graph.faiss_search(index, Q, K, "euclidean")[1]
    print(f"{'none':<6} search {time.perf_counter() - t:6.1f} s   skewness {H.skewness(H.occurrences(prim, len(X))):.2f}")
    for method in ["csls", "ls", "mp"]:
        t = time.perf_counter()
        r = H.make_reduction(method, n_candidates=C, metric="euclidean", backend=index, n_samples=5000).fit(X)
        fit = time.perf_counter() - t
        ind = r.kneighbors(Q, K)[1]
        total = time.perf_counter() - t
        print(f"{method:<6} fit {fit:6.1f} s   fit + 10k queries {total:6.1f} s   "
              f"skewness {H.skewness(H.occurrences(ind, len(X))):.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kiez-python", default=None, help="a Python that can import kiez (its side is skipped without)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="exact,faiss-flat,sampled",
                    help="kexue variants (comma list): exact, faiss-flat (a built IndexFlatL2 as backend), "
                         "sampled (index statistics from 2,000 index points)")
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--child", nargs=4, metavar=("SIDE", "METHOD", "VARIANT", "NPZ"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(*a.child)
    sys.path.insert(0, str(Path(__file__).parent))
    from _bench import load

    print(f"before: {load()}; {a.threads} thread(s) per run")
    if a.scale:
        scale(a.threads)
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
