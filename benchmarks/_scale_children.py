"""The measures of ``bench_hubness_scale.py`` that are not the ``kexue hubness`` CLI, each run as its
own process (``python _scale_children.py NAME JSON-ARGS``) so its peak memory is its own; each
prints one JSON line last. The data are read from the .npy memory map; the timed spans exclude
imports. Not imported by kexue.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _mmap(path):
    return np.load(path, mmap_mode="r")


def truth(a):
    """Exact k nearest of the recall sample (the rows ``ann.search`` draws for the same seed and
    sample size), merged over blocks of the file, each query's own row excluded."""
    from kexue.hubness import ann
    from kexue.utils import atomic_write

    X = _mmap(a["path"])
    n = len(X)
    rows = np.sort(np.random.default_rng(a["seed"]).choice(n, min(a["sample"], n), replace=False))
    t = time.perf_counter()
    T = ann.exact_sample(X, np.asarray(X[rows]), a["k"], "euclidean", rows, a["block_rows"])
    with atomic_write(a["out"]) as f:  # a killed run leaves no truncated file for the next one to trust
        np.savez(f, rows=rows, truth=T)
    return {"seconds": time.perf_counter() - t, "n_queries": len(rows)}


def _recall(ind, T) -> float:
    from kexue.hubness import knn_recall

    return float(knn_recall(ind, T))


def sklearn(a):
    """scikit-learn ``NearestNeighbors(algorithm="brute")`` fitted on all rows, queried with the
    recall sample only; its query time is extrapolated linearly to all N queries (brute force costs
    the same per query)."""
    from sklearn.neighbors import NearestNeighbors

    from kexue.hubness import ann

    X = _mmap(a["path"])
    with np.load(a["truth"]) as f:
        rows, T = f["rows"], f["truth"]
    Q = np.asarray(X[rows])
    t = time.perf_counter()
    nn = NearestNeighbors(n_neighbors=a["k"] + 1, algorithm="brute").fit(X)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    ind = nn.kneighbors(Q, return_distance=False)
    t_q = time.perf_counter() - t
    ind = ann._drop_self(ind.astype(np.int64), rows, a["k"])
    return {"fit_s": t_fit, "query_s": t_q, "n_queries": len(rows), "n": len(X),
            "extrapolated_s": t_fit + t_q * len(X) / len(rows), "recall": _recall(ind, T)}


def build_pq(a):
    """An IVF-PQ index (``a["factory"]``, e.g. ``IVF1000,PQ96``, or ``IVF1000,PQ96,Refine(SQ8)``: PQ
    candidates re-ranked by 8-bit scalar codes, ``k_factor`` of them per neighbour) trained on a seeded sample, filled
    block by block from the memory map, its nprobe chosen by kexue's own recall tuning
    (``ann._tune``: doubling then bisection) on the truth sample, then saved with that nprobe."""
    import faiss

    from kexue.hubness import ann
    from kexue.utils import atomic_path

    X = _mmap(a["path"])
    n, d = X.shape
    k = a["k"]
    with np.load(a["truth"]) as f:
        rows, T = f["rows"], f["truth"]
    t = time.perf_counter()
    index = faiss.index_factory(d, a["factory"])
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed, ivf.cp.niter = a["seed"], 10
    if hasattr(faiss.downcast_index(ivf), "do_polysemous_training"):  # ~2 s a sub-quantiser, for a search kexue never uses
        faiss.downcast_index(ivf).do_polysemous_training = False
    m = min(n, max(64 * ivf.nlist, 10_000))  # PQ's 256-centroid sub-quantisers want ~10,000 points
    sample = np.sort(np.random.default_rng(a["seed"]).choice(n, m, replace=False))
    index.train(np.ascontiguousarray(X[sample]))
    if hasattr(faiss.downcast_index(index), "k_factor"):  # IndexRefine: re-rank k_factor·k PQ candidates by its codes
        faiss.downcast_index(index).k_factor = a["k_factor"]
    for s in range(0, n, a["block_rows"]):
        index.add(np.ascontiguousarray(X[s:s + a["block_rows"]]))
    t_build = time.perf_counter() - t
    ps = faiss.ParameterSpace()
    Qs = np.ascontiguousarray(X[rows])
    idx = ann._Index(lambda Q, kk: index.search(Q, kk), lambda v: ps.set_index_parameter(index, "nprobe", v),
                     "nprobe", ann._doubling(1, ivf.nlist), None)
    t = time.perf_counter()
    nprobe, rec = ann._tune(idx, lambda: ann._drop_self(idx.search(Qs, k + 1)[1].astype(np.int64), rows, k), T,
                            a["recall"])
    t_tune = time.perf_counter() - t
    with atomic_path(a["out"]) as tmp:  # whole or absent: a resumed run reuses it
        faiss.write_index(index, str(tmp))
    return {"build_s": t_build, "tune_s": t_tune, "nprobe": int(nprobe), "recall": float(rec), "nlist": ivf.nlist,
            "factory": a["factory"], "k_factor": a["k_factor"], "index_bytes": Path(a["out"]).stat().st_size, "train_rows": m}


