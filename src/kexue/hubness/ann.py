"""Approximate kNN backends whose search parameter is chosen for a recall target (SPEC 8.2).

A user asks for ``recall`` (default 0.95), not for ``nprobe`` or ``ef``: the index is built,
``sample`` random queries (default 1,000) are searched exactly (:mod:`kexue.hubness.knn`), and
the smallest search parameter whose recall on that sample reaches the target is used for all
queries (doubling, then bisection between the last miss and the first hit). The measured sample
recall is returned with the result (``KNNGraph.recall``), so every approximate graph states its
quality. Found neighbours are re-scored in float64 and ordered like the exact backend's.

- ``hnsw``: hnswlib's HNSW graph; parameter ``ef_search`` (build: ``M`` = 16,
  ``ef_construction`` = 100, ``num_threads`` = 1 — one thread gives the same graph every run).
- ``ivf``: FAISS ``IndexIVFFlat``; parameter ``nprobe`` (build: ``nlist`` = √n, k-means on at
  most 64 points per list, seeded).
- ``faiss``: ``backend_params={"index": "hnsw" | "ivf" | "flat"}`` — FAISS HNSW (``ef_search``),
  the IVF above, or the float32 flat index (exact up to float32 rounding, nothing to tune).

Passing the parameter itself (``backend_params={"nprobe": 32}``) skips the tuning; the recall
is still measured on the sample. Cosine: unit vectors searched with L2, which ranks identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

from kexue.hubness.knn import KNNGraph, _exact, _normalise, knn_recall, order_rows, pair_distances
from kexue.utils import KexueError, NULL_TRACKER, Tracker, require


@dataclass
class _Index:
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (Q, kk) -> (D, I)
    set_param: Callable[[int], None] | None  # None: nothing to tune
    name: str  # the tuned parameter's name
    values: list  # candidates, increasing
    fixed: int | None  # the user's value, if given


def _hnswlib(Xf, kk, params, seed) -> _Index:
    hnswlib = require("ann", "hnswlib", "backend 'hnsw'")

    n, d = Xf.shape
    index = hnswlib.Index(space="l2", dim=d)
    index.init_index(max_elements=n, M=int(params.pop("M", 16)),
                     ef_construction=int(params.pop("ef_construction", 100)), random_seed=seed)
    index.set_num_threads(int(params.pop("num_threads", 1)))
    index.add_items(Xf, np.arange(n))
    fixed = params.pop("ef_search", None)

    def search(Q, k):
        I, D = index.knn_query(Q, k=k)
        return D, I.astype(np.int64)

    return _Index(search, index.set_ef, "ef_search", _doubling(kk, max(n, kk)), fixed)


def _faiss_ivf(Xf, kk, params, seed) -> _Index:
    faiss = require("ann", "faiss", "backend 'ivf'")

    n, d = Xf.shape
    nlist = int(params.pop("nlist", max(1, round(math.sqrt(n)))))
    if not 1 <= nlist <= n:
        raise KexueError(f"nlist must be in 1..{n} (the number of index points), got {nlist}")
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    index.cp.seed = seed
    index.cp.niter = 10
    index.cp.max_points_per_centroid = 64  # k-means on a sample: the lists need not be optimal
    index.cp.min_points_per_centroid = 1
    index.train(Xf)
    index.add(Xf)
    fixed = params.pop("nprobe", None)

    def search(Q, k):
        D, I = index.search(Q, k)
        miss = np.flatnonzero((I < 0).any(1))
        if len(miss):  # a few lists held fewer than k points: search those rows in every list
            p = index.nprobe
            index.nprobe = nlist
            D[miss], I[miss] = index.search(Q[miss], k)
            index.nprobe = p
        return D, I.astype(np.int64)

    return _Index(search, lambda v: setattr(index, "nprobe", v), "nprobe", _doubling(1, nlist), fixed)


def _faiss(Xf, kk, params, seed) -> _Index:
    faiss = require("ann", "faiss", "backend 'faiss'")

    kind = params.pop("index", "hnsw")
    if kind == "ivf":
        return _faiss_ivf(Xf, kk, params, seed)
    d = Xf.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
        index.add(Xf)
        return _Index(lambda Q, k: _int(index.search(Q, k)), None, "", [], None)
    if kind != "hnsw":
        raise KexueError(f"unknown FAISS index {kind!r}; choose from: hnsw, ivf, flat")
    index = faiss.IndexHNSWFlat(d, int(params.pop("M", 16)))
    index.hnsw.efConstruction = int(params.pop("ef_construction", 100))
    index.add(Xf)
    fixed = params.pop("ef_search", None)
    return _Index(lambda Q, k: _int(index.search(Q, k)), lambda v: setattr(index.hnsw, "efSearch", v), "ef_search",
                  _doubling(kk, max(len(Xf), kk)), fixed)


def _int(DI):
    return DI[0], DI[1].astype(np.int64)


def _doubling(lo: int, hi: int) -> list:
    out = [lo]
    while out[-1] < hi:
        out.append(min(2 * out[-1], hi))
    return out


_BUILD = {"hnsw": _hnswlib, "ivf": _faiss_ivf, "faiss": _faiss}


def _drop_self(I: np.ndarray, ids, k: int) -> np.ndarray:
    """Remove each row's own id wherever it appears (not "the first column": duplicates tie with
    it); rows without it lose their last column."""
    if ids is None:
        return I[:, :k]
    own = I == ids[:, None]
    drop = np.where(own.any(1), own.argmax(1), I.shape[1] - 1)
    keep = np.ones_like(I, dtype=bool)
    keep[np.arange(len(I)), drop] = False
    return I[keep].reshape(len(I), k)


def _tune(idx: _Index, run, truth: np.ndarray, target: float) -> tuple[int | None, float]:
    """The smallest parameter value whose recall on the sample reaches ``target``."""
    if idx.set_param is None:
        return None, knn_recall(run(), truth)
    if idx.fixed is not None:
        idx.set_param(int(idx.fixed))
        return int(idx.fixed), knn_recall(run(), truth)
    lo, hi, got = None, None, {}
    for v in idx.values:
        idx.set_param(v)
        got[v] = knn_recall(run(), truth)
        if got[v] >= target:
            hi = v
            break
        lo = v
    if hi is None:  # the target is out of reach even at the largest value: use it and report the recall
        return lo, got[lo]
    while lo is not None and hi - lo > 1 and hi > 1.15 * lo:  # bisect to within ~15 %
        mid = (lo + hi) // 2
        idx.set_param(mid)
        got[mid] = knn_recall(run(), truth)
        lo, hi = (lo, mid) if got[mid] >= target else (mid, hi)
    idx.set_param(hi)
    return hi, got[hi]


def search(X, Q, k, metric, backend, self_ids, params, recall, seed, tracker: Tracker,
           sample: int = 1000, chunk: int = 8192) -> KNNGraph:
    """Approximate kNN of ``Q`` among ``X`` (see the module docstring); called by ``kneighbors``."""
    same = Q is X
    X64 = _normalise(X) if metric == "cosine" else np.asarray(X, np.float64)
    Q64 = X64 if same else (_normalise(Q) if metric == "cosine" else np.asarray(Q, np.float64))
    Xf = np.ascontiguousarray(X64, dtype=np.float32)
    Qf = Xf if same else np.ascontiguousarray(Q64, dtype=np.float32)
    kk = k + (1 if self_ids is not None else 0)
    sample = int(params.pop("sample", sample))
    idx = _BUILD[backend](Xf, kk, params, seed)
    if params:
        raise KexueError(f"unknown {backend} backend parameters: {', '.join(params)}")
    rows = np.sort(np.random.default_rng(seed).choice(len(Q), min(sample, len(Q)), replace=False))
    sid = None if self_ids is None else self_ids[rows]
    truth = _exact(X, Q[rows], k, metric, sid, None, 16, NULL_TRACKER).ind
    value, got = _tune(idx, lambda: _drop_self(idx.search(Qf[rows], kk)[1], sid, k), truth, recall)
    ind = np.empty((len(Q), k), np.int64)
    dist = np.empty((len(Q), k))
    for s in tracker.track(range(0, len(Q), chunk), f"{backend} search"):
        e = min(s + chunk, len(Q))
        I = _drop_self(idx.search(Qf[s:e], kk)[1], None if self_ids is None else self_ids[s:e], k)
        d64 = pair_distances(Q64[s:e, None, :], X64[I], metric)
        dist[s:e], ind[s:e] = order_rows(d64, I, k, metric)
    return KNNGraph(dist, ind, backend, float(got), len(rows), {} if value is None else {idx.name: value})