def estimate(a):
    """``estimate_hubness`` from ``fraction`` of the points as queries, IVF at the recall target."""
    from kexue.hubness import estimate_hubness

    X = _mmap(a["path"])
    t = time.perf_counter()
    e = estimate_hubness(X, a["k"], fraction=a["fraction"], backend="ivf", recall=a["recall"], seed=a["seed"],
                         block_rows=a["block_rows"])
    return {"seconds": time.perf_counter() - t, **e.to_dict()}


def whiten(a):
    """Whitening throughput per block of the memory map: the streaming fit (``fit_chunks``:
    accumulate every block, decompose once) timed without the block reads, ``partial_fit`` per
    block (accumulate + decompose each call), ``merge`` of two fits and one decomposition."""
    from kexue.whitening import Whitening

    X = _mmap(a["path"])
    (rows, d), B = X.shape, a["block_rows"]
    produce = {"s": 0.0}

    def blocks(limit=None):
        for i, s in enumerate(range(0, rows, B)):
            if limit is not None and i >= limit:
                return
            t = time.perf_counter()
            blk = np.array(X[s:s + B])  # read into memory: what a streaming fit of a file does
            produce["s"] += time.perf_counter() - t
            yield blk

    Whitening().partial_fit(np.array(X[:64]))  # warm-up: the first call imports scipy.linalg's BLAS, untimed
    t = time.perf_counter()
    w = Whitening().fit_chunks(blocks())
    fit_s = time.perf_counter() - t - produce["s"]
    per_block, fits = [], []
    for blk in blocks(limit=4):
        t = time.perf_counter()
        fits.append(Whitening().partial_fit(blk))
        per_block.append(time.perf_counter() - t)
    merge, dec = [], []
    for _ in range(3):  # medians of 3: one eigendecomposition each, noisy on a busy machine
        first = copy.deepcopy(fits[0])
        t = time.perf_counter()
        first.merge(fits[-1])  # move the other's sums to this shift and scale, add, decompose
        merge.append(time.perf_counter() - t)
        t = time.perf_counter()
        w.set_params(beta=1.0)  # re-decomposes from the accumulators
        dec.append(time.perf_counter() - t)
    merge_s, dec_s = statistics.median(merge), statistics.median(dec)
    nbytes = rows * d * 4
    blk_bytes = min(B, rows) * d * 4
    return {"rows": rows, "dim": d, "block_rows": B, "path": a["path"],
            "stream_fit_s": fit_s, "stream_bytes_per_s": nbytes / fit_s, "read_s": produce["s"],
            "partial_fit_block_s": statistics.median(per_block), "partial_fit_bytes_per_s": blk_bytes / statistics.median(per_block),
            "merge_s": merge_s, "decompose_s": dec_s}


def real(a):
    """The real set's float32 .npy (``_scale_real.real_dataset``), made in this process so that the
    benchmark's own process stays small; ``unavailable`` with the reason when the model is not cached."""
    from _scale_real import RealUnavailable, real_dataset

    try:
        _, secs, info = real_dataset(Path(a["folder"]), a["key"])
    except RealUnavailable as e:
        return {"unavailable": str(e)}
    return {"generate_s": secs, "source": info}


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    out = globals()[sys.argv[1]](json.loads(sys.argv[2]))
    print(json.dumps(out))
